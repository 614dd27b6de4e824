"""The CPU half of ``bench/guards.py``: an agent's calls through two ``corral serve`` processes,
guards off and every detector on, the same wrk cells interleaved; and the same judging timed
in this process with the engine's own step, without a server's noise.

The body is an agent's (a system prompt, a task, tool calls and their results: 21 messages,
~8 KB), so the last turn the detectors read is real work. wrk sends ``VARIANTS`` bodies in
turn that differ in the last tool result, as an agent's successive calls do: the loop
detectors judge every call at their shipped thresholds without seeing a loop. Only the
thresholds plain volume crosses (``ceiling``, ``velocity``) are raised, so the figure is
what judging costs, not what acting does.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from baseline import run_name
from cells import Bench, Cell, Mode, measure
from harness import BenchError, Options, Processes, free_port
from targets import CHAT_PATH, MODEL, Corral, Target, start_corral, start_sim
from wrk import LUA, Load, Wrk, WrkResult

OFF, ON = "guards off", "guards on"
CONCURRENCY = (1, 16)
VARIANTS = 16
OFF_CONFIG = "[guards]\nenabled = false\n"
ON_CONFIG = """\
[guards]
enabled = true
[guards.detectors.ceiling]
thresholds = { tokens_per_minute = 1e15, usd_per_minute = 1e9 }
[guards.detectors.velocity]
thresholds = { z = 1e9 }
"""
"""Every detector on; only the thresholds plain volume crosses are raised (see the module)."""


# --- the agent's body -------------------------------------------------------------------------

SYSTEM = (
    "You are a coding agent working in a Python repository checked out in /workspace. "
    "Work in small steps: read the code you need, change it, run the tests, and stop when "
    "they pass. Use the tools given; never guess a file's content. " * 6
)
TASK = "The payments service rounds refunds the wrong way; fix it and add a test. " * 3


def _source(name: str, lines: int) -> str:
    return "\n".join(
        f"{i:4d}  def {name}_{i}(amount, currency):  return quantize(amount * RATE[{i}], currency)"
        for i in range(lines)
    )


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip


def agent_messages(variant: int) -> list[dict[str, Any]]:
    """System, task, eight tool rounds, then two tool calls at once: the last turn, whose
    second result (a test run) differs by ``variant``."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": TASK},
    ]
    for step in range(8):
        path = f"payments/refunds_{step}.py"
        calls = [_call(f"c{step}", "read_file", {"path": path})]
        messages.append({"role": "assistant", "content": f"Reading {path}.", "tool_calls": calls})
        messages.append({"role": "tool", "tool_call_id": f"c{step}", "content": _source("r", 6)})
    messages.append({"role": "assistant", "content": "Checking the fix.", "tool_calls": [
        _call("c8", "read_file", {"path": "payments/rounding.py"}),
        _call("c9", "run_tests", {"path": "tests/test_refunds.py"}),
    ]})  # fmt: skip
    messages.append({"role": "tool", "tool_call_id": "c8", "content": _source("q", 4)})
    passed = 40 + variant
    result = f"{passed} passed, 1 failed in {0.5 + variant / 10:.2f}s"
    messages.append({"role": "tool", "tool_call_id": "c9", "content": result})
    return messages


