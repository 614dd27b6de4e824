"""Behaviour particular to one backend, windows, and the public surface."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import corral.quota
from corral.clock import ManualClock
from corral.errors import RateLimited, StoreError
from corral.quota import (
    Budget,
    EmbeddedQuota,
    Level,
    LimitExceeded,
    Limits,
    QuotaUnavailable,
    RedisQuota,
    window_bounds,
)
from tests.quota.conftest import RedisServer, local_redis

USD = 1_000_000_000
TEAM = Level("team", "t1", "payments")


def test_public_names() -> None:
    """The package exports exactly its documented surface."""
    assert sorted(corral.quota.__all__) == [
        "Budget", "BudgetUsage", "EmbeddedQuota", "Grant", "Level", "LevelUsage",
        "LimitExceeded", "Limits", "QuotaBackend", "QuotaUnavailable", "RedisQuota",
        "window_bounds",
    ]  # fmt: skip


def test_errors_sit_in_the_exception_tree() -> None:
    """Refusals are RateLimited (429, budgets 402); an unreachable backend is a StoreError."""
    assert issubclass(LimitExceeded, RateLimited)
    assert issubclass(QuotaUnavailable, StoreError)
    assert QuotaUnavailable("x").status == 503


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        ("hour", "2026-11-28T09:59:59", ("hour:2026-11-28T09", "2026-11-28T10:00:00")),
        ("day", "2026-11-28T23:00:00", ("day:2026-11-28", "2026-11-29T00:00:00")),
        ("month", "2026-12-31T12:00:00", ("month:2026-12", "2027-01-01T00:00:00")),
        ("month", "2026-02-10T00:00:00", ("month:2026-02", "2026-03-01T00:00:00")),
    ],
)
def test_calendar_windows_are_utc(window: str, now: str, expected: tuple[str, str]) -> None:
    """Window ids name the UTC calendar period; reset is its end."""
    from datetime import UTC, datetime

    ts = datetime.fromisoformat(now).replace(tzinfo=UTC).timestamp()
    wid, reset = window_bounds(window, ts)  # type: ignore[arg-type]
    assert reset is not None
    end = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert (wid, end) == expected
    assert window_bounds("total", ts) == ("total", None)


def test_seed_spend_restores_a_window() -> None:
    """Spend seeded at start-up counts against the budget of that window."""
    clock = ManualClock(start=1_795_860_000.0)  # 2026-11-28T10:00:00Z
    q = EmbeddedQuota(clock)
    budget = Budget("usd", "day", 10 * USD)
    q.seed_spend(TEAM, "usd", "day:2026-11-28", 10 * USD)
    q.seed_spend(TEAM, "usd", "day:2026-11-27", 5 * USD)

    async def body() -> None:
        with pytest.raises(LimitExceeded, match=r"daily USD budget 10\.00 exhausted"):
            await q.admit(
                [(TEAM, Limits((budget,)))],
                want_usd=1, want_tokens=1, min_usd=0, min_tokens=0, lease_ttl=5,
            )  # fmt: skip
        assert (await q.usage(TEAM, budget)).spent == 10 * USD

    asyncio.run(body())


def test_sweep_drops_ended_windows() -> None:
    """Counters of windows that ended (plus the grace) are dropped; live ones stay."""
    clock = ManualClock(start=1_795_860_000.0)
    q = EmbeddedQuota(clock, settle_grace=60)
    hourly = Budget("usd", "hour", 10 * USD)

    async def body() -> None:
        g = await q.admit(
            [(TEAM, Limits((hourly,)))],
            want_usd=USD, want_tokens=1, min_usd=0, min_tokens=0, lease_ttl=5,
        )  # fmt: skip
        await q.settle(g.lease_id, usd=USD, tokens=1)
        assert await q.sweep() == 0
        clock.advance(3600 + 61)
        assert await q.sweep() == 1
        assert (await q.usage(TEAM, hourly)).spent == 0

    asyncio.run(body())


def test_ids_with_separators_do_not_collide() -> None:
    """A ':' in an id cannot make two levels share a counter."""
    assert Level("team", "a:usd").key != Level("team", "a%3Ausd").key


def test_redis_down_fails_closed() -> None:
    """With the server gone, admit and settle raise QuotaUnavailable (503), never admit."""
    clock = ManualClock()
    chain = [(TEAM, Limits((Budget("usd", "day", 10 * USD),), rpm=10))]
    with local_redis() as server:
        quota = RedisQuota(server.url, clock, prefix="down:", timeout=0.5)

        async def before() -> str:
            try:
                g = await quota.admit(
                    chain, want_usd=USD, want_tokens=1, min_usd=0, min_tokens=0, lease_ttl=5
                )
            finally:
                await quota.aclose()
            return g.lease_id

        lease = asyncio.run(before())
        server.stop()

    async def after() -> None:
        down = RedisQuota(server.url, clock, prefix="down:", timeout=0.5)
        try:
            with pytest.raises(QuotaUnavailable) as info:
                await down.admit(
                    chain, want_usd=USD, want_tokens=1, min_usd=0, min_tokens=0, lease_ttl=5
                )
            assert info.value.status == 503
            with pytest.raises(QuotaUnavailable):
                await down.settle(lease, usd=1, tokens=1)
        finally:
            await down.aclose()

    asyncio.run(after())


def _redis_quota(server_url: str, clock: ManualClock, **kw: int) -> RedisQuota:
    return RedisQuota(server_url, clock, prefix="fast:", **kw)


def test_redis_settle_by_peer_then_locally_is_exactly_once(redis_server: RedisServer) -> None:
    """A peer settles a lease this instance admitted (and still remembers): the local,
    one-round-trip settle afterwards changes nothing, and the reverse order holds too."""
    clock = ManualClock(start=1_795_860_000.0)
    chain = [(TEAM, Limits((Budget("usd", "day", 50 * USD),), concurrency=2))]
    budget = chain[0][1].budgets[0]

    async def body() -> None:
        a = _redis_quota(redis_server.url, clock)
        b = _redis_quota(redis_server.url, clock)
        try:
            g1 = await a.admit(chain, want_usd=3 * USD, want_tokens=1, min_usd=0,
                               min_tokens=0, lease_ttl=60)  # fmt: skip
            await b.settle(g1.lease_id, usd=USD, tokens=1)  # b never saw g1: reads the record
            await a.settle(g1.lease_id, usd=USD, tokens=1)  # a's fast path: already settled
            g2 = await a.admit(chain, want_usd=3 * USD, want_tokens=1, min_usd=0,
                               min_tokens=0, lease_ttl=60)  # fmt: skip
            await a.settle(g2.lease_id, usd=2 * USD, tokens=1)  # fast path
            await b.settle(g2.lease_id, usd=2 * USD, tokens=1)
            await a.release(g2.lease_id)  # forgotten locally: slow path, still nothing
            u = await a.usage(TEAM, budget)
            assert (u.spent, u.reserved) == (3 * USD, 0)
            # Both leases freed their concurrency slots: two more fit.
            for _ in range(2):
                await a.admit(chain, want_usd=1, want_tokens=1, min_usd=0, min_tokens=0,
                              lease_ttl=60)  # fmt: skip
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(body())


def test_redis_local_lease_map_is_bounded(redis_server: RedisServer) -> None:
    """Past ``max_local_leases`` the oldest lease is forgotten locally and settles through the
    lease record instead; either way each lease is charged once."""
    clock = ManualClock(start=1_795_860_000.0)
    hourly = Budget("tokens", "hour", 10_000)
    chain = [(Level("team", "bounded"), Limits((hourly,)))]

    async def body() -> None:
        q = RedisQuota(redis_server.url, clock, prefix="bound:", max_local_leases=2)
        try:
            grants = [
                await q.admit(
                    chain, want_usd=0, want_tokens=100, min_usd=0, min_tokens=0, lease_ttl=60
                )
                for _ in range(3)
            ]
            assert len(q._leases) == 2
            assert grants[0].lease_id not in q._leases
            for g in grants:
                await q.settle(g.lease_id, usd=0, tokens=10)
                await q.settle(g.lease_id, usd=0, tokens=10)
            assert q._leases == {}
            u = await q.usage(Level("team", "bounded"), hourly)
            assert (u.spent, u.reserved) == (30, 0)
        finally:
            await q.aclose()

    asyncio.run(body())


def test_redis_local_settle_of_forgotten_record_is_ignored(redis_server: RedisServer) -> None:
    """A remembered lease whose record Redis dropped (past ``settle_grace``) is ignored, as
    on the read-first path: no spend is charged. A settled lease's record is gone at once,
    so Redis holds records of open leases only."""
    clock = ManualClock(start=1_795_860_000.0)
    chain = [(Level("team", "gone"), Limits((Budget("usd", "day", 50 * USD),)))]

    async def body() -> None:
        q = RedisQuota(redis_server.url, clock, prefix="gone:")
        try:
            g = await q.admit(chain, want_usd=USD, want_tokens=1, min_usd=0, min_tokens=0,
                              lease_ttl=60)  # fmt: skip
            await q._redis.delete(q._key(f"lease:{g.lease_id}"))  # as Redis expiry would
            assert not await q.settle(g.lease_id, usd=USD, tokens=1)
            u = await q.usage(Level("team", "gone"), chain[0][1].budgets[0])
            assert u.spent == 0
            g = await q.admit(chain, want_usd=USD, want_tokens=1, min_usd=0, min_tokens=0,
                              lease_ttl=60)  # fmt: skip
            assert await q._redis.exists(q._key(f"lease:{g.lease_id}"))
            assert await q.settle(g.lease_id, usd=USD, tokens=1)
            assert not await q._redis.exists(q._key(f"lease:{g.lease_id}"))
            assert not await q.settle(g.lease_id, usd=USD, tokens=1)
            assert (await q.usage(Level("team", "gone"), chain[0][1].budgets[0])).spent == USD
        finally:
            await q.aclose()

    asyncio.run(body())


def test_redis_every_key_expires(redis_server: RedisServer) -> None:
    """Expiry is set only when a counter is created; every key still ends up with one,
    including after settles and a second admission in the same windows."""
    clock = ManualClock(start=1_795_860_000.0)
    limits = Limits(
        (Budget("usd", "day", 50 * USD), Budget("tokens", "total", 10**6)),
        rpm=100, tpm=10**6, concurrency=5,
    )  # fmt: skip
    chain = [(Level("team", "ttl"), limits)]

    async def body() -> None:
        q = RedisQuota(redis_server.url, clock, prefix="ttl:")
        try:
            for _ in range(2):
                g = await q.admit(chain, want_usd=USD, want_tokens=10, min_usd=0, min_tokens=0,
                                  lease_ttl=60)  # fmt: skip
                await q.admit(chain, want_usd=USD, want_tokens=10, min_usd=0, min_tokens=0,
                              lease_ttl=60)  # fmt: skip
                await q.settle(g.lease_id, usd=USD // 2, tokens=5)
            keys = [k async for k in q._redis.scan_iter(match="{ttl:}*")]
            assert len(keys) >= 6
            ttls = {k: await q._redis.pttl(k) for k in keys}
            # A ``total`` budget never resets: its counter alone is kept without expiry.
            forever = {k for k, t in ttls.items() if t < 0}
            assert all(b":tokens:total" in k for k in forever), ttls
        finally:
            await q.aclose()

    asyncio.run(body())


def test_redis_admission_retried_with_the_same_lease_answers_the_first_grant(
    redis_server: RedisServer,
) -> None:
    """A retry after a lost reply must not reserve twice (it would leak until never)."""
    clock = ManualClock(start=1_795_860_000.0)
    q = RedisQuota(redis_server.url, clock, prefix=f"t{uuid.uuid4().hex[:8]}:")
    team = Level("team", "t1")
    chain = [(team, Limits(budgets=(Budget("usd", "day", 5 * 10**15),)))]

    async def go() -> None:
        t = q._template(chain, clock.now())
        command = q._admit_command(t, "lease-1", clock.now(), 60, (4 * 10**15, 10, 1, 1))
        first = await q._exec(q._admit, command)
        again = await q._exec(q._admit, command)
        assert again == first
        u = await q.usage(team, chain[0][1].budgets[0])
        assert u.reserved == 4 * 10**15, "the retry reserved a second time"
        await q.aclose()

    asyncio.run(go())


def test_embedded_forgets_settled_leases_and_their_timers() -> None:
    """Memory holds open leases only: settled ones go at once, their timers in bulk."""
    clock = ManualClock(start=1_795_860_000.0)
    q = EmbeddedQuota(clock)
    chain = [(Level("team", "t"), Limits((Budget("usd", "day", 10**6 * USD),)))]

    async def go() -> None:
        for _ in range(5000):
            g = await q.admit(chain, want_usd=1, want_tokens=1, min_usd=0, min_tokens=0,
                              lease_ttl=900)  # fmt: skip
            assert await q.settle(g.lease_id, usd=1, tokens=1)
        assert not q._leases
        assert len(q._timers) <= 1024 + 1
        u = await q.usage(Level("team", "t"), chain[0][1].budgets[0])
        assert (u.spent, u.reserved) == (5000, 0)

    asyncio.run(go())


def test_redis_pipelines_concurrent_calls_into_one_write(redis_server: RedisServer) -> None:
    """Admissions issued in the same loop turn share one write; each gets its own answer."""
    clock = ManualClock(start=1_795_860_000.0)
    q = RedisQuota(redis_server.url, clock, prefix=f"t{uuid.uuid4().hex[:8]}:")
    team = Level("team", "t1")
    chain = [(team, Limits(budgets=(Budget("usd", "day", 30 * USD),), concurrency=40))]

    async def go() -> None:
        await q.admit(
            chain, want_usd=USD, want_tokens=1, min_usd=USD, min_tokens=0, lease_ttl=60
        )  # fmt: skip  (connects and loads the script)
        before = q.batches
        results = await asyncio.gather(
            *(
                q.admit(chain, want_usd=USD, want_tokens=1, min_usd=USD, min_tokens=0, lease_ttl=60)
                for _ in range(50)
            ),
            return_exceptions=True,
        )
        assert q.batches - before <= 2, "concurrent admissions were not pipelined"
        granted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, LimitExceeded)]
        assert len(granted) == 29  # 30 USD, one already held
        assert len(refused) == 21
        assert len({g.lease_id for g in granted}) == 29
        u = await q.usage(team, chain[0][1].budgets[0])
        assert u.reserved == 30 * USD
        settled = await asyncio.gather(*(q.settle(g.lease_id, usd=1, tokens=1) for g in granted))
        assert all(settled)
        assert (await q.usage(team, chain[0][1].budgets[0])).spent == 29
        await q.aclose()

    asyncio.run(go())
