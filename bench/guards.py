"""Guards' two performance goals, measured and judged: CPU per request with every detector on
against guards off, side by side in one run (``guards_cpu``); trigger-to-sequester latency
across two processes sharing a store and Redis (``guards_latency``).

The CPU goal is judged twice: on the processes' CPU per request, with the noise band the
gateway overhead section uses (``baseline.Judgement``'s pooled sigma), and on the judging
alone, timed in this process, which that band is too wide to resolve on a shared machine.

Run alone: ``.venv/bin/python bench/guards.py [--quick]``.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import cast

from baseline import CPU, SIGMAS, Comparison, Judgement, Sample, working_tree
from cells import (
    ATTEMPTS,
    NOISY,
    Cell,
    command,
    facts_table,
    failed,
    failure_line,
    noise_line,
    others,
)
from guards_cpu import (
    CONCURRENCY,
    MODES,
    OFF,
    ON,
    VARIANTS,
    CpuRun,
    agent_body,
    agent_messages,
    measure_cpu,
)
from guards_latency import Latency, Trial, measure_latency, percentile
from harness import (
    Options,
    Section,
    command_output,
    machine_facts,
    markdown_table,
)

NAME = "guards"
TITLE = "Guards: CPU per request, every detector on vs off; trigger-to-sequester latency"
GOAL_US = 20.0
GOAL_S = 1.0


# --- the run and its report -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    started: datetime
    options: Options
    facts: dict[str, str]
    cpu: CpuRun
    latency: Latency
    trials: int


def run(options: Options) -> Section:
    started = datetime.now(UTC)
    facts = {**machine_facts(), "Corral": f"{version('corral')} ({working_tree()})",
             "Redis": command_output(["redis-server", "--version"]).split(" sha=", 1)[0],
             "bubblewrap": command_output(["bwrap", "--version"])}  # fmt: skip
    trials = 3 if options.quick else 20
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as work:
        (Path(work) / "cpu").mkdir()
        (Path(work) / "latency").mkdir()
        cpu = measure_cpu(options, Path(work) / "cpu")
        latency = measure_latency(trials, Path(work) / "latency")
    facts["load average at end (1/5/15 min)"] = " ".join(
        Path("/proc/loadavg").read_text().split()[:3]
    )
    return _section(Run(started, options, facts, cpu, latency, trials))


def _base(name: str) -> str:
    return name.split(" (run ", 1)[0]


def comparisons(cpu: CpuRun) -> list[Comparison]:
    """Per mode and concurrency: every run of "on" against every run of "off"."""
    found = []
    for mode in MODES:
        for connections in CONCURRENCY:
            runs = {OFF: [], ON: []}  # type: dict[str, list[Sample]]
            for cell in cpu.cells:
                if cell.mode == mode and cell.connections == connections:
                    us = cell.cpu_us_per_request
                    runs[_base(cell.target)].append(Sample(us, us))
            found.append(Comparison(mode.name, connections, CPU, tuple(runs[ON]), tuple(runs[OFF])))
    return found


@dataclass(frozen=True, slots=True)
class Verdict:
    added: float
    """µs of CPU per request that "on" costs more than "off", the mean over the cells."""
    band: float
    """SIGMAS standard deviations of that mean, from the run's own noise."""
    sigma: float

    @property
    def word(self) -> str:
        if self.added + self.band <= GOAL_US:
            return "PASS"
        return "MISS" if self.added - self.band > GOAL_US else "INCONCLUSIVE"


def verdict(found: list[Comparison]) -> Verdict:
    """The mean added CPU and its noise band, as ``baseline.Judgement`` pools the noise."""
    sigma = Judgement.of(found, CPU).sigma
    spread = math.sqrt(sum((c.base_mean * c.spread_factor) ** 2 for c in found)) / len(found)
    added = statistics.mean(c.difference for c in found)
    return Verdict(added, SIGMAS * sigma * spread, sigma)


CELL_HEADERS = ("mode", "conc", "guards", "req/s", "P50 ms", "P99 ms", "CPU µs/req",
                "others c0/c1", "failed")  # fmt: skip
PAIR_HEADERS = ("mode", "conc", "off: CPU µs/req (runs)", "on: CPU µs/req (runs)", "on − off",
                f"{SIGMAS:g} sigma")  # fmt: skip


def _cell_row(cell: Cell) -> list[str]:
    r = cell.result
    return [cell.mode.name, str(cell.connections), cell.target, f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{cell.cpu_us_per_request:.0f}",
            others(cell), failed(cell)]  # fmt: skip


def _runs(samples: Sequence[Sample]) -> str:
    values = [s.value for s in samples]
    return f"{statistics.mean(values):,.0f} ({' / '.join(f'{v:,.0f}' for v in values)})"