def agent_body(variant: int, *, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": agent_messages(variant), "max_tokens": 64}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class AgentMode(Mode):
    """The agent's bodies, ``VARIANTS`` of them one a line (``RotatingWrk`` sends them in turn)."""

    def load(self, target: Target) -> Load:
        bodies = b"\n".join(agent_body(v, stream=self.stream) for v in range(VARIANTS))
        return Load(target.base_url + CHAT_PATH, bodies, target.authorization)


MODES = (AgentMode("agent", stream=False), AgentMode("agent stream", stream=True))

# Compact JSON has no raw newline, so the bodies are a file's lines (together they exceed what
# one environment variable may hold); each request is formatted once at start and the
# connection sends them in turn.
ROTATE = """
local bodies, requests, turn = {}, {}, 0
for body in io.lines("{bodies}") do bodies[#bodies + 1] = body end
function init(args)
  for i, body in ipairs(bodies) do requests[i] = wrk.format(nil, nil, nil, body) end
end
function request()
  turn = turn % #requests + 1
  return requests[turn]
end
"""


class RotatingWrk(Wrk):
    """wrk sending a load's bodies (its lines) in turn: the shared script, plus rotation."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._bodies = workdir / "bodies.jsonl"
        shared = LUA.replace('os.getenv("BENCH_BODY")', '""')
        self._script.write_text(shared + ROTATE.replace("{bodies}", str(self._bodies)))

    def run(self, load: Load, *, connections: int, seconds: int) -> WrkResult:
        self._bodies.write_bytes(load.body)
        return super().run(replace(load, body=b""), connections=connections, seconds=seconds)


# --- CPU per request: guards off against every detector on ------------------------------------


@dataclass(frozen=True, slots=True)
class CpuRun:
    """Part 1: the cells, the judging timed in this process, what the processes' guards did."""

    cells: list[Cell]
    rounds: int
    judging: Judging
    checks: list[str]


def measure_cpu(options: Options, workdir: Path) -> CpuRun:
    rounds = max(options.rounds, 2 if options.quick else 3)
    with Processes(workdir) as procs:
        sim = start_sim(procs, free_port())
        corrals = [_start(procs, sim, workdir, name, config)
                   for name, config in ((OFF, OFF_CONFIG), (ON, ON_CONFIG))]  # fmt: skip
        targets = [c.target for c in corrals]
        bench = Bench(RotatingWrk(workdir), options, targets, helpers=(sim.service,))
        cells = [measure(bench, t, m, c) for m, c, t in _schedule(targets, rounds)]
        checks = _judged(bench.wrk, corrals)
    judging = judging_cost(2_000 if options.quick else 20_000)
    return CpuRun(cells, rounds, judging, checks)


def _start(procs: Processes, sim: Target, workdir: Path, name: str, config: str) -> Corral:
    home = workdir / f"home-{name.replace(' ', '-')}"
    home.mkdir()
    (home / "corral.toml").write_text(config)
    env = {"CORRAL_CONFIG": str(home / "corral.toml")}
    return start_corral(procs, free_port(), sim.base_url, home, name=name, env=env)


def _schedule(targets: list[Target], rounds: int) -> Iterator[tuple[Mode, int, Target]]:
    """Each cell ``rounds`` times per target, the order reversed from one round to the next."""
    for mode in MODES:
        for connections in CONCURRENCY:
            for round_ in range(1, rounds + 1):
                for target in targets if round_ % 2 else targets[::-1]:
                    yield mode, connections, replace(target, name=run_name(target.name, round_))


def scrape(corral: Corral) -> dict[str, float]:
    """The process's /metrics samples, by name and labels (``name{label="v"}``)."""
    url = corral.target.base_url.removeprefix("http://")
    conn = http.client.HTTPConnection(url, timeout=10)
    try:
        admin = corral.admin_env["CORRAL_ADMIN_KEY"]
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {admin}"})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            samples[name] = float(number)
    return samples


def _judged(wrk: Wrk, corrals: list[Corral]) -> list[str]:
    """That the "on" process judged every call and nothing fired, from its /metrics."""
    time.sleep(2.0)  # the worker drains its queue after the last responses
    lines = []
    for corral in corrals:
        samples = scrape(corral)
        found = {k: v for k, v in samples.items() if k.startswith("corral_guard_findings_total")}
        fired = sum(found.values())
        judged = samples.get("corral_guard_signals_judged_total", 0.0)
        dropped = samples.get("corral_guard_signals_dropped_total", 0.0)
        completed = wrk.completed[corral.target.base_url + CHAT_PATH]
        lines.append(
            f"{corral.target.name}: its guards' worker took {judged:,.0f} calls off its queue "
            f"(wrk completed {completed:,}; wrk abandons the calls in flight when a run ends, "
            f"and start-up probes count too), dropped {dropped:,.0f}; findings over "
            f"{len(found)} detectors: {fired:,.0f} (`/metrics`)."
        )
        if corral.target.name == ON and (fired or dropped or judged < completed or not found):
            raise BenchError("the guards-on process did not judge every call quietly: " + lines[-1])
    return lines


class _NoActions:
    """What ``Guards._judge`` reads of its actions: no marks; a finding is a failed run."""

    def __init__(self) -> None:
        self.marks: dict[str, object] = {}

    def fire(self, *args: object, **kwargs: object) -> None:
        raise BenchError("a detector fired on the agent's calls; the CPU figures would include it")


@dataclass(frozen=True, slots=True)
class Judging:
    """The worker's CPU µs per call judging the agent's calls, timed in this process."""

    key: float
    """Every detector on, a person's key (the detectors that watch keys)."""
    run: float
    """Every detector on, a run (the run-only detectors too)."""
    off: float
    """Guards off: the worker takes the call and finds no detector to feed."""
    turn: float
    """Of which: reading the request's last turn (the protocol adapter's ``turn``)."""
    medians: dict[str, float]
    """The same figures, the median pass's (the above are the least: what it costs when
    nothing else on this shared machine takes the core from it)."""


def judging_cost(calls: int, repeats: int = 9) -> Judging:
    """The engine's own step for one queued call (``Guards._judge``: the last turn read, every
    detector fed) over ``calls`` agent calls at 2,000 a second, in thread CPU time, on one
    core; each figure the least of ``repeats`` passes (noise on a shared machine only adds
    time), the passes interleaved."""
    import tomllib

    from corral.clock import ManualClock
    from corral.gateway.hooks import FinishedCall, Request
    from corral.guards.actions import Actions
    from corral.guards.detectors import builtin_detectors
    from corral.guards.engine import Guards
    from corral.guards.model import Subject
    from corral.guards.policy import Policy
    from corral.guards.switches import Switches
    from corral.identity.keys import KeyInfo
    from corral.protocols import ADAPTERS
    from corral.settings import GuardsConfig

    key = KeyInfo("key_bench", "member", "org", "team_bench", "user_bench", None, None, None,
                  None, None, team_name="bench")  # fmt: skip
    bodies = [json.loads(agent_body(v, stream=False)) for v in range(VARIANTS)]
    finished = []
    for i in range(calls):
        body = bodies[i % VARIANTS]
        request = Request(f"req_{i}", key, "chat", MODEL, False, body, {}, CHAT_PATH)
        span = {"span_id": f"{i:016x}", "status": "ok", "http_status": 200,
                "input_tokens": 2_000, "output_tokens": 60, "cost_nusd": 150_000}  # fmt: skip
        finished.append(FinishedCall(key, (span,), request))

    def judge(config: str, subject: Subject) -> float:
        settings = GuardsConfig.model_validate(tomllib.loads(config)["guards"])
        guards = Guards(
            policy=Policy(settings, builtin_detectors()), actions=cast(Actions, _NoActions()),
            switches=cast(Switches, None), clock=ManualClock(), queue_max=calls,
            refresh_interval=1.0, sample_interval=1.0,
        )  # fmt: skip
        began = time.thread_time()
        for i, call in enumerate(finished):
            guards._judge(subject, call, 1.8e9 + i * 0.0005)
        return 1e6 * (time.thread_time() - began) / calls

    def turn() -> float:
        adapter = ADAPTERS["chat"]
        began = time.thread_time()
        for call in finished:
            adapter.turn(cast(Request, call.request).body)
        return 1e6 * (time.thread_time() - began) / calls

    passes: dict[str, list[float]] = {"key": [], "run": [], "off": [], "turn": []}
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(affinity)})  # this thread, one core: no migration mid-pass
    try:
        for _ in range(repeats):
            passes["key"].append(judge(ON_CONFIG, Subject("key", key.key_id)))
            passes["run"].append(judge(ON_CONFIG, Subject("run", "run_bench")))
            passes["off"].append(judge(OFF_CONFIG, Subject("key", key.key_id)))
            passes["turn"].append(turn())
    finally:
        os.sched_setaffinity(0, affinity)
    return Judging(
        **{name: min(v) for name, v in passes.items()},
        medians={name: statistics.median(v) for name, v in passes.items()},
    )
