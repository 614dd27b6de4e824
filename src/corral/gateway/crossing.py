"""Crossing protocol families on one attempt: a Messages request served by a Chat
deployment or the reverse, and a Responses request served by a Chat deployment (see
``corral.translate`` for what maps and what is refused).

``crossing(client, deployment)`` is None when the deployment speaks the client's
protocol; otherwise a ``Crossing`` that translates the request on the way up and
the response, error or stream on the way back. Usage is always read from the
upstream's own answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

import corral.translate as translate
from corral.gateway.wire import CHAT, MESSAGES, RESPONSES, Outcome, Wire
from corral.routing import Deployment


class StreamTranslator(Protocol):
    outcome: Outcome

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Crossing:
    client: Wire
    upstream: Wire

    def request(self, data: dict[str, Any], deployment: Deployment, default_max: int) -> bytes:
        """The upstream body, in the deployment's protocol (raises ``InvalidRequest``)."""
        if self.upstream is CHAT:
            field = "max_tokens" if deployment.provider.kind == "openai-compatible" else None
            to_chat = (
                translate.responses_to_chat
                if self.client is RESPONSES
                else translate.messages_to_chat
            )
            out = to_chat(data, max_tokens_field=field or "max_completion_tokens")
        else:
            out = translate.chat_to_messages(data, default_max_tokens=default_max)
        out["model"] = deployment.upstream_model
        return orjson.dumps(out)

    def response(self, upstream: dict[str, Any], model: str) -> tuple[bytes, Outcome]:
        """The client's body and the upstream's outcome (its usage), from a 2xx answer."""
        outcome = self.upstream.outcome(upstream)
        if self.client is RESPONSES:
            body = translate.chat_response_to_responses(upstream, model=model)
        elif self.upstream is CHAT:
            body = translate.chat_response_to_messages(upstream, model=model)
        else:
            body = translate.messages_response_to_chat(upstream, model=model)
        return orjson.dumps(body), outcome

    def error(self, status: int, payload: bytes) -> bytes:
        if self.client is RESPONSES:
            return payload  # the OpenAI error shape on both sides
        if self.upstream is CHAT:
            return translate.openai_error_to_anthropic(status, payload)
        return translate.anthropic_error_to_openai(status, payload)

    def stream(self, model: str) -> StreamTranslator:
        if self.client is RESPONSES:
            return translate.ChatToResponsesStream(model=model)
        if self.upstream is CHAT:
            return translate.ChatToMessagesStream(model=model)
        # The client's chat meter strips the usage chunk when the client did not ask for it.
        return translate.MessagesToChatStream(model=model, include_usage=True)

    @property
    def label(self) -> str:
        return f"{self.client.name}->{self.upstream.name}"


_CROSSINGS = {
    (MESSAGES.name, CHAT.name): Crossing(MESSAGES, CHAT),
    (CHAT.name, MESSAGES.name): Crossing(CHAT, MESSAGES),
    (RESPONSES.name, CHAT.name): Crossing(RESPONSES, CHAT),
}


def crossing(client: Wire, deployment: Deployment) -> Crossing | None:
    """None: native. Raises ``LookupError`` when the deployment cannot serve the protocol."""
    if deployment.speaks(client.name):
        return None
    for target in sorted(deployment.provider.protocols):
        found = _CROSSINGS.get((client.name, target))
        if found is not None:
            return found
    raise LookupError(client.name)


def can_serve(client: Wire, deployment: Deployment) -> bool:
    try:
        crossing(client, deployment)
    except LookupError:
        return False
    return True


__all__ = ["Crossing", "can_serve", "crossing"]
