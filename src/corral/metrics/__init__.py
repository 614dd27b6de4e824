"""``/metrics``: Prometheus exposition of what this process knows.

The circuit breakers of each deployment (issue 4), what this process's
gateway served (``corral.metrics.traffic``), the health of the span
pipeline (``corral.metrics.pipeline``) and its run executor (``corral.metrics.runs``),
and what its guards did (``corral.metrics.guards``).
Each process exposes its own (breakers
and traffic counters are per process); scrape every replica.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from corral.asgi import api_key
from corral.errors import CorralError
from corral.metrics.guards import GuardMetrics
from corral.metrics.pipeline import PipelineCollector
from corral.metrics.runs import RunsCollector
from corral.metrics.traffic import Traffic

if TYPE_CHECKING:
    from corral.asgi import Headers, Receive, Scope, Send
    from corral.settings import Settings

_STATES = {"closed": 0, "half_open": 1, "open": 2}


class BreakerStatus(Protocol):
    """The circuit breakers (``corral.routing.breaker.Breakers``)."""

    def status(self) -> Mapping[str, Mapping[str, Any]]:
        """Per deployment: ``state``, ``opened``, ``recent_attempts``, ``recent_failures``."""


class Caller(Protocol):
    @property
    def role(self) -> str: ...


class Authenticator(Protocol):
    """The key cache (``corral.identity.KeyCache``): raises a ``CorralError`` for a bad key."""

    async def authenticate(self, raw: str | None) -> Caller: ...


class ModelNames(Protocol):
    """The catalog (``corral.routing.Catalog``): its public names label the traffic."""

    @property
    def models(self) -> Mapping[str, object]: ...

    @property
    def tiers(self) -> Collection[str]: ...


class BreakerCollector(Collector):
    """Breaker state (0 closed, 1 half-open, 2 open), openings and recent attempts."""

    def __init__(self, breakers: BreakerStatus) -> None:
        self._breakers = breakers

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
        for deployment, b in self._breakers.status().items():
            state.add_metric([deployment], _STATES[b["state"]])
            opened.add_metric([deployment], b["opened"])
            failed = b["recent_failures"]
            recent.add_metric([deployment, "failed"], failed)
            recent.add_metric([deployment, "ok"], b["recent_attempts"] - failed)
        yield state
        yield opened
        yield recent


class Metrics:
    """The application's registry and its ASGI endpoint.

    ``traffic`` is the gateway's hook: its record path calls ``traffic.observe``
    once per span row it records. ``on_loop`` are the collectors that read objects only
    the event loop may walk (``BreakerCollector``, ``PipelineCollector``, ``RunsCollector``):
    a scrape collects them on the loop; ``traffic`` is safe from any thread. ``guards``, when
    given, is the guards engine's hook, collected on the loop too. ``keys`` authenticates a
    scrape that presents the org admin key.
    """

    def __init__(
        self,
        settings: Settings,
        keys: Authenticator,
        on_loop: Sequence[Collector],
        guards: GuardMetrics | None = None,
    ) -> None:
        self._keys = keys
        self._settings = settings
        token = settings.metrics_token
        self._token = token.get_secret_value().encode() if token is not None else None
        self.traffic = Traffic(settings.metrics_max_teams)
        self.guards = guards
        self._on_loop = (*on_loop, guards) if guards is not None else tuple(on_loop)
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (*self._on_loop, self.traffic):
            self.registry.register(collector)

    def catalog_built(self, catalog: ModelNames) -> None:
        """Call once the catalog exists (start-up): its names are the ``model`` label values."""
        self.traffic.set_models((*catalog.models, *catalog.tiers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a scrape in the format its ``Accept`` header asks for, gzipped if accepted.

        Only the breaker and pipeline collectors run on the event loop (they read state the
        loop changes); the traffic families and the text, most of a scrape's cost (about
        75 ms for 6,000 samples), are built in a worker thread so the gateway keeps serving.
        """
        accept = encoding = ""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"accept-encoding":
                encoding = value.decode("latin-1")
        if not await self._allowed(scope):
            message = (
                b"/metrics needs 'Authorization: Bearer <metrics_token or the org admin key>' "
                b"(or metrics_public = true)\n"
            )
            refusal = [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]
            await send({"type": "http.response.start", "status": 401, "headers": refusal})
            await send({"type": "http.response.body", "body": message})
            return
        encoder, content_type = choose_encoder(accept)
        scrape = _Scrape([family for c in self._on_loop for family in c.collect()], self.traffic)
        compress = gzip_accepted(encoding)
        body = await asyncio.to_thread(_render, encoder, scrape, compress)
        headers: Headers = [(b"content-type", content_type.encode("latin-1"))]
        if compress:
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _allowed(self, scope: Scope) -> bool:
        """Public, the metrics token, or the org admin key: the metrics name teams and spend."""
        if self._settings.metrics_public:
            return True
        presented = api_key(scope)
        if not presented:
            return False
        if self._token is not None and hmac.compare_digest(presented.encode(), self._token):
            return True
        try:
            caller = await self._keys.authenticate(presented)
        except CorralError:
            return False
        return caller.role == "admin"


class _Scrape(Collector):
    """One scrape: the families collected on the loop, then the traffic counters'."""

    def __init__(self, collected: list[Metric], traffic: Traffic) -> None:
        self._collected = collected
        self._traffic = traffic

    def collect(self) -> Iterator[Metric]:
        yield from self._collected
        yield from self._traffic.collect()


def _render(encoder: Callable[[Collector], bytes], scrape: _Scrape, compress: bool) -> bytes:
    text = encoder(scrape)
    return gzip.compress(text, compresslevel=6) if compress else text


__all__ = [
    "Authenticator",
    "BreakerCollector",
    "BreakerStatus",
    "GuardMetrics",
    "Metrics",
    "ModelNames",
    "PipelineCollector",
    "RunsCollector",
    "Traffic",
]
