"""Serving the simulator with uvicorn: in-process on a bound socket, or standalone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corral.sim.app import SimApp, create_sim_app
from corral.sim.config import SimConfig

_GRACE_S = 2


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host (the gateway, a test) owns SIGINT/SIGTERM and calls stop().
        yield


class _QuietHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with access logging off, whatever the host's loggers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn turns access logs on whenever "uvicorn.access" has a handler, a
        # process-wide switch; the simulator must stay silent inside a gateway that logs.
        self.access_log = False


class _HostedConfig(uvicorn.Config):
    """uvicorn settings that leave the host process's logging configuration alone."""

    def configure_logging(self) -> None:
        # The default empties the global "uvicorn.access" logger, which is the host's too.
        return


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0 picks a free port), ready for :meth:`SimServer.start`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def uvicorn_config(app: SimApp, *, loop: str = "none") -> uvicorn.Config:
    """The uvicorn settings the simulator runs with: httptools, no access log, no lifespan.

    Logging is left as the host configured it; uvicorn's own errors go to
    the ``uvicorn.error`` logger.
    """
    return _HostedConfig(
        app,
        http=_QuietHttp,
        loop=loop,
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=_GRACE_S,
        timeout_keep_alive=30,
        backlog=2048,
    )


class SimServer:
    """The simulator served inside an already running event loop.

    >>> server = SimServer(SimConfig())
    >>> await server.start(sock)      # doctest: +SKIP
    >>> server.url                    # doctest: +SKIP
    'http://127.0.0.1:41234'
    >>> await server.stop()           # doctest: +SKIP
    """

    def __init__(self, config: SimConfig | None = None, *, app: SimApp | None = None) -> None:
        self.app = app or create_sim_app(config or SimConfig())
        self._server = _EmbeddedServer(uvicorn_config(self.app))
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL (no ``/v1``) the server answers on."""
        if self._sock is None:
            raise RuntimeError("the simulator is not started")
        host, port = self._sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` (bound; listening or not) or on a fresh loopback port.

        Returns once the server accepts connections; the socket is closed by :meth:`stop`.
        """
        if self._task is not None:
            raise RuntimeError("the simulator is already started")
        self._sock = sock or bind_socket()
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # re-raises why start-up failed
                raise RuntimeError("the simulator stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting, end hung faults, give streams a short grace period, then close."""
        if self._task is None:
            return
        self.app.close()
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_sim(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 4200,
    *,
    sock: socket.socket | None = None,
) -> None:
    """Serve the simulator until cancelled (then stop cleanly)."""
    server = SimServer(config)
    await server.start(sock or bind_socket(host, port))
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
