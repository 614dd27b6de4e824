"""Helpers for running Corral's servers for real inside tests, benchmarks and the demo.

``ServerThread`` runs any ASGI application in a background thread on a
loopback port, under the same server configuration as ``corral serve``
(``corral.server.server_config``: its header and idle timeouts, its connection
cap), the way httpx's own test suite runs a real server: tests then talk to it
over real sockets with real clients.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from corral.server import HttpLimits, server_config
from corral.settings import Settings

T = TypeVar("T")


class ServerThread:
    """Serve an ASGI app on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: str = "on",
        limits: HttpLimits | None = None,
    ):
        """``limits`` default to the app's settings when it has them (a ``CorralApp``)."""
        # Bound, not listening: connections are refused until the server starts.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        if limits is None:
            settings = getattr(app, "settings", None)
            if isinstance(settings, Settings):
                limits = HttpLimits.from_settings(settings)
            else:
                limits = HttpLimits()
        config = server_config(app, limits, loop="asyncio", lifespan=lifespan, graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="corral-test-server", daemon=True)
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced to the test by start()
            self.error = exc
        finally:
            loop.close()

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.01)
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the server's event loop (where the app's state lives); its result."""
        assert self.loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
