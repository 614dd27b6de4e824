"""The application object and its factory.

All state lives on ``CorralApp``: settings, clock, store, key cache, catalog,
upstream client, the record pipeline, the blob store. It is itself the ASGI
application and dispatches by path: ``/v1/traces``, ``/v1/logs`` and
``/v1/metrics`` to OTLP ingest, the rest of ``/v1/*`` to the gateway,
``/api/*`` to the admin API, ``/metrics``, and the status page at ``/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from corral.asgi import Receive, Scope, Send
from corral.clock import Clock, SystemClock
from corral.errors import ConfigError
from corral.gateway import Gateway, Upstream
from corral.gateway.hooks import GatewayHooks
from corral.guards import build as guards_build
from corral.guards.detectors import builtin_detectors
from corral.guards.engine import Guards
from corral.guards.model import ACTIONS, Detector
from corral.guards.runs import ExecutorControl
from corral.identity import KeyCache
from corral.identity.service import IdentityService
from corral.metrics import BreakerCollector, Metrics, PipelineCollector, RunsCollector
from corral.metrics.guards import GuardMetrics
from corral.plugins import Extensions
from corral.quota import EmbeddedQuota, QuotaBackend, RedisQuota
from corral.quota.gate import QuotaGate
from corral.quota.rules import QuotaRules
from corral.review import build as review_build
from corral.review.agents import ReviewerAgents
from corral.review.browser import NAME as BROWSER_CHECK
from corral.review.browser import BrowserCheck
from corral.review.service import Reviews
from corral.routing import Catalog
from corral.routing.breaker import Breakers
from corral.routing.policy import RoutePolicy, load_stored
from corral.runs.artifacts import LocalArtifactStore
from corral.runs.executor import LocalExecutor
from corral.runs.launcher import BubblewrapLauncher, Launcher
from corral.runs.ledger import Ledger
from corral.runs.profiles import Profile, default_profiles
from corral.runs.service import RunService
from corral.runs.steps import AfterRunStep, default_steps
from corral.settings import Settings
from corral.sim import SimConfig, SimServer, bind_socket
from corral.store import Store
from corral.store.files import private_dir
from corral.traces import Recorder
from corral.traces.blobs import BlobStore
from corral.traces.export import OtlpExporter
from corral.traces.ingest import PATHS as OTLP_PATHS
from corral.traces.ingest import OtlpIngest
from corral.traces.policy import TracePolicy
from corral.traces.retention import Retention
from corral.traces.writer import Sink

log = logging.getLogger(__name__)

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CorralApp:
    """One Corral process: gateway, admin API and the pipelines behind them."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        upstream: Upstream | None = None,
        quota_backend: QuotaBackend | None = None,
        hooks: GatewayHooks | None = None,
        span_sinks: Sequence[Sink] = (),
        extensions: Extensions | None = None,
        launcher: Launcher | None = None,
        profiles: Mapping[str, Profile] | None = None,
        after_run_steps: Sequence[AfterRunStep] | None = None,
        detectors: Sequence[Detector] | None = None,
    ) -> None:
        """Every collaborator has today's default; pass one to replace it.

        ``environ`` is where provider secrets are read (default: the process environment);
        ``upstream`` the providers' HTTP client; ``quota_backend`` where counters live
        (default: Redis when ``redis_url`` is set, else in this process); ``hooks`` the
        gateway's guards, observers and listeners; ``span_sinks`` receive every stored
        batch of spans; ``extensions`` the plug-ins (default: every ``corral`` entry point
        installed), whose contributions are added after these; ``launcher`` starts runs'
        agents (default: bubblewrap on this host); ``profiles`` the agent profiles by name
        (default: Corral's) and ``after_run_steps`` what runs after an agent exits
        (default: the diff, then the report); ``detectors`` what guards watch for (default:
        Corral's, ``corral.guards.detectors``).
        """
        self.settings = settings
        self.extensions = extensions if extensions is not None else Extensions.load()
        collect = functools.partial(self.extensions.collect, settings=settings)
        self.clock: Clock = clock or SystemClock()
        self.store = Store(settings.resolved_database_url)
        self.keys = KeyCache(self.store, self.clock, refresh_interval=settings.key_refresh_interval)
        self.blobs = BlobStore(settings.blob_dir or settings.home / "blobs")
        self.trace_policy = TracePolicy(self.store, settings)
        self.recorder = Recorder(
            self.store,
            journal_dir=settings.home / "journal",
            batch_size=settings.record_batch_size,
            flush_interval=settings.record_flush_interval,
            blobs=self.blobs,
            max_body_bytes=settings.trace_body_max_bytes,
            queue_max=settings.ingest_queue_max,
        )
        self.exporter: OtlpExporter | None = None
        if settings.otlp_export_endpoint:
            self.exporter = OtlpExporter(
                settings.otlp_export_endpoint,
                headers=settings.otlp_export_headers,
                queue_max=settings.otlp_export_queue_max,
            )
            self.recorder.writer.sinks.append(self.exporter)
        self.recorder.writer.sinks.extend([*span_sinks, *collect("corral_span_sinks")])
        self.retention = Retention(
            self.store, self.blobs, self.clock, default_days=settings.trace_retention_days
        )
        self.ingest = OtlpIngest(
            self.keys,
            self.recorder,
            self.trace_policy,
            lambda: self.catalog,
            max_body_bytes=settings.max_body_bytes,
            listeners=[lambda rows: self.guards.ingested(rows)],
        )
        watch = [
            *(builtin_detectors() if detectors is None else detectors),
            *collect("corral_detectors"),
        ]
        guard_metrics = GuardMetrics(
            [d.name for d in watch],
            ACTIONS,
            self._sequestered,
            lambda: (self.guards.handled, self.guards.dropped),
        )
        backend: QuotaBackend
        if quota_backend is not None:
            backend = quota_backend
        elif settings.redis_url:
            backend = RedisQuota(
                settings.redis_url, self.clock, settle_grace=settings.quota_settle_grace
            )
        else:
            backend = EmbeddedQuota(self.clock, settle_grace=settings.quota_settle_grace)
        self.quotas = QuotaGate(
            QuotaRules(self.store, self.clock, settings), backend, self.clock, settings
        )
        self.recorder.on_replay = self.quotas.settle_replayed
        self.breakers = Breakers(
            self.clock,
            failure_rate=settings.breaker_failure_rate,
            min_attempts=settings.breaker_min_attempts,
            window=settings.breaker_window,
            cooldown=settings.breaker_cooldown,
        )
        # Traffic metrics listen to finished calls; the collectors read the recorder,
        # exporter, quotas and executor anew at each scrape (corral.metrics' protocols).
        on_loop = (BreakerCollector(self.breakers), PipelineCollector(self), RunsCollector(self))
        self.metrics = Metrics(settings, self.keys, on_loop, guard_metrics)
        self.hooks = hooks or GatewayHooks()
        self.hooks.listeners.insert(0, self.metrics.traffic.listen)
        self.hooks.guards.extend(collect("corral_request_guards"))
        self.hooks.observers.extend(collect("corral_response_observers"))
        self.hooks.listeners.extend(collect("corral_call_listeners"))
        self.gateway = Gateway(
            settings=settings,
            keys=self.keys,
            quotas=self.quotas,
            breakers=self.breakers,
            recorder=self.recorder,
            trace_policy=self.trace_policy,
            catalog=lambda: self.catalog,
            route_policy=lambda: self.route_policy,
            upstream=upstream
            or Upstream(
                connect_timeout=settings.upstream_connect_timeout,
                read_timeout=settings.upstream_read_timeout,
                max_connections=settings.upstream_max_connections,
                environ=environ,
            ),
            hooks=self.hooks,
        )
        self._catalog: Catalog | None = None
        self.route_policy: RoutePolicy | None = None
        self._route_refresher: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._sim: SimServer | None = None
        self._api: ASGIApp | None = None
        self._status_page: ASGIApp | None = None
        self.generated_admin_key: str | None = None
        self.on_startup: list[Callable[[CorralApp], None]] = []
        self.on_startup.append(lambda app: app.metrics.catalog_built(app.catalog))

        identity = IdentityService(self.store, self.clock)
        self.runs = RunService(self.store, self.clock, identity)
        self.executor = LocalExecutor(
            settings=settings, clock=self.clock, runs=self.runs, identity=identity,
            keys=self.keys, quotas=self.quotas, record_spans=self.record_spans, asgi=self,
            launcher=launcher or BubblewrapLauncher.from_settings(settings),
            artifacts=LocalArtifactStore(settings.artifact_dir or settings.home / "artifacts"),
            steps=[
                *(default_steps() if after_run_steps is None else after_run_steps),
                *collect("corral_after_run_steps"),
            ],
            profiles=_profiles(
                {
                    **(default_profiles() if profiles is None else profiles),
                    BROWSER_CHECK: BrowserCheck(),  # what review gates' browser checks run
                },
                collect("corral_agent_profiles"),
            ),
        )  # fmt: skip
        control = ExecutorControl(self.executor, identity, self.clock)
        self.guards: Guards = guards_build.build(
            settings=settings, store=self.store, clock=self.clock, identity=identity,
            runs=self.runs, keys=self.keys, detectors=watch, control=control, held=control,
            metrics=guard_metrics,
        )  # fmt: skip
        # Guards go first: a stopped team or a suspended run is refused before anything else.
        self.hooks.guards.insert(0, self.guards.guard)
        self.hooks.listeners.append(self.guards.listen)
        self.executor.scheduler.holds.append(self.guards.switches.stopped)  # kill switches
        self.ledger = Ledger(self.store, self.clock)
        self.reviews: Reviews = review_build.build(
            settings=settings, store=self.store, clock=self.clock, identity=identity,
            runs=self.runs, ledger=self.ledger, artifacts=self.executor.artifacts,
            blobs=self.blobs,
        )  # fmt: skip
        self.reviewers = ReviewerAgents(
            store=self.store, reviews=self.reviews, runs=self.runs, identity=identity,
            artifacts=self.executor.artifacts,
        )  # fmt: skip
        self._review_task: asyncio.Task[None] | None = None
        self.started = False

    def _sequestered(self) -> int:
        return self.executor.sequestered

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            raise ConfigError("the catalog is built at start-up; start the app first")
        return self._catalog

    @property
    def sim(self) -> SimServer | None:
        """The in-process simulator, or None when Corral is not running one."""
        return self._sim

    @property
    def api(self) -> ASGIApp:
        if self._api is None:
            from corral.api import guarded_api

            self._api = guarded_api(self)
        return self._api

    @property
    def status_page(self) -> ASGIApp:
        if self._status_page is None:
            from corral.web import StatusPage

            self._status_page = StatusPage(
                self.settings,
                self.keys,
                self.store,
                self.clock,
                lambda: self.catalog,
                self.executor,
            )
        return self._status_page

    # -- lifecycle -------------------------------------------------------------

    async def startup(self) -> None:
        """Migrate, bootstrap identity, start the simulator if needed, start pipelines."""
        from corral.identity.service import bootstrap

        private_dir(self.settings.home)  # the journal, the database: the service user's only
        await asyncio.to_thread(self.store.migrate)
        self.generated_admin_key = await asyncio.to_thread(
            bootstrap, self.store, self.settings, self.clock
        )
        sim_url = self.settings.sim_url
        if not self.settings.providers and sim_url is None:
            sim_url = await self._start_sim()
        self._catalog = Catalog.from_settings(self.settings, sim_url=sim_url)
        self.route_policy = RoutePolicy(
            self._catalog, list(self.settings.route_policies), list(self.settings.tier_order)
        )
        await self.reload_routes()
        self._route_refresher = asyncio.create_task(self._refresh_routes(), name="corral-routes")
        if self.exporter is not None:
            await self.exporter.start()
        # Replay dead processes' journals first: the quota backends restore spend from spans.
        self.quotas.bind(asyncio.get_running_loop())
        await self.recorder.start()
        await self.quotas.start()
        await self.gateway.start()
        await self.keys.start()
        await self.executor.start()
        await self.guards.start()
        self._retention_task = asyncio.create_task(
            self.retention.run_forever(self.settings.trace_retention_interval),
            name="corral-retention",
        )
        self._review_task = asyncio.create_task(
            self.reviewers.run_forever(self.settings.review.interval, self.executor.wake),
            name="corral-reviews",
        )
        # Everything allocated so far lives as long as the process: move it out of the
        # collector's sight so full collections under load stay sub-millisecond.
        gc.collect()
        gc.freeze()
        # The span writer's thread gives up the GIL around each database call; under ingest
        # load the event loop holds it and each return waited the default 5 ms switch
        # interval, so storing fell far behind accepting. Switch more often.
        sys.setswitchinterval(0.0005)
        await self.executor.ready()  # the sandbox probe ran beside the steps above
        self.started = True
        for hook in self.on_startup:
            hook(self)

    def record_spans(self, *rows: dict[str, Any]) -> None:
        """Hand spans Corral made itself (a run's root span) to the record pipeline."""
        self.recorder.record(*rows)

    async def reload_routes(self) -> None:
        """Re-read the route policy rules and the teams' trace policies set through the API."""
        if self.route_policy is not None:
            self.route_policy.set_stored(await asyncio.to_thread(load_stored, self.store))
        await asyncio.to_thread(self.trace_policy.reload)

    async def _refresh_routes(self) -> None:
        while True:
            await asyncio.sleep(self.settings.quota_refresh_interval)
            try:
                await self.reload_routes()
            except Exception:
                log.exception("reloading route policies failed; keeping the last ones")

    async def shutdown(self) -> None:
        for task in (self._route_refresher, self._retention_task, self._review_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._route_refresher = self._retention_task = self._review_task = None
        await self.guards.stop()
        await self.executor.stop()
        await self.keys.stop()
        await self.gateway.stop()
        await self.quotas.stop()
        await self.recorder.stop()
        if self.exporter is not None:
            await self.exporter.stop()
        if self._sim is not None:
            await self._sim.stop()
        self.store.close()
        self.started = False

    async def _start_sim(self) -> str:
        """Serve the simulator in this process on a loopback port of its own."""
        self._sim = SimServer(SimConfig(script=self.settings.sim_script))
        await self._sim.start(bind_socket("127.0.0.1", 0))
        return self._sim.url

    # -- ASGI ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path in OTLP_PATHS:
                await self.ingest(scope, receive, send)
            elif path.startswith(("/v1/", "/v1beta/")):
                await self.gateway(scope, receive, send)
            elif path.startswith("/api/"):
                await self.api(scope, receive, send)
            elif path == "/metrics":
                await self.metrics(scope, receive, send)
            else:
                await self.status_page(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _profiles(base: Mapping[str, Profile], extra: list[Any]) -> dict[str, Profile]:
    """The given agent profiles and the extensions' (an extension may not replace one)."""
    profiles = dict(base)
    for profile in extra:
        if profile.name in profiles:
            raise ConfigError(
                f"an extension offers the agent profile {profile.name!r}, which Corral already "
                "has; give it another name"
            )
        profiles[profile.name] = profile
    return profiles


def create_app(
    settings: Settings, *, clock: Clock | None = None, environ: Mapping[str, str] | None = None
) -> CorralApp:
    """Build a Corral application; nothing runs until its ASGI lifespan starts it."""
    return CorralApp(settings, clock=clock, environ=environ)
