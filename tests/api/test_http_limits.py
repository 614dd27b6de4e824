"""What an unauthenticated or slow network client can make the server spend, over real sockets.

Bodies: the admin API, the gateway and OTLP ingest check the key from the
headers and refuse a body past their cap before reading it. Connections: a
partial request head is answered 408 and closed after ``http_header_timeout``,
an idle kept-alive connection closed after ``http_idle_timeout`` (a long
stream is not), and past ``http_max_connections`` a new connection gets a 503
with ``Retry-After`` while the open ones are still served. The server is
Corral's own configuration (``corral.server.server_config``) in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from corral.server import HttpLimits
from corral.testing import ServerThread

if TYPE_CHECKING:
    from conftest import Corral, StartCorral

from tests.conftest import NO_SIM

HUGE = 300 * 1024 * 1024


def _connect(url: str, timeout: float = 10) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_response(sock: socket.socket, deadline: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (the body as far as Content-Length says)."""
    sock.settimeout(deadline)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        while not body.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            body += chunk
        return status, headers, _unchunk(body)
    size = int(headers.get("content-length", "0"))
    while len(body) < size and (chunk := sock.recv(65536)):
        body += chunk
    return status, headers, body


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        out, data = out + data[:size], data[size + 2 :]
        if size == 0:
            break
    return out


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (what it sent is read)."""
    end = time.monotonic() + within
    while (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


# -- bodies ------------------------------------------------------------------------------------

SURFACES = {
    "admin API": "/api/v1/teams",
    "gateway": "/v1/chat/completions",
    "OTLP ingest": "/v1/traces",
}


@pytest.mark.parametrize("path", SURFACES.values(), ids=SURFACES.keys())
def test_an_unauthenticated_body_is_refused_before_it_is_read(corral: Corral, path: str) -> None:
    """A 300 MB declared body with no key: 401 at once, the body never awaited, the
    connection closed (before: the admin API waited to buffer all 300 MB first)."""
    with _connect(corral.url) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: corral\r\ncontent-type: application/json\r\n"
            f"content-length: {HUGE}\r\n\r\n".encode()
            + b"{" * 1024
        )
        status, headers, body = _read_response(sock, deadline=5)
        assert status == 401, body
        assert "key" in body.decode()  # each surface in its own error shape
        if path.startswith("/api/"):
            assert set(orjson.loads(body)["error"]) == {"type", "message"}
            assert headers["connection"] == "close"
            assert _closed_by_server(sock, within=5)


def test_admin_api_bodies_are_capped_declared_or_chunked(corral: Corral) -> None:
    """With a valid key: a declared body past api_max_body_bytes is 413 before it is sent; a
    chunked one is 413 as soon as what was read passes the cap, not after all of it."""
    auth = f"authorization: Bearer {corral.admin_key}\r\n"
    with _connect(corral.url) as sock:
        sock.sendall(
            f"POST /api/v1/teams HTTP/1.1\r\nHost: corral\r\n{auth}"
            f"content-type: application/json\r\ncontent-length: {HUGE}\r\n\r\n".encode()
        )
        status, _, body = _read_response(sock, deadline=5)
        assert status == 413, body
        assert "api_max_body_bytes" in orjson.loads(body)["error"]["message"]
    with _connect(corral.url) as sock:
        sock.sendall(
            f"POST /api/v1/teams HTTP/1.1\r\nHost: corral\r\n{auth}"
            "content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".encode()
        )
        chunk = b" " * 65536
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 << 20:  # 64 times the cap; the server answers past one
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    break
        status, _, body = _read_response(sock, deadline=5)
        assert status == 413, body
        # What was sent before the answer came back: the cap and the sockets' buffers.
        assert sent < 16 << 20, f"the server read {sent >> 20} MiB before refusing"
    with corral.client() as c:  # a body within the cap is read and served as before
        assert c.post("/api/v1/teams", json={"name": "payments"}).status_code == 201


def _rss(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _post_endlessly(url: str, path: str, size: int) -> None:
    """Declare ``size`` bytes and send them, one reused 1 MiB buffer at a time, until the
    server closes the connection."""
    chunk = b"x" * (1024 * 1024)
    with _connect(url, timeout=60) as sock, contextlib.suppress(OSError):
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: corral\r\ncontent-length: {size}\r\n\r\n".encode()
        )
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        sock.recv(65536)


def test_unauthenticated_uploads_do_not_grow_the_server(corral: Corral) -> None:
    """Three unauthenticated 96 MB POSTs at once to the admin API (the review's attack was
    three of 300 MB: 2.5 GB): the process grows by a few MB, not by what was sent."""
    before = _rss()
    threads = [
        threading.Thread(target=_post_endlessly, args=(corral.url, "/api/v1/teams", 96 << 20))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss())
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert peak - before < 48 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


# -- connections -------------------------------------------------------------------------------


@pytest.fixture
def limited(start_corral: StartCorral, tmp_path: Path) -> Iterator[Corral]:
    """Corral on SQLite with short timeouts and a connection cap the test can reach."""
    with start_corral(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'corral.db'}",
        sim_url=NO_SIM,
        http_header_timeout=1,
        http_idle_timeout=1,
        http_max_connections=300,
    ) as running:
        yield running


def test_half_open_connections_are_closed_after_the_header_timeout(limited: Corral) -> None:
    """200 connections that send part of a request head and stop: every one is answered 408
    and closed soon after the header timeout, 1 s (before: all still open a minute later).
    The slack is for a loaded machine: the server shares this process and its GIL."""
    socks = [_connect(limited.url) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: corral\r\nx-slow: ")
        opened = time.monotonic()
        assert all(_closed_by_server(s, within=6 - (time.monotonic() - opened)) for s in socks)
        assert time.monotonic() - opened < 6
        fresh = _connect(limited.url)  # one that sends nothing at all is closed too
        assert _closed_by_server(fresh, within=6)
        fresh.close()
    finally:
        for sock in socks:
            sock.close()


def test_the_header_timeout_answers_408(limited: Corral) -> None:
    with _connect(limited.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: corral\r\n")
        status, headers, body = _read_response(sock, deadline=3)
        assert status == 408
        assert headers["connection"] == "close"
        assert "request head did not arrive within 1 s" in orjson.loads(body)["error"]["message"]


def test_idle_keep_alive_connections_are_closed_after_the_idle_timeout(limited: Corral) -> None:
    with _connect(limited.url) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: corral\r\n\r\n")
        status, headers, _ = _read_response(sock)
        assert status == 200
        assert headers.get("connection") != "close"
        assert _closed_by_server(sock, within=5)
    with _connect(limited.url) as sock:  # a second request in time keeps it open
        for _ in range(3):
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: corral\r\n\r\n")
            assert _read_response(sock)[0] == 200
            time.sleep(0.5)


def test_connections_past_the_cap_are_refused_while_open_ones_are_served(
    start_corral: StartCorral, tmp_path: Path
) -> None:
    with start_corral(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'corral.db'}",
        sim_url=NO_SIM,
        http_header_timeout=30,
        http_max_connections=20,
    ) as corral:
        kept = [_connect(corral.url) for _ in range(20)]
        try:
            for sock in kept:  # each has been served once and stays open (kept alive)
                sock.sendall(b"HEAD / HTTP/1.1\r\nHost: corral\r\n\r\n")
                assert _read_response(sock)[0] == 200
            with _connect(corral.url) as extra:
                extra.sendall(b"HEAD / HTTP/1.1\r\nHost: corral\r\n\r\n")
                status, headers, body = _read_response(extra)
                assert status == 503
                assert headers["retry-after"] == "1"
                assert "http_max_connections" in orjson.loads(body)["error"]["message"]
                assert _closed_by_server(extra, within=3)
            for sock in kept:  # the connections already open are served as before
                sock.sendall(b"HEAD / HTTP/1.1\r\nHost: corral\r\n\r\n")
                assert _read_response(sock)[0] == 200
            kept.pop().close()
            deadline = time.monotonic() + 5
            while True:  # a place freed is taken by the next connection
                with httpx.Client(base_url=corral.url) as c:
                    if c.head("/").status_code == 200:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            for sock in kept:
                sock.close()


async def _slow_stream(scope: Any, receive: Any, send: Any) -> None:
    """An SSE-like response that stays silent longer than both timeouts between events."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for n in range(3):
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        await asyncio.sleep(1.5)
    await send({"type": "http.response.body", "body": b"data: done\n\n"})


def test_a_long_stream_is_not_cut_by_the_timeouts() -> None:
    limits = HttpLimits(header_timeout=1, idle_timeout=1, max_connections=10)
    with ServerThread(_slow_stream, lifespan="off", limits=limits) as server:
        with httpx.stream("GET", server.url + "/", timeout=10) as response:
            text = b"".join(response.iter_bytes()).decode()
        assert text.endswith("data: done\n\n")
        assert text.count("data:") == 4
