"""The quota behaviour every backend must have, run against embedded and Redis alike."""

from __future__ import annotations

import asyncio

import pytest

from corral.quota import Budget, Level, LimitExceeded, Limits, QuotaBackend
from tests.quota.conftest import Backend

USD = 1_000_000_000
ORG = Level("org", "o1", "acme")
TEAM = Level("team", "t1", "payments")
USER = Level("user", "u1", "alice")
KEY = Level("key", "k1", "ci-bot")


def chain(**per_level: Limits) -> list[tuple[Level, Limits]]:
    levels = {"org": ORG, "team": TEAM, "user": USER, "key": KEY}
    return [(levels[name], limits) for name, limits in per_level.items()]


DAY_USD = Budget("usd", "day", 50 * USD)


async def _admit(q: QuotaBackend, c: list[tuple[Level, Limits]], usd: int = USD, **kw: int):  # type: ignore[no-untyped-def]
    args = {"want_usd": usd, "want_tokens": 1000, "min_usd": 0, "min_tokens": 0, **kw}
    return await q.admit(c, lease_ttl=60.0, **args)


def test_admit_reserves_and_settle_replaces_with_spend(quota: Backend) -> None:
    """A grant reserves at every level; settling swaps the reservation for the actual spend."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits((DAY_USD,)), user=Limits((DAY_USD,)))
        grant = await _admit(q, c, usd=3 * USD)
        assert (grant.granted_usd, grant.granted_tokens, grant.degraded) == (3 * USD, 1000, False)
        for level in (TEAM, USER):
            u = await q.usage(level, DAY_USD)
            assert (u.window_id, u.spent, u.reserved) == ("day:2026-11-28", 0, 3 * USD)
        await q.settle(grant.lease_id, usd=USD, tokens=900)
        u = await q.usage(TEAM, DAY_USD)
        assert (u.spent, u.reserved, u.remaining) == (USD, 0, 49 * USD)

    quota.run(body)


def test_grant_is_clamped_to_what_is_left(quota: Backend) -> None:
    """The grant is the smallest remaining amount over the chain, not the amount wanted."""

    async def body(q: QuotaBackend) -> None:
        tokens = Budget("tokens", "hour", 5000)
        c = chain(team=Limits((DAY_USD,)), user=Limits((Budget("usd", "day", 2 * USD), tokens)))
        first = await _admit(q, c, usd=USD, want_tokens=4000)
        second = await _admit(q, c, usd=5 * USD, want_tokens=4000)
        assert (second.granted_usd, second.granted_tokens) == (USD, 1000)
        await q.settle(first.lease_id, usd=USD, tokens=4000)
        assert (await q.usage(TEAM, DAY_USD)).reserved == USD

    quota.run(body)


def test_refusal_names_scope_window_and_reset(quota: Backend) -> None:
    """An exhausted budget refuses with 402, the scope in words and the wait until reset."""

    async def body(q: QuotaBackend) -> None:
        c = chain(org=Limits(), team=Limits((DAY_USD,)))
        grant = await _admit(q, c, usd=50 * USD)
        await q.settle(grant.lease_id, usd=50 * USD, tokens=10)
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c)
        err = info.value
        assert err.message == (
            "team payments: daily USD budget 50.00 exhausted, resets at 2026-11-29T00:00:00Z"
        )
        assert (err.scope, err.limit_kind, err.status, err.retry_after) == (
            TEAM,
            "budget",
            402,
            14 * 3600,
        )

    quota.run(body)


def test_request_that_cannot_pay_its_input_is_refused(quota: Backend) -> None:
    """Remaining budget below ``min_usd`` (the input's cost) refuses, saying what is left."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits((Budget("usd", "total", 2 * USD),)))
        await _admit(q, c, usd=USD + USD // 2)
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c, usd=2 * USD, min_usd=USD)
        assert "total USD budget 2.00 has 0.50 left" in info.value.message
        assert info.value.retry_after is None

    quota.run(body)


def test_settle_is_applied_exactly_once(quota: Backend) -> None:
    """A second settle (or a release after settle), from any process, changes nothing."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits((DAY_USD,)))
        grant = await _admit(q, c, usd=2 * USD)
        await q.settle(grant.lease_id, usd=USD, tokens=1)
        await q.settle(grant.lease_id, usd=USD, tokens=1)
        await quota.peer().settle(grant.lease_id, usd=USD, tokens=1)
        await q.release(grant.lease_id)
        u = await q.usage(TEAM, DAY_USD)
        assert (u.spent, u.reserved) == (USD, 0)

    quota.run(body)


def test_expired_lease_returns_its_reservation(quota: Backend) -> None:
    """A lease never settled (a crashed process) stops holding budget and occupancy at expiry."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits((Budget("usd", "day", 2 * USD),), concurrency=1))
        await _admit(q, c, usd=2 * USD)
        with pytest.raises(LimitExceeded):
            await _admit(q, c)
        quota.clock.advance(61)
        assert (await q.usage(TEAM, Budget("usd", "day", 2 * USD))).reserved == 0
        grant = await _admit(q, c, usd=2 * USD)
        assert grant.granted_usd == 2 * USD

    quota.run(body)


def test_renewed_lease_keeps_holding_until_settled(quota: Backend) -> None:
    """A long request renews its lease: budget and slot stay held past the first expiry."""

    async def body(q: QuotaBackend) -> None:
        total = Budget("usd", "total", 2 * USD)
        c = chain(team=Limits((Budget("usd", "day", 2 * USD), total), concurrency=1))
        grant = await _admit(q, c, usd=2 * USD)
        for _ in range(3):  # 150 s in all, 60 s leases
            quota.clock.advance(50)
            assert await q.renew(grant.lease_id, 60.0)
        assert (await q.usage(TEAM, total)).reserved == 2 * USD
        with pytest.raises(LimitExceeded):
            await _admit(q, c)
        await q.settle(grant.lease_id, usd=USD, tokens=10)
        assert not await q.renew(grant.lease_id, 60.0), "a settled lease is not renewed"
        u = await q.usage(TEAM, total)
        assert (u.spent, u.reserved) == (USD, 0)
        quota.clock.advance(61)
        expired = await _admit(q, c, usd=USD)
        quota.clock.advance(61)
        assert not await q.renew(expired.lease_id, 60.0), "an expired lease is not renewed"
        assert (await q.usage(TEAM, total)).reserved == 0

    quota.run(body)


def test_settle_after_expiry_charges_once(quota: Backend) -> None:
    """A late settlement still records the spend, once, without returning anything twice."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits((DAY_USD,)))
        grant = await _admit(q, c, usd=3 * USD)
        quota.clock.advance(120)
        await _admit(q, c, usd=USD)  # purges the expired hold
        await q.settle(grant.lease_id, usd=2 * USD, tokens=5)
        await q.settle(grant.lease_id, usd=2 * USD, tokens=5)
        u = await q.usage(TEAM, DAY_USD)
        assert (u.spent, u.reserved) == (2 * USD, USD)

    quota.run(body)


def test_rpm_counts_per_calendar_minute(quota: Backend) -> None:
    """RPM refuses the request over the limit until the next minute, with Retry-After."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits(rpm=100), key=Limits(rpm=2))
        await _admit(q, c)
        quota.clock.advance(15)
        await quota.peer().admit(
            c, want_usd=1, want_tokens=1, min_usd=0, min_tokens=0, lease_ttl=60.0
        )
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c)
        err = info.value
        assert (err.scope, err.limit_kind, err.status, err.retry_after) == (KEY, "rpm", 429, 45)
        assert err.message == "key ci-bot: rate limit of 2 requests per minute reached"
        quota.clock.advance(45)
        await _admit(q, c)

    quota.run(body)


