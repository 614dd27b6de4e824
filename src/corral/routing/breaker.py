"""Circuit breakers, one per deployment, and the cool-downs providers ask for.

A breaker is *closed* (attempts go through) until, within ``window`` seconds,
at least ``min_attempts`` attempts were made and ``failure_rate`` of them
failed with a provider-side error class; it is then *open* (the router skips
the deployment) for ``cooldown`` seconds, then *half-open*: one attempt, the
probe, goes through; its success closes the breaker, its failure opens it
again. Separately, a ``Retry-After`` answer cools the deployment until then.
Each process keeps its own breakers (they protect this process's callers).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from corral.clock import Clock

PROVIDER_FAULTS = frozenset(
    {"rate_limited", "overloaded", "server_error", "timeout", "connection_error"}
)
"""Error classes that count against a deployment (the others are the request's fault)."""


@dataclass(slots=True)
class Breaker:
    failure_rate: float
    min_attempts: int
    window: float
    cooldown: float
    state: str = "closed"  # closed | open | half_open
    opened_at: float = 0.0
    cool_until: float = 0.0
    probing: bool = False
    probe_at: float = 0.0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    opened: int = 0  # times it opened, for /metrics and the API

    def allow(self, now: float) -> bool:
        """May an attempt go to this deployment now? (A half-open breaker lets one through.)"""
        if now < self.cool_until:
            return False
        if self.state == "open":
            if now - self.opened_at < self.cooldown:
                return False
            self.state = "half_open"
            self.probing = False
        if self.state == "half_open":
            # One probe at a time; a probe never reported (its request was cancelled) stops
            # counting after a cooldown, so the breaker cannot stick half-open.
            if self.probing and now - self.probe_at < self.cooldown:
                return False
            self.probing, self.probe_at = True, now
        return True

    def record(self, ok: bool, now: float) -> None:
        if self.state == "half_open":
            self.probing = False
            if ok:
                self.state = "closed"
                self.outcomes.clear()
            else:
                self._open(now)
            return
        self.outcomes.append((now, ok))
        while self.outcomes and self.outcomes[0][0] < now - self.window:
            self.outcomes.popleft()
        if self.state == "closed" and not ok and len(self.outcomes) >= self.min_attempts:
            failed = sum(1 for _, good in self.outcomes if not good)
            if failed >= self.failure_rate * len(self.outcomes):
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.opened += 1
        self.outcomes.clear()

    def snapshot(self, now: float) -> dict[str, Any]:
        recent = [ok for t, ok in self.outcomes if t >= now - self.window]
        state = self.state
        if state == "open" and now - self.opened_at >= self.cooldown:
            state = "half_open"
        return {
            "state": state,
            "recent_attempts": len(recent),
            "recent_failures": sum(1 for ok in recent if not ok),
            "opened": self.opened,
            "cooling_for_s": round(max(0.0, self.cool_until - now), 3),
            "open_for_s": round(max(0.0, self.opened_at + self.cooldown - now), 3)
            if state == "open"
            else 0.0,
        }


class Breakers:
    """The breakers of every deployment this process has tried, by deployment id."""

    def __init__(
        self,
        clock: Clock,
        *,
        failure_rate: float = 0.5,
        min_attempts: int = 5,
        window: float = 30.0,
        cooldown: float = 15.0,
    ) -> None:
        self._clock = clock
        self._params = (failure_rate, min_attempts, window, cooldown)
        self._breakers: dict[str, Breaker] = {}

    def _get(self, deployment_id: str) -> Breaker:
        b = self._breakers.get(deployment_id)
        if b is None:
            b = self._breakers[deployment_id] = Breaker(*self._params)
        return b

    def allow(self, deployment_id: str) -> bool:
        return self._get(deployment_id).allow(self._clock.now())

    def record(self, deployment_id: str, error_class: str | None) -> None:
        """Count an attempt's outcome; only provider-side error classes count as failures."""
        ok = error_class is None or error_class not in PROVIDER_FAULTS
        self._get(deployment_id).record(ok, self._clock.now())

    def cool(self, deployment_id: str, seconds: float) -> None:
        """Skip the deployment for ``seconds`` (its ``Retry-After``)."""
        b = self._get(deployment_id)
        b.cool_until = max(b.cool_until, self._clock.now() + seconds)

    def status(self) -> dict[str, dict[str, Any]]:
        now = self._clock.now()
        return {d: b.snapshot(now) for d, b in sorted(self._breakers.items())}


__all__ = ["PROVIDER_FAULTS", "Breaker", "Breakers"]
