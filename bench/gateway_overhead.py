"""Gateway overhead: the simulator called directly, through Corral and through LiteLLM.

Every cell is one wrk run of ``POST /v1/chat/completions`` at a fixed number
of connections, after a short warm-up at the same concurrency. Cells are
interleaved (direct, Corral, LiteLLM for each mode and concurrency) so that
drift on a shared machine hits every target alike; overhead is a gateway's
percentile minus the direct percentile of the same mode and concurrency.

Run alone: ``.venv/bin/python bench/gateway_overhead.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from cells import (
    ATTEMPTS,
    NOISY,
    NON_STREAM,
    STREAM,
    Bench,
    Cell,
    Mode,
    command,
    facts_table,
    failed,
    failure_line,
    measure,
    noise_line,
    others,
)
from harness import (
    BenchError,
    Options,
    Processes,
    Section,
    free_port,
    machine_facts,
    markdown_table,
)
from targets import (
    Corral,
    Target,
    chat_body,
    ensure_litellm,
    post,
    start_corral,
    start_litellm,
    start_sim,
)
from wrk import Wrk

NAME = "gateway_overhead"
TITLE = "Gateway overhead: simulator direct, through Corral, through LiteLLM"
CONCURRENCY = (1, 16, 64)
MODES = (NON_STREAM, STREAM)
STREAM_MODES = (False, True)
DIRECT, CORRAL, LITELLM = "sim direct", "Corral", "LiteLLM"


@dataclass(frozen=True, slots=True)
class Check:
    """One target from the issue, with what was measured and the verdict."""

    goal: str
    measured: str
    verdict: str


@dataclass(frozen=True, slots=True)
class Run:
    """Everything one run produced, for the report."""

    started: datetime
    options: Options
    facts: dict[str, str]
    cells: list[Cell]
    litellm: str
    """LiteLLM's version when it was measured, else why it was not."""
    metering: str
    self_reported: str

    @property
    def litellm_measured(self) -> bool:
        return any(cell.target == LITELLM for cell in self.cells)

    def find(self, target: str, stream: bool, connections: int) -> Cell | None:
        key = (target, stream, connections)
        return next((c for c in self.cells if (c.target, c.stream, c.connections) == key), None)


# --- measuring ------------------------------------------------------------------------------


def run(options: Options) -> Section:
    started = datetime.now(UTC)
    facts = {**machine_facts(), "Corral": version("corral")}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-bench-")))
        procs = stack.enter_context(Processes(workdir))
        sim = start_sim(procs, free_port())
        corral = start_corral(procs, free_port(), sim.base_url, workdir / "corral-home")
        peer, litellm = _try_litellm(procs, sim.base_url, workdir)
        targets = [sim, corral.target, *([peer] if peer else [])]
        bench = Bench(Wrk(workdir), options, targets)
        cells = [measure(bench, t, m, c) for m, c, t in _schedule(targets)]
        metering = _metering(corral, bench.wrk)
        self_reported = _self_reported_overhead(corral)
    facts["LiteLLM"] = litellm if peer else "not measured"
    return _section(Run(started, options, facts, cells, litellm, metering, self_reported))


def _try_litellm(procs: Processes, sim_url: str, workdir: Path) -> tuple[Target | None, str]:
    """Start LiteLLM (installing it on first use); on failure, say why instead of a figure."""
    try:
        litellm_version = ensure_litellm()
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        return None, f"could not be installed: {exc}"
    try:
        return start_litellm(procs, free_port(), sim_url, workdir), litellm_version
    except BenchError as exc:
        return None, f"LiteLLM {litellm_version} did not start: {exc}"


def _schedule(targets: list[Target]) -> Iterator[tuple[Mode, int, Target]]:
    for mode in MODES:
        for connections in CONCURRENCY:
            for target in targets:
                yield mode, connections, target


def _metering(corral: Corral, wrk: Wrk) -> str:
    """Compare Corral's prediction records with the responses wrk completed through it."""
    completed = wrk.completed[corral.target.load(stream=False).url]
    time.sleep(2.0)  # records are written in batches off the request path
    try:
        rows = json.loads(corral.cli("usage", "--by", "key", "--json"))
    except (BenchError, ValueError) as exc:
        return f"could not read usage back: {exc}"
    recorded = sum(int(row["requests"]) for row in rows)
    return (
        f"`corral usage --by key` counts {recorded:,} requests for the bench key; wrk completed "
        f"{completed:,} responses through Corral (plus start-up probes; wrk abandons requests in "
        "flight when each run ends, so slightly more records than completed responses is right)."
    )


