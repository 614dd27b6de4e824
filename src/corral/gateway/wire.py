"""The three wire protocols, reduced to what metering needs.

For each protocol: how to read the fields Corral acts on from a request, how
to read usage, ids and the finish reason from a response, and a stream meter
that walks SSE events as they pass and parses only the few events that carry
usage. Token columns come out non-overlapping: ``input`` excludes cache reads
and writes, ``output`` excludes reasoning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson

from corral.errors import CorralError, InvalidRequest
from corral.gateway.http import anthropic_error, openai_error


@dataclass(slots=True)
class Usage:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_chat_usage(u: dict[str, Any]) -> Usage:
    cached = _int((u.get("prompt_tokens_details") or {}).get("cached_tokens"))
    reasoning = _int((u.get("completion_tokens_details") or {}).get("reasoning_tokens"))
    return Usage(
        input=max(0, _int(u.get("prompt_tokens")) - cached),
        cached_input=cached,
        output=max(0, _int(u.get("completion_tokens")) - reasoning),
        reasoning=reasoning,
    )


def openai_responses_usage(u: dict[str, Any]) -> Usage:
    cached = _int((u.get("input_tokens_details") or {}).get("cached_tokens"))
    reasoning = _int((u.get("output_tokens_details") or {}).get("reasoning_tokens"))
    return Usage(
        input=max(0, _int(u.get("input_tokens")) - cached),
        cached_input=cached,
        output=max(0, _int(u.get("output_tokens")) - reasoning),
        reasoning=reasoning,
    )


def anthropic_usage(u: dict[str, Any], into: Usage | None = None) -> Usage:
    """Anthropic already reports non-overlapping input columns; later events update earlier."""
    usage = into or Usage()
    if u.get("input_tokens") is not None:
        usage.input = _int(u.get("input_tokens"))
    if u.get("cache_read_input_tokens") is not None:
        usage.cached_input = _int(u.get("cache_read_input_tokens"))
    if u.get("cache_creation_input_tokens") is not None:
        usage.cache_write = _int(u.get("cache_creation_input_tokens"))
    if u.get("output_tokens") is not None:
        usage.output = _int(u.get("output_tokens"))
    return usage


@dataclass(slots=True)
class Outcome:
    """What a response said about itself."""

    usage: Usage | None = None
    response_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    error: str | None = None  # an error event inside a 200 stream


class Wire(ABC):
    """One protocol. Subclasses fill in the differences."""

    name: str = ""
    family: str = "openai"  # error shape: "openai" or "anthropic"
    path: str = ""

    def error_body(self, exc: CorralError) -> bytes:
        return anthropic_error(exc) if self.family == "anthropic" else openai_error(exc)

    @abstractmethod
    def max_tokens(self, body: dict[str, Any]) -> int | None:
        """The request's cap on output tokens, if it sets one."""

    def set_max_tokens(self, body: dict[str, Any], value: int, provider_kind: str) -> None:
        """Cap the request's output at ``value`` tokens, in the field this protocol uses."""
        body[self.max_field] = value

    max_field = "max_tokens"

    @abstractmethod
    def outcome(self, body: dict[str, Any]) -> Outcome:
        """Usage, ids and finish reason of a complete (non-streamed) response."""

    @abstractmethod
    def meter(self, strip_usage: bool) -> StreamMeter:
        """A fresh meter for one streamed response."""

    def check(self, body: dict[str, Any]) -> tuple[str, bool]:
        """Validate what Corral reads; return ``(model, stream)``."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' is required: a model name from GET /v1/models")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be true or false")
        limit = self.max_tokens(body)
        if limit is not None and limit < 0:
            raise InvalidRequest("the maximum output tokens must not be negative")
        return model, stream


def max_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"'{name}' must be an integer")
        return value
    return None


class ChatWire(Wire):
    name = "chat"
    path = "/v1/chat/completions"

    def set_max_tokens(self, body: dict[str, Any], value: int, provider_kind: str) -> None:
        """Rewrite whichever cap the request carries; add the one the provider reads.

        OpenAI's reasoning models refuse ``max_tokens``; servers that speak only the
        older chat API (``openai-compatible``: vLLM, llama.cpp) read ``max_tokens``.
        """
        present = [f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None]
        if not present:
            present = [
                "max_tokens" if provider_kind == "openai-compatible" else "max_completion_tokens"
            ]
        for name in present:
            body[name] = value

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return max_field(body, "max_completion_tokens", "max_tokens")

    def check(self, body: dict[str, Any]) -> tuple[str, bool]:
        model, stream = super().check(body)
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("'messages' is required: a list of chat messages")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object")
        return model, stream

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = body.get("usage")
        choices = body.get("choices") or []
        finish = (
            choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        )
        return Outcome(
            usage=openai_chat_usage(usage) if isinstance(usage, dict) else None,
            response_id=_str(body.get("id")),
            model=_str(body.get("model")),
            finish_reason=_str(finish),
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return ChatMeter(strip_usage)


class ResponsesWire(Wire):
    name = "responses"
    path = "/v1/responses"
    max_field = "max_output_tokens"

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return max_field(body, "max_output_tokens")

    def check(self, body: dict[str, Any]) -> tuple[str, bool]:
        model, stream = super().check(body)
        value = body.get("input")
        if value is not None and not isinstance(value, str | list):
            raise InvalidRequest("'input' must be a string or a list of input items")
        return model, stream

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = body.get("usage")
        status = _str(body.get("status"))
        incomplete = body.get("incomplete_details")
        if isinstance(incomplete, dict) and incomplete.get("reason"):
            status = _str(incomplete.get("reason"))
        return Outcome(
            usage=openai_responses_usage(usage) if isinstance(usage, dict) else None,
            response_id=_str(body.get("id")),
            model=_str(body.get("model")),
            finish_reason=status,
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return ResponsesMeter(self)


class MessagesWire(Wire):
    name = "messages"
    family = "anthropic"
    path = "/v1/messages"

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return max_field(body, "max_tokens")

    def check(self, body: dict[str, Any]) -> tuple[str, bool]:
        model, stream = self.check_count(body)
        if body.get("max_tokens") is None:
            raise InvalidRequest("max_tokens: Field required")
        return model, stream

    def check_count(self, body: dict[str, Any]) -> tuple[str, bool]:
        """What ``/v1/messages/count_tokens`` needs: a model and messages, no max_tokens."""
        model, stream = super().check(body)
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("messages: Field required (a list of messages)")
        return model, stream

    def outcome(self, body: dict[str, Any]) -> Outcome:
        usage = body.get("usage")
        return Outcome(
            usage=anthropic_usage(usage) if isinstance(usage, dict) else None,
            response_id=_str(body.get("id")),
            model=_str(body.get("model")),
            finish_reason=_str(body.get("stop_reason")),
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return MessagesMeter()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- streams -------------------------------------------------------------------


class StreamMeter(ABC):
    """Walks an SSE stream event by event, passing bytes through unchanged.

    ``feed`` returns the bytes to forward (whole events only; a partial event
    waits for its end) and whether the terminal event is among them, so the
    caller can make the record durable before the client sees the last byte.
    """

    def __init__(self) -> None:
        self.outcome = Outcome()
        self.done = False
        self.events = 0
        self._buf = b""
        self._sep = b"\n\n"

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        buf = self._buf + chunk if self._buf else chunk
        if self.events == 0 and b"\r\n" in buf:
            self._sep = b"\r\n\r\n"
        sep = self._sep
        end = buf.rfind(sep)
        if end < 0:
            self._buf = buf
            return b"", False
        cut = end + len(sep)
        complete, self._buf = buf[:cut], buf[cut:]
        was_done = self.done
        events = complete.split(sep)[:-1]
        keep = [self.inspect(event) for event in events]
        self.events += len(events)
        out = (
            complete
            if all(keep)
            else b"".join(e + sep for e, k in zip(events, keep, strict=True) if k)
        )
        return out, self.done and not was_done

    def tail(self) -> bytes:
        """Whatever is left when the upstream closes (an event with no final blank line)."""
        rest, self._buf = self._buf, b""
        if rest.strip():
            self.inspect(rest.rstrip(b"\r\n"))
        return rest

    @abstractmethod
    def inspect(self, event: bytes) -> bool:
        """Read what metering needs from one event; return False to drop it."""


def _data(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line (Corral's upstreams send one per event)."""
    start = event.find(b"data:")
    if start < 0:
        return None
    end = event.find(b"\n", start)
    payload = event[start + 5 : end if end >= 0 else len(event)]
    return payload.strip()


