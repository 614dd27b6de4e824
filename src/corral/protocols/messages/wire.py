"""Anthropic Messages: routes, usage, the stream meter, errors, counting and models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from corral.errors import CorralError, InvalidRequest
from corral.protocols.base import (
    Adapter,
    ModelInfo,
    Outcome,
    Route,
    StreamMeter,
    Usage,
    anthropic_error,
    event_data,
    event_name,
    int_or_zero,
    json_object,
    max_field,
    str_or_none,
)

PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"


def anthropic_usage(u: dict[str, Any], into: Usage | None = None) -> Usage:
    """Anthropic already reports non-overlapping input columns; later events update earlier."""
    usage = into or Usage()
    if u.get("input_tokens") is not None:
        usage.input = int_or_zero(u.get("input_tokens"))
    if u.get("cache_read_input_tokens") is not None:
        usage.cached_input = int_or_zero(u.get("cache_read_input_tokens"))
    if u.get("cache_creation_input_tokens") is not None:
        usage.cache_write = int_or_zero(u.get("cache_creation_input_tokens"))
    if u.get("output_tokens") is not None:
        usage.output = int_or_zero(u.get("output_tokens"))
    return usage


class MessagesWire(Adapter):
    name = "messages"
    family = "anthropic"
    path = PATH

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return max_field(body, "max_tokens")

    def route(self, method: str, path: str) -> Route | None:
        if path == COUNT_PATH:
            return Route(self, "count_tokens")
        return super().route(method, path)

    def check(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        model, stream = self._check_messages(body, route)
        if body.get("max_tokens") is None:
            raise InvalidRequest("max_tokens: Field required")
        return model, stream

    def check_count(self, body: dict[str, Any], route: Route) -> str:
        """What ``/v1/messages/count_tokens`` needs: a model and messages, no max_tokens."""
        return self._check_messages(body, route)[0]

    def _check_messages(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        model, stream = super().check(body, route)
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("messages: Field required (a list of messages)")
        return model, stream

    def error_body(self, exc: CorralError) -> bytes:
        return anthropic_error(exc)

    def sse_error(self, exc: CorralError, sequence: int) -> bytes:
        return b"event: error\ndata: " + self.error_body(exc) + b"\n\n"

    def count_path(self, model: str) -> str | None:
        return COUNT_PATH

    def count_text(self, body: dict[str, Any]) -> str:
        return orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")]).decode()

    def models_body(self, names: list[str], info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        return {
            "data": [self.model_body(n, info) for n in names],
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }

    def model_body(self, name: str, info: Callable[[str], ModelInfo]) -> dict[str, Any]:
        return {
            "type": "model",
            "id": name,
            "display_name": name,
            "created_at": "2026-01-01T00:00:00Z",
        }

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = body.get("usage")
        return Outcome(
            usage=anthropic_usage(usage) if isinstance(usage, dict) else None,
            response_id=str_or_none(body.get("id")),
            model=str_or_none(body.get("model")),
            finish_reason=str_or_none(body.get("stop_reason")),
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return MessagesMeter()


class MessagesMeter(StreamMeter):
    def inspect(self, event: bytes) -> bool:
        name = event_name(event)
        if name == b"message_stop":
            self.done = True
            return True
        if name not in (b"message_start", b"message_delta", b"error"):
            return True
        data = json_object(event_data(event))
        if data is None:
            return True
        if name == b"error":
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.outcome.error = str_or_none(message) or "error event"
            return True
        if name == b"message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.outcome.response_id = str_or_none(message.get("id"))
                self.outcome.model = str_or_none(message.get("model"))
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.outcome.usage = anthropic_usage(usage)
            return True
        delta = data.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self.outcome.finish_reason = delta["stop_reason"]
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.outcome.usage = anthropic_usage(usage, self.outcome.usage)
        return True
