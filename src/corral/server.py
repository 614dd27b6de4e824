"""The HTTP server Corral runs under: uvicorn, with the limits a public port needs.

``server_config`` is the one place the server is configured: ``corral serve``
and the tests' ``ServerThread`` both use it. On top of uvicorn (httptools) it
adds what uvicorn lacks:

* a **header timeout**: a connection that has not sent a whole request head
  ``http_header_timeout`` seconds after it opened (or after its first byte,
  for the next request on a kept-alive connection) is answered 408 and closed;
  uvicorn itself waits forever for a partial head;
* a **connection cap**: past ``http_max_connections`` open connections, a new
  one is answered at once with 503 and ``Retry-After`` and closed; the
  connections already open are served as before.

The **idle timeout** is uvicorn's ``timeout_keep_alive``: it runs only between
requests, so a long response (a stream) is never cut by it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corral.errors import ConfigError
from corral.settings import Settings

# A refused connection is read (and the bytes dropped) for this long before it is closed,
# so the client's request does not meet a reset that destroys the 503 before it is read.
_LINGER_S = 2.0
_RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one connection may hold and how many may be open (see the module docstring)."""

    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout=settings.http_header_timeout,
            idle_timeout=settings.http_idle_timeout,
            max_connections=settings.http_max_connections,
        )


class _Config(uvicorn.Config):
    """uvicorn's settings and the limits the protocol reads from them."""

    def __init__(self, app: Any, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    def configure_logging(self) -> None:
        """uvicorn's, except that a server without an access log leaves the process-wide
        ``uvicorn.access`` logger as it found it: the runs executor's socket server must not
        silence the access log of the ``corral serve`` it runs in."""
        access = logging.getLogger("uvicorn.access")
        handlers, level = list(access.handlers), access.level
        super().configure_logging()
        if not self.access_log and handlers:
            access.handlers[:] = handlers
            access.setLevel(level)


class RedactKeys(logging.Filter):
    """Keeps a caller's key out of the access log: Google's clients may send it in the query
    string (``?key=``), which uvicorn logs with the path."""

    _KEY = re.compile(r"([?&]key=)[^&\s]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._KEY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def server_config(
    app: Any,
    limits: HttpLimits,
    *,
    loop: str = "uvloop",
    lifespan: str = "on",
    access_log: bool = False,
    graceful_shutdown: float = 10,
    uds: str | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration Corral is served with, limits included (``uds``: served on
    that Unix socket, as the runs executor serves the gateway to its sandboxes)."""
    config = _Config(
        app,
        limits=limits,
        uds=uds,
        http=LimitedHttp,
        loop=loop,
        lifespan=lifespan,
        access_log=access_log,
        log_level="warning",
        timeout_keep_alive=max(1, round(limits.idle_timeout)),
        timeout_graceful_shutdown=round(graceful_shutdown),
        backlog=2048,
    )
    if access_log:  # after uvicorn configured its loggers (all at warning, above its lines)
        access = logging.getLogger("uvicorn.access")
        access.setLevel(logging.INFO)
        if not any(isinstance(f, RedactKeys) for f in access.filters):
            access.addFilter(RedactKeys())
    return config


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts: a port in use is a ``ConfigError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: one owner
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another Corral?): stop what holds it "
                "or choose another with --port or CORRAL_PORT"
            ) from exc
        raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from exc
    return sock


class LimitedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn logs access whenever the process-wide logger has a handler: ask this server.
        self.access_log = self.access_log and bool(getattr(self.config, "access_log", False))
        self._limits: HttpLimits = getattr(self.config, "limits", HttpLimits())
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse()
        else:
            self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # a refused connection's request is read and dropped
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The next request on a kept-alive connection: its head gets the same deadline.
        # A timer already running (the connection's first request) is not restarted.
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # -- the header timeout ------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a response still being sent
            return
        message = f"the request head did not arrive within {self._limits.header_timeout:g} s"
        self.transport.write(_response(408, "Request Timeout", "request_timeout", message))
        self.transport.close()

    # -- the connection cap ------------------------------------------------------------------

    def _refuse(self) -> None:
        """503 at once, then a half-close; the connection is dropped when the client closes
        or after a short linger, and holds no parser or application state meanwhile."""
        self._refused = True
        message = (
            f"this server has {self._limits.max_connections} connections open, its limit "
            "(http_max_connections); retry shortly"
        )
        headers = f"retry-after: {_RETRY_AFTER_S}\r\n"
        self.transport.write(
            _response(503, "Service Unavailable", "overloaded_error", message, headers)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


def _response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"type": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body
