"""Streamed responses, translated event by event.

Each translator is fed the upstream's SSE bytes, cut anywhere, and returns
the client protocol's SSE bytes (whole events only). ``close()`` flushes at
the end of the upstream body; if the upstream stopped before it finished,
the client's stream ends with a well-formed error event of its own protocol
instead of stopping mid-message. ``outcome`` holds what metering needs,
read from the upstream's own events as Corral's meters read them, so the
record does not depend on what the client's protocol can express.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from corral.errors import CorralError
from corral.protocols.base import anthropic_error, openai_error
from corral.protocols.chat import openai_chat_usage
from corral.protocols.common import (
    anthropic_type_status,
    chat_id,
    chat_usage,
    finish_reason,
    message_id,
    messages_usage,
    stop_reason,
    tool_call_id,
)
from corral.protocols.messages.bodies import tool_input
from corral.protocols.messages.wire import anthropic_usage
from corral.protocols.streams import Translator, read_delta

# -- OpenAI Chat chunks → Anthropic Messages events ----------------------------


@dataclass(slots=True)
class _Call:
    """One tool call being streamed: the Anthropic block it opens once its name is known."""

    id: str
    name: str | None
    arguments: list[str] = field(default_factory=list)
    block: int | None = None  # Anthropic content index, once opened
    closed: bool = False


class ChatToMessagesStream(Translator):
    """OpenAI ``chat.completion.chunk`` events in, Anthropic Messages events out.

    ``message_start`` comes with the first chunk (input tokens 0 until the
    usage chunk reports them), then one content block per run of reasoning
    (thinking), text, or tool call (``input_json_delta`` built from the
    index-keyed argument fragments), then ``message_delta`` with the stop
    reason and the usage, and ``message_stop``, sent at ``[DONE]``.
    """

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self.model = model
        self._id = ""
        self._started = False
        self._blocks = 0  # Anthropic content blocks opened so far
        self._open: str | None = None  # "text", "thinking" or "tool"
        self._calls: dict[int, _Call] = {}
        self._current: _Call | None = None  # the tool call whose block is open
        self._raw_usage: dict[str, Any] | None = None

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        chunk = self._chat_chunk(data, out)
        if chunk is None:
            return
        if not self._started:
            self._start(chunk, out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._raw_usage = usage
            self.outcome.usage = openai_chat_usage(usage)
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._choice(choice, out)

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        source = chunk.get("id")
        self._id = source if isinstance(source, str) else ""
        self.outcome.response_id = self._id or None
        upstream_model = chunk.get("model")
        self.outcome.model = upstream_model if isinstance(upstream_model, str) else None
        usage = chunk.get("usage")
        message: dict[str, Any] = {
            "id": message_id(self._id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": messages_usage(usage if isinstance(usage, dict) else None),
        }
        out.append(_sse(b"message_start", {"type": "message_start", "message": message}))

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        read_delta(
            choice.get("delta"),
            lambda thinking, text: self._text("thinking" if thinking else "text", text, out),
            lambda call, position: self._tool_call(call, position, out),
        )
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and not self._finished:
            self._finished = True
            self.outcome.finish_reason = reason
            self._close_block(out)
            if any(call.block is None for call in self._calls.values()):
                self._fail(out, "the upstream streamed a tool call without a name")

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        if self._open != kind:
            opening = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._open_block(kind, opening, out)
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        self._delta(delta, out)

    def _tool_call(self, fragment: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = fragment.get("index", position)
        index = index if isinstance(index, int) else position
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        name, piece = function.get("name"), function.get("arguments")
        call = self._calls.get(index)
        if call is None:
            given = fragment.get("id")
            call_id = given if isinstance(given, str) and given else tool_call_id(self._id, index)
            call = self._calls[index] = _Call(call_id, None)
        elif call.closed:
            if piece or name:  # its block is closed: Anthropic blocks do not reopen
                self._fail(out, "the upstream interleaved the arguments of several tool calls")
            return
        if isinstance(name, str) and name and call.name is None:
            call.name = name
        if isinstance(piece, str) and piece:
            call.arguments.append(piece)
            if call.block is not None:
                self._delta({"type": "input_json_delta", "partial_json": piece}, out)
        if call.block is None and call.name is not None:
            opening = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            self._open_block("tool", opening, out)
            call.block, self._current = self._blocks - 1, call
            if call.arguments:  # fragments that came before the name
                partial = "".join(call.arguments)
                self._delta({"type": "input_json_delta", "partial_json": partial}, out)

    def _open_block(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close_block(out)
        payload = {"type": "content_block_start", "index": self._blocks, "content_block": block}
        out.append(_sse(b"content_block_start", payload))
        self._open = kind
        self._blocks += 1

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        payload = {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta}
        out.append(_sse(b"content_block_delta", payload))

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is None:
            return
        call, self._current = self._current, None
        if self._open == "tool" and call is not None:
            call.closed = True
            try:
                tool_input("".join(call.arguments), call.name or "")
            except CorralError as exc:  # the client could not run the call: say so
                self._fail(out, exc.message)
        out.append(
            _sse(b"content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})
        )
        self._open = None

    def _end(self, out: list[bytes]) -> None:
        called = bool(self._calls)
        delta = {
            "stop_reason": stop_reason(self.outcome.finish_reason, called_tools=called),
            "stop_sequence": None,
        }
        usage = messages_usage(self._raw_usage)
        out.append(
            _sse(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        out.append(_sse(b"message_stop", {"type": "message_stop"}))
        self.done = True

    def _error_event(self, exc: CorralError) -> bytes:
        return b"event: error\ndata: " + anthropic_error(exc) + b"\n\n"


def _sse(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# -- Anthropic Messages events → OpenAI Chat chunks ----------------------------


@dataclass(slots=True)
class _Tool:
    """A tool_use block being streamed as a Chat tool call."""

    number: int  # its index among the message's tool calls
    sent: bool  # some argument text has gone out


class MessagesToChatStream(Translator):
    """Anthropic Messages events in, OpenAI ``chat.completion.chunk`` events out.

    The first chunk carries the role; text deltas become ``content``, thinking
    deltas ``reasoning_content``, tool_use blocks ``tool_calls`` entries
    (numbered from 0 in order) whose ``arguments`` stream from
    ``input_json_delta``. ``message_delta`` brings the finish chunk;
    ``message_stop`` the usage chunk (when ``include_usage``) and
    ``data: [DONE]``. ``created`` is the Unix time to report.
    """

    def __init__(self, *, model: str, include_usage: bool = True, created: int = 0) -> None:
        super().__init__()
        self.model = model
        self.include_usage = include_usage
        self._head: dict[str, Any] | None = None
        self._tools: dict[int, _Tool] = {}  # by Anthropic content index
        self._raw_usage: dict[str, Any] = {}
        self._created = created

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        event = self._json(data, out)
        kind = event.get("type")
        if kind == "error":
            self._upstream_error(event.get("error"), out)
            return
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:  # ping, and event types added later, carry nothing to send
            return
        if self._head is None:
            self._start(event.get("message") if kind == "message_start" else None, out)
        handler(self, event, out)

    def _start(self, message: Any, out: list[bytes]) -> None:
        message = message if isinstance(message, dict) else {}
        source = message.get("id")
        source = source if isinstance(source, str) else ""
        self.outcome.response_id = source or None
        upstream_model = message.get("model")
        self.outcome.model = upstream_model if isinstance(upstream_model, str) else None
        self._head = {
            "id": chat_id(source),
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
        }
        self._usage(message.get("usage"))
        out.append(self._chunk({"role": "assistant"}))

    def _block_start(self, event: dict[str, Any], out: list[bytes]) -> None:
        block = event.get("content_block")
        index = event.get("index")
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not isinstance(index, int):
            self._fail(out, "the upstream sent a content_block_start without a block")
        elif kind == "text":
            if isinstance(block.get("text"), str) and block["text"]:
                out.append(self._chunk({"content": block["text"]}))
        elif kind == "thinking":
            if isinstance(block.get("thinking"), str) and block["thinking"]:
                out.append(self._chunk({"reasoning_content": block["thinking"]}))
        elif kind == "tool_use":
            number = len(self._tools)
            given = block.get("input")
            arguments = orjson.dumps(given).decode() if isinstance(given, dict) and given else ""
            self._tools[index] = _Tool(number, bool(arguments))
            function = {"name": block.get("name"), "arguments": arguments}
            opening = {"index": number, "id": block.get("id"), "type": "function"}
            opening["function"] = function
            out.append(self._chunk({"tool_calls": [opening]}))
        elif kind != "redacted_thinking":
            self._fail(out, f"the upstream sent a {kind!r} block that Chat cannot carry")

    def _block_delta(self, event: dict[str, Any], out: list[bytes]) -> None:
        delta = event.get("delta")
        kind = delta.get("type") if isinstance(delta, dict) else None
        if not isinstance(delta, dict):
            return
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            out.append(self._chunk({"content": delta["text"]}))
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            out.append(self._chunk({"reasoning_content": delta["thinking"]}))
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            tool = self._tool(event)
            piece = delta["partial_json"]
            if tool is not None and piece:
                tool.sent = True
                fragment = {"index": tool.number, "function": {"arguments": piece}}
                out.append(self._chunk({"tool_calls": [fragment]}))
        # signature_delta and citations_delta annotate text Chat already has

    def _block_stop(self, event: dict[str, Any], out: list[bytes]) -> None:
        tool = self._tool(event)
        if tool is not None and not tool.sent:  # no arguments streamed: say "{}", not ""
            tool.sent = True
            fragment = {"index": tool.number, "function": {"arguments": "{}"}}
            out.append(self._chunk({"tool_calls": [fragment]}))

    def _tool(self, event: dict[str, Any]) -> _Tool | None:
        index = event.get("index")
        return self._tools.get(index) if isinstance(index, int) else None

    def _message_stop(self, event: dict[str, Any], out: list[bytes]) -> None:
        if not self._finished:
            self._finished = True
            out.append(self._chunk({}, "stop"))
        self._end(out)

    def _message_delta(self, event: dict[str, Any], out: list[bytes]) -> None:
        self._usage(event.get("usage"))
        delta = event.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if isinstance(reason, str) and not self._finished:
            self._finished = True
            self.outcome.finish_reason = reason
            out.append(self._chunk({}, finish_reason(reason)))

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._raw_usage.update((k, v) for k, v in usage.items() if v is not None)
            self.outcome.usage = anthropic_usage(usage, self.outcome.usage)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload: dict[str, Any] = {**(self._head or {}), "choices": [choice]}
        if self.include_usage:
            payload["usage"] = None
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _end(self, out: list[bytes]) -> None:
        if self.include_usage:
            payload = {**(self._head or {}), "choices": [], "usage": chat_usage(self._raw_usage)}
            out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        self.done = True

    def _upstream_error(self, error: Any, out: list[bytes]) -> None:
        error = error if isinstance(error, dict) else {}
        message = error.get("message")
        text = message if isinstance(message, str) and message else "upstream error in the stream"
        kind = error.get("type")
        status = anthropic_type_status(kind)
        self._fail(out, text, status=503 if status == 529 else status, code=kind)

    def _error_event(self, exc: CorralError) -> bytes:
        return b"data: " + openai_error(exc) + b"\n\n"


_Handler = Callable[[MessagesToChatStream, dict[str, Any], list[bytes]], None]
_HANDLERS: dict[str, _Handler] = {
    "message_start": lambda stream, event, out: None,  # read by _start
    "content_block_start": MessagesToChatStream._block_start,
    "content_block_delta": MessagesToChatStream._block_delta,
    "content_block_stop": MessagesToChatStream._block_stop,
    "message_delta": MessagesToChatStream._message_delta,
    "message_stop": MessagesToChatStream._message_stop,
}
