"""Sending answers over ASGI: pacing, and the faults that break the transport.

Everything here talks to the raw ASGI ``send``/``receive`` pair. The faults
that are not error answers (``timeout``, ``stall``, ``reset``, ``malformed``)
live here because they are about *how* bytes go out, not what they say.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from corral.sim.options import FaultKind
from corral.sim.wire import Frame

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
HangEnd = Literal["elapsed", "disconnected", "closing"]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_MALFORMED_BODY = b'{"corral_sim": "this body is deliberately malformed", "choices": ['
_DISCONNECT_WAIT_S = 1.0


class DropConnection(Exception):
    """Raised to make a server other than uvicorn drop the connection mid-response.

    Under uvicorn the simulator closes the transport itself; any ASGI server
    closes the connection when an app raises after the response started.
    """


@dataclass(frozen=True, slots=True)
class Pace:
    """Latency of one answer: delay to the first token, then tokens per second (0 = at once)."""

    ttft_s: float = 0.0
    tps: float = 0.0


@dataclass(slots=True)
class StreamStats:
    """What happened to paced streams: lets a test see that a gateway cancelled upstream."""

    started: int = 0
    completed: int = 0
    abandoned: int = 0


@dataclass(slots=True)
class Channel:
    """One request's ASGI channel, with the app's shutdown signal for long waits."""

    send: Send
    receive: Receive
    closing: asyncio.Event
    stats: StreamStats

    async def start(self, status: int, headers: Headers) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def respond(self, status: int, headers: Headers, data: bytes) -> None:
        """Send a whole response with a Content-Length."""
        await self.start(status, [*headers, (b"content-length", str(len(data)).encode())])
        await self.body(data)

    async def hang(self, seconds: float) -> HangEnd:
        """Wait ``seconds``, or less if the client disconnects or the app shuts down."""
        gone = asyncio.ensure_future(self._until_disconnect())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            done, _ = await asyncio.wait(
                {gone, closing}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (gone, closing):
                task.cancel()
            await asyncio.gather(gone, closing, return_exceptions=True)
        if gone in done:
            return "disconnected"
        return "closing" if closing in done else "elapsed"

    async def drop(self) -> None:
        """Close the TCP connection now, whatever has been sent of the response.

        Under uvicorn the transport is reached through ``send``'s owner (its
        request cycle); closing it sends FIN after the bytes already written,
        and waiting for the disconnect lets uvicorn see the close as the
        client's, so it logs nothing.
        """
        owner = getattr(self.send, "__self__", None)
        transport = getattr(owner, "transport", None)
        if transport is None or not callable(getattr(transport, "close", None)):
            raise DropConnection("connection dropped by Corral's simulator")
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until_disconnect(), _DISCONNECT_WAIT_S)

    async def _until_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass


async def deliver_json(
    channel: Channel,
    headers: Headers,
    data: bytes,
    pace: Pace,
    tokens: int,
    fault: FaultKind | None,
    hang_s: float,
) -> None:
    """Send a non-streamed answer after its latency, breaking it as ``fault`` says."""
    delay = pace.ttft_s + (tokens / pace.tps if pace.tps > 0 else 0.0)
    if delay > 0:
        await asyncio.sleep(delay)
    if fault == "malformed":
        data = _MALFORMED_BODY
    if fault not in ("reset", "stall"):
        await channel.respond(200, headers, data)
        return
    # Promise the whole body, send half of it, then go quiet or drop the connection.
    await channel.start(200, [*headers, (b"content-length", str(len(data)).encode())])
    await channel.body(data[: len(data) // 2], more=True)
    await _break(channel, fault, hang_s)


async def deliver_stream(
    channel: Channel,
    headers: Headers,
    frames: list[Frame],
    pace: Pace,
    fault: FaultKind | None,
    hang_s: float,
    malformed: Frame,
    *,
    kind: Headers = SSE_HEADERS,
) -> None:
    """Send stream frames paced by tokens per second, breaking the stream as ``fault`` says.

    ``kind`` are the content headers: SSE unless the protocol streams
    something else (Gemini's JSON array).
    """
    if pace.ttft_s > 0:
        await asyncio.sleep(pace.ttft_s)
    await channel.start(200, [*kind, *headers])
    if fault == "malformed":
        at = cut_point(frames)
        frames = [*frames[:at], malformed, *frames[at:]]
    cut = cut_point(frames) if fault in ("reset", "stall") else len(frames)
    if pace.tps <= 0 and cut == len(frames):
        await channel.body(b"".join(frame.data for frame in frames))
        return
    channel.stats.started += 1
    # A paced stream stops generating as soon as its client goes away, as a provider does.
    gone = asyncio.ensure_future(channel._until_disconnect())
    try:
        if not await _paced(channel, frames[:cut], pace, gone):
            channel.stats.abandoned += 1
            return
    finally:
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
    if cut < len(frames) and fault in ("reset", "stall"):
        await _break(channel, fault, hang_s)
        return
    channel.stats.completed += 1
    await channel.body(b"")


async def _paced(
    channel: Channel, frames: list[Frame], pace: Pace, gone: asyncio.Future[None]
) -> bool:
    """Send ``frames`` at ``pace``; False if the client disconnected first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    for frame in frames:
        if frame.tokens and pace.tps > 0:
            deadline += frame.tokens / pace.tps
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.wait({gone}, timeout=delay)
        if gone.done():
            return False
        await channel.body(frame.data, more=True)
    return True


def cut_point(frames: list[Frame]) -> int:
    """Where a broken stream breaks: after the second frame carrying output, or halfway."""
    seen = 0
    for index, frame in enumerate(frames):
        if frame.tokens:
            seen += 1
            if seen == 2:
                return min(index + 1, len(frames) - 1)
    return max(1, len(frames) // 2)


async def _break(channel: Channel, fault: FaultKind, hang_s: float) -> None:
    if fault == "stall" and await channel.hang(hang_s) == "disconnected":
        return
    await channel.drop()