def _self_reported_overhead(corral: Corral, samples: int = 300) -> str:
    """Corral's own ``x-corral-overhead-ms`` over sequential non-streaming requests."""
    load = corral.target.load(stream=False)
    values: list[float] = []
    for _ in range(samples):
        status, headers, _body = post(load)
        header = {k.lower(): v for k, v in headers.items()}.get("x-corral-overhead-ms")
        if status == 200 and header is not None:
            values.append(float(header))
    if not values:
        return "Corral sent no `x-corral-overhead-ms` header."
    cuts = statistics.quantiles(values, n=100)
    return (
        f"`x-corral-overhead-ms` over {len(values)} sequential non-streaming requests: "
        f"P50 {cuts[49]:.3f} ms, P99 {cuts[98]:.3f} ms (Corral's own clock: total minus upstream)."
    )


# --- reporting ------------------------------------------------------------------------------

HEADERS = (
    "mode", "conc", "target", "req/s", "P50 ms", "P99 ms",
    "+P50 ms", "+P99 ms", "gateway CPU", "CPU µs/req", "others c0/c1", "failed",
)  # fmt: skip


def _overhead(run: Run, cell: Cell) -> tuple[float, float] | None:
    """(P50, P99) of a gateway cell minus those of the direct cell of the same shape."""
    direct = run.find(DIRECT, cell.stream, cell.connections)
    if cell.target == DIRECT or direct is None:
        return None
    return (
        cell.result.p50_ms - direct.result.p50_ms,
        cell.result.p99_ms - direct.result.p99_ms,
    )


def _row(run: Run, cell: Cell) -> list[str]:
    r, over = cell.result, _overhead(run, cell)
    direct = cell.target == DIRECT
    gateway_cpu = "–" if direct else f"{cell.cpu.gateway:.0f} %"
    per_request = "–" if direct else f"{cell.cpu_us_per_request:.0f}"
    return [
        cell.mode.name,
        str(cell.connections),
        cell.target,
        f"{r.rps:,.0f}",
        f"{r.p50_ms:.2f}",
        f"{r.p99_ms:.2f}",
        f"{over[0]:+.2f}" if over else "–",
        f"{over[1]:+.2f}" if over else "–",
        gateway_cpu,
        per_request,
        others(cell),
        failed(cell),
    ]


def _figures(run: Run) -> str:
    return markdown_table(HEADERS, [_row(run, cell) for cell in run.cells])


def _verdict(ok: bool | None) -> str:
    return "NOT MEASURED" if ok is None else ("PASS" if ok else "MISS")


def _overhead_check(run: Run, stream: bool, connections: int, p99: bool, limit: float) -> Check:
    label = "P99" if p99 else "P50"
    mode = "streaming" if stream else "non-streaming"
    goal = f"Corral overhead {label} <= {limit:g} ms at concurrency {connections}, {mode}"
    cell = run.find(CORRAL, stream, connections)
    over = _overhead(run, cell) if cell else None
    if over is None:
        return Check(goal, "–", _verdict(None))
    value = over[1] if p99 else over[0]
    return Check(goal, f"{value:+.2f} ms", _verdict(value <= limit))


def _throughput_check(run: Run) -> Check:
    goal = "Corral >= 2,000 requests/s at concurrency 64, non-streaming"
    cell, direct = run.find(CORRAL, False, 64), run.find(DIRECT, False, 64)
    if cell is None or direct is None:
        return Check(goal, "–", _verdict(None))
    measured = f"{cell.result.rps:,.0f} req/s (sim direct {direct.result.rps:,.0f})"
    return Check(goal, measured, _verdict(cell.result.rps >= 2000))


def _ratio(run: Run, stream: bool) -> float | None:
    ours, theirs = run.find(CORRAL, stream, 64), run.find(LITELLM, stream, 64)
    if ours is None or theirs is None or theirs.result.rps <= 0:
        return None
    return ours.result.rps / theirs.result.rps


def _ratio_check(run: Run) -> Check:
    goal = "Corral >= 15x LiteLLM's requests/s, same run (concurrency 64, non-streaming)"
    ratio = _ratio(run, stream=False)
    if ratio is None:
        return Check(goal, "LiteLLM not measured (see below)", _verdict(None))
    return Check(goal, f"{ratio:.1f}x", _verdict(ratio >= 15))


