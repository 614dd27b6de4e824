"""A lean HTTP/1.1 keep-alive client for the gateway's calls to providers.

It does one thing, ``POST`` a body held in memory and hand back the response as
it arrives, with less work per request than a general client: the request is
written with one ``transport.write``, the response is parsed by ``httptools``
straight from ``data_received``, and a request costs one Future per wait and
no Task. Connections are pooled per (scheme, host, port), reused last-in
first-out and limited in total. What it does not do: HTTP proxies, HTTP/2,
compression (the gateway asks for ``accept-encoding: identity``), redirects,
cookies, ``Expect: 100-continue``.

Errors::

    OSError
     └─ ClientConnectionError   cannot connect, malformed response
         └─ ConnectionClosed    the connection ended mid-response (peer, or close())
    TimeoutError                connect or read timeout (the builtin)
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

__all__ = ["ClientConnectionError", "ConnectionClosed", "HttpClient", "PoolStats", "Response"]

_HIGH_WATER = 1 << 20  # pause reading the socket above this much unread body (reads drain all)
_MAX_TARGETS = 1024  # parsed URLs kept; the gateway uses a handful
_RESERVED = frozenset({"host", "content-length", "transfer-encoding"})
_ACTIVE, _IDLE, _GONE = 0, 1, 2


class ClientConnectionError(OSError):
    """The upstream could not be reached, or broke the HTTP exchange."""


class ConnectionClosed(ClientConnectionError):
    """The connection ended before the response did: closed or reset by the peer, or by us."""


class PoolStats(NamedTuple):
    """Connection counters, for tests and diagnostics."""

    connections: int  # open or opening, active or idle
    idle: int
    opened: int  # connections ever opened
    reused: int  # requests sent on a pooled connection
    waiting: int  # requests waiting for a free connection slot


class _Origin:
    """One (scheme, host, port): where to connect, and its idle connections (a LIFO stack)."""

    __slots__ = ("host", "idle", "label", "port", "tls")

    def __init__(self, host: str, port: int, tls: bool, label: str) -> None:
        self.host, self.port, self.tls, self.label = host, port, tls, label
        self.idle: deque[_Connection] = deque()


class _Connection(asyncio.Protocol):
    """One socket, and the state of the response being read on it."""

    __slots__ = (
        "buffered", "chunks", "client", "done", "error", "headers", "headers_done",
        "idle_since", "keep_alive", "loop", "lost", "origin", "parser", "paused", "progress",
        "read_timeout", "received", "state", "status", "timer", "transport", "until_close",
        "waiter",
    )  # fmt: skip

    def __init__(
        self, client: HttpClient, origin: _Origin, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.client, self.origin, self.loop = client, origin, loop
        self.read_timeout = client.read_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.state = _ACTIVE
        self.lost = self.paused = False
        self.idle_since = self.progress = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.chunks: deque[bytes] = deque()
        self.begin()

    # -- one exchange ---------------------------------------------------------------

    def begin(self) -> None:
        """Forget the previous response; the next bytes belong to a new one."""
        self.status = self.received = self.buffered = 0
        self.headers: dict[str, str] = {}
        self.headers_done = self.done = self.keep_alive = self.until_close = False
        self.error: BaseException | None = None
        self.chunks.clear()
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def exchange(self, request: bytes) -> None:
        """Send ``request``, wait for the response headers; raise if the connection ends first."""
        self.begin()
        if self.lost or self.transport is None:
            raise ConnectionClosed(f"{self.origin.label} closed the connection before any byte")
        self.transport.write(request)
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self.wait()

    def wait(self) -> asyncio.Future[None]:
        """A Future woken by the next event (bytes, end, error) on this connection."""
        fut = self.loop.create_future()
        self.waiter = fut
        self.progress = self.loop.time()
        # One timer per connection, pushed forward lazily by _check_timeout, instead of a
        # timer per wait: a streamed response waits once per chunk.
        if self.timer is None:
            self.timer = self.loop.call_at(self.progress + self.read_timeout, self._check_timeout)
        return fut

    def take(self) -> bytes:
        """All buffered body bytes; resume reading the socket if it was paused for them."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (first error wins) and close the socket now."""
        if self.error is None:
            self.error = exc
        self.chunks.clear()
        self.buffered = 0
        self.shut()
        self._wake()

    def shut(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _check_timeout(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done() or self.state != _ACTIVE:
            return  # nobody waits; the next wait() starts a timer
        deadline = self.progress + self.read_timeout
        if self.loop.time() < deadline - 0.001:
            self.timer = self.loop.call_at(deadline, self._check_timeout)
            return
        self.fail(TimeoutError(f"no data from {self.origin.label} for {self.read_timeout:g} s"))

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection: a Transport

    def data_received(self, data: bytes) -> None:
        if self.state != _ACTIVE:
            # Bytes on an idle connection answer nothing we sent: never reuse it.
            self.shut()
            return
        self.received += len(data)
        self.progress = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.done:  # bytes after a whole response: keep it, drop the connection
                self.keep_alive = False
                self.shut()
            else:
                self.fail(
                    ClientConnectionError(f"malformed response from {self.origin.label}: {exc}")
                )

    def eof_received(self) -> None:
        if self.headers_done and self.until_close and not self.done:
            self.done = True  # a body without length or chunking ends with the connection
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.state == _ACTIVE and not self.done and self.error is None:
            label, n = self.origin.label, self.received
            when = f"after {n} bytes of the response" if n else "before any byte of the response"
            self.error = ConnectionClosed(
                f"{label} closed the connection {when}"
                if exc is None
                else f"connection to {label} reset {when} ({exc.__class__.__name__}: {exc})"
            )
        self._wake()
        if self.state == _IDLE:
            self.client._lost_idle(self)

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # stops the parser; data_received then drops the connection
            raise ValueError("a second response that answers nothing we sent")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # chunked trailers: the headers were already handed over
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # interim response (100, 103): its message end resets the headers
        self.status = status
        self.headers_done = True
        headers = self.headers
        self.until_close = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            self.headers = {}
            return
        self.done = True
        self.keep_alive = bool(self.parser.should_keep_alive())
        self._wake()


class Response:
    """An upstream response whose headers have arrived; its body is read as it arrives.

    ``content`` is the response itself, so ``response.content.iter_any()`` reads as with
    aiohttp. Call ``release()`` when done (it is idempotent); ``close()`` may be called
    from any task, and makes a read waiting in another one raise ``ConnectionClosed``.
    """

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self.status: int = conn.status
        self.headers: dict[str, str] = conn.headers  # lower-case names
        self._conn: _Connection | None = conn

    @property
    def content(self) -> Response:
        return self

    def iter_any(self) -> Response:
        """Iterate over the body, each step yielding all the bytes that have arrived."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._live()
        while True:
            if conn.chunks:
                return conn.take()
            if conn.done:
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    async def read(self) -> bytes:
        """The rest of the body, once it has all arrived."""
        conn = self._live()
        parts: list[bytes] = []
        while True:
            if conn.chunks:
                parts.append(conn.take())  # drained as it comes, so reading is never paused
            if conn.done:
                return b"".join(parts)
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    def release(self) -> None:
        """Pool the connection if the body has fully arrived and it is keep-alive; else close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn)

    def close(self) -> None:
        """Abort the connection at once; a pending or later read raises ``ConnectionClosed``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(ConnectionClosed(f"the response from {conn.origin.label} was closed"))
            conn.client._discard(conn)

    def _live(self) -> _Connection:
        if self._conn is None:
            raise ConnectionClosed("the response was already released or closed")
        return self._conn


class HttpClient:
    """A pool of keep-alive HTTP/1.1 connections that sends ``POST`` requests.

    ``read_timeout`` bounds the wait for each next byte (status line, headers or body
    chunk), not the whole response. At ``max_connections`` open connections a request
    waits for one to be free. Idle connections are dropped after ``idle_timeout`` s.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connections: int = 1000,
        max_idle_per_host: int = 100,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_idle_per_host = max_idle_per_host
        self.idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._targets: dict[str, tuple[_Origin, bytes]] = {}
        self._conns: set[_Connection] = set()
        self._waiters: deque[tuple[_Origin, asyncio.Future[_Connection | None]]] = deque()
        self._total = self._opened = self._reused = 0
        self._reaper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Bind the client to the running event loop."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Close every connection; requests waiting for one fail, pending reads end."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ClientConnectionError("the HTTP client was closed"))
        self._waiters.clear()
        for conn in list(self._conns):
            conn.state = _GONE
            conn.fail(ConnectionClosed("the HTTP client was closed"))
        self._conns.clear()
        for origin in self._origins.values():
            origin.idle.clear()
        self._total = 0
        await asyncio.sleep(0)  # let the aborted transports report connection_lost

    def pool_stats(self) -> PoolStats:
        idle = sum(len(origin.idle) for origin in self._origins.values())
        waiting = sum(not fut.done() for _, fut in self._waiters)
        return PoolStats(self._total, idle, self._opened, self._reused, waiting)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send ``POST url`` and return once the response headers have arrived.

        Raises ``ValueError`` for an unusable URL or header (CR/LF, non-latin-1, or a
        header this client sets: host, content-length, transfer-encoding),
        ``ClientConnectionError`` when the exchange fails, ``TimeoutError`` on timeouts.
        """
        if self._loop is None or self._closed:
            raise RuntimeError("the HTTP client is not started, or closed")
        origin, head = self._target(url)
        request = b"".join(
            (head, b"content-length: %d\r\n" % len(body), _header_block(headers), b"\r\n", body)
        )
        conn, reused = await self._acquire(origin)
        while True:
            try:
                await conn.exchange(request)
                return Response(conn)
            except ConnectionClosed:
                # A server closes an idle keep-alive connection between requests, without
                # answering. If a pooled connection ends before any byte of the response,
                # our request met that close: the server did not start answering it, so we
                # send it again (the body is in memory), once, on a new connection. The
                # residual risk, a server that read the request and then died without a
                # byte, is the price of not failing a request on every idle-close race.
                if not reused or conn.received or self._closed:
                    self._discard(conn)
                    raise
                self._forget(conn)  # its slot goes to the new connection
                conn, reused = await self._connect_in_slot(origin), False
            except BaseException:
                self._discard(conn)
                raise

    # -- requests -------------------------------------------------------------------

    def _target(self, url: str) -> tuple[_Origin, bytes]:
        """The origin of ``url`` and its request line and host header, parsed once per URL."""
        hit = self._targets.get(url)
        if hit is not None:
            return hit
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        if "@" in parts.netloc:
            raise ValueError(f"credentials in the URL are not supported: {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in path for c in " \r\n"):
            raise ValueError(f"the URL path must not contain spaces or line breaks: {url!r}")
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        origin = self._origins.get((scheme, host, port))
        if origin is None:
            label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            origin = _Origin(host, port, scheme == "https", label)
            self._origins[scheme, host, port] = origin
        head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode("ascii")
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()
        hit = self._targets[url] = (origin, head)
        return hit

    # -- the pool -------------------------------------------------------------------
    # A "slot" is a unit of max_connections. Every open or opening connection holds
    # one; a slot freed while requests wait passes straight to the first of them.

    async def _acquire(self, origin: _Origin) -> tuple[_Connection, bool]:
        """A connection to ``origin``, and whether it was reused from the pool."""
        assert self._loop is not None
        idle, now = origin.idle, self._loop.time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < self.idle_timeout:
                conn.state = _ACTIVE
                self._reused += 1
                return conn, True
            self._discard(conn)
        if self._total < self.max_connections:
            self._total += 1
        elif not self._evict_idle():
            handed = await self._wait_slot(origin)
            if handed is not None:
                self._reused += 1
                return handed, True
        return await self._connect_in_slot(origin), False

    async def _wait_slot(self, origin: _Origin) -> _Connection | None:
        """Wait for a pooled connection to ``origin`` (returned) or a free slot (None)."""
        assert self._loop is not None
        fut: asyncio.Future[_Connection | None] = self._loop.create_future()
        self._waiters.append((origin, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()  # handed to us as we were cancelled: pass it on
                if handed is None:
                    self._free_slot()
                else:
                    self._put(handed)
            raise

    async def _connect_in_slot(self, origin: _Origin) -> _Connection:
        """Open a connection in a slot the caller holds; free the slot if that fails."""
        try:
            conn = await self._open(origin)
        except BaseException:
            self._free_slot()
            raise
        if self._closed:
            conn.shut()
            raise ClientConnectionError("the HTTP client was closed")
        self._conns.add(conn)
        self._opened += 1
        return conn

    async def _open(self, origin: _Origin) -> _Connection:
        loop = self._loop
        assert loop is not None
        context = None
        if origin.tls:
            context = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self, origin, loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError:
            raise TimeoutError(
                f"timed out connecting to {origin.label} after {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise ClientConnectionError(f"cannot connect to {origin.label}: {exc}") from exc
        conn.transport = transport  # uvloop may call connection_made only after returning
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.state != _ACTIVE:
            return
        if conn.done and conn.keep_alive and conn.error is None and not conn.lost:
            self._put(conn)
        else:
            self._discard(conn)

    def _put(self, conn: _Connection) -> None:
        """Give a reusable connection to a request waiting for its origin, or pool it."""
        if self._closed:
            self._discard(conn)
            return
        conn.begin()  # drop unread bytes, resume reading so a close by the server is seen
        for i, (origin, fut) in enumerate(self._waiters):
            if origin is conn.origin and not fut.done():
                del self._waiters[i]
                fut.set_result(conn)
                return
        if any(not fut.done() for _, fut in self._waiters):
            self._discard(conn)  # requests for other origins need the slot more
            return
        assert self._loop is not None
        idle = conn.origin.idle
        if len(idle) >= self.max_idle_per_host:
            self._discard(idle.popleft())  # keep the most recently used
        conn.state = _IDLE
        conn.idle_since = self._loop.time()
        idle.append(conn)
        if self._reaper is None:
            self._reaper = self._loop.call_later(self.idle_timeout, self._reap)

    def _forget(self, conn: _Connection) -> bool:
        """Close ``conn``, keeping its slot for the caller; False if already gone."""
        if conn.state == _GONE:
            return False
        conn.state = _GONE
        conn.shut()
        self._conns.discard(conn)
        return True

    def _discard(self, conn: _Connection) -> None:
        if self._forget(conn):
            self._free_slot()

    def _free_slot(self) -> None:
        if self._closed:
            return
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to this waiter
                return
        self._total -= 1

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection of any origin, keeping its slot; False if none."""
        for origin in self._origins.values():
            if origin.idle:
                return self._forget(origin.idle.popleft())
        return False

    def _lost_idle(self, conn: _Connection) -> None:
        """The server closed a pooled connection: take it out of the pool."""
        try:
            conn.origin.idle.remove(conn)
        except ValueError:
            return
        self._discard(conn)

    def _reap(self) -> None:
        """Close connections idle for ``idle_timeout``; run again while any stay idle."""
        assert self._loop is not None
        self._reaper = None
        now = self._loop.time()
        oldest: float | None = None
        for origin in self._origins.values():
            idle = origin.idle
            while idle and now - idle[0].idle_since >= self.idle_timeout:
                self._discard(idle.popleft())
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._reaper = self._loop.call_at(oldest + self.idle_timeout, self._reap)


def _header_block(headers: dict[str, str]) -> bytes:
    """``name: value\\r\\n`` lines, checked so a header can never start another one."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    count = len(headers)
    if text.count("\n") != count or text.count("\r") != count:
        raise ValueError("header names and values must not contain CR or LF")
    if not _RESERVED.isdisjoint([name.lower() for name in headers]):
        raise ValueError("host, content-length and transfer-encoding are set by the client")
    return text.encode("latin-1")
