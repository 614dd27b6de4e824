"""Values, errors and the plan shared by both quota backends.

Money is integer nano-USD and tokens are integers everywhere in this package,
so no backend ever rounds. A *plan* is the chain of levels resolved at one
instant: for every level, the names of its counters (rate keys for the current
calendar minute, one budget counter per budget and calendar window) and the
limits to check. Both backends evaluate the same plan with the same rules:

1. expire stale reservations and occupancy of every counter in the plan;
2. walk the chain in order; for each level check RPM, TPM, concurrency, then
   every budget; the first check that fails refuses the whole request;
3. grant ``min(want, remaining)`` per resource, where ``remaining`` is the
   smallest ``limit - spent - reserved`` over the chain's budgets of that
   resource, and reserve it at every level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from corral.errors import RateLimited, StoreError

LevelKind = Literal["org", "team", "user", "key", "run", "provider"]
Resource = Literal["usd", "tokens"]
Window = Literal["hour", "day", "month", "total"]
Check = Literal["rpm", "tpm", "concurrency", "budget"]

NANO_PER_USD = 1_000_000_000

WINDOW_WORDS: dict[Window, str] = {
    "hour": "hourly",
    "day": "daily",
    "month": "monthly",
    "total": "total",
}


class QuotaUnavailable(StoreError):
    """The quota backend could not be reached; admission fails closed (503)."""

    code = "quota_unavailable"


class LimitExceeded(RateLimited):
    """A limit of one level of the chain refused the request.

    429 for RPM, TPM and concurrency (``retry_after`` is the wait until the
    next minute, ``None`` for concurrency); budgets raise ``BudgetExceeded``.
    """

    def __init__(
        self, message: str, *, scope: Level, limit_kind: Check, retry_after: float | None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.scope = scope
        self.limit_kind: Check = limit_kind


class BudgetExceeded(LimitExceeded):
    """A budget of one level is spent: 402, as retrying will not help until the window resets
    (``retry_after`` is the wait until then, ``None`` for a ``total`` budget, which never
    resets; see docs/quotas.md)."""

    status = 402
    code = "budget_exceeded"


@dataclass(frozen=True, slots=True)
class Level:
    """One level of the identity chain; ``name`` is only for messages to people."""

    kind: LevelKind
    id: str
    name: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name or self.id}"

    @property
    def key(self) -> str:
        """``kind:id`` with ``%`` and ``:`` escaped so ids cannot collide in counter names."""
        return f"{self.kind}:{self.id.replace('%', '%25').replace(':', '%3A')}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap on a consumable resource per calendar window (UTC)."""

    resource: Resource
    window: Window
    limit: int
    soft_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"budget limit must be >= 0, not {self.limit}")
        if self.soft_fraction is not None and not 0 < self.soft_fraction <= 1:
            raise ValueError(f"soft_fraction must be in (0, 1], not {self.soft_fraction}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything one level limits; ``None`` means unlimited."""

    budgets: tuple[Budget, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


Chain = Sequence[tuple[Level, Limits]]
"""The identity chain, outermost level first (org, team, user, key, run)."""


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """A budget's counter as admission saw it, before this request's reservation."""

    budget: Budget
    window_id: str
    spent: int
    reserved: int
    reset_at: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.budget.limit - self.spent - self.reserved)

    @property
    def soft_exceeded(self) -> bool:
        soft = self.budget.soft_fraction
        return soft is not None and self.spent + self.reserved >= soft * self.budget.limit


@dataclass(frozen=True, slots=True)
class LevelUsage:
    """One level's budgets at admission, for the audit record."""

    level: Level
    budgets: tuple[BudgetUsage, ...]

    @property
    def degraded(self) -> bool:
        return any(b.soft_exceeded for b in self.budgets)


@dataclass(frozen=True, slots=True)
class Grant:
    """An admitted request: a lease to settle exactly once before ``expires_at``."""

    lease_id: str
    granted_usd: int
    granted_tokens: int
    degraded: bool
    expires_at: float
    levels: tuple[LevelUsage, ...]


class QuotaBackend(Protocol):
    """What the gateway calls; ``EmbeddedQuota`` and ``RedisQuota`` implement it."""

    async def admit(
        self,
        chain: Chain,
        *,
        want_usd: int,
        want_tokens: int,
        min_usd: int,
        min_tokens: int,
        lease_ttl: float,
    ) -> Grant: ...

    async def settle(self, lease_id: str, *, usd: int, tokens: int) -> bool: ...

    async def release(self, lease_id: str) -> bool: ...

    async def renew(self, lease_id: str, lease_ttl: float) -> bool: ...

    async def sweep(self) -> int: ...

    async def usage(self, level: Level, budget: Budget) -> BudgetUsage: ...

    async def seed(self, level: Level, budget: Budget, window_id: str, spent: int) -> bool: ...

    async def aclose(self) -> None: ...

    @property
    def shared(self) -> bool:
        """True when other processes share this state (settle replayed records' leases)."""
        ...


# --- windows ----------------------------------------------------------------------------------


def window_bounds(window: Window, now: float) -> tuple[str, float | None]:
    """The id of the calendar window (UTC) holding ``now`` and when it ends (None: never)."""
    window_id, _start, end = window_range(window, now)
    return window_id, end


def window_range(window: Window, now: float) -> tuple[str, float | None, float | None]:
    """The id, start and end of the calendar window (UTC) holding ``now`` (None: unbounded)."""
    if window == "total":
        return "total", None, None
    t = datetime.fromtimestamp(now, UTC)
    if window == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
        return f"hour:{start:%Y-%m-%dT%H}", start.timestamp(), end.timestamp()
    if window == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        return f"day:{start:%Y-%m-%d}", start.timestamp(), end.timestamp()
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return f"month:{start:%Y-%m}", start.timestamp(), end.timestamp()


def minute_of(now: float) -> int:
    """The calendar minute (minutes since the epoch) RPM and TPM count in."""
    return math.floor(now / 60)


# --- plans ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetSlot:
    """One budget resolved to its counter for the current window."""

    budget: Budget
    window_id: str
    reset_at: float | None
    counter: str


@dataclass(frozen=True, slots=True)
class LevelPlan:
    level: Level
    limits: Limits
    rpm_key: str
    tpm_key: str
    occupancy_key: str
    budgets: tuple[BudgetSlot, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    now: float
    minute: int
    levels: tuple[LevelPlan, ...]


def budget_counter(level_key: str, resource: Resource, window_id: str) -> str:
    return f"b:{level_key}:{resource}:{window_id}"


def budget_slot(level: Level, budget: Budget, now: float) -> BudgetSlot:
    window_id, reset_at = window_bounds(budget.window, now)
    return BudgetSlot(
        budget, window_id, reset_at, budget_counter(level.key, budget.resource, window_id)
    )


def make_plan(chain: Chain, now: float) -> Plan:
    """Resolve every level's counters at ``now``.

    Hot path: each window's bounds and each level's key are computed once per plan.
    """
    minute = minute_of(now)
    bounds: dict[Window, tuple[str, float | None]] = {}
    levels = []
    for level, limits in chain:
        key = level.key
        slots = []
        for b in limits.budgets:
            wb = bounds.get(b.window)
            if wb is None:
                wb = bounds[b.window] = window_bounds(b.window, now)
            slots.append(BudgetSlot(b, wb[0], wb[1], budget_counter(key, b.resource, wb[0])))
        levels.append(
            LevelPlan(
                level=level,
                limits=limits,
                rpm_key=f"rpm:{key}:{minute}",
                tpm_key=f"tpm:{key}:{minute}",
                occupancy_key=f"occ:{key}",
                budgets=tuple(slots),
            )
        )
    return Plan(now, minute, tuple(levels))


def check_amounts(want_usd: int, want_tokens: int, min_usd: int, min_tokens: int) -> None:
    """Reject impossible arguments (a programming error in the caller)."""
    if not 0 <= min_usd <= want_usd or not 0 <= min_tokens <= want_tokens:
        raise ValueError("need 0 <= min <= want for usd and tokens")


# --- refusals ---------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_amount(resource: Resource, amount: int) -> str:
    """Tokens as they are; USD with cents, and with more decimals only when it has them."""
    if resource == "usd":
        whole, frac = divmod(amount, NANO_PER_USD)
        decimals = f"{frac:09d}".rstrip("0").ljust(2, "0")
        return f"{whole}.{decimals}"
    return str(amount)


def refusal(
    plan: Plan, index: int, check: Check, budget_index: int, remaining: int, need: int
) -> LimitExceeded:
    """The error for the first failed check, in words an operator understands."""
    lp = plan.levels[index]
    who = lp.level.label
    next_minute = (plan.minute + 1) * 60 - plan.now
    if check == "rpm":
        msg = f"{who}: rate limit of {lp.limits.rpm} requests per minute reached"
        return LimitExceeded(msg, scope=lp.level, limit_kind=check, retry_after=next_minute)
    if check == "tpm":
        msg = f"{who}: rate limit of {lp.limits.tpm} tokens per minute reached"
        return LimitExceeded(msg, scope=lp.level, limit_kind=check, retry_after=next_minute)
    if check == "concurrency":
        msg = f"{who}: {lp.limits.concurrency} concurrent requests already running"
        return LimitExceeded(msg, scope=lp.level, limit_kind=check, retry_after=None)
    slot = lp.budgets[budget_index]
    b = slot.budget
    unit = "USD" if b.resource == "usd" else "token"
    msg = f"{who}: {WINDOW_WORDS[b.window]} {unit} budget {format_amount(b.resource, b.limit)}"
    if remaining <= 0:
        msg += " exhausted"
    else:
        left, needed = format_amount(b.resource, remaining), format_amount(b.resource, need)
        msg += f" has {left} left, this request needs at least {needed}"
    if slot.reset_at is None:
        msg += " (a total budget does not reset)"
        retry_after = None
    else:
        msg += f", resets at {_iso(slot.reset_at)}"
        retry_after = slot.reset_at - plan.now
    return BudgetExceeded(msg, scope=lp.level, limit_kind=check, retry_after=retry_after)
