"""The executor: runs queued runs in this process's slots, through the parts it is given.

Each process has ``run_slots`` slots. Its loop asks the ``Scheduler`` which
queued runs to admit (priority, then first come first served, within team
limits), records a heartbeat for its live runs, stops the runs someone asked to
cancel, and lets ``Recovery`` fail the runs of executors that died and remove
old workspaces.

A run's life here: clone the workspace, mint the run key (limited to the run's
models, its budget a level of the quota chain), start the agent through the
``Launcher`` with the gateway reachable over a Unix socket this process serves,
its output written to the ``ArtifactStore`` as it arrives; wait for it (the
wall-clock limit, a cancel, the disk quota or the server stopping end it:
SIGTERM to every process of the run, SIGKILL after ``run_grace``); revoke the
key; copy its artifacts into the store; run the after-run steps in order (by
default the diff, then the report); record the run span; leave the run
awaiting review or failed, saying why.

A running run may be sequestered (frozen where it is, its slot freed, its change
snapshotted; ``corral.runs.sequester``), then released or killed: by a call here
(``sequester_local``, ``release_local``, ``kill_local``) or by its state changed
in the store by any process, which the loop follows at the next heartbeat.

Everything it uses is a constructor argument: settings, clock, run and identity
services, the key cache, the quota gate, a ``record_spans`` callable, the ASGI
app the socket serves, the launcher, the artifact store, the steps and the
agent profiles (a mapping: an extension adds a profile by adding an entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from corral.clock import Clock
from corral.errors import ClientError, Conflict, CorralError, InvalidRequest
from corral.identity.keys import KeyCache
from corral.identity.service import IdentityService
from corral.quota import Level
from corral.quota.gate import QuotaGate
from corral.runs import outputs
from corral.runs import workspace as workspaces
from corral.runs.artifacts import ArtifactStore
from corral.runs.launcher import Launcher, LaunchSpec, Placement
from corral.runs.model import HELD, Run
from corral.runs.profiles import AgentContext, Profile
from corral.runs.recovery import Recovery
from corral.runs.runtime import Runtime
from corral.runs.sandbox import Limits
from corral.runs.scheduler import SYSTEM, Scheduler
from corral.runs.sequester import Hold, Sequester, WallClock, until_end
from corral.runs.service import RunService
from corral.runs.steps import AfterRunStep, Outcome, StepContext, run_span, run_steps, verdict
from corral.settings import Settings
from corral.traces.spans import run_trace, traceparent

log = logging.getLogger(__name__)

__all__ = ["SYSTEM", "LocalExecutor", "executor_id"]


@dataclass(slots=True)
class _Live:
    run: Run
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: tuple[str, str, str] | None = None  # (state, actor, reason)
    superseded: bool = False  # its stored state was changed by another process
    hold: Hold = field(default_factory=Hold)  # its sandbox: frozen, wall clock, snapshots


def executor_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


class LocalExecutor:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        runs: RunService,
        identity: IdentityService,
        keys: KeyCache,
        quotas: QuotaGate,
        record_spans: Callable[..., None],
        asgi: Callable[..., Any],
        launcher: Launcher,
        artifacts: ArtifactStore,
        steps: Sequence[AfterRunStep],
        profiles: Mapping[str, Profile],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.runs = runs
        self.identity = identity
        self.keys = keys
        self.quotas = quotas
        self.record_spans = record_spans
        self._asgi = asgi
        self.launcher = launcher
        self.artifacts = artifacts
        self.steps = list(steps)
        self.profiles = profiles
        self.dir = (settings.runs_dir or settings.home / "runs").resolve()
        self.id = executor_id()
        self.scheduler = Scheduler(runs, identity, settings, clock, self.id)
        self.recovery = Recovery(
            runs, identity, launcher, settings, clock, executor_id=self.id, runs_dir=self.dir
        )
        self.sequester = Sequester(
            launcher=launcher, runs=runs, artifacts=artifacts, diff_max=settings.run_diff_max_bytes
        )
        self.refusal: str | None = None
        self._live: dict[str, _Live] = {}
        self._wake = asyncio.Event()
        self.ended: Counter[str] = Counter()  # runs this process ended, by final state
        self._loop_task: asyncio.Task[None] | None = None
        self._server: Any = None
        self._probing: asyncio.Task[str | None] | None = None
        self._socket_error: str | None = None
        self._socket = self.dir / f".gateway-{os.getpid()}.sock"  # see _socket_path

    @property
    def slots(self) -> int:
        return self.settings.run_slots

    @property
    def live(self) -> int:
        """Runs this process holds that take a slot (admitted or running, not frozen)."""
        return sum(1 for live in list(self._live.values()) if not live.hold.frozen)

    def held(self) -> dict[str, Run]:
        """The runs this process holds (admitted, running or sequestered), by id."""
        return {run_id: live.run for run_id, live in list(self._live.items())}

    @property
    def sequestered(self) -> int:
        """Runs this process holds frozen (sequestered): they take no slot."""
        return sum(1 for live in list(self._live.values()) if live.hold.frozen)

    @property
    def runtime(self) -> Runtime | None:
        return self.launcher.runtime

    @property
    def agent_path(self) -> str:
        """Where profiles look agent CLIs up (PATH syntax)."""
        return self.settings.run_agent_path or os.environ.get("PATH", "")

    @property
    def sandbox_label(self) -> str:
        return self.launcher.label

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe the launcher, serve the gateway socket, recover dead runs, start the loop."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a folder made by someone else keeps its mode
            self.dir.chmod(0o700)  # Corral's alone: a run reaches its own folders (reveal)
        # The probe starts a sandbox (~60 ms): it runs beside the rest of start-up, and
        # submitting and admitting wait for it (``ready``).
        self._probing = asyncio.create_task(
            asyncio.to_thread(self.launcher.probe), name="corral-probe"
        )
        try:
            self._socket = _socket_path(self.dir)
            await self._serve_socket()
        except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
            self._socket_error = f"the gateway socket {self._socket} could not be served: {exc}"
        await asyncio.to_thread(self.recovery.recover)
        self._loop_task = asyncio.create_task(self._loop(), name="corral-runs")

    async def ready(self) -> None:
        """Wait for the start-up probe; afterwards ``refusal`` says whether runs are refused."""
        if self._probing is None:
            return
        found = await self._probing
        self._probing = None
        if self._socket_error:
            found = (found or "agent runs are refused on this server") + "; " + self._socket_error
        self.refusal = found
        if found:
            log.warning("%s", found)

    async def stop(self) -> None:
        """Stop the loop; stop every run it holds, sequestered ones too (thawed and killed;
        failed: the server stopped) and wait for them."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for live in list(self._live.values()):
            self._request_stop(live, "failed", SYSTEM, "the server stopped while the run was live")
        if self._live:
            await asyncio.gather(
                *(live.task for live in self._live.values()), return_exceptions=True
            )
        if self._probing is not None:
            with contextlib.suppress(Exception):
                await self.ready()
        if self._server is not None:
            await _close(self._server)
            self._server = None
        self._socket.unlink(missing_ok=True)
        if self._socket.parent != self.dir:
            with contextlib.suppress(OSError):
                self._socket.parent.rmdir()

    async def _serve_socket(self) -> None:
        import uvicorn  # the server is only needed where runs are executed

        from corral.server import HttpLimits, server_config

        self._socket.unlink(missing_ok=True)
        # The same limits as the public port: a run must not hold connections open either.
        config = server_config(
            self._asgi, HttpLimits.from_settings(self.settings), loop="none",
            lifespan="off", graceful_shutdown=5, uds=str(self._socket),
        )  # fmt: skip
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        self._socket.chmod(0o666)  # the run's uid connects; keys still authenticate each call
        self._server = server

    # -- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        interval = self.settings.run_heartbeat_interval
        await self.ready()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                differ = await asyncio.to_thread(self._check_held)
                for run_id in differ:  # before admitting: a run frozen now frees its slot
                    await self._reconcile(run_id)
                admitted = await asyncio.to_thread(self._admit)
            except Exception:  # the store may be briefly unavailable; the loop must go on
                log.exception("the run executor's loop failed; retrying")
                continue
            for run in admitted:
                self._live[run.id] = _Live(run, asyncio.create_task(self._guarded(run.id)))

    def _check_held(self) -> list[str]:
        """Keep the held runs' heartbeats; stop those ended or cancelled elsewhere; return
        those whose stored state says sequestered or running where this process holds them
        the other way (another process decided: ``_reconcile`` follows it)."""
        now = self.clock.now()
        differ: list[str] = []
        if not self._live:
            return differ
        for run_id in list(self._live):
            self.runs.update(run_id, heartbeat_at=now)
        for run_id, (state, who) in self.runs.held(list(self._live)).items():
            live = self._live.get(run_id)
            if live is None:
                continue
            if state not in HELD:  # ended elsewhere (or judged dead): do not run on
                self._request_stop(live, state, SYSTEM, f"{state} elsewhere")
                live.superseded = True
            elif who is not None:
                self._request_stop(live, "cancelled", who, "cancelled; the run was stopped")
            elif live.stop_reason is None and (state == "sequestered") != live.hold.frozen:
                differ.append(run_id)
        return differ

    def _admit(self) -> list[Run]:
        now = self.clock.now()
        self.recovery.fail_stale(now, self._live)
        self.recovery.sweep(now, self._live)
        if self.refusal:
            return []
        return self.scheduler.admit(self.settings.run_slots - self.live)

    async def _reconcile(self, run_id: str) -> None:
        live = self._live.get(run_id)
        if live is None:
            return
        why = await self.sequester.reconcile(live.run, live.hold)
        if why is not None:
            self._request_stop(live, "failed", SYSTEM, why)

    # -- one run -------------------------------------------------------------------------------

    def cancel_local(self, run_id: str, actor: str) -> bool:
        """Stop a run this process holds now (without waiting for the next tick)."""
        live = self._live.get(run_id)
        if live is None:
            return False
        self._request_stop(live, "cancelled", actor, "cancelled; the run was stopped")
        return True

    async def sequester_local(self, run_id: str, actor: str, reason: str) -> bool:
        """Sequester a run this process holds: frozen (``Launcher.freeze``), stored
        ``sequestered`` by ``actor`` for ``reason`` (name the incident there), its slot freed
        (another run may be admitted) and its wall clock stopped; returns once it is frozen
        and stored, its snapshot (``sequestered/<n>.patch``) following in the background.
        False when this process does not hold it; ``Conflict`` when its agent is not running
        (not started yet, exited, being stopped); ``FreezeFailed`` when the sandbox cannot be
        frozen (it goes on running: kill it instead)."""
        live = self._live.get(run_id)
        if live is None:
            return False
        if live.stop_reason is not None:
            raise Conflict(f"run {run_id} is being stopped; it cannot be sequestered")
        live.run = await self.sequester.freeze(live.run, live.hold, actor, reason)
        self._wake.set()  # its slot is free now
        return True

    async def release_local(self, run_id: str, actor: str, reason: str) -> bool:
        """Release a run this process holds sequestered: stored ``running`` again by
        ``actor`` for ``reason`` and thawed; it goes on and ends as any run does, taking a
        slot again even when all are taken (it was admitted before). False when this
        process does not hold it; ``Conflict`` when it is not sequestered here."""
        live = self._live.get(run_id)
        if live is None:
            return False
        live.run = await self.sequester.release(live.run, live.hold, actor, reason)
        return True

    def kill_local(self, run_id: str, actor: str, reason: str) -> bool:
        """Stop a run this process holds (running or sequestered) as a cancel does (SIGTERM,
        ``run_grace``, SIGKILL; a frozen one is thawed to receive them); it ends ``failed``
        with ``reason``, its artifacts collected. Returns at once (the run ends within the
        grace period); False when this process does not hold it."""
        live = self._live.get(run_id)
        if live is None:
            return False
        self._request_stop(live, "failed", actor, reason)
        return True

    def _request_stop(self, live: _Live, state: str, actor: str, reason: str) -> None:
        if live.stop_reason is None:
            live.stop_reason = (state, actor, reason)
        live.task.get_loop().call_soon_threadsafe(live.stop.set)

    async def _guarded(self, run_id: str) -> None:
        try:
            await self._execute(run_id)
        except ClientError as exc:  # refused for a reason the requester can act on
            log.warning("run %s failed: %s", run_id, exc.message)
            await self._fail(run_id, exc.message)
        except Exception as exc:
            log.exception("run %s failed in the executor", run_id)
            await self._fail(run_id, f"Corral failed to run it: {exc}")
        finally:
            self._live.pop(run_id, None)
            self._wake.set()

    async def _fail(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(CorralError):
            await asyncio.to_thread(
                self.runs.transition, run_id, "failed", actor=SYSTEM, reason=reason,
                ended_at=self.clock.now(),
            )  # fmt: skip

    async def _execute(self, run_id: str) -> None:
        live = self._live[run_id]
        run = live.run
        try:  # the team's repository policy again: the path may have changed since submit
            team = await asyncio.to_thread(self.identity.get_team, run.team_id)
            policy = workspaces.team_policy(self.settings, team.name, self.dir)
            start = await asyncio.to_thread(self._change_of, run.continues_from)
            ws = await asyncio.to_thread(
                workspaces.prepare, run.repo, run.ref, self.dir, run.id, policy, start
            )
        except ClientError as exc:
            await self._fail(run.id, f"the workspace could not be made: {exc.message}")
            return
        await asyncio.to_thread(self.runs.update, run.id, base_commit=ws.base)
        live.hold.workspace = ws
        key_id: str | None = None
        try:
            key_id, raw = await self._mint_key(run)
            outcome = await self._run_agent(live, ws, raw)
        finally:
            if key_id is not None:  # revoked however the run ended, even by a fault here
                await asyncio.to_thread(self._end_key, key_id)
        await self._finish(live, ws, outcome)

    def _change_of(self, run_id: str | None) -> bytes | None:
        """The patch of the run a follow-up continues (None: it continues none)."""
        if run_id is None:
            return None
        cap = self.settings.run_diff_max_bytes
        try:
            with self.artifacts.open(run_id, "diff.patch") as patch:
                if patch.size > cap:
                    raise InvalidRequest(f"run {run_id}'s change is larger than it can continue")
                return patch.read_at(0, cap)
        except outputs.Unreadable:
            return None  # it changed nothing: start from the base commit

    async def _mint_key(self, run: Run) -> tuple[str, str]:
        """The run's key (its models, expiring after the wall clock) and its budget level,
        which is in force before the key exists. The key is minted under the key that
        submitted the run: within its models and expiry, revoked with it, charged to its
        budgets and limits; a requester key revoked or expired meanwhile fails the run."""
        if run.budget_nusd is not None:
            level = Level("run", run.id, run.id)
            await asyncio.to_thread(
                self.quotas.rules.set_budget, level, "usd", "total", run.budget_nusd, by=SYSTEM
            )
            await self.quotas.reload()
        expires = self.clock.now() + run.timeout_s + 2 * self.settings.run_grace + 60
        try:
            key, raw = await asyncio.to_thread(
                self.identity.create_key, run.team_id, run.owner_id, name=f"run {run.id}",
                models=run.allowed_models, expires_at=expires, run_id=run.id,
                created_by=SYSTEM, parent=run.requested_by_key,
            )  # fmt: skip
        except ClientError as exc:
            raise type(exc)(
                f"its key could not be made: {exc.message}; a run's key lives within the key "
                "that submitted the run", code=exc.code,
            ) from exc  # fmt: skip
        await asyncio.to_thread(self.runs.update, run.id, key_id=key.id)
        return key.id, raw

    def _end_key(self, key_id: str) -> None:
        key = self.identity.revoke_key(key_id)
        self.keys.forget(key.key_hash)

    def _context(self, run: Run, raw: str, place: Placement) -> AgentContext:
        team = self.identity.get_team(run.team_id).name
        owner = self.identity.get_user(run.owner_id).name
        trace_id, root = run_trace(run.id)
        return AgentContext(
            run_id=run.id, team=team, owner=owner, task=run.task, model=run.model, key=raw,
            gateway=place.gateway, traceparent=traceparent(trace_id, root),
            workspace=place.workspace, artifacts=place.artifacts, home=place.home,
            handoff=place.handoff, command=run.command, runtime=self.runtime,
            agent_path=self.agent_path,
        )  # fmt: skip

    def _spec(
        self, run: Run, ctx: AgentContext, ws: workspaces.Workspace, place: Placement
    ) -> LaunchSpec:
        """The profile's command line, environment, files and binds for the launcher."""
        profile = self.profiles[run.profile]
        profile.check(ctx)
        for rel, text in profile.files(ctx).items():
            target = ws.scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        handoff = None
        if run.handoff_from is not None:  # the earlier run's artifacts, from the store
            handoff = ws.root / "handoff"
            self.artifacts.export(
                run.handoff_from, "artifacts", handoff, budget=self.settings.run_disk_mb * 2**20
            )
            _readable(handoff)
        return LaunchSpec(
            run_id=run.id, command=profile.command(ctx), env=profile.environment(ctx),
            workspace=ws, placement=place,
            limits=self._limits(run), gateway_socket=self._socket,
            read_only=profile.read_only(ctx), handoff=handoff,
        )  # fmt: skip

    async def _run_agent(self, live: _Live, ws: workspaces.Workspace, raw: str) -> Outcome:
        run = live.run
        place = self.launcher.place(ws, handoff=run.handoff_from is not None)
        ctx = await asyncio.to_thread(self._context, run, raw, place)
        spec = await asyncio.to_thread(self._spec, run, ctx, ws, place)
        try:
            await asyncio.to_thread(self.launcher.prepare, spec)
            live.run = await asyncio.to_thread(
                self.runs.transition, run.id, "running", actor=SYSTEM,
                reason=f"started {run.profile} ({self.sandbox_label})",
                started_at=self.clock.now(),
            )  # fmt: skip
            # stdout and stderr reach the store through the server, which keeps a capped part
            with self.artifacts.logs(run.id, self.settings.run_log_max_bytes) as streams:
                await asyncio.to_thread(
                    self.launcher.start, run.id, stdout=streams.stdout, stderr=streams.stderr
                )
                streams.started()
                outcome = await self._wait(live)
                await asyncio.to_thread(streams.drain, self.settings.run_grace)
        finally:
            limits = await asyncio.to_thread(self.launcher.release, run.id)
        return replace(outcome, limits=tuple(limits))

    def _limits(self, run: Run) -> Limits:
        s = self.settings
        return Limits(
            memory_bytes=s.run_memory_mb * 1024 * 1024,
            processes=s.run_processes,
            open_files=s.run_open_files,
            cpu_seconds=s.run_cpu_seconds,
            wall_seconds=run.timeout_s,
            file_bytes=s.run_disk_mb * 2**20,  # no one file outgrows the quota between checks
        )

    async def _wait(self, live: _Live) -> Outcome:
        """Wait for the agent to exit; stop it (SIGTERM, ``run_grace``, SIGKILL) when a stop
        is asked or its wall clock (which does not run while it is frozen) runs out."""
        run_id, hold = live.run.id, live.hold
        hold.wall = WallClock(live.run.timeout_s, asyncio.get_running_loop().time())
        waiter = asyncio.ensure_future(self.launcher.wait(run_id))
        stopper = asyncio.ensure_future(live.stop.wait())
        watcher = asyncio.ensure_future(self._watch_disk(live))
        try:
            await until_end(hold, waiter, stopper)
        finally:
            hold.wall = None  # its agent is exiting: it can no longer be sequestered
            watcher.cancel()
            stopper.cancel()
        if waiter.done():
            await hold.settled()
            return Outcome(waiter.result())
        if live.stop_reason is None:
            live.stop_reason = (
                "failed", SYSTEM, f"the wall-clock limit ({_duration(live.run.timeout_s)}) passed",
            )  # fmt: skip
        self.launcher.signal(run_id, signal.SIGTERM)
        await self._thaw_to_stop(live)  # a frozen run receives its SIGTERM once thawed
        try:
            code = await asyncio.wait_for(asyncio.shield(waiter), self.settings.run_grace)
        except TimeoutError:
            self.launcher.signal(run_id, signal.SIGKILL)  # thaws whatever froze meanwhile
            code = await waiter
        await hold.settled()
        return Outcome(code, live.stop_reason)

    async def _thaw_to_stop(self, live: _Live) -> None:
        """Thaw a run being stopped, frozen or not (a freeze may be under way)."""
        try:
            await asyncio.to_thread(self.launcher.thaw, live.run.id)
        except CorralError as exc:  # SIGKILL after the grace period thaws it anyway
            log.warning("run %s could not be thawed to stop it: %s", live.run.id, exc.message)
        live.hold.thawed()

    async def _watch_disk(self, live: _Live) -> None:
        """Stop the run once its folders use more than ``run_disk_mb``: measured every
        heartbeat interval (a second at least), less often when measuring takes long."""
        s = self.settings
        folder = self.dir / live.run.id
        while True:
            started = time.monotonic()
            try:
                over = await asyncio.to_thread(outputs.over_quota, folder, s.run_disk_mb)
            except OSError:  # out of descriptors, say: measure again next time
                log.exception("measuring the disk use of run %s failed", live.run.id)
                over = None
            if over is not None:
                self._request_stop(live, "failed", SYSTEM, over)
                return
            took = time.monotonic() - started
            await asyncio.sleep(max(s.run_heartbeat_interval, 1.0, 20 * took))

    async def _finish(self, live: _Live, ws: workspaces.Workspace, outcome: Outcome) -> None:
        run, s = live.run, self.settings
        over = await asyncio.to_thread(outputs.over_quota, ws.root, s.run_disk_mb)
        ctx = StepContext(
            run=run, workspace=ws, store=self.artifacts, profile=self.profiles[run.profile],
            settings=s, outcome=outcome, over_quota=over,
        )  # fmt: skip
        await asyncio.to_thread(self._collect, ctx)
        await run_steps(self.steps, ctx)
        state, actor, reason = verdict(ctx)
        if live.superseded:  # the store already says how it ended; keep the artifacts only
            log.warning("run %s was ended by another process; stopped it here", run.id)
            return
        now = self.clock.now()
        live.run = await asyncio.to_thread(
            self.runs.transition, run.id, state, actor=actor, reason=reason, ended_at=now,
            exit_code=outcome.code,
        )  # fmt: skip
        self.ended[state] += 1
        self.record_spans(run_span(live.run))
        if s.run_workspace_retention == 0:
            await asyncio.to_thread(workspaces.remove_tree, ws.path)
            await asyncio.to_thread(workspaces.remove_tree, ws.scratch)
            await asyncio.to_thread(self.runs.update, run.id, workspace_removed_at=now)

    @staticmethod
    def _collect(ctx: StepContext) -> None:
        """Copy the agent's artifacts into the store, through the hostile-file readers."""
        budget = ctx.settings.run_disk_mb * 2**20
        with outputs.Folder(ctx.workspace.root) as folder:
            got = ctx.store.collect(ctx.run.id, folder, "artifacts", "artifacts", budget=budget)
        if got.left_out:
            shown = ", ".join(got.left_out[:5]) + (" ..." if len(got.left_out) > 5 else "")
            ctx.note(f"{len(got.left_out)} artifact(s) over run_disk_mb were not kept: {shown}")


def _readable(folder: Path) -> None:
    """Let the run's uid read a handed-over folder (bound read-only; its parents are reached
    through ``reveal``)."""
    for root, _, files in os.walk(folder):
        os.chmod(root, 0o755)  # noqa: S103 - inside the 0700 run folder, bound read-only
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


async def _close(server: Any) -> None:
    """Stop a uvicorn server serving the socket: its runs have stopped, so no request is in
    flight (uvicorn's own ``shutdown`` waits 100 ms for some on principle)."""
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    for listener in server.servers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 5)


_SUN_PATH_MAX = 107  # bytes of a Unix socket's path, its terminating NUL excluded


def _socket_path(runs_dir: Path) -> Path:
    """Where this process serves the gateway to its sandboxes: in the runs folder, or, when
    that path is too long for a Unix socket, in a folder of its own under /tmp."""
    path = runs_dir / f".gateway-{os.getpid()}.sock"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    folder = Path(tempfile.mkdtemp(prefix="corral-gw-"))  # 0700: a run reaches it by reveal
    return folder / "gateway.sock"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:g}s"
