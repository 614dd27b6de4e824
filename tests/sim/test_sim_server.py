"""Serving: in-process start/stop, pacing, the CLI, and the public surface."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
from simhelp import post, request

import corral.sim
from corral.sim import SimConfig, SimServer, bind_socket, create_sim_app
from corral.sim.testing import RunningSim, running_sim

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_public_surface() -> None:
    """The names other parts of Corral import are exported."""
    for name in ("SimConfig", "SimServer", "create_sim_app", "serve_sim", "parse_model_name"):
        assert name in corral.sim.__all__
        assert hasattr(corral.sim, name)


def test_in_process_server_on_a_bound_socket() -> None:
    """The gateway's way: bind port 0, start in the running loop, call it, stop."""

    async def scenario() -> tuple[int, list[str]]:
        sock = bind_socket("127.0.0.1", 0)
        server = SimServer(SimConfig())
        await server.start(sock)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{server.url}/v1/models") as response,
            ):
                listed = await response.json()
                return response.status, [model["id"] for model in listed["data"]]
        finally:
            await server.stop()

    status, ids = asyncio.run(scenario())
    assert status == 200
    assert ids == list(corral.sim.STANDARD_MODELS)


def test_stop_ends_hung_faults_promptly() -> None:
    """Stopping does not wait for a 300 s stall: hung requests are dropped at once."""

    async def scenario() -> float:
        async with SimServer(SimConfig()) as server, aiohttp.ClientSession() as session:
            hung = asyncio.create_task(
                session.post(
                    server.url + CHAT, json={**BODY, "model": "sim-standard+fault=timeout"}
                )
            )
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            await server.stop()
            elapsed = time.perf_counter() - started
            with pytest.raises(aiohttp.ClientError):
                await hung
            return elapsed

    assert asyncio.run(scenario()) < 1.5


def test_ttft_and_tps_pacing() -> None:
    """Time to first byte follows ttft; the whole stream follows tokens per second."""
    with running_sim(SimConfig(ttft_ms=150, tokens_per_second=400)) as sim:

        async def timed() -> tuple[float, float]:
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                async with session.post(sim.url + CHAT, json=BODY) as response:
                    first = time.perf_counter() - started
                    await response.read()
                    return first, time.perf_counter() - started

        first, total = asyncio.run(timed())
        tokens = post(sim.url, CHAT, {**BODY, "stream": False}).json()["usage"]["completion_tokens"]
    assert first >= 0.15
    assert total >= 0.15 + tokens / 400 * 0.9


def test_per_request_latency_overrides(sim: RunningSim) -> None:
    """The x-sim-ttft-ms header and the ttft model option set latency per request."""
    started = time.perf_counter()
    post(sim.url, CHAT, {**BODY, "stream": False}, {"x-sim-ttft-ms": "200"})
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    post(sim.url, CHAT, {**BODY, "model": "sim-standard+ttft=150"})
    assert time.perf_counter() - started >= 0.15


def test_routes_and_errors(sim: RunningSim) -> None:
    """Unknown paths are 404, wrong methods 405; single models are served; /v1 is optional."""
    assert request("GET", sim.url, "/v1/nothing").status == 404
    assert request("GET", sim.url, CHAT).status == 405
    one = request("GET", sim.url, "/v1/models/sim-anything")
    assert one.status == 200
    assert one.json()["id"] == "sim-anything"
    assert request("GET", sim.url, "/models").status == 200
    assert post(sim.url, "/chat/completions", {**BODY, "stream": False}).status == 200


def test_in_process_asgi_call_without_a_server() -> None:
    """The app is a plain ASGI callable: it can be driven without any server."""
    app = create_sim_app(SimConfig(seed=1))
    sent: list[dict[str, object]] = []

    async def scenario() -> None:
        body = orjson.dumps({**BODY, "stream": False})
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, object]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": CHAT, "headers": []}
        await app(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(scenario())
    assert sent[0]["status"] == 200
    payload = orjson.loads(sent[1]["body"])  # type: ignore[arg-type]
    assert payload["object"] == "chat.completion"


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGINT")
def test_cli_prints_its_url_and_stops_on_ctrl_c() -> None:
    """``corral sim --port 0`` prints the URL, serves it, and exits cleanly on SIGINT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "corral", "sim", "--port", "0", "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Corral simulator serving http://127.0.0.1:")
        url = line.split()[3]
        deadline = time.monotonic() + 10
        while True:
            try:
                assert request("HEAD", url, "/").status == 200
                break
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_leaves_host_logging_alone(caplog: pytest.LogCaptureFixture) -> None:
    """No access log lines, and uvicorn's shared loggers keep the host's settings."""
    access = logging.getLogger("uvicorn.access")
    before = (list(access.handlers), access.propagate)
    with caplog.at_level(logging.INFO), running_sim() as sim:
        assert post(sim.url, CHAT, {**BODY, "stream": False}).status == 200
    assert (list(access.handlers), access.propagate) == before
    assert not [record for record in caplog.records if record.name == "uvicorn.access"]
