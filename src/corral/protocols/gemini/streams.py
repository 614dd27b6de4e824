"""Gemini streams (``alt=sse``) to and from internal (Chat) chunks, event by event.

A Gemini stream is a run of ``GenerateContentResponse`` events, each with the new parts
(text deltas; a function call arrives whole), the cumulative ``usageMetadata``, and on the
last a ``finishReason``; it has no terminal event. Google separates events with
``\\r\\n\\r\\n``. An error inside a 200 stream is a bare JSON object ``{"error": {...}}``
(no ``data:`` field), which both google-genai SDKs raise on; a ``data:`` error is read too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from corral.errors import CorralError, UpstreamError
from corral.protocols.base import openai_error
from corral.protocols.chat import openai_chat_usage
from corral.protocols.common import chat_id
from corral.protocols.gemini.bodies import (
    chat_finish,
    chat_tool_call,
    chat_usage,
    gemini_finish,
    usage_metadata,
)
from corral.protocols.gemini.wire import (
    first_candidate,
    gemini_usage,
    name_status,
    stream_error,
    stream_payload,
)
from corral.protocols.messages.bodies import tool_input
from corral.protocols.sse import Event, EventReader
from corral.protocols.streams import Translator, read_delta

# -- Gemini events → internal chunks ----------------------------------------------


class GoogleEventReader(EventReader):
    """Google's stream events, and the bare JSON error object (no ``data:`` field, maybe
    over several lines) Google ends a stream with when it fails midway."""

    def parse(self, block: bytes) -> Event | None:
        payload = stream_payload(block)
        return (b"", payload) if payload else None


class GeminiToChatStream(Translator):
    """Gemini events in, ``chat.completion.chunk`` events out: a role chunk first, a delta
    per part, the finish chunk, the usage chunk and ``[DONE]`` once a candidate says why
    it stopped."""

    def __init__(self, *, model: str, created: int = 0) -> None:
        super().__init__()
        self._reader = GoogleEventReader()
        self.model = model
        self.created = created
        self._source = ""
        self._started = False
        self._calls = 0
        self._usage: dict[str, Any] | None = None

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        event = self._json(data, out)
        error = event.get("error")
        if error is not None:
            detail = error if isinstance(error, dict) else {"message": str(error)}
            message = detail.get("message")
            self._fail(
                out,
                message if isinstance(message, str) and message else "upstream error event",
                status=name_status(detail.get("code"), detail.get("status")),
                code=detail.get("status"),
            )
        if not self._started:
            self._start(event, out)
        usage = event.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage = usage
            self.outcome.usage = gemini_usage(usage)
        candidate = first_candidate(event)
        reason = candidate.get("finishReason") if candidate else None
        if candidate is not None:
            self._parts(candidate.get("content"), out)
        elif isinstance(event.get("promptFeedback"), dict) and event["promptFeedback"].get(
            "blockReason"
        ):
            reason = "SAFETY"  # the prompt was blocked: no candidate will come
        if isinstance(reason, str):
            self._finished = True
            self.outcome.finish_reason = reason
            finish = chat_finish(reason, called_tools=self._calls > 0)
            out.append(self._chunk({}, finish))
            self._end(out)

    def _start(self, event: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        source = event.get("responseId")
        self._source = source if isinstance(source, str) else ""
        self.outcome.response_id = self._source or None
        version = event.get("modelVersion")
        self.outcome.model = version if isinstance(version, str) else None
        out.append(self._chunk({"role": "assistant", "content": ""}, None))

    def _parts(self, content: Any, out: list[bytes]) -> None:
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            call = part.get("functionCall")
            if isinstance(call, dict):
                try:
                    chat_call = chat_tool_call(call, self._source, self._calls)
                except UpstreamError as exc:
                    self._fail(out, exc.message)
                out.append(self._chunk({"tool_calls": [{"index": self._calls, **chat_call}]}, None))
                self._calls += 1
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                out.append(self._chunk({key: part["text"]}, None))

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        return _chat_event(
            {
                "id": chat_id(self._source),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def _end(self, out: list[bytes]) -> None:
        usage = {
            "id": chat_id(self._source),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": chat_usage(self._usage),
        }
        out.append(_chat_event(usage))
        out.append(b"data: [DONE]\n\n")
        self.done = True

    def _error_event(self, exc: CorralError) -> bytes:
        return b"data: " + openai_error(exc) + b"\n\n"


def _chat_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# -- internal chunks → Gemini events ----------------------------------------------


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class ChatToGeminiStream(Translator):
    """``chat.completion.chunk`` events in, Gemini events out: one event per chunk with
    text; tool-call fragments are buffered and each call goes out whole in the last event,
    with the ``finishReason`` and the ``usageMetadata`` (sent at ``[DONE]``)."""

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self.model = model
        self._id = ""
        self._started = False
        self._calls: dict[int, _Call] = {}
        self._reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def _event(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        chunk = self._chat_chunk(data, out)
        if chunk is None:
            return
        if not self._started:
            self._started = True
            source = chunk.get("id")
            self._id = source if isinstance(source, str) else ""
            self.outcome.response_id = self._id or None
            upstream = chunk.get("model")
            self.outcome.model = upstream if isinstance(upstream, str) else None
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            self.outcome.usage = openai_chat_usage(usage)
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(choice, dict):
            self._choice(choice, out)

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        parts: list[dict[str, Any]] = []
        read_delta(
            choice.get("delta"),
            lambda thinking, text: parts.append(
                {"text": text, "thought": True} if thinking else {"text": text}
            ),
            self._fragment,
        )
        if parts:
            out.append(self._gemini_event(parts))
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and not self._finished:
            self._finished = True
            self._reason = reason
            self.outcome.finish_reason = reason

    def _fragment(self, call: dict[str, Any], position: int) -> None:
        index = call.get("index", position)
        entry = self._calls.setdefault(index if isinstance(index, int) else position, _Call())
        if isinstance(call.get("id"), str) and call["id"]:
            entry.id = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"]:
                entry.name = function["name"]
            if isinstance(function.get("arguments"), str):
                entry.arguments.append(function["arguments"])

    def _end(self, out: list[bytes]) -> None:
        parts: list[dict[str, Any]] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.name is None:
                self._fail(out, "the upstream streamed a tool call without a name")
            try:
                args = tool_input("".join(call.arguments), call.name)
            except UpstreamError as exc:
                self._fail(out, exc.message)
            function: dict[str, Any] = {"name": call.name, "args": args}
            if call.id:
                function["id"] = call.id
            parts.append({"functionCall": function})
        event = self._payload(parts or [{"text": ""}])
        event["candidates"][0]["finishReason"] = gemini_finish(self._reason)
        event["usageMetadata"] = usage_metadata(self._usage)
        out.append(_gemini_sse(event))
        self.done = True

    def _payload(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self.model,
            "responseId": self._id,
        }

    def _gemini_event(self, parts: list[dict[str, Any]]) -> bytes:
        return _gemini_sse(self._payload(parts))

    def _error_event(self, exc: CorralError) -> bytes:
        return stream_error(exc)


def _gemini_sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"
