"""OpenAI Chat chunks in, OpenAI Responses stream events out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from corral.errors import CorralError
from corral.protocols.chat import openai_chat_usage
from corral.protocols.common import tool_call_id
from corral.protocols.responses.chat import (
    arguments_text,
    call_item,
    finish,
    message_item,
    reasoning_item,
    response_object,
    responses_usage,
)
from corral.protocols.streams import Translator, read_delta


@dataclass(slots=True)
class _Item:
    """One output item being streamed: a reasoning run, a message, or a function call."""

    kind: str  # "reasoning", "message" or "function_call"
    index: int  # output_index
    id: str = ""
    name: str | None = None
    call_id: str = ""
    parts: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None  # the finished item, once closed


class ChatToResponsesStream(Translator):
    """OpenAI ``chat.completion.chunk`` events in, Responses events out.

    The first chunk brings ``response.created`` and ``response.in_progress``;
    each run of reasoning or text is one output item (reasoning_text or
    output_text deltas), each tool call one function_call item whose
    arguments stream as they come (calls may interleave: their events carry
    their own ``output_index``). Items close at the finish chunk;
    ``response.completed`` (or ``response.incomplete`` after a ``length``
    stop) follows at ``[DONE]`` with the usage. ``created`` is the Unix time
    to report.
    """

    def __init__(self, *, model: str, created: int = 0) -> None:
        super().__init__()
        self.model = model
        self._created = created
        self._source = ""
        self._response: dict[str, Any] | None = None
        self._items: list[_Item] = []
        self._text: _Item | None = None  # the open reasoning or message item
        self._calls: dict[int, _Item] = {}  # by Chat tool-call index
        self._raw_usage: dict[str, Any] | None = None
        self._seq = 0

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        chunk = self._chat_chunk(data, out)
        if chunk is None:
            return
        if self._response is None:
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
        source = chunk.get("id")
        self._source = source if isinstance(source, str) else ""
        self.outcome.response_id = self._source or None
        upstream_model = chunk.get("model")
        self.outcome.model = upstream_model if isinstance(upstream_model, str) else None
        self._response = response_object(
            self._source, model=self.model, created=self._created, status="in_progress", output=[]
        )
        self._emit("response.created", {"response": self._response}, out)
        self._emit("response.in_progress", {"response": self._response}, out)

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        if self._finished:
            return
        read_delta(
            choice.get("delta"),
            lambda thinking, text: self._run("reasoning" if thinking else "message", text, out),
            lambda call, position: self._tool_call(call, position, out),
        )
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self._finished = True
            self.outcome.finish_reason = reason
            if any(call.name is None for call in self._calls.values()):
                self._fail(out, "the upstream streamed a tool call without a name")
            for item in self._items:
                self._close(item, out)

    # -- items -----------------------------------------------------------------

    def _run(self, kind: str, text: str, out: list[bytes]) -> None:
        item = self._text
        if item is None or item.kind != kind:
            if item is not None:
                self._close(item, out)
            item = self._text = self._open(kind, out)
        item.parts.append(text)
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        if kind == "message":
            self._emit("response.output_text.delta", {**where, "delta": text, "logprobs": []}, out)
        else:
            self._emit("response.reasoning_text.delta", {**where, "delta": text}, out)

    def _open(self, kind: str, out: list[bytes]) -> _Item:
        item = _Item(kind, len(self._items))
        self._items.append(item)
        tag = f"{self._source}:{item.index}"
        if kind == "message":
            opening = message_item(tag, "", status="in_progress")
            item.id = opening["id"]
            self._added(item, opening, out)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._emit("response.content_part.added", {**self._where(item), "part": part}, out)
        else:
            opening = reasoning_item(tag, "")
            opening["content"] = []
            item.id = opening["id"]
            self._added(item, opening, out)
        return item

    def _added(self, item: _Item, opening: dict[str, Any], out: list[bytes]) -> None:
        payload = {"output_index": item.index, "item": opening}
        self._emit("response.output_item.added", payload, out)

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0}

    def _tool_call(self, fragment: dict[str, Any], position: int, out: list[bytes]) -> None:
        index = fragment.get("index", position)
        index = index if isinstance(index, int) else position
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        name, piece = function.get("name"), function.get("arguments")
        call = self._calls.get(index)
        if call is None:
            if self._text is not None:
                self._close(self._text, out)
            given = fragment.get("id")
            call_id = (
                given if isinstance(given, str) and given else tool_call_id(self._source, index)
            )
            call = self._calls[index] = _Item("function_call", len(self._items), call_id=call_id)
            self._items.append(call)
        if isinstance(piece, str) and piece:
            call.parts.append(piece)
            if call.name is not None:
                self._arguments(call, piece, out)
        if isinstance(name, str) and name and call.name is None:
            call.name = name
            opening = call_item(call.call_id, name, "", status="in_progress")
            call.id = opening["id"]
            self._added(call, opening, out)
            if call.parts:  # fragments that came before the name
                self._arguments(call, "".join(call.parts), out)

    def _arguments(self, call: _Item, piece: str, out: list[bytes]) -> None:
        payload = {"item_id": call.id, "output_index": call.index, "delta": piece}
        self._emit("response.function_call_arguments.delta", payload, out)

    def _close(self, item: _Item, out: list[bytes]) -> None:
        if item.done is not None:
            return
        if item is self._text:
            self._text = None
        text = "".join(item.parts)
        tag = f"{self._source}:{item.index}"
        where = self._where(item)
        if item.kind == "message":
            item.done = message_item(tag, text)
            part = item.done["content"][0]
            self._emit("response.output_text.done", {**where, "text": text, "logprobs": []}, out)
            self._emit("response.content_part.done", {**where, "part": part}, out)
        elif item.kind == "reasoning":
            item.done = reasoning_item(tag, text)
            self._emit("response.reasoning_text.done", {**where, "text": text}, out)
        else:
            arguments = arguments_text(text)
            item.done = call_item(item.call_id, item.name or "", arguments)
            payload = {"item_id": item.id, "output_index": item.index, "arguments": arguments}
            payload["name"] = item.name
            self._emit("response.function_call_arguments.done", payload, out)
        payload = {"output_index": item.index, "item": item.done}
        self._emit("response.output_item.done", payload, out)

    # -- the end ---------------------------------------------------------------

    def _end(self, out: list[bytes]) -> None:
        response = self._response or {}
        response["output"] = [item.done for item in self._items if item.done is not None]
        finish(response, self.outcome.finish_reason)
        response["usage"] = responses_usage(self._raw_usage)
        self._emit(f"response.{response['status']}", {"response": response}, out)
        self.done = True

    def _error_event(self, exc: CorralError) -> bytes:
        out: list[bytes] = []
        self._emit("error", {"code": exc.code, "message": exc.message, "param": None}, out)
        if self._response is not None:
            response = self._response
            response["status"] = "failed"
            response["output"] = [item.done for item in self._items if item.done is not None]
            # server_error is the one code in Responses' error enum that fits any failure.
            response["error"] = {"code": "server_error", "message": exc.message}
            self._emit("response.failed", {"response": response}, out)
        return b"".join(out)

    def _emit(self, kind: str, payload: dict[str, Any], out: list[bytes]) -> None:
        data = orjson.dumps({"type": kind, **payload, "sequence_number": self._seq})
        self._seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
