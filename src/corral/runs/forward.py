"""The first process inside a run's sandbox: the gateway on loopback, then the agent.

The sandbox has no network but loopback; the gateway arrives as a Unix socket
(``/run/corral/gateway.sock``). Agents speak HTTP to a base URL, so this
process listens on ``127.0.0.1:PORT`` inside, relays every connection to the
socket byte for byte, starts the agent, and exits with its exit status. It
ignores SIGTERM itself: the executor signals every process of the run, and
this one must outlive the agent (when it exits, bubblewrap ends the sandbox).

Standard library only: it runs under the sandbox's Python before anything else.

    python -m corral.runs.forward --listen 127.0.0.1:4000 --socket PATH -- AGENT ARGV...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay(
    socket_path: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        gw_r, gw_w = await asyncio.open_unix_connection(socket_path)
    except OSError as exc:
        sys.stderr.write(f"corral: the gateway socket {socket_path} is unreachable: {exc}\n")
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, gw_w), _pipe(gw_r, client_w))
    finally:
        for writer in (gw_w, client_w):
            writer.close()


async def run(listen: str, socket_path: str, argv: Sequence[str]) -> int:
    """Serve the relay on ``listen`` while ``argv`` runs; return the agent's exit status."""
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(
        lambda r, w: _relay(socket_path, r, w), host or "127.0.0.1", int(port)
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
    try:
        proc = await asyncio.create_subprocess_exec(*argv)
    except OSError as exc:
        sys.stderr.write(f"corral: the agent could not start: {argv[0]}: {exc}\n")
        return 127
    code = await proc.wait()
    server.close()
    return code if code >= 0 else 128 - code


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral.runs.forward")
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve the gateway on")
    parser.add_argument("--socket", required=True, help="the gateway's Unix socket")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- the agent's command line")
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no agent command line after --")
    sys.exit(asyncio.run(run(ns.listen, ns.socket, argv)))


if __name__ == "__main__":
    main()
