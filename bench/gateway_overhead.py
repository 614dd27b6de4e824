"""Gateway overhead: the simulator called directly, through Corral and through LiteLLM.

Every cell is one wrk run of ``POST /v1/chat/completions`` at a fixed number
of connections, after a short warm-up at the same concurrency. Cells are
interleaved (direct, Corral, LiteLLM for each mode and concurrency) so that
drift on a shared machine hits every target alike; overhead is a gateway's
percentile minus the direct percentile of the same mode and concurrency.

With ``--baseline REF`` a second Corral, built from that git ref, is measured
like the first in every cell, both twice, and the report compares their CPU
per request and overheads (see ``baseline.py``).

Run alone: ``.venv/bin/python bench/gateway_overhead.py [--quick] [--baseline REF] [--no-litellm]``.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import baseline
from baseline import Checkout, Comparison, Sample, run_name
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
    """In the order measured; a target's later runs of a cell are named by ``run_name``."""
    litellm: str
    """LiteLLM's version when it was measured, else why it was not."""
    metering: str
    self_reported: list[str]
    baseline: str | None = None
    """The baseline Corral's target name, when one was measured."""

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
        base = _checkout(stack, options, workdir, facts)
        procs = stack.enter_context(Processes(workdir))
        sim = start_sim(procs, free_port())
        corral = start_corral(procs, free_port(), sim.base_url, workdir / "corral-home")
        corrals = [corral, *([_start_baseline(procs, sim, base, workdir)] if base else [])]
        peer, litellm = _try_litellm(procs, sim.base_url, workdir, options)
        targets = [sim, *(c.target for c in corrals), *([peer] if peer else [])]
        repeated = [c.target for c in corrals] if base else []
        bench = Bench(Wrk(workdir), options, targets)
        schedule = _schedule(targets, repeated, options.rounds)
        cells = [measure(bench, t, m, c) for m, c, t in schedule]
        metering = _metering(corral, bench.wrk)
        self_reported = [_self_reported_overhead(c) for c in corrals]
    facts["LiteLLM"] = litellm if peer else "not measured"
    name = corrals[-1].target.name if base else None
    run = Run(started, options, facts, cells, litellm, metering, self_reported, name)
    return _section(run)


def _checkout(
    stack: contextlib.ExitStack, options: Options, workdir: Path, facts: dict[str, str]
) -> Checkout | None:
    """The baseline's worktree, if one was asked for (it outlives the processes started after)."""
    if options.baseline is None:
        return None
    base = stack.enter_context(baseline.checkout(options.baseline, workdir))
    facts["Corral"] += f" ({baseline.working_tree()})"
    facts[_baseline_name(base)] = f"commit {base.commit}: {base.subject}"
    return base


def _baseline_name(base: Checkout) -> str:
    return f"{CORRAL} @{base.commit}"


def _start_baseline(procs: Processes, sim: Target, base: Checkout, workdir: Path) -> Corral:
    home = workdir / "baseline-home"
    name = _baseline_name(base)
    return start_corral(procs, free_port(), sim.base_url, home, name=name, source=base.source)


def _try_litellm(
    procs: Processes, sim_url: str, workdir: Path, options: Options
) -> tuple[Target | None, str]:
    """Start LiteLLM (installing it on first use); on failure, say why instead of a figure."""
    if not options.litellm:
        return None, "skipped (`--no-litellm`)"
    try:
        litellm_version = ensure_litellm()
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        return None, f"could not be installed: {exc}"
    try:
        return start_litellm(procs, free_port(), sim_url, workdir), litellm_version
    except BenchError as exc:
        return None, f"LiteLLM {litellm_version} did not start: {exc}"


def _schedule(
    targets: list[Target], repeated: list[Target], rounds: int
) -> Iterator[tuple[Mode, int, Target]]:
    """Each target once per cell, then ``repeated`` in further rounds, reversing the order
    each round (ABBA...), each run named by its round."""
    for mode in MODES:
        for connections in CONCURRENCY:
            for target in targets:
                yield mode, connections, target
            for round_ in range(2, rounds + 1 if repeated else 2):
                order = reversed(repeated) if round_ % 2 == 0 else iter(repeated)
                for target in order:
                    yield mode, connections, replace(target, name=run_name(target.name, round_))


