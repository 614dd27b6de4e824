"""The gateway's HTTP/1.1 client against the real simulator and small raw servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

from corral.gateway.client import ClientConnectionError, ConnectionClosed, HttpClient, Response
from corral.sim.config import SimConfig
from corral.sim.testing import RunningSim, running_sim

CHAT = {"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
JSON = {"content-type": "application/json"}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SimConfig(seed=1, fault_timeout_s=5)) as running:
        yield running


def run(scenario: Callable[[HttpClient], Awaitable[Any]], **options: Any) -> Any:
    """Run ``scenario`` with a started client on a fresh event loop; close the client after."""

    async def main() -> Any:
        client = HttpClient(**options)
        await client.start()
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(main())


def chat_body(stream: bool = False) -> bytes:
    return orjson.dumps({**CHAT, "stream": stream})


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on a loopback port running ``handler`` per connection; yields its URL."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/x"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and content-length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def drain(response: Response, into: list[bytes] | None = None) -> None:
    """Iterate over a streamed body to its end, keeping the chunks in ``into``."""
    async for chunk in response.content.iter_any():
        if into is not None:
            into.append(chunk)


def ok(body: bytes = b"hello", *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- bodies -----------------------------------------------------------------------------


def test_content_length_body(sim: RunningSim) -> None:
    """A whole JSON answer: status, lower-case headers, the body as sent."""

    async def scenario(client: HttpClient) -> None:
        url = f"{sim.url}/v1/chat/completions?beta=true"
        response = await client.post(url, chat_body(), {**JSON, "X-Trace": "1"})
        assert response.status == 200
        assert response.headers.get("content-type", "").startswith("application/json")
        assert all(name == name.lower() for name, _ in response.headers.items())
        body = await response.read()
        assert len(body) == int(response.headers["content-length"])
        assert orjson.loads(body)["object"] == "chat.completion"
        response.release()

    run(scenario)


def test_chunked_stream(sim: RunningSim) -> None:
    """A chunked SSE stream arrives piece by piece through content.iter_any(), to [DONE]."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-tps": "2000"}
        url = f"{sim.url}/v1/chat/completions"
        response = await client.post(url, chat_body(stream=True), headers)
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = [chunk async for chunk in response.content.iter_any()]
        response.release()
        assert len(chunks) > 1
        assert b"".join(chunks).rstrip().endswith(b"data: [DONE]")
        assert client.pool_stats().idle == 1

    run(scenario)


def test_body_read_until_close() -> None:
    """A body with neither length nor chunking ends with the connection, which is not pooled."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            response = await client.post(url, b"{}", {})
            assert await response.read() == b"part one, part two"
            response.release()
            assert client.pool_stats().connections == 0

    run(scenario)


def test_interim_response_is_skipped() -> None:
    """A 100 Continue before the answer is not the answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n" + ok(b"done"))

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            response = await client.post(url, b"{}", {})
            assert (response.status, await response.read()) == (200, b"done")
            assert "x-interim" not in response.headers
            response.release()

    run(scenario)


# -- the pool ---------------------------------------------------------------------------


def test_sequential_requests_share_one_connection(sim: RunningSim) -> None:
    """Keep-alive: ten requests one after another open one connection."""

    async def scenario(client: HttpClient) -> None:
        for _ in range(10):
            response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(), JSON)
            await response.read()
            response.release()
        stats = client.pool_stats()
        assert (stats.opened, stats.reused, stats.connections, stats.idle) == (1, 9, 1, 1)
        response.release()  # twice is harmless
        with pytest.raises(ConnectionClosed, match="already released"):
            await response.read()

    run(scenario)


def test_unread_response_is_not_pooled(sim: RunningSim) -> None:
    """A response released before its body arrived closes its connection."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-tps": "50"}
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(True), headers)
        response.release()
        assert client.pool_stats().connections == 0

    run(scenario)


def test_server_connection_close_is_honoured() -> None:
    """After a response that says connection: close, the next request opens a new connection."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(ok(b"bye", "connection: close"))
        await writer.drain()
        await asyncio.sleep(1)  # the client must not wait for this close

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            for _ in range(2):
                response = await client.post(url, b"{}", {})
                assert await response.read() == b"bye"
                response.release()
                assert client.pool_stats().connections == 0
        assert connections == 2

    run(scenario)


