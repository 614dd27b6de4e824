"""The admin API's front door: the key and the body size, checked before FastAPI runs.

FastAPI reads a request's whole body before it resolves any dependency, the
key check included: an unauthenticated client could make the server buffer
bodies of any size. ``ApiGuard`` sits in front of it and, from the headers
alone, authenticates the caller through the same key cache (401 in the API's
error shape, with the body never read), refuses a declared ``Content-Length``
past ``api_max_body_bytes`` (413), and then reads the body itself, counting,
so a chunked body is refused (413) as soon as it passes the cap. What it has
read is handed to FastAPI unchanged; the caller it found is handed on in the
scope (``context.CALLER``) so the key is checked once.

The OpenAPI document and the Swagger page are public, as they were: they hold
no data.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.api.context import CALLER, Host
from corral.api.errors import error_response
from corral.asgi import ASGIApp, Message, Receive, Scope, Send, api_key, read_body
from corral.errors import AuthenticationFailed, CorralError


class ApiGuard:
    """Authenticate, then read at most ``api_max_body_bytes``, then call the API."""

    def __init__(self, api: ASGIApp, host: Host, *, public: Iterable[str | None] = ()) -> None:
        self.api = api
        self._host = host
        self._public = frozenset(p for p in public if p)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        try:
            if not self._is_public(scope):
                scope[CALLER] = await self._host.keys.authenticate(api_key(scope))
            limit = self._host.settings.api_max_body_bytes
            body = await read_body(scope, receive, limit, setting="api_max_body_bytes")
        except CorralError as exc:
            await _refuse(exc, scope, receive, send)
            return
        await self.api(scope, _replay(body, receive), send)

    def _is_public(self, scope: Scope) -> bool:
        return scope["method"] in ("GET", "HEAD") and scope["path"] in self._public


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the body already read, then whatever the client sends next
    (a disconnect, which a streaming response listens for)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _refuse(exc: CorralError, scope: Scope, receive: Receive, send: Send) -> None:
    # The body may be unread and large: close the connection rather than drain it.
    headers = {"connection": "close"}
    if isinstance(exc, AuthenticationFailed):
        headers["www-authenticate"] = "Bearer"
    response = error_response(exc.status, exc.code, exc.message, headers)
    await response(scope, receive, send)
