"""OpenAI Chat Completions: the adapter, and the internal form itself.

The internal form every protocol converts to and from is this protocol's shape
(``protocols/__init__`` says why), so converting a Chat request, response or stream to
it is the identity; going upstream only the output cap's field name and the usage
request of a stream may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.errors import InvalidRequest
from corral.protocols.base import (
    TURN_PARTS,
    Adapter,
    Outcome,
    Route,
    StreamMeter,
    StreamTranslator,
    Turn,
    TurnHasher,
    Usage,
    event_data,
    int_or_zero,
    json_object,
    max_field,
    str_or_none,
    text_of,
    turn_start,
)

PATH = "/v1/chat/completions"
INTERNAL_MAX = "max_completion_tokens"
"""The output cap's field in the internal form."""


def openai_chat_usage(u: dict[str, Any]) -> Usage:
    cached = int_or_zero((u.get("prompt_tokens_details") or {}).get("cached_tokens"))
    reasoning = int_or_zero((u.get("completion_tokens_details") or {}).get("reasoning_tokens"))
    return Usage(
        input=max(0, int_or_zero(u.get("prompt_tokens")) - cached),
        cached_input=cached,
        output=max(0, int_or_zero(u.get("completion_tokens")) - reasoning),
        reasoning=reasoning,
    )


class ChatAdapter(Adapter):
    name = "chat"
    path = PATH

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

    def check(self, body: dict[str, Any], route: Route) -> tuple[str, bool]:
        model, stream = super().check(body, route)
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
            response_id=str_or_none(body.get("id")),
            model=str_or_none(body.get("model")),
            finish_reason=str_or_none(finish),
        )

    def meter(self, strip_usage: bool) -> StreamMeter:
        return ChatMeter(strip_usage)

    # -- the internal form: this protocol's own shape -------------------------------

    def to_internal(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(body)

    def from_internal(
        self, internal: dict[str, Any], *, default_max: int, provider_kind: str
    ) -> dict[str, Any]:
        """Servers that speak only the older chat API (``openai-compatible``: vLLM,
        llama.cpp) read ``max_tokens``; a stream always asks for its usage. OpenAI's own
        API takes neither of the internal form's extensions, ``top_k`` and
        ``reasoning_content`` (vLLM, llama.cpp and DeepSeek do): they are left out."""
        out = dict(internal)
        if provider_kind == "openai":
            out.pop("top_k", None)  # a sampling hint
            messages = out.get("messages")
            if isinstance(messages, list) and any(
                isinstance(m, dict) and "reasoning_content" in m for m in messages
            ):
                out["messages"] = [_without_reasoning(m) for m in messages]
        if provider_kind == "openai-compatible" and INTERNAL_MAX in out:
            out["max_tokens"] = out.pop(INTERNAL_MAX)
        if out.get("stream"):
            out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
        return out

    def response_to_internal(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        return body

    def response_from_internal(self, internal: dict[str, Any], *, model: str) -> dict[str, Any]:
        return {**internal, "model": model}

    def stream_to_internal(self, model: str) -> StreamTranslator | None:
        return None

    def stream_from_internal(self, model: str) -> StreamTranslator | None:
        return None

    def turn(self, body: Mapping[str, Any]) -> Turn | None:
        return chat_turn(body)


class ChatMeter(StreamMeter):
    def __init__(self, strip_usage: bool) -> None:
        super().__init__()
        self.strip_usage = strip_usage

    def inspect(self, event: bytes) -> bool:
        payload = event_data(event)
        if payload == b"[DONE]":
            self.done = True
            return True
        first = self.outcome.response_id is None
        has_usage = b'"usage"' in event and b'"usage":null' not in event
        has_finish = b'"finish_reason":"' in event or b'"finish_reason": "' in event
        if not (first or has_usage or has_finish or b'"error"' in event):
            return True
        data = json_object(payload)
        if data is None:
            return True
        if first:
            self.outcome.response_id = str_or_none(data.get("id"))
            self.outcome.model = str_or_none(data.get("model"))
        if isinstance(data.get("error"), dict):
            self.outcome.error = str_or_none(data["error"].get("message")) or "error event"
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
        return True


def _without_reasoning(message: Any) -> Any:
    """A history message without the reasoning text OpenAI's API does not take back."""
    if isinstance(message, dict) and "reasoning_content" in message:
        return {k: v for k, v in message.items() if k != "reasoning_content"}
    return message


def chat_turn(body: Mapping[str, Any]) -> Turn | None:
    """The last turn of a Chat request: the latest assistant message's text and
    ``tool_calls`` (or legacy ``function_call``), then ``tool`` (or ``function``) results
    and user text. Chat cannot mark a result an error."""
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        return None
    start, acted = turn_start(messages, _is_assistant)
    hasher = TurnHasher()
    for message in messages[start:]:
        if type(message) is not dict:
            hasher.text(message)
            continue
        role = message.get("role")
        if role == "assistant":
            _assistant(message, hasher)
        elif role == "tool" or role == "function":
            hasher.result(text_of(message.get("content")))
        else:
            hasher.text(text_of(message.get("content")), role)
    return hasher.turn(len(messages), acted)


def _is_assistant(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant"


def _assistant(message: dict[str, Any], hasher: TurnHasher) -> None:
    content = message.get("content")
    if content:
        hasher.text(text_of(content), "assistant")
    calls = message.get("tool_calls")
    for call in calls[:TURN_PARTS] if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            hasher.action(function.get("name"), function.get("arguments"))
        else:
            hasher.action(None, call)
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        hasher.action(legacy.get("name"), legacy.get("arguments"))


CHAT = ChatAdapter()
