"""Admission for the gateway: estimate, reserve, cap the output, settle exactly once.

For a request whose chain has budgets or a TPM limit, the gateway asks for
the worst case: the input estimated offline from the request's size (an upper
bound: ``quota_input_bytes_per_token`` bytes per token) plus the request's
output cap (or a default cap, which is then set on the upstream request),
priced at the dearest rate a token of each side can be billed at. Admission
may grant less than that, down to one output token; the gateway then lowers
the request's output cap to what was granted, so the spend stays inside the
reservation. The record path settles the lease with the actual cost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

from corral.clock import Clock
from corral.identity import KeyInfo
from corral.quota._embedded import EmbeddedQuota
from corral.quota._model import (
    NANO_PER_USD,
    WINDOW_WORDS,
    Grant,
    Level,
    LimitExceeded,
    Limits,
    QuotaBackend,
    QuotaUnavailable,
    format_amount,
    window_bounds,
)
from corral.quota.rules import Chain, QuotaRules, RuleSet
from corral.routing.catalog import Prices
from corral.settings import Settings

log = logging.getLogger(__name__)

_FUSD_PER_NUSD = 1_000_000
_MAX_RETRIES = 100_000


@dataclass(slots=True)
class Admission:
    """One admitted request: what it may spend, and whether it was settled yet."""

    decision: str  # admitted | degraded | fail_open
    grant: Grant | None
    input_estimate: int = 0
    max_output: int | None = None  # the output cap the upstream request must carry
    soft_reason: str | None = None  # why the chain is past a soft limit
    degraded_from: str | None = None
    done: bool = False
    expires_at: float = 0.0  # of the lease, moved by renewals

    def attributes(self) -> dict[str, Any]:
        """The decision as recorded on the request's span (``attributes.admission``)."""
        out: dict[str, Any] = {"decision": self.decision}
        g = self.grant
        if g is not None:
            out.update(
                lease=g.lease_id,
                reserved_nusd=g.granted_usd,
                reserved_tokens=g.granted_tokens,
                input_estimate=self.input_estimate,
                max_output=self.max_output,
            )
        if self.soft_reason:
            out["soft_limit"] = self.soft_reason
        if self.degraded_from:
            out["degraded_from"] = self.degraded_from
        return out


def refusal_attributes(exc: LimitExceeded | QuotaUnavailable) -> dict[str, Any]:
    if isinstance(exc, LimitExceeded):
        return {
            "decision": "refused",
            "check": exc.limit_kind,
            "scope": exc.scope.key,
            "reason": exc.message,
        }
    return {"decision": "refused", "check": "backend", "reason": exc.message}


