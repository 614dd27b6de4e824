"""What both directions share: ids, stop reasons, usage blocks, error types, refusals."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from corral.errors import InvalidRequest

# -- ids -----------------------------------------------------------------------


def _digest(source: str) -> str:
    return hashlib.blake2b(source.encode(errors="surrogatepass"), digest_size=12).hexdigest()


def message_id(source: str) -> str:
    """An Anthropic ``msg_…`` id, the same every time for the same upstream id."""
    return "msg_" + _digest(source)


def chat_id(source: str) -> str:
    """An OpenAI ``chatcmpl-…`` id, the same every time for the same upstream id."""
    return "chatcmpl-" + _digest(source)


def tool_call_id(source: str, index: int) -> str:
    """An id for a tool call the upstream sent without one (index within the response)."""
    return f"call_{_digest(source)}{index:02d}"


# -- stop reasons --------------------------------------------------------------

_TO_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TO_FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_reason(finish: Any, *, called_tools: bool) -> str:
    """Chat ``finish_reason`` → Messages ``stop_reason``.

    Some OpenAI-compatible servers answer ``stop`` after a tool call; an
    Anthropic client decides whether to run tools from ``tool_use``, so a
    response that called tools and stopped normally says ``tool_use``.
    """
    reason = _TO_STOP_REASON.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    if called_tools and reason == "end_turn":
        return "tool_use"
    return reason


def finish_reason(stop: Any) -> str:
    """Messages ``stop_reason`` → Chat ``finish_reason`` (unknown reasons read as ``stop``)."""
    return _TO_FINISH_REASON.get(stop, "stop") if isinstance(stop, str) else "stop"


# -- usage ---------------------------------------------------------------------


def count(value: Any) -> int:
    """A token count from a usage block: a non-negative integer, or 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def messages_usage(chat: dict[str, Any] | None) -> dict[str, Any]:
    """A Chat ``usage`` block as a Messages one.

    Chat's ``prompt_tokens`` includes cache reads (``cached_tokens``) and
    writes (``cache_write_tokens``); Messages' ``input_tokens`` includes
    neither. Both count reasoning within the output tokens.
    """
    chat = chat or {}
    prompt = count(chat.get("prompt_tokens"))
    details = chat.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = min(prompt, count(details.get("cached_tokens")))
    written = min(prompt - cached, count(details.get("cache_write_tokens")))
    return {
        "input_tokens": prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": count(chat.get("completion_tokens")),
    }


def chat_usage(messages: dict[str, Any] | None) -> dict[str, Any]:
    """A Messages ``usage`` block as a Chat one: cache reads and writes are prompt tokens.

    Cache writes also show as ``prompt_tokens_details.cache_write_tokens``
    when there are any; Anthropic's ``output_tokens_details.thinking_tokens``,
    when sent, becomes ``reasoning_tokens``.
    """
    messages = messages or {}
    cached = count(messages.get("cache_read_input_tokens"))
    written = count(messages.get("cache_creation_input_tokens"))
    prompt = count(messages.get("input_tokens")) + cached + written
    output = count(messages.get("output_tokens"))
    details = messages.get("output_tokens_details")
    thinking = count(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    prompt_details: dict[str, int] = {"cached_tokens": cached}
    if written:
        prompt_details["cache_write_tokens"] = written
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": min(thinking, output)},
    }


# -- errors --------------------------------------------------------------------

# What status each provider's error ``type`` stands for, so that an error met
# inside a stream (which has no status) renders with the right type on the
# other side. Types the table does not know read as a server error.
_ANTHROPIC_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_OPENAI_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "insufficient_quota": 429,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "timeout": 504,
}


def anthropic_type_status(kind: Any) -> int:
    return _ANTHROPIC_TYPE_STATUS.get(kind, 500) if isinstance(kind, str) else 500


def openai_type_status(kind: Any) -> int:
    return _OPENAI_TYPE_STATUS.get(kind, 500) if isinstance(kind, str) else 500


# -- requests ------------------------------------------------------------------


def refuse(path: str, reason: str, *, target: str) -> InvalidRequest:
    """A 400 that names the field and says why it has no counterpart in ``target``."""
    return InvalidRequest(
        f"{path}: {reason} (this model is served over {target}, "
        "and Corral cannot translate this part of the request)"
    )


def json_text(value: Any, path: str) -> str:
    """``value`` as compact JSON text (tool-call arguments), or a 400 naming ``path``."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"{path}: cannot be written as JSON ({exc})") from exc
