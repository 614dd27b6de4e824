"""The local executor: runs agents as sandboxed subprocesses of this process.

Each process has ``run_slots`` slots. Its loop admits queued runs (priority,
then first come first served; a team at its ``run_team_concurrency`` is
skipped, not waited on), records a heartbeat for its live runs, stops the runs
someone asked to cancel, fails the runs of executors that died, and removes
old workspaces. Admission is a compare-and-set on the run's state, so two
processes never start the same run.

A run's life here: clone the workspace, mint the run key (limited to the
run's models, its budget a level of the quota chain), start the agent in the
sandbox with the gateway reachable over a Unix socket, wait for it (the
wall-clock limit, a cancel, or the server stopping end it: SIGTERM to every
process of the run, SIGKILL after ``run_grace``), revoke the key, collect the
diff, logs and report, record the run span, and leave the run awaiting review
or failed, saying why.

A server that stops takes its runs' processes with it (bubblewrap's
``--die-with-parent``, ``PR_SET_PDEATHSIG`` without the sandbox) and marks
them failed when it can. One that dies leaves its runs live in the store; the
next process to start on this host (or any process, once the heartbeat is
``run_stale_after`` old) kills what is left in their cgroups and marks them
failed with the reason. No run is re-attached: its agent died with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from corral.clock import Clock
from corral.errors import ClientError, CorralError
from corral.identity.keys import KeyCache
from corral.identity.service import IdentityService
from corral.quota import Level
from corral.quota.gate import QuotaGate
from corral.runs import outputs
from corral.runs import sandbox as sandboxes
from corral.runs import workspace as workspaces
from corral.runs.model import LIVE, PRIORITIES, Run
from corral.runs.profiles import AgentContext, Profile
from corral.runs.runtime import Runtime, find
from corral.runs.service import RunService
from corral.settings import Settings
from corral.store import Store
from corral.traces.spans import SPAN_DEFAULTS, run_trace, traceparent

log = logging.getLogger(__name__)

INSIDE_PORT = 4000
"""The loopback port the gateway relay listens on inside a sandbox."""
SYSTEM = "executor"


class RunHost(Protocol):
    """What the executor needs from the application object."""

    @property
    def settings(self) -> Settings: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> Store: ...
    @property
    def keys(self) -> KeyCache: ...
    @property
    def quotas(self) -> QuotaGate: ...
    def record_spans(self, *rows: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class _Live:
    run: Run
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: tuple[str, str, str] | None = None  # (state, actor, reason)
    superseded: bool = False  # its stored state was changed by another process


def executor_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


class LocalExecutor:
    def __init__(
        self,
        host: RunHost,
        asgi: Callable[..., Any],
        runs: RunService,
        identity: IdentityService,
        profiles: dict[str, Profile],
    ) -> None:
        s = host.settings
        self.host = host
        self._asgi = asgi
        self.runs = runs
        self.identity = identity
        self.profiles = profiles
        self.dir = (s.runs_dir or s.home / "runs").resolve()
        self.id = executor_id()
        self.unsafe = s.unsafe_no_sandbox
        self.uid = s.run_uid if os.geteuid() == 0 else os.geteuid()
        self.refusal: str | None = None
        self.runtime: Runtime | None = None
        self._live: dict[str, _Live] = {}
        self._wake = asyncio.Event()
        self._swept_at = 0.0
        self.ended: Counter[str] = Counter()  # runs this process ended, by final state
        self._loop_task: asyncio.Task[None] | None = None
        self._server: Any = None
        self._probing: asyncio.Task[str | None] | None = None
        self._socket_error: str | None = None
        self._socket = self.dir / f".gateway-{os.getpid()}.sock"  # see _socket_path

    @property
    def slots(self) -> int:
        return self.host.settings.run_slots

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def agent_path(self) -> str:
        """Where profiles look agent CLIs up (PATH syntax)."""
        return self.host.settings.run_agent_path or os.environ.get("PATH", "")

    @property
    def sandbox_label(self) -> str:
        return "none (unsafe)" if self.unsafe else "bubblewrap"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe the sandbox, serve the gateway socket, recover dead runs, start the loop."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a folder made by someone else keeps its mode
            self.dir.chmod(0o700)  # Corral's alone: a run reaches its own folders (reveal)
        # The probe starts a sandbox (~60 ms): it runs beside the rest of start-up, and
        # submitting and admitting wait for it (``ready``).
        self._probing = asyncio.create_task(asyncio.to_thread(self._probe), name="corral-probe")
        try:
            self._socket = _socket_path(self.dir)
            await self._serve_socket()
        except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
            self._socket_error = f"the gateway socket {self._socket} could not be served: {exc}"
        await asyncio.to_thread(self._recover)
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
        """Stop the loop; stop every live run (failed: the server stopped) and wait for it."""
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

    def _probe(self) -> str | None:
        self.runtime = find()
        found = sandboxes.probe(
            self.dir / ".probe", runtime=self.runtime, uid=self.uid, sandboxed=not self.unsafe
        )
        if found.ok:
            return None
        fix = "" if self.unsafe else " (--unsafe-no-sandbox runs them anyway, for development)"
        return "agent runs are refused on this server: " + "; ".join(found.problems) + fix

    async def _serve_socket(self) -> None:
        import uvicorn  # the server is only needed where runs are executed

        from corral.server import HttpLimits, server_config

        self._socket.unlink(missing_ok=True)
        # The same limits as the public port: a run must not hold connections open either.
        config = server_config(
            self._asgi, HttpLimits.from_settings(self.host.settings), loop="none",
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
        interval = self.host.settings.run_heartbeat_interval
        await self.ready()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                admitted = await asyncio.to_thread(self._tick)
            except Exception:  # the store may be briefly unavailable; the loop must go on
                log.exception("the run executor's loop failed; retrying")
                continue
            for run in admitted:
                self._live[run.id] = _Live(run, asyncio.create_task(self._guarded(run.id)))

    def _tick(self) -> list[Run]:
        now = self.host.clock.now()
        if self._live:
            for run_id in list(self._live):
                self.runs.update(run_id, heartbeat_at=now)
            for run_id, (state, who) in self.runs.held(list(self._live)).items():
                live = self._live.get(run_id)
                if live is None:
                    continue
                if state not in LIVE:  # another process judged it dead: do not run on
                    self._request_stop(live, state, SYSTEM, f"{state} elsewhere")
                    live.superseded = True
                elif who is not None:
                    self._request_stop(live, "cancelled", who, "cancelled; the run was stopped")
        self._fail_stale(now)
        self._sweep_workspaces(now)
        return self._admit()

    def _admit(self) -> list[Run]:
        """Claim queued runs for this process's free slots (the loop starts them)."""
        admitted: list[Run] = []
        free = self.host.settings.run_slots - len(self._live)
        if free <= 0 or self.refusal:
            return admitted
        queued = sorted(self.runs.queued(), key=lambda r: (PRIORITIES[r.priority], r.created_at))
        if not queued:
            return admitted
        live_by_team: dict[str, int] = {}
        for run in self.runs.in_states(tuple(LIVE)):
            live_by_team[run.team_id] = live_by_team.get(run.team_id, 0) + 1
        for run in queued:
            if free <= 0:
                break
            if live_by_team.get(run.team_id, 0) >= self._team_limit(run.team_id):
                continue
            try:
                run = self.runs.transition(
                    run.id, "admitted", actor=SYSTEM, reason=f"admitted by {self.id}",
                    executor=self.id, heartbeat_at=self.host.clock.now(),
                )  # fmt: skip
            except ClientError:
                continue  # another process took it, or it was cancelled
            live_by_team[run.team_id] = live_by_team.get(run.team_id, 0) + 1
            free -= 1
            admitted.append(run)
        return admitted

    def _team_limit(self, team_id: str) -> int:
        s = self.host.settings
        if s.run_team_limits:
            name = self.identity.get_team(team_id).name
            if name in s.run_team_limits:
                return s.run_team_limits[name]
        return s.run_team_concurrency

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Fail the live runs of executors on this host that no longer exist."""
        here = socket.gethostname()
        for run in self.runs.in_states(tuple(LIVE)):
            host, pid = _host_pid(run.executor)
            if host == here and pid is not None and not _alive(pid):
                self._fail_dead(run, f"the server process that ran it ({run.executor}) ended")

    def _fail_stale(self, now: float) -> None:
        stale = self.host.settings.run_stale_after
        for run in self.runs.in_states(tuple(LIVE)):
            if run.id in self._live or run.executor == self.id:
                continue
            if run.heartbeat_at is None or now - run.heartbeat_at > stale:
                self._fail_dead(
                    run, f"its executor ({run.executor}) sent no heartbeat for {stale:.0f} s"
                )

    def _fail_dead(self, run: Run, why: str) -> None:
        killed = sandboxes.remove_leftovers(_cgroup(run.id))
        if run.key_id:
            with contextlib.suppress(CorralError):
                self.identity.revoke_key(run.key_id)
        reason = f"{why} while the run was {run.state}; " + (
            f"{killed} leftover processes were killed" if killed else "no process was left"
        )
        with contextlib.suppress(ClientError):
            self.runs.transition(
                run.id, "failed", actor=SYSTEM, reason=reason, ended_at=self.host.clock.now()
            )
            log.warning("run %s failed: %s", run.id, reason)

    def _sweep_workspaces(self, now: float) -> None:
        """Remove the workspace and scratch of runs ended ``run_workspace_retention`` ago
        (looked at once a minute: it walks the runs folder)."""
        if now - self._swept_at < 60:
            return
        self._swept_at = now
        keep = self.host.settings.run_workspace_retention
        for folder in self.dir.glob("run_*/workspace"):
            run_id = folder.parent.name
            if run_id in self._live:
                continue
            try:
                run = self.runs.load(run_id)
            except ClientError:
                continue
            if run.ended_at is not None and now - run.ended_at >= keep:
                workspaces.remove_tree(folder)
                workspaces.remove_tree(folder.parent / "scratch")
                self.runs.update(run_id, workspace_removed_at=now)

    # -- one run -------------------------------------------------------------------------------

    def cancel_local(self, run_id: str, actor: str) -> bool:
        """Stop a run this process holds now (without waiting for the next tick)."""
        live = self._live.get(run_id)
        if live is None:
            return False
        self._request_stop(live, "cancelled", actor, "cancelled; the run was stopped")
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
            with contextlib.suppress(CorralError):
                await asyncio.to_thread(
                    self.runs.transition, run_id, "failed", actor=SYSTEM,
                    reason=exc.message, ended_at=self.host.clock.now(),
                )  # fmt: skip
        except Exception as exc:
            log.exception("run %s failed in the executor", run_id)
            with contextlib.suppress(CorralError):
                await asyncio.to_thread(
                    self.runs.transition, run_id, "failed", actor=SYSTEM,
                    reason=f"Corral failed to run it: {exc}", ended_at=self.host.clock.now(),
                )  # fmt: skip
        finally:
            self._live.pop(run_id, None)
            self._wake.set()

    async def _execute(self, run_id: str) -> None:
        live = self._live[run_id]
        run = live.run
        try:  # the team's repository policy again: the path may have changed since submit
            team = await asyncio.to_thread(self.identity.get_team, run.team_id)
            policy = workspaces.team_policy(self.host.settings, team.name, self.dir)
            ws = await asyncio.to_thread(
                workspaces.prepare, run.repo, run.ref, self.dir, run.id, policy
            )
        except ClientError as exc:
            await asyncio.to_thread(
                self.runs.transition, run.id, "failed", actor=SYSTEM,
                reason=f"the workspace could not be made: {exc.message}",
                ended_at=self.host.clock.now(),
            )  # fmt: skip
            return
        await asyncio.to_thread(self.runs.update, run.id, base_commit=ws.base)
        key_id: str | None = None
        try:
            key_id, raw = await self._mint_key(run)
            outcome = await self._run_agent(live, ws, raw)
        finally:
            if key_id is not None:  # revoked however the run ended, even by a fault here
                await asyncio.to_thread(self._end_key, key_id)
        await self._finish(live, ws, outcome)

    async def _mint_key(self, run: Run) -> tuple[str, str]:
        """The run's key (its models, expiring after the wall clock) and its budget level,
        which is in force before the key exists. The key is minted under the key that
        submitted the run: within its models and expiry, revoked with it, charged to its
        budgets and limits; a requester key revoked or expired meanwhile fails the run."""
        if run.budget_nusd is not None:
            level = Level("run", run.id, run.id)
            await asyncio.to_thread(
                self.host.quotas.rules.set_budget, level, "usd", "total", run.budget_nusd,
                by=SYSTEM,
            )  # fmt: skip
            await self.host.quotas.reload()
        expires = self.host.clock.now() + run.timeout_s + 2 * self.host.settings.run_grace + 60
        try:
            key, raw = await asyncio.to_thread(
                self.identity.create_key, run.team_id, run.owner_id, name=f"run {run.id}",
                models=run.allowed_models, expires_at=expires, run_id=run.id,
                created_by=SYSTEM, parent=run.requested_by_key,
            )  # fmt: skip
        except ClientError as exc:
            raise ClientError(
                f"its key could not be made: {exc.message}; a run's key lives within the key "
                "that submitted the run", status=exc.status, code=exc.code,
            ) from exc  # fmt: skip
        await asyncio.to_thread(self.runs.update, run.id, key_id=key.id)
        return key.id, raw

    def _end_key(self, key_id: str) -> None:
        key = self.identity.revoke_key(key_id)
        self.host.keys.forget(key.key_hash)

    def _context(self, run: Run, raw: str, gateway: str, ws: workspaces.Workspace) -> AgentContext:
        team = self.identity.get_team(run.team_id).name
        owner = self.identity.get_user(run.owner_id).name
        trace_id, root = run_trace(run.id)
        inside = not self.unsafe
        return AgentContext(
            run_id=run.id,
            team=team,
            owner=owner,
            task=run.task,
            model=run.model,
            key=raw,
            gateway=gateway,
            traceparent=traceparent(trace_id, root),
            workspace="/workspace" if inside else str(ws.path),
            artifacts="/artifacts" if inside else str(ws.artifacts),
            home="/scratch" if inside else str(ws.scratch),
            handoff=("/handoff" if inside else str(self._handoff(run)))
            if run.handoff_from
            else None,
            command=run.command,
            runtime=self.runtime,
            agent_path=self.agent_path,
        )

    def _handoff(self, run: Run) -> Path:
        return self.dir / str(run.handoff_from) / "artifacts"

    async def _run_agent(self, live: _Live, ws: workspaces.Workspace, raw: str) -> _Outcome:
        run = live.run
        port = INSIDE_PORT if not self.unsafe else _free_port()
        ctx = self._context(run, raw, f"http://127.0.0.1:{port}", ws)
        profile = self.profiles[run.profile]
        profile.check(ctx)
        home = ws.scratch
        for rel, text in profile.files(ctx).items():
            target = home / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        extra_ro = profile.read_only(ctx)
        assert self.runtime is not None  # the probe found it, or runs are refused
        relay = [*self.runtime.module("corral.runs.forward"), "--listen", f"127.0.0.1:{port}"]
        relay += ["--socket", sandboxes.GATEWAY_SOCKET if not self.unsafe else str(self._socket)]
        command = [*relay, "--", *profile.command(ctx)]
        box = sandboxes.Sandbox(
            workspace=ws.path,
            scratch=ws.scratch,
            env=profile.environment(ctx),
            limits=self._limits(run),
            read_only=[*self.runtime.read_only, *extra_ro],
            gateway_socket=self._socket,
            uid=self.uid,
            cgroup_name=_cgroup(run.id),
            enabled=not self.unsafe,
            binds=[(ws.artifacts, "/artifacts")],
            ro_binds=[(self._handoff(run), "/handoff")] if run.handoff_from else [],
        )
        await asyncio.to_thread(_hand_over, ws, self.uid)
        logs = ws.root / "output"
        logs.mkdir(exist_ok=True)
        now = self.host.clock.now()
        live.run = await asyncio.to_thread(
            self.runs.transition, run.id, "running", actor=SYSTEM,
            reason=f"started {run.profile} ({self.sandbox_label})", started_at=now,
        )  # fmt: skip
        # stdout and stderr reach the log files through the server, which keeps a capped part
        with (
            box.cgroups() as groups,
            outputs.LogCapture(logs, self.host.settings.run_log_max_bytes) as streams,
        ):
            proc = await asyncio.to_thread(
                box.spawn, command, groups, stdout=streams.stdout, stderr=streams.stderr
            )
            streams.started()
            outcome = await self._wait(live, proc, groups)
            await asyncio.to_thread(streams.drain, self.host.settings.run_grace)
            return replace(outcome, limits=tuple(sandboxes.limits_hit(groups, box.limits)))

    def _limits(self, run: Run) -> sandboxes.Limits:
        s = self.host.settings
        return sandboxes.Limits(
            memory_bytes=s.run_memory_mb * 1024 * 1024,
            processes=s.run_processes,
            open_files=s.run_open_files,
            cpu_seconds=s.run_cpu_seconds,
            wall_seconds=run.timeout_s,
            file_bytes=s.run_disk_mb * 2**20,  # no one file outgrows the quota between checks
        )

    async def _wait(
        self, live: _Live, proc: subprocess.Popen[bytes], groups: list[Path]
    ) -> _Outcome:
        waiter = asyncio.ensure_future(_exited(proc))
        stopper = asyncio.ensure_future(live.stop.wait())
        watcher = asyncio.ensure_future(self._watch_disk(live))
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, timeout=live.run.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            watcher.cancel()
        if waiter in done:
            stopper.cancel()
            return _Outcome(proc.returncode, None)
        if live.stop_reason is None:
            live.stop_reason = (
                "failed", SYSTEM, f"the wall-clock limit ({_duration(live.run.timeout_s)}) passed",
            )  # fmt: skip
        stopper.cancel()
        grace = self.host.settings.run_grace
        sandboxes.signal_tree(groups, proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), grace)
        except TimeoutError:
            sandboxes.signal_tree(groups, proc.pid, signal.SIGKILL)
            await waiter
        return _Outcome(proc.returncode, live.stop_reason)

    async def _watch_disk(self, live: _Live) -> None:
        """Stop the run once its folders use more than ``run_disk_mb``: measured every
        heartbeat interval (a second at least), less often when measuring takes long."""
        s = self.host.settings
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

    def _report(self, run: Run, root: Path) -> str | None:
        """The profile's report, read from the run's files as the hostile input they are."""
        with outputs.Folder(root) as folder:
            files = outputs.RunFiles(folder, max_bytes=self.host.settings.run_report_max_bytes)
            return self.profiles[run.profile].report(files)

    async def _finish(self, live: _Live, ws: workspaces.Workspace, outcome: _Outcome) -> None:
        run = live.run
        s = self.host.settings
        out = ws.root / "output"
        over = await asyncio.to_thread(outputs.over_quota, ws.root, s.run_disk_mb)
        if over is not None and outcome.stopped is None:  # filled between two checks
            outcome = replace(outcome, stopped=("failed", SYSTEM, over))
        change = None
        if over is None:  # a run over its quota is failed: its change is not worth diffing
            change = await asyncio.to_thread(
                workspaces.diff, ws, out / "diff.patch", s.run_diff_max_bytes
            )
            if not change.complete:  # delivery refuses a run whose patch was not kept whole
                (out / outputs.DIFF_TOO_LARGE).write_text(f"{s.run_diff_max_bytes}\n")
        report = await asyncio.to_thread(self._report, run, ws.root)
        if report is not None:
            (out / "report.md").write_text(report)
        state, actor, reason = outcome.verdict(change, s.run_diff_max_bytes, s.run_disk_mb)
        now = self.host.clock.now()
        if live.superseded:  # the store already says how it ended; keep the artifacts only
            log.warning("run %s was ended by another process; stopped it here", run.id)
            return
        live.run = await asyncio.to_thread(
            self.runs.transition, run.id, state, actor=actor, reason=reason, ended_at=now,
            exit_code=outcome.code,
        )  # fmt: skip
        self.ended[state] += 1
        self.host.record_spans(_run_span(live.run))
        if self.host.settings.run_workspace_retention == 0:
            await asyncio.to_thread(workspaces.remove_tree, ws.path)
            await asyncio.to_thread(workspaces.remove_tree, ws.scratch)
            await asyncio.to_thread(self.runs.update, run.id, workspace_removed_at=now)


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: int | None
    stopped: tuple[str, str, str] | None  # (state, actor, reason) when Corral stopped it
    limits: tuple[str, ...] = ()  # what the cgroups refused or killed, in words

    def verdict(
        self, change: workspaces.DiffResult | None, diff_max: int, disk_mb: int
    ) -> tuple[str, str, str]:
        if self.stopped is not None:
            return self.stopped
        if self.code != 0:
            limits = list(self.limits)
            if _signal_of(self.code) == signal.SIGXFSZ:
                limits.append(f"a file reached the run's disk quota ({disk_mb} MiB, run_disk_mb)")
            reason = f"the agent {_ended(self.code)}"
            if limits:
                reason += ": " + "; ".join(limits)
            return "failed", SYSTEM, reason
        files = change.files if change is not None else 0
        said = f"{files} file{'s' if files != 1 else ''} changed" if files else "no change"
        if change is not None and not change.complete:
            cap = outputs.size_in_words(diff_max)
            said += (
                f"; its diff is larger than {cap} (run_diff_max_bytes), too large to keep "
                "whole: it cannot be delivered"
            )
        return "awaiting_review", SYSTEM, f"the agent finished: {said}"


def _signal_of(code: int | None) -> int | None:
    """The signal that ended a process: the relay reports one as 128 + its number."""
    if code is None:
        return None
    return -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None


def _ended(code: int | None) -> str:
    """How a process ended, in words."""
    if code is None:
        return "ended without an exit status"
    number = _signal_of(code)
    if number is not None:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(number).name}"
    return f"exited with code {code}"


def _run_span(run: Run) -> dict[str, Any]:
    trace_id, root = run_trace(run.id)
    start = run.started_at or run.created_at
    return {
        **SPAN_DEFAULTS,
        "span_id": root,
        "trace_id": trace_id,
        "kind": "run",
        "name": f"run {run.profile}",
        "org_id": run.org_id,
        "team_id": run.team_id,
        "user_id": run.owner_id,
        "key_id": run.key_id,
        "run_id": run.id,
        "owner_id": run.owner_id,
        "model_requested": run.model,
        "status": "ok" if run.state == "awaiting_review" else "error",
        "error_message": None if run.state == "awaiting_review" else run.reason,
        "start_ns": int(start * 1e9),
        "end_ns": int((run.ended_at or start) * 1e9),
        "source": "corral",
        "attributes": {
            "run.state": run.state,
            "run.profile": run.profile,
            "run.exit_code": run.exit_code,
            "run.sandbox": run.sandbox,
            "run.repo": run.repo,
            "run.base_commit": run.base_commit,
        },
    }


def _hand_over(ws: workspaces.Workspace, uid: int) -> None:
    if uid == os.geteuid():
        return
    workspaces.hand_over(ws, uid)
    os.chown(ws.artifacts, uid, uid)


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


def _cgroup(run_id: str) -> str:
    return f"corral-{run_id}"


def _host_pid(executor: str | None) -> tuple[str | None, int | None]:
    if not executor:
        return None, None
    parts = executor.split(":")
    try:
        return parts[0], int(parts[1])
    except (IndexError, ValueError):
        return parts[0], None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:g}s"


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without holding a thread: its pidfd becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd (old kernel): poll
        while proc.poll() is None:  # noqa: ASYNC110 - nothing to wait on but the process
            await asyncio.sleep(0.1)
        return proc.returncode
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()