class QuotaGate:
    """Budgets and limits as the gateway sees them; one per process."""

    def __init__(
        self, rules: QuotaRules, backend: QuotaBackend, clock: Clock, settings: Settings
    ) -> None:
        self.rules = rules
        self.backend = backend
        self.clock = clock
        self.ruleset = RuleSet()
        self._s = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: collections.deque[tuple[str, int, int, float]] = collections.deque()
        self._seeded: set[tuple[str, str, str]] = set()
        self._open: dict[str, Admission] = {}  # leases this process holds, to renew
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresher: asyncio.Task[None] | None = None
        # One reload at a time: a slow periodic reload finishing after an API write's reload
        # would otherwise put back the rules read before the write.
        self._reloading = asyncio.Lock()
        self.settle_failures = 0

    # -- lifecycle -------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop settlements of replayed records run on (set before the journal replays)."""
        self._loop = loop

    async def start(self) -> None:
        """Load the rules and restore spend of their current windows from the spans."""
        self._loop = asyncio.get_running_loop()
        await self.reload()
        self._refresher = asyncio.create_task(self._refresh(), name="corral-quota-refresh")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._retry_settles()
        await self.backend.aclose()

    async def reload(self) -> None:
        """Re-read the rules; start counters of budgets (or windows) seen for the first time."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        ruleset = await asyncio.to_thread(self.rules.load)
        now = self.clock.now()
        seeded: set[tuple[str, str, str]] = set()  # only current windows: ended ones go
        for rule in ruleset.budgets:
            window_id, _ = window_bounds(rule.budget.window, now)
            mark = (rule.level.key, rule.budget.resource, window_id)
            if mark in self._seeded:
                seeded.add(mark)
                continue
            spent = await asyncio.to_thread(
                self.rules.spent_with_runs,
                rule.level,
                rule.budget.resource,
                rule.budget.window,
                now,
            )
            try:
                await self.backend.seed(rule.level, rule.budget, window_id, spent)
            except QuotaUnavailable as exc:
                log.warning("could not restore the spend of %s: %s", rule.level.label, exc)
                continue
            seeded.add(mark)
        self._seeded = seeded
        self.ruleset = ruleset

    async def _refresh(self) -> None:
        interval = self._s.quota_refresh_interval
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            try:
                await self.renew_leases()
                await self.reload()
                await self._retry_settles()
                if ticks * interval >= 60:
                    ticks = 0
                    await self.backend.sweep()
            except Exception:
                log.exception("reloading budgets and limits failed; keeping the last ones")

    # -- admission -------------------------------------------------------------------

    def chain(self, key: KeyInfo) -> Chain:
        return self.ruleset.chain(key)

    async def admit(
        self,
        chain: Chain,
        *,
        prices: Prices,
        body_bytes: int,
        requested_max: int | None,
        default_max: int,
    ) -> Admission:
        """Reserve the request's worst case over ``chain``; raise ``LimitExceeded`` if refused.

        ``QuotaUnavailable`` propagates unless ``quota_fail_open`` is set, in which
        case the request is admitted unchecked (decision ``fail_open``).
        """
        reserves = any(lim.budgets or lim.tpm is not None for _, lim in chain)
        input_est = math.ceil(body_bytes / self._s.quota_input_bytes_per_token) if reserves else 0
        want_out = max(1, requested_max if requested_max is not None else default_max)
        if reserves:
            want_tokens, min_tokens = input_est + want_out, input_est + 1
            want_usd = prices.worst_cost_nusd(input_est, want_out)
            min_usd = prices.worst_cost_nusd(input_est, 1)
        else:
            want_tokens = min_tokens = want_usd = min_usd = 0
        try:
            grant = await self.backend.admit(
                chain,
                want_usd=want_usd,
                want_tokens=want_tokens,
                min_usd=min_usd,
                min_tokens=min_tokens,
                lease_ttl=self._s.quota_lease_ttl,
            )
        except QuotaUnavailable:
            if not self._s.quota_fail_open:
                raise
            log.warning("quota backend unreachable: admitting unchecked (quota_fail_open)")
            return Admission("fail_open", None)
        adm = Admission("admitted", grant, input_est, expires_at=grant.expires_at)
        self._open[grant.lease_id] = adm
        if reserves:
            allowed = min(want_out, grant.granted_tokens - input_est)
            if prices.worst_output > 0:
                room = grant.granted_usd * _FUSD_PER_NUSD - prices.worst_input * input_est
                allowed = min(allowed, room // prices.worst_output)
            adm.max_output = max(1, allowed)
        if grant.degraded:
            adm.soft_reason = _soft_reason(grant)
        return adm

    async def take_capacity(
        self, provider: str, rpm: int | None, tpm: int | None, tokens: int
    ) -> float | None:
        """Count one request against a provider's reserved RPM/TPM (exact across processes,
        like any limit). None: it fits; else the seconds until the next minute frees some.

        The backend being unreachable counts as *not* reserved (0.0): the contract's
        overflow rule decides, as when the reservation is used up.
        """
        chain = ((Level("provider", provider), Limits(rpm=rpm, tpm=tpm)),)
        try:
            grant = await self.backend.admit(
                chain, want_usd=0, want_tokens=tokens, min_usd=0, min_tokens=0, lease_ttl=60.0
            )
        except LimitExceeded as exc:
            return exc.retry_after or 1.0
        except QuotaUnavailable as exc:
            log.warning("reserved capacity of %s cannot be counted: %s", provider, exc)
            return 0.0
        # Rates count at admission; the lease holds nothing else, so it goes at once.
        self._spawn(grant.lease_id, 0, 0, grant.expires_at)
        return None

    # -- settlement ------------------------------------------------------------------

    def settle(self, adm: Admission, *, usd: int, tokens: int) -> None:
        """Charge the actual spend to the lease, once (later calls do nothing)."""
        if adm.done:
            return
        adm.done = True
        if adm.grant is None:
            return
        self._open.pop(adm.grant.lease_id, None)
        self._spawn(adm.grant.lease_id, usd, tokens, adm.expires_at)

    async def renew_leases(self) -> None:
        """Extend the leases of requests still running once half their time is gone.

        A request may outlive ``quota_lease_ttl`` (a long stream): its reservation must
        hold until it settles. A process that dies stops renewing, so its leases expire.
        """
        ttl = self._s.quota_lease_ttl
        due = self.clock.now() + ttl / 2
        for lease_id, adm in list(self._open.items()):
            if adm.expires_at > due or adm.done:
                continue
            try:
                renewed = await self.backend.renew(lease_id, ttl)
            except QuotaUnavailable as exc:
                log.warning("renewing lease %s failed: %s", lease_id, exc)
                continue
            if renewed:
                adm.expires_at = self.clock.now() + ttl
            else:
                self._open.pop(lease_id, None)
                log.warning("lease %s expired before its request ended", lease_id)

    def release(self, adm: Admission) -> None:
        """Return the whole reservation: nothing was spent."""
        self.settle(adm, usd=0, tokens=0)

    def _spawn(self, lease_id: str, usd: int, tokens: int, expires_at: float) -> None:
        if isinstance(self.backend, EmbeddedQuota):
            self.backend.settle_now(lease_id, usd=usd, tokens=tokens)  # in memory: no task
            return
        task = asyncio.get_running_loop().create_task(
            self._settle(lease_id, usd, tokens, expires_at)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, lease_id: str, usd: int, tokens: int, expires_at: float) -> None:
        try:
            await self.backend.settle(lease_id, usd=usd, tokens=tokens)
        except QuotaUnavailable as exc:
            self.settle_failures += 1
            if len(self._retry) < _MAX_RETRIES:
                self._retry.append((lease_id, usd, tokens, expires_at))
                log.warning("settling lease %s failed (%s); will retry", lease_id, exc)
            else:
                log.error("settling lease %s failed and the retry queue is full", lease_id)

    async def _retry_settles(self) -> None:
        """Retry settlements the backend refused, until they land or their lease is forgotten."""
        horizon = self.clock.now() - self._s.quota_settle_grace
        for _ in range(len(self._retry)):
            lease_id, usd, tokens, expires_at = self._retry.popleft()
            if expires_at < horizon:
                log.error("giving up settling lease %s: its record is forgotten", lease_id)
                continue
            try:
                await self.backend.settle(lease_id, usd=usd, tokens=tokens)
            except QuotaUnavailable:
                self._retry.append((lease_id, usd, tokens, expires_at))
                return

    @property
    def pending_settles(self) -> int:
        return len(self._tasks) + len(self._retry)

    def settle_replayed(self, rows: list[dict[str, Any]]) -> None:
        """Settle the leases of records replayed from a dead process's journal.

        Called from the recorder's thread. Only a shared backend needs it: the
        embedded one restores spend from the spans when its process starts.
        """
        loop = self._loop
        if loop is None or not self.backend.shared:
            return
        horizon = self.clock.now() + self._s.quota_settle_grace
        for row in rows:
            attrs = row.get("attributes") or {}
            lease = (attrs.get("admission") or {}).get("lease")
            if row.get("kind") != "llm_request" or not lease:
                continue
            usd, tokens = int(row["cost_nusd"]), _tokens_of(row)
            loop.call_soon_threadsafe(self._spawn, lease, usd, tokens, horizon)

    # -- reading ---------------------------------------------------------------------

    async def budget_status(self, scope: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Every budget (of one scope, if given) with its current window's usage."""
        out = []
        for rule in self.ruleset.budgets:
            if scope is not None and (rule.level.kind, rule.level.id) != scope:
                continue
            u = await self.backend.usage(rule.level, rule.budget)
            b = rule.budget
            out.append(
                {
                    "id": rule.id,
                    "scope": {
                        "kind": rule.level.kind,
                        "id": rule.level.id,
                        "name": rule.level.name,
                    },
                    "resource": b.resource,
                    "window": b.window,
                    "limit": _amount(b.resource, b.limit),
                    "soft_fraction": b.soft_fraction,
                    "spent": _amount(b.resource, u.spent),
                    "reserved": _amount(b.resource, u.reserved),
                    "remaining": _amount(b.resource, u.remaining),
                    "window_id": u.window_id,
                    "resets_at": u.reset_at,
                    "source": rule.source,
                    "updated_at": rule.updated_at,
                }
            )
        return out

    def limit_status(self, scope: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        out = []
        for r in self.ruleset.rates:
            if scope is not None and (r.level.kind, r.level.id) != scope:
                continue
            out.append(
                {
                    "scope": {"kind": r.level.kind, "id": r.level.id, "name": r.level.name},
                    "rpm": r.rpm,
                    "tpm": r.tpm,
                    "concurrency": r.concurrency,
                    "source": r.source,
                    "updated_at": r.updated_at,
                }
            )
        return out


def _amount(resource: str, value: int) -> float | int:
    """USD as a float for people (the exact nano-USD stays in the store), tokens as is."""
    return value / NANO_PER_USD if resource == "usd" else value


def _tokens_of(row: dict[str, Any]) -> int:
    return sum(
        int(row.get(c) or 0)
        for c in (
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
    )


def _soft_reason(grant: Grant) -> str:
    for lu in grant.levels:
        for b in lu.budgets:
            if b.soft_exceeded:
                used = b.spent + b.reserved
                pct = 100 * used / b.budget.limit if b.budget.limit else 100.0
                unit = "USD" if b.budget.resource == "usd" else "token"
                limit = format_amount(b.budget.resource, b.budget.limit)
                return (
                    f"{lu.level.label} has used {pct:.0f}% of its {WINDOW_WORDS[b.budget.window]} "
                    f"{unit} budget {limit} (soft limit {b.budget.soft_fraction:.0%})"
                )
    return "a soft budget limit was passed"


__all__ = ["Admission", "QuotaGate", "refusal_attributes"]
