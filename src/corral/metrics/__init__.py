"""``/metrics``: Prometheus exposition of what this process knows.

So far: the circuit breakers of each deployment (issue 4). Trajectory and
gateway metrics join this registry later. Each process exposes its own
(breakers are per process); scrape every replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from corral.app import CorralApp
    from corral.gateway.http import Receive, Scope, Send

_STATES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerCollector(Collector):
    """Breaker state (0 closed, 1 half-open, 2 open), openings and recent attempts."""

    def __init__(self, app: CorralApp) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily(
            "corral_breaker_state",
            "Circuit breaker of a deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        opened = CounterMetricFamily(
            "corral_breaker_opened",
            "Times a deployment's circuit breaker opened.",
            labels=["deployment"],
        )
        recent = GaugeMetricFamily(
            "corral_breaker_recent_attempts",
            "Attempts within the breaker's window, by outcome.",
            labels=["deployment", "outcome"],
        )
        for deployment, b in self._app.breakers.status().items():
            state.add_metric([deployment], _STATES[b["state"]])
            opened.add_metric([deployment], b["opened"])
            failed = b["recent_failures"]
            recent.add_metric([deployment, "failed"], failed)
            recent.add_metric([deployment, "ok"], b["recent_attempts"] - failed)
        yield state
        yield opened
        yield recent


class Metrics:
    """The application's registry and its ASGI endpoint."""

    def __init__(self, app: CorralApp) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(BreakerCollector(app))
        self._asgi = make_asgi_app(self.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)


__all__ = ["BreakerCollector", "Metrics"]
