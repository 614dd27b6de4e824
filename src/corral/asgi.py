"""Small ASGI helpers for the request paths that use no framework (the gateway, OTLP ingest,
/metrics, the status page): no per-request allocation beyond what the request needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from corral.errors import InvalidRequest, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CT = (b"content-type", b"application/json")
SSE_CT = (b"content-type", b"text/event-stream; charset=utf-8")


def bearer_or_api_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key in ``x-api-key``, else in ``Authorization: Bearer …``."""
    bearer: str | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key":
            token = value.decode("latin-1").strip()
            if token:
                return token
    return bearer


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a (lower-case) request header, decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def api_key(scope: Scope) -> str | None:
    """The caller's key from ``x-api-key`` or ``Authorization: Bearer``."""
    return bearer_or_api_key(scope["headers"])


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