def test_tpm_counts_wanted_tokens(quota: Backend) -> None:
    """TPM counts the tokens each admitted request wanted in the current minute."""

    async def body(q: QuotaBackend) -> None:
        c = chain(user=Limits(tpm=2500))
        await _admit(q, c, want_tokens=1000)
        await _admit(q, c, want_tokens=1000)
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c, want_tokens=1000)
        assert (info.value.limit_kind, info.value.scope) == ("tpm", USER)
        await _admit(q, c, want_tokens=500)

    quota.run(body)


def test_concurrency_counts_open_leases(quota: Backend) -> None:
    """Occupancy is the number of unsettled, unexpired leases; settling frees a slot."""

    async def body(q: QuotaBackend) -> None:
        c = chain(team=Limits(concurrency=2))
        a = await _admit(q, c)
        await _admit(q, c)
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c)
        assert (info.value.limit_kind, info.value.retry_after, info.value.status) == (
            "concurrency",
            None,
            429,
        )
        assert info.value.message == "team payments: 2 concurrent requests already running"
        await q.settle(a.lease_id, usd=1, tokens=1)
        await _admit(q, c)

    quota.run(body)


def test_soft_limit_marks_grant_degraded(quota: Backend) -> None:
    """Past ``soft_fraction`` of a budget (spent + reserved) the grant says degraded."""

    async def body(q: QuotaBackend) -> None:
        soft = Budget("usd", "month", 10 * USD, soft_fraction=0.8)
        c = chain(team=Limits((soft,)))
        first = await _admit(q, c, usd=7 * USD)
        assert not first.degraded
        second = await _admit(q, c, usd=USD)
        assert not second.degraded
        third = await _admit(q, c, usd=USD)
        assert third.degraded
        assert third.levels[0].budgets[0].window_id == "month:2026-11"

    quota.run(body)


