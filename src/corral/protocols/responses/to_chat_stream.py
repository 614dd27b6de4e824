"""OpenAI Responses stream events in, internal (Chat Completions) chunks out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from corral.errors import CorralError, UpstreamError
from corral.protocols.base import openai_error, str_or_none
from corral.protocols.common import chat_id, openai_type_status, tool_call_id
from corral.protocols.responses.from_chat import chat_usage, finish_of
from corral.protocols.responses.wire import openai_responses_usage
from corral.protocols.streams import Translator

_ITEMS = frozenset({"message", "reasoning", "function_call"})


@dataclass(slots=True)
class _Call:
    """A function_call item being streamed as a Chat tool call."""

    number: int  # its index among the response's tool calls
    sent: list[str] = field(default_factory=list)  # argument text gone out


class ResponsesToChatStream(Translator):
    """Responses events in, ``chat.completion.chunk`` events out.

    The first event brings the role chunk; ``output_text`` deltas become ``content``,
    refusal deltas ``refusal``, reasoning text and summary deltas ``reasoning_content``
    (parts and items apart by a blank line, as in the whole response), each
    function_call item a tool call (id and name first, then its argument deltas).
    ``response.completed`` / ``response.incomplete`` bring the finish chunk, the usage
    chunk and ``[DONE]``; ``response.failed`` and ``error`` an error chunk. Text a
    ``.done`` event holds beyond its deltas is sent then, so a server that streams no
    deltas still gives the whole answer. ``outcome`` is read as the Responses meter reads
    the upstream's events.
    """

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self.model = model
        self._source = ""
        self._head: dict[str, Any] | None = None
        self._calls: dict[int, _Call] = {}  # by output_index
        self._sent: dict[tuple[str, int, int], list[str]] = {}  # (kind, item, part) → text
        self._reasoning_kind: dict[int, str] = {}  # which of an item's texts is streamed
        self._last_reasoning: tuple[str, int, int] | None = None
        self._raw_usage: dict[str, Any] | None = None

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        if data == b"[DONE]":  # not Responses', but some proxies add it: the end is read
            return  # from response.completed, or close() reports its absence
        event = self._json(data, out)
        kind = event.get("type")
        kind = kind if isinstance(kind, str) else name.decode(errors="replace")
        if kind == "error":
            error = event.get("error")
            self._upstream_error(error if isinstance(error, dict) else event, out)
        handler = _HANDLERS.get(kind)
        if handler is None:  # in_progress, *.added/done of parts, and later additions
            return
        if self._head is None:
            self._start(event.get("response"), out)
        handler(self, event, out)

    def _start(self, response: Any, out: list[bytes]) -> None:
        response = response if isinstance(response, dict) else {}
        source = response.get("id")
        self._source = source if isinstance(source, str) else ""
        self.outcome.response_id = self._source or None
        self.outcome.model = str_or_none(response.get("model"))
        created = response.get("created_at")
        self._head = {
            "id": chat_id(self._source),
            "object": "chat.completion.chunk",
            "created": created if isinstance(created, int) else 0,
            "model": self.model,
        }
        out.append(self._chunk({"role": "assistant"}))

    # -- output items ------------------------------------------------------------

    def _item_added(self, event: dict[str, Any], out: list[bytes]) -> None:
        item, index = event.get("item"), event.get("output_index")
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(index, int):
            self._fail(out, "the upstream sent an output_item.added event without an item")
        if kind not in _ITEMS:
            self._fail(out, f"the upstream sent a {kind!r} output item that Chat cannot carry")
        if kind != "function_call":
            return
        name, arguments = item.get("name"), item.get("arguments")
        if not isinstance(name, str) or not name:
            self._fail(out, "the upstream streamed a function call without a name")
        call = self._calls[index] = _Call(len(self._calls))
        given = item.get("call_id")
        call_id = (
            given if isinstance(given, str) and given else tool_call_id(self._source, call.number)
        )
        text = arguments if isinstance(arguments, str) else ""
        if text:
            call.sent.append(text)
        function = {"name": name, "arguments": text}
        opening = {"index": call.number, "id": call_id, "type": "function", "function": function}
        out.append(self._chunk({"tool_calls": [opening]}))

    def _item_done(self, event: dict[str, Any], out: list[bytes]) -> None:
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            self._arguments_done({**event, "arguments": item.get("arguments")}, out)

    def _arguments(self, event: dict[str, Any], out: list[bytes]) -> None:
        call = self._call(event, out)
        piece = event.get("delta")
        if isinstance(piece, str) and piece:
            call.sent.append(piece)
            fragment = {"index": call.number, "function": {"arguments": piece}}
            out.append(self._chunk({"tool_calls": [fragment]}))

    def _arguments_done(self, event: dict[str, Any], out: list[bytes]) -> None:
        call = self._call(event, out)
        rest = _rest(call.sent, event.get("arguments"))
        if rest:
            self._arguments({**event, "delta": rest}, out)

    def _call(self, event: dict[str, Any], out: list[bytes]) -> _Call:
        index = event.get("output_index")
        call = self._calls.get(index) if isinstance(index, int) else None
        if call is None:
            self._fail(out, "the upstream streamed arguments of a function call it never opened")
        return call

    # -- text ----------------------------------------------------------------------

    def _text(self, kind: str, event: dict[str, Any], out: list[bytes]) -> None:
        """A text or refusal delta; a ``.done`` event sends what its deltas left out."""
        key = (kind, _int(event.get("output_index")), _int(event.get("content_index")))
        piece = event.get("delta")
        if "delta" not in event:
            piece = _rest(self._sent.get(key, []), event.get(kind))
        if isinstance(piece, str) and piece:
            self._sent.setdefault(key, []).append(piece)
            out.append(self._chunk({"refusal" if kind == "refusal" else "content": piece}))

    def _reasoning(self, kind: str, part: str, event: dict[str, Any], out: list[bytes]) -> None:
        """A reasoning delta: ``kind`` text or summary, in parts numbered by ``part``.

        An item's reasoning text wins over its summary when both stream (the whole
        response reads the same way); parts are kept apart by a blank line.
        """
        item = _int(event.get("output_index"))
        piece = event.get("delta")
        if self._reasoning_kind.setdefault(item, kind) != kind:
            return
        if not isinstance(piece, str) or not piece:
            return
        key = (kind, item, _int(event.get(part)))
        if self._last_reasoning not in (None, key):
            piece = "\n\n" + piece
        self._last_reasoning = key
        out.append(self._chunk({"reasoning_content": piece}))

    # -- the end -------------------------------------------------------------------

    def _completed(self, event: dict[str, Any], out: list[bytes]) -> None:
        response = self._terminal(event)
        try:
            reason = finish_of(response)
        except UpstreamError as exc:
            self._fail(out, exc.message)
        if reason == "stop" and self._calls:
            reason = "tool_calls"
        self._finished = True
        out.append(self._chunk({}, reason))
        self._end(out)

    def _failed(self, event: dict[str, Any], out: list[bytes]) -> None:
        response = self._terminal(event)
        error = response.get("error")
        self._upstream_error(error if isinstance(error, dict) else {}, out)

    def _terminal(self, event: dict[str, Any]) -> dict[str, Any]:
        """The final response object, with what metering needs read from it."""
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._raw_usage = usage
            self.outcome.usage = openai_responses_usage(usage)
        status = str_or_none(response.get("status"))
        details = response.get("incomplete_details")
        if isinstance(details, dict) and details.get("reason"):
            status = str_or_none(details.get("reason"))
        self.outcome.finish_reason = status
        self.outcome.model = str_or_none(response.get("model")) or self.outcome.model
        return response

    def _end(self, out: list[bytes]) -> None:
        payload = {**(self._head or {}), "choices": [], "usage": chat_usage(self._raw_usage)}
        out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        self.done = True

    def _upstream_error(self, error: dict[str, Any], out: list[bytes]) -> None:
        message = error.get("message")
        text = message if isinstance(message, str) and message else "upstream error in the stream"
        code = error.get("code") or error.get("type")
        self._fail(out, text, status=openai_type_status(code), code=code)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload = {**(self._head or {}), "choices": [choice], "usage": None}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _error_event(self, exc: CorralError) -> bytes:
        return b"data: " + openai_error(exc) + b"\n\n"


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _rest(sent: list[str], full: Any) -> str:
    """What of ``full`` has not gone out yet (nothing when it does not extend ``sent``)."""
    if not isinstance(full, str):
        return ""
    done = "".join(sent)
    return full[len(done) :] if len(full) > len(done) and full.startswith(done) else ""


_Handler = Callable[[ResponsesToChatStream, dict[str, Any], list[bytes]], None]


_HANDLERS: dict[str, _Handler] = {
    "response.created": lambda stream, event, out: None,  # read by _start
    "response.output_item.added": ResponsesToChatStream._item_added,
    "response.output_item.done": ResponsesToChatStream._item_done,
    "response.output_text.delta": lambda s, e, o: s._text("text", e, o),
    "response.output_text.done": lambda s, e, o: s._text("text", e, o),
    "response.refusal.delta": lambda s, e, o: s._text("refusal", e, o),
    "response.refusal.done": lambda s, e, o: s._text("refusal", e, o),
    "response.reasoning_text.delta": lambda s, e, o: s._reasoning("text", "content_index", e, o),
    "response.reasoning_summary_text.delta": (
        lambda s, e, o: s._reasoning("summary", "summary_index", e, o)
    ),
    "response.function_call_arguments.delta": ResponsesToChatStream._arguments,
    "response.function_call_arguments.done": ResponsesToChatStream._arguments_done,
    "response.completed": ResponsesToChatStream._completed,
    "response.incomplete": ResponsesToChatStream._completed,
    "response.failed": ResponsesToChatStream._failed,
}
