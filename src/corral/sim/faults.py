"""Error answers in each protocol's own shape, and the faults that produce them.

An :class:`ErrorReply` is protocol-neutral (a status, a kind, a message); the
renderers turn it into OpenAI's ``{"error": {...}}``, Anthropic's
``{"type": "error", "error": {...}}`` or Google's ``{"error": {"code", "message",
"status"}}`` with the headers a client expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from corral.sim.options import FaultKind

ErrorShape = Literal["openai", "anthropic", "google"]
ErrorKind = Literal[
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "too_large",
    "rate_limit",
    "server",
    "unavailable",
    "overloaded",
    "timeout",
    "context",
    "content_policy",
]

# kind -> (OpenAI type, OpenAI code, Anthropic type, Google status)
_SHAPES: dict[ErrorKind, tuple[str, str | None, str, str]] = {
    "invalid_request": ("invalid_request_error", None, "invalid_request_error", "INVALID_ARGUMENT"),
    "not_found": ("invalid_request_error", "not_found", "not_found_error", "NOT_FOUND"),
    "method_not_allowed": (
        "invalid_request_error",
        "method_not_allowed",
        "invalid_request_error",
        "INVALID_ARGUMENT",
    ),
    "too_large": (
        "invalid_request_error",
        "request_too_large",
        "request_too_large",
        "INVALID_ARGUMENT",
    ),
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "server": ("server_error", None, "api_error", "INTERNAL"),
    "unavailable": ("server_error", "service_unavailable", "api_error", "UNAVAILABLE"),
    "overloaded": ("server_error", "overloaded", "overloaded_error", "UNAVAILABLE"),
    "timeout": ("server_error", "timeout", "timeout_error", "DEADLINE_EXCEEDED"),
    "context": (
        "invalid_request_error",
        "context_length_exceeded",
        "invalid_request_error",
        "INVALID_ARGUMENT",
    ),
    "content_policy": (
        "invalid_request_error",
        "content_policy_violation",
        "invalid_request_error",
        "INVALID_ARGUMENT",
    ),
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error answer before it is given a protocol's shape."""

    status: int
    kind: ErrorKind
    message: str
    retry_after_s: float | None = None
    param: str | None = None


def render_error(
    error: ErrorReply, *, shape: ErrorShape, request_id: str
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The JSON body and headers of ``error`` in the caller's protocol."""
    openai_type, code, anthropic_type, google_status = _SHAPES[error.kind]
    payload: dict[str, Any]
    if shape == "anthropic":
        payload = {
            "type": "error",
            "error": {"type": anthropic_type, "message": error.message},
            "request_id": request_id,
        }
    elif shape == "google":
        payload = {"error": _google_error(error, google_status)}
    else:
        payload = {
            "error": {
                "message": error.message,
                "type": openai_type,
                "param": error.param,
                "code": code,
            }
        }
    headers = [(b"content-type", b"application/json")]
    if error.retry_after_s is not None:
        # Retry-After is whole seconds; ms precision rides in retry-after-ms as OpenAI sends it.
        seconds = max(0, math.ceil(error.retry_after_s))
        headers.append((b"retry-after", str(seconds).encode()))
        headers.append((b"retry-after-ms", str(round(error.retry_after_s * 1000)).encode()))
    return orjson.dumps(payload), headers


def _google_error(error: ErrorReply, status: str) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.status, "message": error.message, "status": status}
    if error.retry_after_s is not None and error.status in (429, 503):
        # Google says when to retry in the body (google.rpc.RetryInfo), not in a header;
        # Gemini CLI reads retryDelay from here.
        delay = f"{error.retry_after_s:.3f}".rstrip("0").rstrip(".") + "s"
        body["details"] = [{"@type": _RETRY_INFO, "retryDelay": delay}]
    return body


def fault_error(kind: FaultKind, *, shape: ErrorShape, retry_after_s: float) -> ErrorReply | None:
    """The error an injected fault answers with, or ``None`` for faults that are not errors."""
    tag = "(fault injected by Corral's simulator)"
    if kind == "429":
        wait = f"{retry_after_s:g}s"
        return ErrorReply(
            429,
            "rate_limit",
            f"Rate limit reached. Please try again in {wait}. {tag}",
            retry_after_s,
        )
    if kind == "500":
        return ErrorReply(500, "server", f"The server had an error. {tag}")
    if kind == "503":
        return ErrorReply(503, "unavailable", f"The service is unavailable. {tag}", retry_after_s)
    if kind == "529":
        # Only Anthropic has 529; OpenAI and Google say "overloaded" with a 503.
        if shape == "anthropic":
            return ErrorReply(529, "overloaded", f"Overloaded {tag}", retry_after_s)
        return ErrorReply(503, "overloaded", f"The engine is overloaded. {tag}", retry_after_s)
    if kind == "content_policy":
        return ErrorReply(
            400,
            "content_policy",
            f"The request was rejected by the content policy (usage policy). {tag}",
        )
    return None


def context_error(tokens: int, window: int, *, shape: ErrorShape, injected: bool) -> ErrorReply:
    """The context-window error: Anthropic's "prompt is too long", Google's and OpenAI's wording."""
    tag = " (fault injected by Corral's simulator)" if injected else ""
    if shape == "google":
        message = (
            f"The input token count ({tokens}) exceeds the maximum number of tokens "
            f"allowed ({window}).{tag}"
        )
        return ErrorReply(400, "context", message)
    if shape == "anthropic":
        message = f"prompt is too long: {tokens} tokens > {window} maximum{tag}"
        return ErrorReply(400, "context", message)
    message = (
        f"This model's maximum context length is {window} tokens. However, your messages "
        f"resulted in {tokens} tokens. Please reduce the length of the messages.{tag}"
    )
    return ErrorReply(400, "context", message, param="messages")


def timeout_error() -> ErrorReply:
    """What a ``timeout`` fault finally answers if the client is still waiting."""
    return ErrorReply(504, "timeout", "Request timed out (fault injected by Corral's simulator)")
