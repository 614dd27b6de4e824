"""Gateway overhead with budgets on vs off: one load through three Corral processes, same run.

Three ``corral serve`` processes, started the same way on one simulator, get
the same wrk cells, interleaved: (a) no budgets or limits; (b) the embedded
quota backend, with the key's whole chain limited (a budget on the org, the
team, the user and the key, and the key's RPM and concurrency limits); (c) the
same on the Redis backend (a ``redis-server`` of the benchmark's own). Budgets
are huge, so every request is admitted: the figures are what checking costs,
not what refusing does. Besides the usual non-streaming and streaming bodies
(which carry ``max_tokens``), a third mode sends no output cap, so that under a
budget Corral sets one itself and re-serialises the body.

Run alone: ``.venv/bin/python bench/gateway_budgets.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import json
import statistics
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
    change,
    command,
    compared_row,
    facts_table,
    failure_line,
    measure,
    noise_line,
)
from harness import (
    BenchError,
    Options,
    Processes,
    Section,
    command_output,
    free_port,
    machine_facts,
    markdown_table,
)
from targets import Corral, Redis, Target, chat_body, start_corral, start_redis, start_sim
from wrk import Wrk

NAME = "gateway_budgets"
TITLE = "Gateway overhead with budgets on vs off: no limits, embedded backend, Redis backend"
OFF, EMBEDDED, REDIS = "no limits", "embedded", "Redis"
UNCAPPED = Mode("no cap", stream=False, capped=False)
MODES = (NON_STREAM, STREAM, UNCAPPED)
CONCURRENCY = (1, 16, 64)
QUICK_CONCURRENCY = (1, 16)
USD, TOKENS = "1000000", "100000000000"
RPM, IN_FLIGHT = "100000000", "100000"
SCOPES = (("org", "usd"), ("team", "usd"), ("user", "tokens"), ("key", "usd"), ("key", "tokens"))
"""The budgets each limited process gets, as (scope, resource)."""


@dataclass(frozen=True, slots=True)
class Run:
    """Everything one run produced, for the report."""

    started: datetime
    options: Options
    facts: dict[str, str]
    concurrency: tuple[int, ...]
    cells: list[Cell]
    enforcement: list[str]
    """What shows that the limited processes did check and charge every level."""

    def find(self, target: str, mode: Mode, connections: int) -> Cell | None:
        key = (target, mode, connections)
        return next((c for c in self.cells if (c.target, c.mode, c.connections) == key), None)


# --- measuring ------------------------------------------------------------------------------


def run(options: Options) -> Section:
    started = datetime.now(UTC)
    facts = {
        **machine_facts(),
        "Corral": version("corral"),
        "Redis": command_output(["redis-server", "--version"]).split(" sha=", 1)[0],
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-bench-")))
        procs = stack.enter_context(Processes(workdir))
        sim = start_sim(procs, free_port())
        redis = start_redis(procs, workdir)
        corrals = [
            _start(procs, sim, workdir, OFF),
            _start(procs, sim, workdir, EMBEDDED),
            _start(procs, sim, workdir, REDIS, {"CORRAL_REDIS_URL": redis.url}),
        ]
        limited = corrals[1:]
        for corral in limited:
            _limit_chain(corral)
        before = [_spent(c) for c in limited]
        targets = [c.target for c in corrals]
        bench = Bench(Wrk(workdir), options, targets, helpers=(sim.service, redis.service))
        concurrency = QUICK_CONCURRENCY if options.quick else CONCURRENCY
        cells = [measure(bench, t, m, c) for m, c, t in _schedule(targets, concurrency)]
        enforcement = _enforcement(bench.wrk, limited, before, redis)
    return _section(Run(started, options, facts, concurrency, cells, enforcement))


def _start(
    procs: Processes, sim: Target, workdir: Path, name: str, env: dict[str, str] | None = None
) -> Corral:
    home = workdir / f"home-{name.replace(' ', '-')}"
    return start_corral(procs, free_port(), sim.base_url, home, name=name, env=env)


def _limit_chain(corral: Corral) -> None:
    """Huge budgets on org, team, user and key, and the key's RPM and concurrency limits.

    Set through the CLI, as an operator would; the server reloads its rules on
    each write, so they apply from the next request.
    """
    scope_args = {
        "org": ["--org"],
        "team": ["--team", "bench"],
        "user": ["--user", "bench"],
        "key": ["--key", corral.key_id],
    }
    windows = {"org": "month", "team": "day", "user": "month", "key": "day"}
    for scope, resource in SCOPES:
        amount = USD if resource == "usd" else TOKENS
        window = ["--window", windows[scope]]
        corral.cli("budgets", "set", *scope_args[scope], f"--{resource}", amount, *window)
    corral.cli("limits", "set", *scope_args["key"], "--rpm", RPM, "--concurrency", IN_FLIGHT)


def _spent(corral: Corral) -> dict[tuple[str, str], float]:
    """Spent plus reserved of each budget of the chain, by (scope, resource)."""
    try:
        shown = json.loads(corral.cli("budgets", "show", "--json"))
    except ValueError as exc:
        raise BenchError(f"{corral.target.name}: unreadable `budgets show --json`: {exc}") from exc
    return {
        (b["scope"]["kind"], b["resource"]): float(b["spent"]) + float(b["reserved"])
        for b in shown["budgets"]
    }


def _schedule(
    targets: list[Target], concurrency: tuple[int, ...]
) -> Iterator[tuple[Mode, int, Target]]:
    """Every target for each mode and concurrency, the order rotated from one group to the next.

    Rotating keeps any target from always being the first to meet a new shape of load.
    """
    turn = 0
    for mode in MODES:
        for connections in concurrency:
            first = turn % len(targets)
            for target in targets[first:] + targets[:first]:
                yield mode, connections, target
            turn += 1


def _enforcement(
    wrk: Wrk, limited: list[Corral], before: list[dict[tuple[str, str], float]], redis: Redis
) -> list[str]:
    """One line per limited process on what its budgets were charged during the run."""
    time.sleep(2.0)  # settlements follow the responses, off the request path
    lines = []
    for corral, start in zip(limited, before, strict=True):
        end = _spent(corral)
        delta = {s: end.get(s, 0.0) - start.get(s, 0.0) for s in SCOPES}
        completed = wrk.completed[corral.target.load(stream=False).url]
        charged = ", ".join(
            f"{scope} ${value:,.4f}" if resource == "usd" else f"{scope} {value:,.0f} tokens"
            for (scope, resource), value in delta.items()
        )
        verdict = "every level was" if all(v > 0 for v in delta.values()) else "NOT every level"
        lines.append(
            f"{corral.target.name}: {verdict} charged during the run ({charged}) for "
            f"{completed:,} responses wrk completed, by `corral budgets show`."
        )
    keys, memory = redis.footprint()
    used = "the Redis process used it" if keys else "the Redis process did NOT use it"
    lines.append(
        f"Redis held {keys:,} keys in {memory} after the run ({used}; a lease record lives "
        "only until its request settles, so what stays is one counter per budget and window)."
    )
    return lines


# --- reporting ------------------------------------------------------------------------------

HEADERS = (
    "mode", "conc", "limits", "req/s", "Δ req/s", "P50 ms", "P99 ms", "+P50 ms", "+P99 ms",
    "CPU µs/req", "+CPU µs/req", "others c0/c1", "failed",
)  # fmt: skip


def _baseline(run: Run, cell: Cell) -> Cell | None:
    """The cell of the same shape on the process with no limits (None for that process)."""
    if cell.target == OFF:
        return None
    return run.find(OFF, cell.mode, cell.connections)


def _row(run: Run, cell: Cell) -> list[str]:
    return compared_row(cell, _baseline(run, cell))


def _figures(run: Run) -> str:
    order = {OFF: 0, EMBEDDED: 1, REDIS: 2}
    cells = sorted(run.cells, key=lambda c: (MODES.index(c.mode), c.connections, order[c.target]))
    return markdown_table(HEADERS, [_row(run, cell) for cell in cells])


def _capacity_line(run: Run, mode: Mode) -> str:
    """Throughput and CPU per request at the highest concurrency, against no limits."""
    top = run.concurrency[-1]
    off = run.find(OFF, mode, top)
    if off is None:
        return ""
    parts = []
    for name in (EMBEDDED, REDIS):
        cell = run.find(name, mode, top)
        if cell is not None:
            parts.append(
                f"{name} {cell.result.rps:,.0f} ({change(cell.result.rps, off.result.rps)}, "
                f"{cell.cpu_us_per_request - off.cpu_us_per_request:+.0f} µs)"
            )
    return (
        f"{mode.name}, concurrency {top}: no limits {off.result.rps:,.0f} req/s at "
        f"{off.cpu_us_per_request:.0f} µs of Corral CPU per request; " + "; ".join(parts) + "."
    )


def _latency_line(run: Run, connections: int) -> str:
    """The P50 each backend added at one concurrency, per mode, and their median."""
    parts = []
    for name in (EMBEDDED, REDIS):
        added = []
        for mode in MODES:
            cell, off = run.find(name, mode, connections), run.find(OFF, mode, connections)
            if cell is not None and off is not None:
                added.append((mode.name, cell.result.p50_ms - off.result.p50_ms))
        if added:
            each = ", ".join(f"{m} {v:+.2f}" for m, v in added)
            median = statistics.median(v for _, v in added)
            parts.append(f"{name} {median:+.2f} ms ({each})")
    text = "; ".join(parts)
    return f"Added P50 at concurrency {connections}, median over the modes: {text}."


def _reading(run: Run) -> list[str]:
    lines = [_capacity_line(run, mode) for mode in MODES]
    lines += [_latency_line(run, c) for c in run.concurrency]
    lines += [*run.enforcement, noise_line(run.cells), failure_line(run.cells)]
    return [line for line in lines if line]


def _setup(run: Run) -> str:
    o = run.options
    body = chat_body(stream=False).decode()
    usd, tokens = f"{int(USD):,}", f"{int(TOKENS):,}"
    return (
        "Three `corral serve` processes, started alike (SQLite store, metering on, a virtual "
        "key of user `bench` in team `bench`), run on core 0 (`taskset -c 0`), one under load "
        "at a time; `corral sim` (defaults), `redis-server` (no persistence) and `wrk` (one "
        "thread) share core 1; loopback only. *no limits*: no budget or limit applies to the "
        f"key. *embedded*: budgets on the whole chain (org ${usd} a month, team ${usd} a day, "
        f"user {tokens} tokens a month, key ${usd} and {tokens} tokens a day) and key limits "
        f"(rpm {int(RPM):,}, concurrency {int(IN_FLIGHT):,}), set with `corral budgets set` "
        "and `corral limits set`, on the embedded (in-process) backend. *Redis*: the same on "
        "the Redis backend (`CORRAL_REDIS_URL`). Nothing is refused at these sizes. Request: "
        f'`POST /v1/chat/completions` with `{body}`; *stream* adds `"stream":true` (latency '
        "to the last byte); *no cap* drops `max_tokens`, so the limited processes set "
        "`max_completion_tokens` themselves (`quota_default_max_output_tokens`) and re-serialise "
        "the body. With `max_tokens` 64 the grant equals the request's cap, and the body goes "
        f"upstream untouched. Each cell is {o.cell_seconds} s of `wrk` after a "
        f"{o.warmup_seconds} s warm-up; cells are interleaved (the three processes for each "
        "mode and concurrency, their order rotated from one group to the next). Δ req/s, +P50, "
        "+P99 and +CPU µs/req are against *no limits* at the same mode and concurrency. *CPU "
        "µs/req* is the Corral process's CPU time per completed request (Redis's own work runs "
        "on core 1 and is not in it); *others c0/c1* is what anything outside the benchmark "
        "used of each core (the machine is shared; hypervisor steal counts): a cell with more "
        f"than {NOISY:.0f} % is redone, up to {ATTEMPTS} attempts, keeping the quietest."
    )


def _markdown(run: Run) -> str:
    reading = "\n".join(f"- {line}" for line in _reading(run))
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {TITLE}\n\nCommand: {command(NAME, run.options)}, run {when}.\n\n"
        f"{facts_table(run.facts)}\n\n{_setup(run)}\n\n{_figures(run)}\n\n"
        f"Reading (computed from this run):\n\n{reading}\n"
    )


def _section(run: Run) -> Section:
    console = f"{_figures(run)}\n\n" + "\n".join(_reading(run))
    return Section(NAME, TITLE, console, _markdown(run))


if __name__ == "__main__":
    from run import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
