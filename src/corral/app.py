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
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from corral.clock import Clock, SystemClock
from corral.errors import ConfigError
from corral.gateway import Gateway, Upstream
from corral.gateway.http import Receive, Scope, Send
from corral.identity import KeyCache
from corral.metrics import Metrics
from corral.quota import EmbeddedQuota, QuotaBackend, RedisQuota
from corral.quota.gate import QuotaGate
from corral.quota.rules import QuotaRules
from corral.routing import Catalog
from corral.routing.breaker import Breakers
from corral.routing.policy import RoutePolicy, load_stored
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
    ) -> None:
        """``environ`` is where provider secrets are read (default: the process environment)."""
        self.settings = settings
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
        self.retention = Retention(
            self.store, self.blobs, self.clock, default_days=settings.trace_retention_days
        )
        self.ingest = OtlpIngest(self)
        backend: QuotaBackend
        if settings.redis_url:
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
        self.gateway = Gateway(
            self,
            upstream=Upstream(
                connect_timeout=settings.upstream_connect_timeout,
                read_timeout=settings.upstream_read_timeout,
                max_connections=settings.upstream_max_connections,
                environ=environ,
            ),
        )
        self._catalog: Catalog | None = None
        self.route_policy: RoutePolicy | None = None
        self._route_refresher: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._sim: SimServer | None = None
        self._api: ASGIApp | None = None
        self.generated_admin_key: str | None = None
        self.on_startup: list[Callable[[CorralApp], None]] = []
        self.metrics = Metrics(self)
        from corral.identity.service import IdentityService
        from corral.runs.executor import LocalExecutor
        from corral.runs.profiles import default_profiles
        from corral.runs.service import RunService

        identity = IdentityService(self.store, self.clock)
        self.runs = RunService(self.store, self.clock, identity)
        self.executor = LocalExecutor(self, self, self.runs, identity, default_profiles())
        self.started = False

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
        self._retention_task = asyncio.create_task(
            self.retention.run_forever(self.settings.trace_retention_interval),
            name="corral-retention",
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
        for task in (self._route_refresher, self._retention_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._route_refresher = self._retention_task = None
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
            elif path.startswith("/v1/"):
                await self.gateway(scope, receive, send)
            elif path.startswith("/api/"):
                await self.api(scope, receive, send)
            elif path == "/metrics":
                await self.metrics(scope, receive, send)
            else:
                from corral.web import status_app

                await status_app(self, scope, receive, send)
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


def create_app(
    settings: Settings, *, clock: Clock | None = None, environ: Mapping[str, str] | None = None
) -> CorralApp:
    """Build a Corral application; nothing runs until its ASGI lifespan starts it."""
    return CorralApp(settings, clock=clock, environ=environ)
