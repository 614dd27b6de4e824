"""The in-process quota backend: exact, for one gateway process."""

from __future__ import annotations

import heapq
import logging
import uuid
from dataclasses import dataclass, field

from corral.clock import Clock
from corral.quota._model import (
    Budget,
    BudgetUsage,
    Chain,
    Grant,
    Level,
    LevelPlan,
    LevelUsage,
    Plan,
    Resource,
    budget_counter,
    budget_slot,
    check_amounts,
    make_plan,
    refusal,
)

log = logging.getLogger(__name__)

_EXPIRE, _FORGET = 0, 1


@dataclass(slots=True)
class _Counter:
    """Spend and outstanding reservations of one budget in one window."""

    spent: int = 0
    reserved: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    ends_at: float | None = None


@dataclass(slots=True)
class _Lease:
    expires_at: float
    budgets: list[tuple[str, Resource]]
    occupancy: list[str]


class EmbeddedQuota:
    """Quota state in this process's memory.

    ``admit`` and ``settle`` never await, so on one asyncio loop nothing can
    interleave with them: admission is exact. Spend lives only in memory; the
    application restores it at start-up with ``seed_spend`` (from its spans),
    and reservations are not restored (a restart drops them, as lease expiry
    would). Counters of ended windows are dropped by ``sweep``.
    """

    def __init__(self, clock: Clock, *, settle_grace: float = 3600.0) -> None:
        self._clock = clock
        self._grace = settle_grace
        self._counters: dict[str, _Counter] = {}
        self._rates: dict[str, tuple[int, int]] = {}  # rpm/tpm key without minute -> (minute, n)
        self._occupancy: dict[str, set[str]] = {}
        self._leases: dict[str, _Lease] = {}
        self._timers: list[tuple[float, int, str]] = []  # (when, _EXPIRE|_FORGET, lease id)

    shared = False

    def seed_spend(self, level: Level, resource: Resource, window_id: str, amount: int) -> None:
        """Add persisted spend to a window's counter (call before serving)."""
        self._counter(budget_counter(level.key, resource, window_id), None).spent += amount

    async def seed(self, level: Level, budget: Budget, window_id: str, spent: int) -> bool:
        """Start a window's counter at ``spent`` unless it exists already; True if it did not."""
        slot = budget_slot(level, budget, self._clock.now())
        if slot.window_id != window_id or slot.counter in self._counters:
            return False
        self._counter(slot.counter, slot.reset_at).spent = spent
        return True

    async def aclose(self) -> None:
        """Nothing to close: the state is this process's memory."""

    async def admit(
        self,
        chain: Chain,
        *,
        want_usd: int,
        want_tokens: int,
        min_usd: int,
        min_tokens: int,
        lease_ttl: float,
    ) -> Grant:
        """Check and reserve over the whole chain in one step, or raise ``LimitExceeded``."""
        check_amounts(want_usd, want_tokens, min_usd, min_tokens)
        now = self._clock.now()
        self._expire(now)
        plan = make_plan(chain, now)
        granted = {"usd": want_usd, "tokens": want_tokens}
        usages = self._check(plan, granted, want_tokens, min_usd, min_tokens)
        lease_id = uuid.uuid4().hex
        self._reserve(plan, lease_id, now + lease_ttl, granted, want_tokens)
        return Grant(
            lease_id=lease_id,
            granted_usd=granted["usd"],
            granted_tokens=granted["tokens"],
            degraded=any(lu.degraded for lu in usages),
            expires_at=now + lease_ttl,
            levels=usages,
        )

    def _check(
        self, plan: Plan, granted: dict[str, int], want_tokens: int, min_usd: int, min_tokens: int
    ) -> tuple[LevelUsage, ...]:
        """Raise the first failed check in chain order; lower ``granted`` to what is left."""
        usages: list[LevelUsage] = []
        for i, lp in enumerate(plan.levels):
            self._check_rates(plan, i, want_tokens)
            budgets: list[BudgetUsage] = []
            for j, slot in enumerate(lp.budgets):
                c = self._counters.get(slot.counter)
                spent, reserved = (c.spent, c.reserved) if c else (0, 0)
                res = slot.budget.resource
                need = min_usd if res == "usd" else min_tokens
                left = max(0, slot.budget.limit - spent - reserved)
                if left <= 0 or left < need:
                    raise refusal(plan, i, "budget", j, left, need)
                if left < granted[res]:
                    granted[res] = left
                budgets.append(
                    BudgetUsage(slot.budget, slot.window_id, spent, reserved, slot.reset_at)
                )
            usages.append(LevelUsage(lp.level, tuple(budgets)))
        return tuple(usages)

    def _check_rates(self, plan: Plan, i: int, want_tokens: int) -> None:
        lp = plan.levels[i]
        lim = lp.limits
        if lim.rpm is not None and self._rate(lp.rpm_key, plan.minute) + 1 > lim.rpm:
            raise refusal(plan, i, "rpm", 0, 0, 0)
        if lim.tpm is not None and self._rate(lp.tpm_key, plan.minute) + want_tokens > lim.tpm:
            raise refusal(plan, i, "tpm", 0, 0, 0)
        busy = self._occupancy.get(lp.occupancy_key)
        if lim.concurrency is not None and len(busy or ()) >= lim.concurrency:
            raise refusal(plan, i, "concurrency", 0, 0, 0)

    def _rate(self, key: str, minute: int) -> int:
        base = key.rsplit(":", 1)[0]
        seen = self._rates.get(base)
        return seen[1] if seen and seen[0] == minute else 0

    def _bump(self, key: str, minute: int, by: int) -> None:
        base = key.rsplit(":", 1)[0]
        self._rates[base] = (minute, self._rate(key, minute) + by)

    def _reserve(
        self,
        plan: Plan,
        lease_id: str,
        expires_at: float,
        granted: dict[str, int],
        want_tokens: int,
    ) -> None:
        lease = _Lease(expires_at, [], [])
        for lp in plan.levels:
            self._reserve_level(plan, lp, lease_id, lease, granted, want_tokens)
        self._leases[lease_id] = lease
        heapq.heappush(self._timers, (expires_at, _EXPIRE, lease_id))

    def _reserve_level(
        self,
        plan: Plan,
        lp: LevelPlan,
        lease_id: str,
        lease: _Lease,
        granted: dict[str, int],
        want_tokens: int,
    ) -> None:
        if lp.limits.rpm is not None:
            self._bump(lp.rpm_key, plan.minute, 1)
        if lp.limits.tpm is not None:
            self._bump(lp.tpm_key, plan.minute, want_tokens)
        if lp.limits.concurrency is not None:
            self._occupancy.setdefault(lp.occupancy_key, set()).add(lease_id)
            lease.occupancy.append(lp.occupancy_key)
        for slot in lp.budgets:
            amount = granted[slot.budget.resource]
            c = self._counter(slot.counter, slot.reset_at)
            c.reserved += amount
            c.holds[lease_id] = amount
            lease.budgets.append((slot.counter, slot.budget.resource))

    def _counter(self, name: str, ends_at: float | None) -> _Counter:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = _Counter(ends_at=ends_at)
        return c

    async def settle(self, lease_id: str, *, usd: int, tokens: int) -> bool:
        """Replace the lease's reservations with the actual spend, once (``settle_now``)."""
        return self.settle_now(lease_id, usd=usd, tokens=tokens)

    def settle_now(self, lease_id: str, *, usd: int, tokens: int) -> bool:
        """Replace the lease's reservations with the actual spend, once; later calls do nothing.

        Returns whether this call settled it. A lease that already expired still charges
        its spend (once). A settled lease is forgotten at once (a second settle finds
        nothing and does nothing); an unsettled one ``settle_grace`` after its expiry.
        """
        now = self._clock.now()
        self._expire(now)
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            log.debug("settle of unknown, settled or forgotten lease %s ignored", lease_id)
            return False
        self._drop_holds(lease_id, lease)
        amounts = {"usd": usd, "tokens": tokens}
        for name, resource in lease.budgets:
            self._counter(name, None).spent += amounts[resource]
        if len(self._timers) > 2 * len(self._leases) + 1024:
            self._compact(now)
        return True

    def _compact(self, now: float) -> None:
        """Rebuild the timer heap from live leases (settled ones leave their timers behind)."""
        timers = []
        for lease_id, lease in self._leases.items():
            if lease.expires_at > now:
                timers.append((lease.expires_at, _EXPIRE, lease_id))
            else:  # expired, holds returned: kept only for a late settlement
                timers.append((lease.expires_at + self._grace, _FORGET, lease_id))
        heapq.heapify(timers)
        self._timers = timers

    async def renew(self, lease_id: str, lease_ttl: float) -> bool:
        """Extend an open lease to ``lease_ttl`` from now; False if it expired or was settled."""
        now = self._clock.now()
        self._expire(now)
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires_at <= now:
            return False
        lease.expires_at = now + lease_ttl
        heapq.heappush(self._timers, (lease.expires_at, _EXPIRE, lease_id))
        return True

    async def release(self, lease_id: str) -> bool:
        """Settle with zero spend: the request never reached the provider."""
        return await self.settle(lease_id, usd=0, tokens=0)

    def _drop_holds(self, lease_id: str, lease: _Lease) -> None:
        for name, _resource in lease.budgets:
            c = self._counters.get(name)
            if c is not None:
                c.reserved -= c.holds.pop(lease_id, 0)
        for key in lease.occupancy:
            busy = self._occupancy.get(key)
            if busy is not None:
                busy.discard(lease_id)
                if not busy:
                    del self._occupancy[key]

    def _expire(self, now: float) -> None:
        """Return reservations and occupancy of expired leases; forget old lease records."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, phase, lease_id = heapq.heappop(timers)
            lease = self._leases.get(lease_id)
            if lease is None:
                continue
            if phase == _FORGET:
                del self._leases[lease_id]
                continue
            if lease.expires_at > when:
                continue  # renewed: a later timer stands for it
            self._drop_holds(lease_id, lease)
            heapq.heappush(timers, (when + self._grace, _FORGET, lease_id))

    async def sweep(self) -> int:
        """Expire stale leases and drop counters of windows ended over ``settle_grace`` ago.

        Returns the number of counters dropped.
        """
        now = self._clock.now()
        self._expire(now)
        stale = [
            name
            for name, c in self._counters.items()
            if c.ends_at is not None and c.ends_at + self._grace < now and not c.holds
        ]
        for name in stale:
            del self._counters[name]
        minute = make_plan((), now).minute
        self._rates = {k: v for k, v in self._rates.items() if v[0] == minute}
        return len(stale)

    async def usage(self, level: Level, budget: Budget) -> BudgetUsage:
        """The budget's current window: spent and live (unexpired) reservations."""
        now = self._clock.now()
        self._expire(now)
        slot = budget_slot(level, budget, now)
        c = self._counters.get(slot.counter)
        spent, reserved = (c.spent, c.reserved) if c else (0, 0)
        return BudgetUsage(budget, slot.window_id, spent, reserved, slot.reset_at)


__all__ = ["EmbeddedQuota"]
