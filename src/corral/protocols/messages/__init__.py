"""Anthropic Messages: the adapter (routes, usage, errors in ``wire``; the conversions to
and from the internal form in ``to_chat``, ``from_chat``, ``bodies`` and ``streams``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import StreamTranslator, Turn
from corral.protocols.messages.bodies import (
    anthropic_error_to_openai,
    chat_response_to_messages,
    messages_response_to_chat,
    openai_error_to_anthropic,
)
from corral.protocols.messages.from_chat import chat_to_messages
from corral.protocols.messages.streams import ChatToMessagesStream, MessagesToChatStream
from corral.protocols.messages.to_chat import messages_to_chat
from corral.protocols.messages.turn import messages_turn
from corral.protocols.messages.wire import MessagesWire


class MessagesAdapter(MessagesWire):
    def to_internal(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_to_chat(body)

    def from_internal(
        self, internal: dict[str, Any], *, default_max: int, provider_kind: str
    ) -> dict[str, Any]:
        return chat_to_messages(internal, default_max_tokens=default_max)

    def response_to_internal(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        return messages_response_to_chat(body, model=model)

    def response_from_internal(self, internal: dict[str, Any], *, model: str) -> dict[str, Any]:
        return chat_response_to_messages(internal, model=model)

    def stream_to_internal(self, model: str) -> StreamTranslator | None:
        return MessagesToChatStream(model=model, include_usage=True)

    def stream_from_internal(self, model: str) -> StreamTranslator | None:
        return ChatToMessagesStream(model=model)

    def turn(self, body: Mapping[str, Any]) -> Turn | None:
        return messages_turn(body)


MESSAGES = MessagesAdapter()

__all__ = [
    "MESSAGES",
    "ChatToMessagesStream",
    "MessagesAdapter",
    "MessagesToChatStream",
    "anthropic_error_to_openai",
    "chat_response_to_messages",
    "chat_to_messages",
    "messages_response_to_chat",
    "messages_to_chat",
    "messages_turn",
    "openai_error_to_anthropic",
]