def _cpu_tables(cpu: CpuRun, found: list[Comparison], sigma: float) -> str:
    order = {m.name: i for i, m in enumerate(MODES)}
    cells = sorted(cpu.cells, key=lambda c: (order[c.mode.name], c.connections, c.target))
    pairs = [[c.mode, str(c.connections), _runs(c.base), _runs(c.change),
              f"{c.difference:+,.0f}", f"±{SIGMAS * sigma * c.spread_factor * c.base_mean:,.0f}"]
             for c in found]  # fmt: skip
    return (
        f"{markdown_table(CELL_HEADERS, [_cell_row(c) for c in cells])}\n\n"
        f"{markdown_table(PAIR_HEADERS, pairs)}"
    )


def _cpu_reading(cpu: CpuRun, v: Verdict) -> list[str]:
    j = cpu.judging
    m = j.medians
    added = j.key - j.off
    return [
        f"**Every detector on costs {v.added:+.0f} µs of CPU per request against guards off** "
        f"(the mean over the {len(MODES) * len(CONCURRENCY)} cells; noise band ±{v.band:.0f} "
        f"µs, {SIGMAS:g} standard deviations of that mean from one run's sigma of "
        f"{v.sigma:.1%} pooled over both processes and every cell, as the gateway overhead "
        f"section judges): goal ≤ {GOAL_US:.0f} µs: **{v.word}** (PASS: the whole band is under "
        "the goal; MISS: all of it over; INCONCLUSIVE: the band straddles it).",
        f"**The judging alone, timed in this process**, which the processes' CPU cannot "
        f"resolve to 20 µs on this machine (the engine's own `_judge` over the same "
        f"{VARIANTS} bodies at 2,000 calls a second; thread CPU time on one core, the least "
        f"of 9 interleaved passes, as `timeit` reports: noise on a shared machine only adds "
        f"time): {j.key:.1f} µs per call with every detector on for a person's key, "
        f"{j.run:.1f} µs for a run's (the run-only detectors too), {j.off:.1f} µs with guards "
        f"off: **{added:+.1f} µs per call for a key, {j.run - j.off:+.1f} µs for a run: "
        f"{'PASS' if max(added, j.run - j.off) <= GOAL_US else 'MISS'}** against the "
        f"{GOAL_US:.0f} µs goal (the median passes: {m['key'] - m['off']:+.1f} µs for a key, "
        f"{m['run'] - m['off']:+.1f} µs for a run). Of it, reading the request's last turn "
        f"(the chat adapter's `turn`) takes {j.turn:.1f} µs; the detectors and the engine's "
        "bookkeeping the rest.",
        *cpu.checks,
        noise_line(cpu.cells),
        failure_line(cpu.cells),
    ]


def _cpu_setup(run: Run) -> str:
    o, msgs = run.options, agent_messages(0)
    size = len(agent_body(0, stream=False))
    return (
        f"Two `corral serve` processes, started alike (SQLite store, metering on, a key of user "
        f"`bench` in team `bench`), on core 0 (`taskset -c 0`), one under load at a time; "
        f"`corral sim` and `wrk` (one thread) share core 1. *guards off*: `[guards] enabled = "
        f"false`. *guards on*: every detector on at its shipped thresholds but two that volume "
        f"alone crosses (`ceiling` tokens_per_minute 1e15 and usd_per_minute 1e9, `velocity` "
        f"z 1e9): the figure is what judging costs, not what acting does. The body is an "
        f"agent's: {len(msgs)} messages, {size:,} bytes (system prompt, task, eight tool calls "
        f"with their results, then two tool calls and their results: the last turn the guards "
        f"read); wrk sends {VARIANTS} variants in turn, differing in the last tool result, as "
        f"an agent's successive calls differ, so the loop detectors judge every call without "
        f'seeing a loop; `max_tokens` 64; *agent stream* adds `"stream":true`. The key is a '
        f"person's, not a run's: the four run-only detectors (idle_turns, compaction_thrash, "
        f"stalled_progress, sandbox_pressure) do not judge it. Each cell is {o.cell_seconds} s "
        f"of `wrk` after a {o.warmup_seconds} s warm-up, measured {run.cpu.rounds} times per "
        f"process, alternating (off, on, on, off, ...). *CPU µs/req* is the process's CPU "
        f"time per completed request: the detectors run off the request path (a queue and a "
        f"worker task) but in the same process, so it includes them; *others c0/c1* is what "
        f"anything outside the benchmark used of each core: a cell with more than "
        f"{NOISY:.0f} % is redone, up to {ATTEMPTS} attempts, keeping the quietest."
    )


LATENCY_HEADERS = ("runaway", "from", "to", "P50 ms", "P99 ms", "max ms", "trials")


