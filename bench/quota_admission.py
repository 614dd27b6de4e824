"""Quota admission cost: one admit + settle over a 4-level chain, embedded and Redis.

Each request is admitted over org, team, user and key (a daily USD budget and
an hourly token budget at every level, RPM/TPM on the key, concurrency on
team and key) and settled at once, one request at a time, so the figure is
the latency a gateway request pays. The Redis backend talks to its own
``redis-server`` on loopback (pinned to the load core; this process on the
gateway core). Targets from issue 3: under 100 µs embedded, under 500 µs Redis.

Run alone: ``.venv/bin/python bench/quota_admission.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from corral.clock import SystemClock
from corral.quota import Budget, EmbeddedQuota, Level, Limits, QuotaBackend, RedisQuota
from harness import (
    GATEWAY_CORE,
    BenchError,
    Options,
    Processes,
    Section,
    machine_facts,
    markdown_table,
)
from targets import start_redis

NAME = "quota_admission"
TITLE = "Quota admission: admit + settle per request, 4-level chain"
TARGET_US = {"embedded": 100.0, "Redis (loopback)": 500.0}
USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    requests: int
    samples_us: list[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_us)


def _chain() -> list[tuple[Level, Limits]]:
    budgets = (Budget("usd", "day", 10**9 * USD), Budget("tokens", "hour", 10**15, 0.9))
    big = 10**12
    return [
        (Level("org", "o1"), Limits(budgets)),
        (Level("team", "t1"), Limits(budgets, concurrency=10_000)),
        (Level("user", "u1"), Limits(budgets, tpm=big)),
        (Level("key", "k1"), Limits(budgets, rpm=big, tpm=big, concurrency=10_000)),
    ]


async def _measure(backend: str, quota: QuotaBackend, seconds: float) -> Result:
    chain, samples = _chain(), []
    clock = time.perf_counter
    for _ in range(200):  # warm-up: script cache, connections, allocator
        await _one(quota, chain)
    deadline = clock() + seconds
    while clock() < deadline:
        start = clock()
        await _one(quota, chain)
        samples.append((clock() - start) * 1e6)
    return Result(backend, len(samples), samples)


async def _one(quota: QuotaBackend, chain: list[tuple[Level, Limits]]) -> None:
    g = await quota.admit(
        chain, want_usd=USD // 100, want_tokens=4000, min_usd=USD // 1000, min_tokens=100,
        lease_ttl=300.0,
    )  # fmt: skip
    await quota.settle(g.lease_id, usd=USD // 200, tokens=1500)


async def _redis(url: str, seconds: float) -> Result:
    quota = RedisQuota(url, SystemClock(), prefix="bench:")
    try:
        return await _measure("Redis (loopback)", quota, seconds)
    finally:
        await quota.aclose()


def run(options: Options) -> Section:
    seconds = float(options.cell_seconds)
    with (
        _Pinned(),
        tempfile.TemporaryDirectory(prefix="corral-bench-quota-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        url = start_redis(procs, Path(tmp)).url
        embedded = asyncio.run(_measure("embedded", EmbeddedQuota(SystemClock()), seconds))
        redis = asyncio.run(_redis(url, seconds))
    return _section([embedded, redis], options)


class _Pinned:
    """Pin this process to the gateway core for the run, then restore its affinity."""

    def __enter__(self) -> None:
        self._before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {GATEWAY_CORE})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self._before)


def _section(results: list[Result], options: Options) -> Section:
    rows = []
    for r in results:
        target = TARGET_US[r.backend]
        verdict = "meets" if r.pct(0.5) < target else "MISSES"
        rows.append([
            r.backend, str(r.requests), f"{r.mean:.1f}", f"{r.pct(0.5):.1f}",
            f"{r.pct(0.99):.1f}", f"< {target:.0f}", verdict,
        ])  # fmt: skip
    headers = ("backend", "requests", "mean µs", "p50 µs", "p99 µs", "target µs", "p50 vs target")
    table = markdown_table(headers, rows)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    quick = " (quick)" if options.quick else ""
    facts = machine_facts()
    machine = markdown_table(("machine", ""), [[k, v] for k, v in facts.items()])
    markdown = (
        f"## {TITLE}\n\nCommand: `.venv/bin/python bench/run.py --only {NAME}`{quick}, run {when}."
        f"\n\nOne request at a time, {options.cell_seconds} s per backend: admit over org, team,"
        " user and key (two budgets per level, RPM/TPM and concurrency), then settle; the"
        " benchmark process pinned to core 0, `redis-server` (no persistence) on loopback.\n\n"
        f"{machine}\n\n{table}\n"
    )
    return Section(NAME, TITLE, table, markdown)


def main(argv: list[str]) -> int:
    """Run alone (not yet in ``bench/run.py``'s list): print, and write the docs unless quick."""
    from run import DOC, update_doc

    options = Options(quick="--quick" in argv)
    try:
        section = run(options)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(f"\n== {section.title}\n\n{section.console}\n")
    if not options.quick:
        update_doc(DOC, section)
        print(f"wrote {DOC} (section {section.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