def test_four_level_chain_names_the_exhausted_level(quota: Backend) -> None:
    """With four levels, the one that is out of budget is the one named; nothing is reserved."""

    async def body(q: QuotaBackend) -> None:
        tokens = Budget("tokens", "total", 10_000)
        c = chain(
            org=Limits((DAY_USD,), rpm=1000),
            team=Limits((DAY_USD, tokens)),
            user=Limits((Budget("usd", "hour", USD),), concurrency=10),
            key=Limits((DAY_USD,), tpm=100_000),
        )
        g = await _admit(q, c, usd=USD)
        await q.settle(g.lease_id, usd=USD, tokens=100)
        with pytest.raises(LimitExceeded) as info:
            await _admit(q, c, usd=USD)
        assert info.value.message.startswith("user alice: hourly USD budget 1.00 exhausted")
        assert info.value.retry_after == 3600
        assert (await q.usage(ORG, DAY_USD)).reserved == 0
        assert len(g.levels) == 4

    quota.run(body)


def test_parallel_admissions_never_overshoot(quota: Backend) -> None:
    """256 concurrent admissions (two clients on Redis) against a budget for a fraction of them:
    spend settled at each grant never exceeds the limit; every refusal is ``LimitExceeded``."""

    async def body(q: QuotaBackend) -> None:
        budget = Budget("usd", "day", 40 * USD + USD // 3)
        c = chain(org=Limits(), team=Limits((budget,)), user=Limits(), key=Limits())
        clients = [q, quota.peer()]

        async def one(i: int) -> int:
            client = clients[i % 2]
            try:
                g = await client.admit(
                    c, want_usd=USD, want_tokens=100, min_usd=USD // 10, min_tokens=0,
                    lease_ttl=60.0,
                )  # fmt: skip
            except LimitExceeded:
                return 0
            await asyncio.sleep(0)
            await client.settle(g.lease_id, usd=g.granted_usd, tokens=g.granted_tokens)
            return g.granted_usd

        results = await asyncio.gather(*(one(i) for i in range(256)))
        u = await q.usage(TEAM, budget)
        assert u.spent == sum(results) <= budget.limit
        assert u.reserved == 0
        assert sum(1 for r in results if r) in (41, 40)

    quota.run(body)