def _checks(run: Run) -> list[Check]:
    return [
        *(_overhead_check(run, s, 1, p99=False, limit=0.5) for s in STREAM_MODES),
        *(_overhead_check(run, s, 16, p99=True, limit=3.0) for s in STREAM_MODES),
        _throughput_check(run),
        _ratio_check(run),
    ]


def _checks_table(run: Run) -> str:
    rows = [[c.goal, c.measured, c.verdict] for c in _checks(run)]
    return markdown_table(("target (issue 2)", "measured", "verdict"), rows)


def _capacity_line(run: Run, stream: bool) -> str:
    direct, ours = run.find(DIRECT, stream, 64), run.find(CORRAL, stream, 64)
    if direct is None or ours is None:
        return ""
    mode = "streaming" if stream else "non-streaming"
    share = 100 * ours.result.rps / max(direct.result.rps, 1e-9)
    cpu = ours.cpu
    return (
        f"At concurrency 64, {mode}, Corral served {ours.result.rps:,.0f} req/s, {share:.0f} % "
        f"of the simulator called directly ({direct.result.rps:,.0f} req/s), using "
        f"{ours.cpu_us_per_request:.0f} µs of CPU per request. Core 0: Corral "
        f"{cpu.gateway:.0f} %, outside load {cpu.other_gateway_core:.0f} %; core 1: simulator "
        f"and wrk {cpu.load:.0f} %, outside load {cpu.other_load_core:.0f} %."
    )


def _litellm_line(run: Run) -> str:
    if not run.litellm_measured:
        reason = " ".join(run.litellm.split())  # a log tail must not break the list
        return f"LiteLLM was not measured: {reason[:600]}"
    parts = []
    for stream in STREAM_MODES:
        cell, ratio = run.find(LITELLM, stream, 64), _ratio(run, stream)
        if cell is not None and ratio is not None:
            mode = "streaming" if stream else "non-streaming"
            parts.append(f"{cell.result.rps:,.0f} req/s {mode} (Corral {ratio:.1f}x)")
    return f"LiteLLM {run.litellm} at concurrency 64: " + ", ".join(parts) + "."


def _reading(run: Run) -> list[str]:
    lines = [_capacity_line(run, s) for s in STREAM_MODES]
    lines += [_litellm_line(run), run.self_reported, run.metering, noise_line(run.cells)]
    lines.append(failure_line(run.cells))
    return [line for line in lines if line]


def _setup(run: Run) -> str:
    o = run.options
    body = chat_body(stream=False).decode()
    return (
        f"The gateway under test runs alone on core 0 (`taskset -c 0`); `corral sim` (defaults: "
        "no latency, no faults) and `wrk` (one thread, Lua body script) share core 1; loopback "
        f"only. Each cell is {o.cell_seconds} s of `wrk` after a {o.warmup_seconds} s warm-up at "
        "the same concurrency; cells are interleaved (direct, Corral, LiteLLM for each mode and "
        f"concurrency). Request: `POST /v1/chat/completions` with `{body}`, plus "
        '`"stream":true` when streaming (latency is then to the last byte of the stream). '
        "Corral: one `corral serve` process, SQLite store, metering on, a virtual key. LiteLLM: "
        "`litellm --num_workers 1`, one model `openai/sim-economy` on the same simulator, no "
        "database, no callbacks, local price table, `LITELLM_LOG=ERROR`. Overhead (+P50, +P99) "
        "is the gateway's percentile minus the direct percentile at the same concurrency and "
        "mode. *gateway CPU* is the gateway's use of core 0 and *CPU µs/req* that use per "
        "request; *others c0/c1* is what processes outside the benchmark used of core 0 and "
        f"core 1 during the cell (the machine is shared): a cell with more than {NOISY:.0f} % "
        f"on a core it depends on is redone, up to {ATTEMPTS} attempts, keeping the quietest."
    )


def _markdown(run: Run) -> str:
    facts = facts_table(run.facts)
    reading = "\n".join(f"- {line}" for line in _reading(run))
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {TITLE}\n\nCommand: {command(NAME, run.options)}, run {when}.\n\n"
        f"{facts}\n\n{_setup(run)}\n\n{_figures(run)}\n\n{_checks_table(run)}\n\n"
        f"Reading (computed from this run):\n\n{reading}\n"
    )


def _section(run: Run) -> Section:
    console = f"{_figures(run)}\n\n{_checks_table(run)}\n\n" + "\n".join(_reading(run))
    return Section(NAME, TITLE, console, _markdown(run))


if __name__ == "__main__":
    from run import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
