"""Quota fixtures: a real ``redis-server`` per session and a backend factory.

``quota`` runs each test once per backend (embedded, Redis) on a ``ManualClock``.
On Redis, ``quota.peer()`` is a second ``RedisQuota`` on the same server, as a
second gateway process would be. Without ``redis-server`` the Redis half is
skipped, except on CI (``CI=true``) where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from corral.clock import ManualClock
from corral.quota import EmbeddedQuota, QuotaBackend, RedisQuota
from tests.services import free_port, missing_service


def _missing_redis(reason: str) -> NoReturn:
    missing_service("redis-server", reason)


@dataclass
class RedisServer:
    """A throwaway ``redis-server`` on loopback."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def local_redis(port: int | None = None) -> Iterator[RedisServer]:
    """Start ``redis-server`` with no persistence in a temp dir; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing_redis("no redis-server on PATH (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="corral-redis-"))
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    proc = subprocess.Popen(
        [*argv, "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
    )
    server = RedisServer(proc, port)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: RedisServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            _missing_redis(f"redis-server exited with {server.proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port)):
            return
        time.sleep(0.02)
    _missing_redis("redis-server did not accept connections within 10 s")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis server."""
    with local_redis() as server:
        yield server


@dataclass
class Backend:
    """A backend under test, its clock, and how to reach it as another process would."""

    kind: str
    clock: ManualClock
    main: QuotaBackend
    url: str | None = None
    prefix: str = ""
    _clients: list[RedisQuota] = field(default_factory=list)

    def peer(self) -> QuotaBackend:
        """The same quota state through a second client (itself, for the embedded backend)."""
        if self.url is None:
            return self.main
        peer = RedisQuota(self.url, self.clock, prefix=self.prefix)
        self._clients.append(peer)
        return peer

    def run(self, body: Callable[[QuotaBackend], Awaitable[None]]) -> None:
        """Run ``body(main)`` on a fresh event loop; close every Redis client in that loop."""

        async def go() -> None:
            try:
                await body(self.main)
            finally:
                for client in self._clients:
                    await client.aclose()

        asyncio.run(go())


@pytest.fixture(params=["embedded", "redis"])
def quota(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A fresh quota backend on a ``ManualClock`` (Redis: a fresh key prefix on the server)."""
    clock = ManualClock(start=1_795_860_000.0)  # 2026-11-28T10:00:00Z
    if request.param == "embedded":
        yield Backend("embedded", clock, EmbeddedQuota(clock))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    main = RedisQuota(server.url, clock, prefix=prefix)
    yield Backend("redis", clock, main, server.url, prefix, [main])
