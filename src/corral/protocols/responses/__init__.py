"""OpenAI Responses: the adapter (routes, usage, errors in ``wire``; the conversions to
and from the internal form in ``chat``, ``streams``, ``from_chat`` and ``to_chat_stream``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import StreamTranslator, Turn
from corral.protocols.responses.chat import chat_response_to_responses, responses_to_chat
from corral.protocols.responses.from_chat import chat_to_responses, responses_response_to_chat
from corral.protocols.responses.streams import ChatToResponsesStream
from corral.protocols.responses.to_chat_stream import ResponsesToChatStream
from corral.protocols.responses.turn import responses_turn
from corral.protocols.responses.wire import ResponsesWire


class ResponsesAdapter(ResponsesWire):
    def to_internal(self, body: dict[str, Any]) -> dict[str, Any]:
        return responses_to_chat(body)

    def from_internal(
        self, internal: dict[str, Any], *, default_max: int, provider_kind: str
    ) -> dict[str, Any]:
        return chat_to_responses(internal)

    def response_to_internal(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        return responses_response_to_chat(body, model=model)

    def response_from_internal(self, internal: dict[str, Any], *, model: str) -> dict[str, Any]:
        return chat_response_to_responses(internal, model=model)

    def stream_to_internal(self, model: str) -> StreamTranslator | None:
        return ResponsesToChatStream(model=model)

    def stream_from_internal(self, model: str) -> StreamTranslator | None:
        return ChatToResponsesStream(model=model)

    def turn(self, body: Mapping[str, Any]) -> Turn | None:
        return responses_turn(body)


RESPONSES = ResponsesAdapter()

__all__ = ["RESPONSES", "ResponsesAdapter"]