def _spans(trials: list[Trial], run: bool) -> list[tuple[str, str, list[float]]]:
    """(from, to, seconds of each trial) for each pair of instants a trial records."""
    found = [
        ("the crossing call sent", "B refuses the key", [t.refused - t.sent for t in trials]),
        ("evidence `at` (A)", "B refuses the key", [t.refused - t.at for t in trials]),
        ("evidence `at` (A)", "action in force on A", [t.action_s for t in trials]),
    ]
    if run:
        frozen = [t for t in trials if t.frozen is not None]
        found[1:1] = [("the crossing call sent", "sandbox FROZEN",
                       [cast(float, t.frozen) - t.sent for t in frozen])]  # fmt: skip
        found.append(("evidence `at` (A)", "sandbox FROZEN",
                      [cast(float, t.frozen) - t.at for t in frozen]))  # fmt: skip
    return found


def _latency_table(latency: Latency) -> str:
    rows = []
    for name, trials, is_run in (("key", latency.keys, False), ("run", latency.runs, True)):
        for start, end, seconds in _spans(trials, is_run) if trials else []:
            rows.append([name, start, end, f"{1e3 * percentile(seconds, 0.5):.0f}",
                         f"{1e3 * percentile(seconds, 0.99):.0f}",
                         f"{1e3 * max(seconds):.0f}", str(len(seconds))])  # fmt: skip
    return markdown_table(LATENCY_HEADERS, rows)


def _latency_reading(latency: Latency) -> list[str]:
    lines = []
    for name, trials in (("a person's key", latency.keys), ("a run", latency.runs)):
        if not trials:
            continue
        done = [max(t.refused, t.frozen or t.refused) - t.sent for t in trials]
        p99 = percentile(done, 0.99)
        what = "B refuses its key and its sandbox is frozen" if trials[0].frozen else (
            "B refuses it")  # fmt: skip
        word = "PASS" if p99 <= GOAL_S else "MISS"
        lines.append(
            f"**{name.capitalize()}: from the crossing call sent to {what}, P99 "
            f"{1e3 * p99:.0f} ms over {len(trials)} trials**: goal ≤ {GOAL_S:g} s: **{word}**."
        )
    if latency.runs_problem:
        lines.append(f"Runs could not be measured: {latency.runs_problem}")
    return lines


def _latency_setup(run: Run) -> str:
    return (
        "Two `corral serve` processes, A and B (B with `run_slots = 0`), sharing one SQLite "
        "store (`CORRAL_DATABASE_URL`) and one `redis-server` (`CORRAL_REDIS_URL`), "
        "settings as shipped (`key_refresh_interval` 0.25 s; `repeated_request` fires at the "
        f"5th identical successful call and sequesters); not pinned. *key*: a fresh key of "
        f"user `bench` sends one short chat request to A, one at a time, while a thread asks "
        f"B with the key (`GET /v1/models`, which no detector sees) every ~5 ms until it "
        f"answers 403 `key_suspended`. *run*: a `command` run on A (bubblewrap) whose agent "
        f"(`python3`) saves its key under `$CORRAL_ARTIFACTS`, waits for the go, then sends "
        f"one request in a loop, writing the time before each; B is polled as for a key and "
        f"`/sys/fs/cgroup/freezer/corral-<run>/freezer.state` read every ~5 ms; the incident "
        f"is killed after each trial. Instants are this machine's wall clock (servers, sandbox "
        f"and benchmark share it). *the crossing call sent*: when the client (or the agent) "
        f"sent the 5th call, so the figure includes that call's own time; *evidence `at`*: "
        f"A's clock when that call finished (the incident's first evidence); *action in "
        f"force on A*: the action event's `seconds` in the incident's timeline. P99 is the "
        f"nearest rank: with {run.trials} trials, the slowest."
    )


def _markdown(run: Run, console: bool = False) -> str:
    found = comparisons(run.cpu)
    v = verdict(found)
    cpu = "\n".join(f"- {line}" for line in _cpu_reading(run.cpu, v))
    latency = "\n".join(f"- {line}" for line in _latency_reading(run.latency))
    tables = f"{_cpu_tables(run.cpu, found, v.sigma)}\n\n{cpu}\n\n"
    tables += f"{_latency_table(run.latency)}\n\n{latency}\n"
    if console:
        return tables
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {TITLE}\n\nCommand: {command(NAME, run.options)}, run {when}.\n\n"
        f"{facts_table(run.facts)}\n\n### CPU per request\n\n{_cpu_setup(run)}\n\n"
        f"{_cpu_tables(run.cpu, found, v.sigma)}\n\nReading (computed from this run):\n\n"
        f"{cpu}\n\n### Trigger-to-sequester latency\n\n{_latency_setup(run)}\n\n"
        f"{_latency_table(run.latency)}\n\nReading (computed from this run):\n\n{latency}\n"
    )


def _section(run: Run) -> Section:
    return Section(NAME, TITLE, _markdown(run, console=True), _markdown(run))


if __name__ == "__main__":
    from run import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