def _event_name(event: bytes) -> bytes:
    if event.startswith(b"event:"):
        end = event.find(b"\n")
        return event[6 : end if end >= 0 else len(event)].strip()
    return b""


def _loads(payload: bytes | None) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class ChatMeter(StreamMeter):
    def __init__(self, strip_usage: bool) -> None:
        super().__init__()
        self.strip_usage = strip_usage

    def inspect(self, event: bytes) -> bool:
        payload = _data(event)
        if payload == b"[DONE]":
            self.done = True
            return True
        first = self.outcome.response_id is None
        has_usage = b'"usage"' in event and b'"usage":null' not in event
        has_finish = b'"finish_reason":"' in event or b'"finish_reason": "' in event
        if not (first or has_usage or has_finish or b'"error"' in event):
            return True
        data = _loads(payload)
        if data is None:
            return True
        if first:
            self.outcome.response_id = _str(data.get("id"))
            self.outcome.model = _str(data.get("model"))
        if isinstance(data.get("error"), dict):
            self.outcome.error = _str(data["error"].get("message")) or "error event"
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                self.outcome.finish_reason = reason
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.outcome.usage = openai_chat_usage(usage)
            if self.strip_usage and not choices:
                return False
        return True


class ResponsesMeter(StreamMeter):
    _TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")

    def __init__(self, wire: ResponsesWire) -> None:
        super().__init__()
        self.wire = wire

    def inspect(self, event: bytes) -> bool:
        name = _event_name(event)
        if name == b"response.created" or name in self._TERMINAL or name == b"error":
            data = _loads(_data(event))
            if data is None:
                return True
            if name == b"error":
                self.outcome.error = _str(data.get("message")) or "error event"
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
                        self.outcome.error = _str(message) or "response failed"
            if name in self._TERMINAL:
                self.done = True
        return True


class MessagesMeter(StreamMeter):
    def inspect(self, event: bytes) -> bool:
        name = _event_name(event)
        if name == b"message_stop":
            self.done = True
            return True
        if name not in (b"message_start", b"message_delta", b"error"):
            return True
        data = _loads(_data(event))
        if data is None:
            return True
        if name == b"error":
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.outcome.error = _str(message) or "error event"
            return True
        if name == b"message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.outcome.response_id = _str(message.get("id"))
                self.outcome.model = _str(message.get("model"))
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


CHAT = ChatWire()
RESPONSES = ResponsesWire()
MESSAGES = MessagesWire()
