"""What every stream translator shares: the event reader, the outcome, ``done``, ``close``.

A translator is fed the upstream's SSE bytes, cut anywhere, and returns the
other protocol's SSE bytes (whole events only). ``close()`` flushes at the end
of the upstream body; if the upstream stopped before it finished, the stream
ends with a well-formed error event instead of stopping mid-message.
``outcome`` holds what metering needs, read from the upstream's own events.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from corral.errors import CorralError
from corral.protocols.base import Outcome, Usage, upstream_error
from corral.protocols.common import openai_type_status
from corral.protocols.sse import EventReader


class Abort(Exception):
    """Raised once an error event is out: nothing more goes to the client."""


def read_delta(
    delta: Any,
    on_text: Callable[[bool, str], None],
    on_call: Callable[[dict[str, Any], int], None],
) -> None:
    """Hand a Chat chunk's delta on in order: reasoning text (``on_text(True, …)``), visible
    text and refusals (``on_text(False, …)``), then each tool-call fragment and its position."""
    if not isinstance(delta, dict):
        return
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        on_text(True, reasoning)
    for key in ("content", "refusal"):
        text = delta.get(key)
        if isinstance(text, str) and text:
            on_text(False, text)
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for position, call in enumerate(calls):
            if isinstance(call, dict):
                on_call(call, position)


class Translator(ABC):
    """What both directions share: the event reader, the outcome, ``done`` and ``close``."""

    def __init__(self) -> None:
        self.outcome = Outcome()
        self.done = False
        """The client's stream is over: its terminal event or an error event is out."""
        self._reader = EventReader()
        self._finished = False  # the upstream said why it stopped

    @property
    def usage(self) -> Usage | None:
        """The upstream's token usage in Corral's columns, once it has been reported."""
        return self.outcome.usage

    def feed(self, chunk: bytes) -> bytes:
        """Translate the events ``chunk`` completes; a partial event waits for the rest."""
        if self.done:
            return b""
        out: list[bytes] = []
        with contextlib.suppress(Abort):
            for name, data in self._reader.feed(chunk):
                self._event(name, data, out)
                if self.done:
                    break
        return b"".join(out)

    def close(self) -> bytes:
        """Flush at the end of the upstream body, ending the client's stream well-formed.

        A stream whose upstream said why it stopped ends normally even without
        its terminal event; any other ends with an error event.
        """
        if self.done:
            return b""
        out: list[bytes] = []
        with contextlib.suppress(Abort):
            for name, data in self._reader.close():
                self._event(name, data, out)
                if self.done:
                    break
            if not self.done:
                if self._finished:
                    self._end(out)
                else:
                    self._fail(out, "the upstream stream ended before the response was complete")
        return b"".join(out)

    def _chat_chunk(self, data: bytes, out: list[bytes]) -> dict[str, Any] | None:
        """An internal-form chunk, for the translators fed internal chunks; None when
        ``data`` was ``[DONE]`` (the stream ends well once a finish reason was seen). An
        error chunk ends the stream with this protocol's error event, its message kept."""
        if data == b"[DONE]":
            if self._finished:
                self._end(out)
            else:
                self._fail(out, "the upstream stream ended without a finish_reason")
            return None
        chunk = self._json(data, out)
        error = chunk.get("error")
        if error is not None:
            detail = error if isinstance(error, dict) else {"message": str(error)}
            message = detail.get("message")
            text = message if isinstance(message, str) and message else "upstream error"
            kind = detail.get("code") or detail.get("type")
            self._fail(out, text, status=openai_type_status(detail.get("type")), code=kind)
        return chunk

    def _json(self, data: bytes, out: list[bytes]) -> dict[str, Any]:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            self._fail(out, "the upstream sent a stream event that is not a JSON object")
        return value

    def _fail(
        self, out: list[bytes], message: str, *, status: int = 502, code: Any = None
    ) -> NoReturn:
        """Send the client an error event and stop translating."""
        self.outcome.error = message
        exc = upstream_error(message, status=status, code=code if isinstance(code, str) else None)
        out.append(self._error_event(exc))
        self.done = True
        raise Abort

    @abstractmethod
    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        """Translate one upstream event, appending client events to ``out``."""

    @abstractmethod
    def _end(self, out: list[bytes]) -> None:
        """Append the client protocol's closing events."""

    @abstractmethod
    def _error_event(self, exc: CorralError) -> bytes:
        """An error event in the client's protocol."""
