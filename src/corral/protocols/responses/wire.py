"""OpenAI Responses: routes, usage, the stream meter, errors."""

from __future__ import annotations

from typing import Any

import orjson

from corral.errors import CorralError, InvalidRequest
from corral.protocols.base import (
    Adapter,
    Outcome,
    Route,
    StreamMeter,
    Usage,
    event_data,
    event_name,
    int_or_zero,
    json_object,
    max_field,
    str_or_none,
)

PATH = "/v1/responses"


def openai_responses_usage(u: dict[str, Any]) -> Usage:
    cached = int_or_zero((u.get("input_tokens_details") or {}).get("cached_tokens"))
    reasoning = int_or_zero((u.get("output_tokens_details") or {}).get("reasoning_tokens"))
    return Usage(
        input=max(0, int_or_zero(u.get("input_tokens")) - cached),
        cached_input=cached,
        output=max(0, int_or_zero(u.get("output_tokens")) - reasoning),
        reasoning=reasoning,
    )


class ResponsesWire(Adapter):
    name = "responses"
    path = PATH
    max_field = "max_output_tokens"

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return max_field(body, "max_output_tokens")

    def check(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        model, stream = super().check(body, route)
        value = body.get("input")
        if value is not None and not isinstance(value, str | list):
            raise InvalidRequest("'input' must be a string or a list of input items")
        return model, stream

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = body.get("usage")
        status = str_or_none(body.get("status"))
        incomplete = body.get("incomplete_details")
        if isinstance(incomplete, dict) and incomplete.get("reason"):
            status = str_or_none(incomplete.get("reason"))
        return Outcome(
            usage=openai_responses_usage(usage) if isinstance(usage, dict) else None,
            response_id=str_or_none(body.get("id")),
            model=str_or_none(body.get("model")),
            finish_reason=status,
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return ResponsesMeter(self)

    def sse_error(self, exc: CorralError, sequence: int) -> bytes:
        payload = orjson.dumps(
            {
                "type": "error",
                "code": exc.code,
                "message": exc.message,
                "param": None,
                "sequence_number": sequence,
            }
        )
        return b"event: error\ndata: " + payload + b"\n\n"


class ResponsesMeter(StreamMeter):
    _TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")

    def __init__(self, wire: ResponsesWire) -> None:
        super().__init__()
        self.wire = wire

    def inspect(self, event: bytes) -> bool:
        name = event_name(event)
        if name == b"response.created" or name in self._TERMINAL or name == b"error":
            data = json_object(event_data(event))
            if data is None:
                return True
            if name == b"error":
                self.outcome.error = str_or_none(data.get("message")) or "error event"
                return True
            response = data.get("response")
            if isinstance(response, dict):
                outcome = self.wire.outcome(response)
                self.outcome.response_id = outcome.response_id or self.outcome.response_id
                self.outcome.model = outcome.model or self.outcome.model
                if name != b"response.created":
                    self.outcome.usage = outcome.usage
                    self.outcome.finish_reason = outcome.finish_reason
                    if name == b"response.failed":
                        error = response.get("error")
                        message = error.get("message") if isinstance(error, dict) else None
                        self.outcome.error = str_or_none(message) or "response failed"
            if name in self._TERMINAL:
                self.done = True
        return True