def test_stale_pooled_connection_is_retried_once() -> None:
    """A pooled connection the server drops as the request arrives is retried on a new one."""
    requests_seen = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests_seen
        served = 0
        while await read_request(reader) is not None:
            requests_seen += 1
            if served == 1:  # the idle-close race: the second request on a connection is dropped
                return
            served += 1
            writer.write(ok(b"fine"))

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            for _ in range(2):
                response = await client.post(url, b"{}", {})
                assert await response.read() == b"fine"
                response.release()
        assert client.pool_stats().opened == 2

    run(scenario)
    assert requests_seen == 3  # two answered, one dropped and sent again


def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    """On a new connection, a close before any byte is an error: nothing was stale."""
    requests_seen = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests_seen
        await read_request(reader)
        requests_seen += 1

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            with pytest.raises(ConnectionClosed, match="before any byte of the response"):
                await client.post(url, b"{}", {})
        assert client.pool_stats().connections == 0

    run(scenario)
    assert requests_seen == 1


def test_idle_connection_closed_by_server_leaves_the_pool() -> None:
    """A server closing an idle connection takes it out of the pool; the next request is fine."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.05)  # then close while idle

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            response = await client.post(url, b"{}", {})
            await response.read()
            response.release()
            assert client.pool_stats().idle == 1
            await asyncio.sleep(0.2)
            assert client.pool_stats().connections == 0
            response = await client.post(url, b"{}", {})
            assert await response.read() == b"hello"
            response.release()

    run(scenario)


def test_idle_connections_expire(sim: RunningSim) -> None:
    """A connection idle for idle_timeout seconds is closed."""

    async def scenario(client: HttpClient) -> None:
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(), JSON)
        await response.read()
        response.release()
        assert client.pool_stats().idle == 1
        await asyncio.sleep(0.35)
        assert client.pool_stats().connections == 0

    run(scenario, idle_timeout=0.1)


def test_requests_above_the_limit_wait_for_a_connection(sim: RunningSim) -> None:
    """With max_connections=2, twelve concurrent requests queue for two connections."""

    async def one(client: HttpClient) -> bytes:
        headers = {**JSON, "x-sim-ttft-ms": "20"}
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(), headers)
        try:
            return await response.read()
        finally:
            response.release()

    async def scenario(client: HttpClient) -> None:
        tasks = [asyncio.create_task(one(client)) for _ in range(12)]
        await asyncio.sleep(0.01)
        assert client.pool_stats().waiting == 10
        bodies = await asyncio.gather(*tasks)
        assert all(orjson.loads(body)["choices"] for body in bodies)
        stats = client.pool_stats()
        assert (stats.opened, stats.connections, stats.waiting) == (2, 2, 0)

    run(scenario, max_connections=2)


# -- failures ---------------------------------------------------------------------------


def test_connection_refused() -> None:
    """Nobody listening: ClientConnectionError naming the address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario(client: HttpClient) -> None:
        with pytest.raises(ClientConnectionError, match=rf"cannot connect to 127\.0\.0\.1:{port}"):
            await client.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
        assert client.pool_stats().connections == 0

    run(scenario)


def test_read_timeout_before_the_status_line(sim: RunningSim) -> None:
    """An upstream that sends nothing trips the read timeout."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-fault": "timeout"}
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no data from 127\.0\.0\.1"):
            await client.post(f"{sim.url}/v1/chat/completions", chat_body(), headers)
        assert 0.2 < time.monotonic() - started < 1.5
        assert client.pool_stats().connections == 0

    run(scenario, read_timeout=0.3)


def test_read_timeout_mid_stream(sim: RunningSim) -> None:
    """A stream that stalls after its first events trips the read timeout while iterating."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-fault": "stall"}
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(True), headers)
        received: list[bytes] = []
        with pytest.raises(TimeoutError, match="no data from"):
            await drain(response, received)
        assert received[0].startswith(b"data: ")
        response.release()
        assert client.pool_stats().connections == 0

    run(scenario, read_timeout=0.3)


