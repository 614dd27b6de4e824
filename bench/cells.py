"""Cells of the gateway benchmarks: one wrk run of a target at a request mode and concurrency.

A cell is a warm-up at the cell's concurrency, then a measured wrk run with the
CPU of both cores sampled around it. A cell disturbed by load from outside the
benchmark is redone, up to ``ATTEMPTS`` runs, and the quietest run is kept.
The benchmarks interleave their cells across targets so that drift on a shared
machine hits every target alike.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from harness import (
    GATEWAY_CORE,
    LOAD_CORE,
    CpuSample,
    CpuUsage,
    Options,
    Service,
    markdown_table,
    wait_idle,
)
from targets import Target
from wrk import Load, Wrk, WrkResult

NOISY = 10.0
"""Outside load (% of a core) above which a cell is redone."""
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Mode:
    """What every request of a cell looks like."""

    name: str
    stream: bool
    capped: bool = True
    """Whether the body carries its own output cap (``max_tokens``)."""

    def load(self, target: Target) -> Load:
        return target.load(stream=self.stream, capped=self.capped)


NON_STREAM = Mode("non-stream", stream=False)
STREAM = Mode("stream", stream=True)


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured combination of target, mode and concurrency."""

    target: str
    mode: Mode
    connections: int
    result: WrkResult
    cpu: CpuUsage
    on_gateway_core: bool
    """Whether the target runs on the gateway core (a direct call to the simulator does not)."""
    attempts: int = 1
    """How many runs were made of this cell (the quietest is kept)."""

    @property
    def stream(self) -> bool:
        return self.mode.stream

    @property
    def cpu_us_per_request(self) -> float:
        """Gateway CPU time per completed request, in microseconds."""
        return 1e4 * self.cpu.gateway / self.result.rps if self.result.rps else 0.0


@dataclass(frozen=True, slots=True)
class Bench:
    """What every cell needs: the load generator, the run length and the running processes."""

    wrk: Wrk
    options: Options
    targets: list[Target]
    helpers: tuple[Service, ...] = ()
    """The benchmark's processes on the load core that are not targets (simulator, Redis).

    Their CPU counts as the benchmark's load, not as outside load.
    """

    def pgids(self, core: int) -> list[int]:
        pids = [t.service.pid for t in self.targets if t.core == core]
        if core == LOAD_CORE:
            pids += [h.pid for h in self.helpers]
        return pids


def measure(bench: Bench, target: Target, mode: Mode, connections: int) -> Cell:
    """The quietest of up to ``ATTEMPTS`` runs: a run disturbed by outside load is redone."""
    best = _measure_once(bench, target, mode, connections, attempt=1)
    attempt = 1
    while noise(best) > NOISY and attempt < ATTEMPTS:
        attempt += 1
        best = min(best, _measure_once(bench, target, mode, connections, attempt), key=noise)
    return replace(best, attempts=attempt)


def _measure_once(bench: Bench, target: Target, mode: Mode, connections: int, attempt: int) -> Cell:
    load, o = mode.load(target), bench.options
    wait_idle([*bench.pgids(GATEWAY_CORE), *bench.pgids(LOAD_CORE)])
    bench.wrk.run(load, connections=connections, seconds=o.warmup_seconds)
    on_gateway_core = target.core == GATEWAY_CORE
    gateway = [target.service.pid] if on_gateway_core else []
    loaders = bench.pgids(LOAD_CORE)
    before = CpuSample.take(gateway, loaders)
    result = bench.wrk.run(load, connections=connections, seconds=o.cell_seconds)
    cpu = CpuUsage.between(before, CpuSample.take(gateway, loaders))
    target.service.check_alive()
    cell = Cell(target.name, mode, connections, result, cpu, on_gateway_core)
    print(f"  {progress(cell)} (attempt {attempt})", file=sys.stderr, flush=True)
    return cell


def progress(cell: Cell) -> str:
    r = cell.result
    return (
        f"{cell.target:<10} {cell.mode.name:<10} c={cell.connections:<3} {r.rps:9.1f} req/s  "
        f"p50 {r.p50_ms:8.2f} ms  p99 {r.p99_ms:8.2f} ms  failures {r.failures}  "
        f"outside load {noise(cell):3.0f} %"
    )


def noise(cell: Cell) -> float:
    """The most any outside load took of a core this cell depends on."""
    if not cell.on_gateway_core:
        return cell.cpu.other_load_core
    return max(cell.cpu.other_gateway_core, cell.cpu.other_load_core)


# --- reporting ------------------------------------------------------------------------------


def noise_line(cells: Sequence[Cell]) -> str:
    worst = max(cells, key=noise)
    text = (
        "Load from outside the benchmark on the cores a cell depends on: median "
        f"{statistics.median(noise(c) for c in cells):.0f} %, worst {noise(worst):.0f} % "
        f"({worst.target}, {worst.mode.name}, c={worst.connections})."
    )
    redone = sum(1 for c in cells if c.attempts > 1)
    disturbed = sum(1 for c in cells if noise(c) > NOISY)
    if redone:
        were = "cell was" if redone == 1 else "cells were"
        text += f" {redone} {were} redone because of it."
    if disturbed:
        text += (
            f" {disturbed} of {len(cells)} cells kept more than {NOISY:.0f} % after "
            f"{ATTEMPTS} attempts: their latencies carry the shared machine's noise."
        )
    return text


def failure_line(cells: Sequence[Cell]) -> str:
    failed = [c for c in cells if c.result.failures]
    if not failed:
        return "No request failed (no socket error, no non-2xx answer) in any cell."
    names = ", ".join(f"{c.target} {c.mode.name} c={c.connections}" for c in failed)
    return f"Cells with failed requests (see the table): {names}."


def others(cell: Cell) -> str:
    """Outside load on core 0 / core 1 during the cell ("–" for core 0 if it did not matter)."""
    core0 = f"{cell.cpu.other_gateway_core:.0f}" if cell.on_gateway_core else "–"
    return f"{core0} / {cell.cpu.other_load_core:.0f} %"


def failed(cell: Cell) -> str:
    r = cell.result
    return f"{r.failures} of {r.requests:,}" if r.failures else "0"


def change(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.1f} %" if base else "–"


def compared_row(cell: Cell, base: Cell | None) -> list[str]:
    """A table row for ``cell``, with its differences from ``base`` (None: it is the base)."""
    r, cpu = cell.result, cell.cpu_us_per_request
    return [
        cell.mode.name,
        str(cell.connections),
        cell.target,
        f"{r.rps:,.0f}",
        change(r.rps, base.result.rps) if base else "–",
        f"{r.p50_ms:.2f}",
        f"{r.p99_ms:.2f}",
        f"{r.p50_ms - base.result.p50_ms:+.2f}" if base else "–",
        f"{r.p99_ms - base.result.p99_ms:+.2f}" if base else "–",
        f"{cpu:.0f}",
        f"{cpu - base.cpu_us_per_request:+.0f}" if base else "–",
        others(cell),
        failed(cell),
    ]


def command(name: str, options: Options, flags: str = "") -> str:
    """How the section was produced, for its first line; ``flags``: the ones it was run with."""
    if options.quick:
        return f"`.venv/bin/python bench/run.py --only {name} --quick{flags}` (a smoke run)"
    if flags:
        return f"`.venv/bin/python bench/run.py --only {name}{flags}`"
    return f"`make bench` (`.venv/bin/python bench/run.py`; alone: `--only {name}`)"


def facts_table(facts: dict[str, str]) -> str:
    return markdown_table(("machine", ""), [[k, v] for k, v in facts.items()])
