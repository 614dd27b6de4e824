"""Small ASGI helpers for the gateway's hot path: no framework, no per-request allocation
beyond what the request needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from corral.errors import CorralError, InvalidRequest, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CT = (b"content-type", b"application/json")
SSE_CT = (b"content-type", b"text/event-stream; charset=utf-8")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a (lower-case) request header, decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def api_key(scope: Scope) -> str | None:
    """The caller's key from ``Authorization: Bearer`` or ``x-api-key``."""
    bearer: str | None = None
    key: bytes
    value: bytes
    for key, value in scope["headers"]:
        if key == b"authorization":
            text = value.decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif key == b"x-api-key":
            token = value.decode("latin-1").strip()
            if token:
                return token
    return bearer


async def read_body(
    scope: Scope, receive: Receive, limit: int, *, setting: str = "max_body_bytes"
) -> bytes:
    """The whole request body, refused with 413 as soon as it passes ``limit`` bytes: before
    reading anything when ``Content-Length`` says so, else once the chunks read pass it.

    Callers authenticate first: an unauthenticated client never makes the server buffer.
    ``setting`` names the limit in the refusal.
    """
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise InvalidRequest("Content-Length is not a number") from exc
        if size > limit:
            raise PayloadTooLarge(_too_large(limit, setting))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(_too_large(limit, setting))
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int, setting: str) -> str:
    return f"the request body is larger than this server accepts here ({limit} bytes; {setting})"


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


async def send_bytes(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def openai_error(exc: CorralError) -> bytes:
    """OpenAI's error shape."""
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": _OPENAI_TYPES.get(exc.status, exc.code),
                "param": None,
                "code": exc.code,
            }
        }
    )


def anthropic_error(exc: CorralError) -> bytes:
    """Anthropic's error shape."""
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": exc.message}})


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