def _metering(corral: Corral, wrk: Wrk, timeout: float = 60.0) -> str:
    """Compare Corral's prediction records with the responses wrk completed through it.

    Records are written in batches off the request path, so the count is read
    again until it reaches the completed responses or ``timeout`` passes.
    """
    completed = wrk.completed[corral.target.load(stream=False).url]
    start = time.monotonic()
    while True:
        time.sleep(2.0)
        try:
            rows = json.loads(corral.cli("usage", "--by", "key", "--json"))
        except (BenchError, ValueError) as exc:
            return f"could not read usage back: {exc}"
        recorded = sum(int(row["requests"]) for row in rows)
        waited = time.monotonic() - start
        if recorded >= completed or waited > timeout:
            break
    return (
        f"`corral usage --by key` counts {recorded:,} requests for the bench key {waited:.0f} s "
        f"after the last cell; wrk completed {completed:,} responses through Corral (plus "
        "start-up probes; wrk abandons requests in flight when each run ends, so slightly more "
        "records than completed responses is right)."
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
    name = corral.target.name
    if not values:
        return f"{name} sent no `x-corral-overhead-ms` header."
    cuts = statistics.quantiles(values, n=100)
    return (
        f"{name}: `x-corral-overhead-ms` over {len(values)} sequential non-streaming requests: "
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
    lines += [_litellm_line(run), *run.self_reported, run.metering, noise_line(run.cells)]
    lines.append(failure_line(run.cells))
    return [line for line in lines if line]


def _setup(run: Run) -> str:
    o = run.options
    body = chat_body(stream=False).decode()
    text = (
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
    if run.baseline is None:
        return text
    return text + (
        f" {run.baseline}: the same `corral serve`, run from that commit's source (a git "
        "worktree, `python -m corral serve` with its `src` on `PYTHONPATH`, the same venv), set "
        "up and measured like Corral in every cell, on the same core; each server has its own "
        f"store. Rows named *(run n)* are a server's n-th run of a cell."
    )


# --- against the baseline -------------------------------------------------------------------


def _runs_of(run: Run, target: str, stream: bool, connections: int) -> list[Cell]:
    names = (run_name(target, r) for r in range(1, run.options.rounds + 1))
    cells = (run.find(name, stream, connections) for name in names)
    return [cell for cell in cells if cell is not None]


def _samples(run: Run, cell: Cell) -> tuple[Sample, Sample, Sample]:
    """CPU per request, +P50 and +P99 of a gateway cell (an overhead's noise is its latency's)."""
    over = _overhead(run, cell) or (math.nan, math.nan)
    r = cell.result
    cpu = cell.cpu_us_per_request
    return Sample(cpu, cpu), Sample(over[0], r.p50_ms), Sample(over[1], r.p99_ms)


def _comparisons(run: Run) -> list[Comparison]:
    if run.baseline is None:
        return []
    found = []
    for mode in MODES:
        for connections in CONCURRENCY:
            ours = _runs_of(run, CORRAL, mode.stream, connections)
            theirs = _runs_of(run, run.baseline, mode.stream, connections)
            if ours and theirs:
                change = [_samples(run, c) for c in ours]
                base = [_samples(run, c) for c in theirs]
                found += baseline.compare(mode.name, connections, change, base)
    return found


def _against_baseline(run: Run) -> str:
    """The comparison table and its check lines, or "" when no baseline was measured."""
    comparisons = _comparisons(run)
    if run.baseline is None or not comparisons:
        return ""
    judgements = baseline.judge(comparisons)
    table = baseline.comparison_table(judgements)
    how = baseline.tolerance_text(CORRAL, run.baseline, run.options.rounds)
    lines = [
        baseline.verdict_line(judgements, CORRAL, run.baseline),
        *(j.line() for j in judgements),
    ]
    listed = "\n".join(f"- {line}" for line in lines)
    return f"### {CORRAL} against {run.baseline}\n\n{how}\n\n{table}\n\n{listed}\n"


def _markdown(run: Run) -> str:
    facts = facts_table(run.facts)
    reading = "\n".join(f"- {line}" for line in _reading(run))
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    against = _against_baseline(run)
    return (
        f"## {TITLE}\n\nCommand: {_command(run.options)}, run {when}.\n\n"
        f"{facts}\n\n{_setup(run)}\n\n{_figures(run)}\n\n{_checks_table(run)}\n\n"
        f"Reading (computed from this run):\n\n{reading}\n" + (f"\n{against}" if against else "")
    )


def _command(options: Options) -> str:
    flags = f" --baseline {options.baseline}" if options.baseline else ""
    flags += f" --rounds {options.rounds}" if options.baseline and options.rounds != 2 else ""
    flags += "" if options.litellm else " --no-litellm"
    return command(NAME, options, flags)


def _section(run: Run) -> Section:
    console = f"{_figures(run)}\n\n{_checks_table(run)}\n\n" + "\n".join(_reading(run))
    against = _against_baseline(run)
    return Section(NAME, TITLE, console + (f"\n\n{against}" if against else ""), _markdown(run))


if __name__ == "__main__":
    from run import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
