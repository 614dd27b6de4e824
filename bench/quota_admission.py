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

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvloop

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
TITLE = "Quota admission: admit and settle per request, 4-level chain"
TARGET_US = {"embedded": 100.0, "Redis (loopback)": 500.0}
USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    requests: int
    admit_us: list[float]
    settle_us: list[float]
    cpu_us: float  # this process's CPU per request (admit + settle)
    server_admit_us: float | None = None  # Redis's own time per script call
    server_settle_us: float | None = None
    floor_us: float | None = None  # a round trip of a script that does nothing

    @staticmethod
    def pct(samples: list[float], q: float) -> float:
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def both_us(self) -> list[float]:
        return [a + s for a, s in zip(self.admit_us, self.settle_us, strict=True)]


def _chain() -> list[tuple[Level, Limits]]:
    budgets = (Budget("usd", "day", 10**9 * USD), Budget("tokens", "hour", 10**15, 0.9))
    big = 10**12
    return [
        (Level("org", "o1"), Limits(budgets)),
        (Level("team", "t1"), Limits(budgets, concurrency=10_000)),
        (Level("user", "u1"), Limits(budgets, tpm=big)),
        (Level("key", "k1"), Limits(budgets, rpm=big, tpm=big, concurrency=10_000)),
    ]


BATCH = 100
"""Admissions per batch: a batch is admitted, then settled, so each script is timed alone."""


async def _measure(
    backend: str, quota: QuotaBackend, seconds: float, stats: _Stats | None
) -> Result:
    chain = _chain()
    clock = time.perf_counter
    for _ in range(2):  # warm-up: script cache, connections, allocator
        await _batch(quota, chain, [], [])
    admit_us: list[float] = []
    settle_us: list[float] = []
    server = [0.0, 0.0]
    cpu0 = time.process_time()
    deadline = clock() + seconds
    while clock() < deadline:
        await _batch(quota, chain, admit_us, settle_us, stats, server)
    cpu = (time.process_time() - cpu0) * 1e6 / len(admit_us)
    n = len(admit_us)
    floor = await _floor(quota) if isinstance(quota, RedisQuota) else None
    return Result(
        backend,
        n,
        admit_us,
        settle_us,
        cpu,
        server[0] / n if stats else None,
        server[1] / n if stats else None,
        floor,
    )


async def _batch(
    quota: QuotaBackend,
    chain: list[tuple[Level, Limits]],
    admit_us: list[float],
    settle_us: list[float],
    stats: _Stats | None = None,
    server: list[float] | None = None,
) -> None:
    clock = time.perf_counter
    leases = []
    before = stats.usec() if stats else 0.0
    for _ in range(BATCH):
        start = clock()
        g = await quota.admit(
            chain, want_usd=USD // 100, want_tokens=4000, min_usd=USD // 1000, min_tokens=100,
            lease_ttl=300.0,
        )  # fmt: skip
        admit_us.append((clock() - start) * 1e6)
        leases.append(g.lease_id)
    middle = stats.usec() if stats else 0.0
    for lease in leases:
        start = clock()
        await quota.settle(lease, usd=USD // 200, tokens=1500)
        settle_us.append((clock() - start) * 1e6)
    if stats and server is not None:
        server[0] += middle - before
        server[1] += stats.usec() - middle


async def _floor(quota: RedisQuota) -> float:
    """p50 of a script that does nothing, sent the way admissions are: the transport's floor."""
    from corral.quota._redis import _evalsha, _Script

    script = _Script("return 1")
    command = _evalsha(script, 0, [], 0)
    samples = []
    for _ in range(2000):
        start = time.perf_counter()
        await quota._exec(script, command)
        samples.append((time.perf_counter() - start) * 1e6)
    return Result.pct(samples, 0.5)


class _Stats:
    """Redis's own time spent in EVALSHA so far (``INFO commandstats``), over a side connection.

    The side connection's INFO calls are not EVALSHA, so they do not count.
    """

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)

    def usec(self) -> float:
        stats = self._client.info("commandstats").get("cmdstat_evalsha", {})
        return float(stats.get("usec", 0))

    def close(self) -> None:
        self._client.close()


async def _redis(url: str, seconds: float) -> Result:
    quota = RedisQuota(url, SystemClock(), prefix="bench:")
    stats = _Stats(url)
    try:
        return await _measure("Redis (loopback)", quota, seconds, stats)
    finally:
        stats.close()
        await quota.aclose()


def run(options: Options) -> Section:
    seconds = float(options.cell_seconds)
    with (
        _Pinned(),
        tempfile.TemporaryDirectory(prefix="corral-bench-quota-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        url = start_redis(procs, Path(tmp)).url
        # uvloop, as `corral serve` runs: the figures are what the gateway would pay.
        embedded = uvloop.run(_measure("embedded", EmbeddedQuota(SystemClock()), seconds, None))
        redis = uvloop.run(_redis(url, seconds))
    return _section([embedded, redis], options)


class _Pinned:
    """Pin this process to the gateway core for the run, then restore its affinity."""

    def __enter__(self) -> None:
        self._before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {GATEWAY_CORE})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self._before)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _section(results: list[Result], options: Options) -> Section:
    rows = []
    for r in results:
        target = TARGET_US[r.backend]
        admit = Result.pct(r.admit_us, 0.5)
        verdict = "meets" if admit < target else "MISSES"
        rows.append([
            r.backend, str(r.requests),
            _us(admit), _us(Result.pct(r.admit_us, 0.99)),
            _us(Result.pct(r.settle_us, 0.5)), _us(Result.pct(r.both_us, 0.5)),
            _us(r.cpu_us), _us(r.server_admit_us), _us(r.server_settle_us), _us(r.floor_us),
            f"< {target:.0f}", verdict,
        ])  # fmt: skip
    headers = (
        "backend", "requests", "admit p50 µs", "admit p99 µs", "settle p50 µs",
        "admit+settle p50 µs", "client CPU µs/req", "Redis admit µs", "Redis settle µs",
        "round-trip floor µs", "target (admit p50)", "verdict",
    )  # fmt: skip
    table = markdown_table(headers, rows)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    quick = " (quick)" if options.quick else ""
    facts = machine_facts()
    machine = markdown_table(("machine", ""), [[k, v] for k, v in facts.items()])
    markdown = (
        f"## {TITLE}\n\nCommand: `.venv/bin/python bench/run.py --only {NAME}`{quick}, run {when}."
        f"\n\nOne request at a time, {options.cell_seconds} s per backend, in batches of {BATCH}:"
        " admit over org, team, user and key (two budgets per level, RPM/TPM and concurrency),"
        " then settle the batch, so each is timed alone. The benchmark process is pinned to"
        " core 0 and `redis-server` (no persistence) to core 1. *Client CPU* is this process's"
        " CPU time per admit + settle; *Redis admit/settle* is the server's own time per script"
        " (`INFO commandstats`); the *round-trip floor* is a script that does nothing, sent"
        " the same way: what any Redis call costs on this machine.\n\n"
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
