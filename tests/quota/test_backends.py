"""Behaviour particular to one backend, windows, and the public surface."""

from __future__ import annotations

import asyncio

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
from tests.quota.conftest import local_redis

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
