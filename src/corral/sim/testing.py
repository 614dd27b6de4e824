"""A simulator running in a background thread, for tests anywhere in Corral.

    with running_sim(SimConfig(seed=1)) as sim:
        client = OpenAI(base_url=f"{sim.url}/v1", api_key="x")

The server runs its own event loop in a daemon thread on 127.0.0.1 port 0;
the context manager returns once it accepts connections and stops it on exit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from corral.sim.app import SimApp
from corral.sim.config import SimConfig
from corral.sim.server import SimServer, bind_socket

_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class RunningSim:
    """A started simulator: its base URL (no ``/v1``) and its app, for inspection."""

    url: str
    app: SimApp


@contextmanager
def running_sim(
    config: SimConfig | None = None, *, host: str = "127.0.0.1"
) -> Iterator[RunningSim]:
    """Run a simulator in a thread for the duration of the ``with`` block."""
    sock = bind_socket(host, 0)
    server = SimServer(config)
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["stop"] = (asyncio.get_running_loop(), stop)
        try:
            await server.start(sock)
        finally:
            ready.set()
        await stop.wait()
        await server.stop()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the caller's thread below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="corral-sim", daemon=True)
    thread.start()
    if not ready.wait(_START_TIMEOUT_S) or failure:
        sock.close()
        raise RuntimeError("the simulator did not start") from (failure[0] if failure else None)
    try:
        yield RunningSim(server.url, server.app)
    finally:
        loop, stop = holder["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(_START_TIMEOUT_S)
        sock.close()