@pytest.mark.parametrize("stream", [False, True])
def test_reset_after_part_of_the_body(sim: RunningSim, stream: bool) -> None:
    """A connection closed mid-body raises ConnectionClosed saying how far it got."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-fault": "reset"}
        url = f"{sim.url}/v1/chat/completions"
        response = await client.post(url, chat_body(stream), headers)
        assert response.status == 200
        with pytest.raises(ConnectionClosed, match=r"closed the connection after \d+ bytes"):
            await (drain(response) if stream else response.read())
        response.release()
        assert client.pool_stats().connections == 0

    run(scenario)


def test_malformed_response() -> None:
    """Bytes that are not HTTP raise ClientConnectionError saying so."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 two hundred OK\r\n\r\n")
        await asyncio.sleep(1)

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            with pytest.raises(
                ClientConnectionError, match=r"malformed response from 127\.0\.0\.1"
            ):
                await client.post(url, b"{}", {})

    run(scenario)


def test_close_from_another_task_ends_the_stream_promptly(sim: RunningSim) -> None:
    """close() while a read waits makes the iteration raise ConnectionClosed at once."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-tps": "5"}  # a chunk every ~0.8 s
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(True), headers)
        loop = asyncio.get_running_loop()
        closed_at = 0.0

        def close() -> None:
            nonlocal closed_at
            closed_at = time.monotonic()
            response.close()

        loop.call_later(0.1, close)
        with pytest.raises(ConnectionClosed, match="was closed"):
            await drain(response)
        assert time.monotonic() - closed_at < 0.05
        response.release()
        assert client.pool_stats().connections == 0

    run(scenario)


def test_client_close_fails_pending_reads(sim: RunningSim) -> None:
    """Closing the client ends reads in flight and refuses new requests."""

    async def scenario(client: HttpClient) -> None:
        headers = {**JSON, "x-sim-tps": "5"}
        response = await client.post(f"{sim.url}/v1/chat/completions", chat_body(True), headers)
        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, client.close())
        with pytest.raises(ConnectionClosed, match="client was closed"):
            await response.read()
        with pytest.raises(RuntimeError):
            await client.post(f"{sim.url}/v1/chat/completions", chat_body(), JSON)

    run(scenario)


def test_slow_reader_pauses_the_socket() -> None:
    """Unread body is not buffered without bound: the server's writes back up instead."""
    size = 64 << 20
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        piece = b"x" * (1 << 16)
        while sent < size:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    async def scenario(client: HttpClient) -> None:
        async with raw_server(handler) as url:
            response = await client.post(url, b"{}", {})
            await asyncio.sleep(0.3)  # a reader that does not keep up
            assert sent < size // 2
            assert len(await response.read()) == size
            response.release()

    run(scenario)


def test_headers_that_would_inject_are_refused(sim: RunningSim) -> None:
    """CR/LF in a header, or a header the client sets itself, is a ValueError before sending."""

    async def scenario(client: HttpClient) -> None:
        url = f"{sim.url}/v1/chat/completions"
        with pytest.raises(ValueError, match="CR or LF"):
            await client.post(url, b"{}", {"x-a": "b\r\nx-evil: 1"})
        with pytest.raises(ValueError, match="CR or LF"):
            await client.post(url, b"{}", {"x-a\n": "b"})
        with pytest.raises(ValueError, match="set by the client"):
            await client.post(url, b"{}", {"Content-Length": "3"})
        with pytest.raises(ValueError, match="http"):
            await client.post("ftp://example.com/x", b"{}", {})
        assert client.pool_stats().opened == 0

    run(scenario)
