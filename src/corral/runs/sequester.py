"""Sequestering a live run: frozen in its sandbox, its slot freed, its change kept.

The guards engine decides *that* a run is sequestered, released or killed (and suspends and
restores its key); this module is *how* the process holding the run does the first two
(a kill is a stop, as a cancel is: ``LocalExecutor.kill_local``).

Sequester: every process of the run is frozen (``Launcher.freeze``: no CPU, memory and files
kept), the run's state becomes ``sequestered`` (who and why stored), and its workspace is
snapshotted: the change at that moment, through the diff step's own code, kept in the
artifact store as ``sequestered/<n>.patch``. The executor then no longer counts it in its
slots, so another run may be admitted meanwhile, and its wall-clock limit stops running.

Release: the snapshot is finished first (so it shows the frozen tree), the state goes back
to ``running`` and the run is thawed; it goes on where it stopped and ends as any run does.

A decision may be taken by any process: the holder's loop compares the stored state with
what it holds at every heartbeat (``reconcile``). Each run's changes happen under its own
lock, so a local call and the loop never freeze or thaw the same run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from corral.errors import Conflict
from corral.runs import outputs
from corral.runs import workspace as workspaces
from corral.runs.artifacts import ArtifactStore
from corral.runs.launcher import Launcher
from corral.runs.model import Run
from corral.runs.sandbox import FreezeFailed
from corral.runs.service import RunService

log = logging.getLogger(__name__)

__all__ = ["FreezeFailed", "Hold", "Sequester", "WallClock", "keep_patch", "until_end"]

SNAPSHOTS = "sequestered"
"""The artifact-store folder holding a run's snapshots, ``sequestered/1.patch``..."""


@dataclass(slots=True)
class WallClock:
    """A run's wall-clock limit (loop seconds), which does not run while the run is frozen."""

    limit: float
    started: float
    paused: float = 0.0
    frozen_since: float | None = None

    def left(self, now: float) -> float | None:
        """Seconds left, or None while frozen (no limit runs out then)."""
        if self.frozen_since is not None:
            return None
        return self.limit - (now - self.started - self.paused)

    def stop(self, now: float) -> None:
        if self.frozen_since is None:
            self.frozen_since = now

    def resume(self, now: float) -> None:
        if self.frozen_since is not None:
            self.paused += now - self.frozen_since
            self.frozen_since = None


@dataclass(slots=True)
class Hold:
    """What the executor knows of a held run's sandbox. ``wall`` is set only while its
    agent runs (from start to exit): only then can it be frozen."""

    workspace: workspaces.Workspace | None = None
    wall: WallClock | None = None
    frozen: bool = False
    snapshots: int = 0  # how many it has had (the next patch's number is one more)
    snapshot: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # frozen or thawed

    async def settled(self) -> None:
        """Wait for a snapshot under way (it must not race the diff step)."""
        if self.snapshot is not None:
            with contextlib.suppress(Exception):
                await self.snapshot

    def thawed(self) -> None:
        """Note that the run was thawed to be stopped (``Launcher.thaw`` was called)."""
        if self.frozen:
            self.frozen = False
            if self.wall is not None:
                self.wall.resume(asyncio.get_running_loop().time())
            self.changed.set()


class Sequester:
    """Freezes and releases the runs one executor holds (see the module's docstring)."""

    def __init__(
        self, *, launcher: Launcher, runs: RunService, artifacts: ArtifactStore, diff_max: int
    ) -> None:
        self.launcher = launcher
        self.runs = runs
        self.artifacts = artifacts
        self.diff_max = diff_max

    async def freeze(self, run: Run, hold: Hold, actor: str, reason: str) -> Run:
        """Freeze ``run``, record it ``sequestered`` by ``actor`` for ``reason`` and start its
        snapshot; the run as stored. ``Conflict`` when its agent is not running (not started
        yet, or it has exited) or the run was ended meanwhile; ``FreezeFailed`` when the
        sandbox cannot be frozen (the run goes on running)."""
        async with hold.lock:
            if hold.frozen:
                return run
            return await self._freeze(run, hold, actor, reason, stored=False)

    async def release(self, run: Run, hold: Hold, actor: str, reason: str) -> Run:
        """Thaw ``run`` and record it ``running`` again (by ``actor``, for ``reason``); the run
        as stored. ``Conflict`` when it is not frozen here or was ended meanwhile."""
        async with hold.lock:
            if not hold.frozen:
                raise Conflict(f"run {run.id} is not sequestered; there is nothing to release")
            return await self._release(run, hold, actor, reason, stored=False)

    async def reconcile(self, run: Run, hold: Hold) -> str | None:
        """Follow a decision another process stored: freeze a run stored ``sequestered`` that
        runs here, thaw one stored ``running`` that is frozen here. Returns why the run must
        be stopped instead (it was stored sequestered but cannot be frozen), or None."""
        async with hold.lock:
            stored = await asyncio.to_thread(self.runs.load, run.id)
            frozen = stored.state == "sequestered"
            if frozen == hold.frozen or stored.state not in ("sequestered", "running"):
                return None
            events = await asyncio.to_thread(self.runs.events, run.id)
            actor, reason = events[-1].actor, events[-1].reason or stored.state
            try:
                if frozen:
                    await self._freeze(stored, hold, actor, reason, stored=True)
                else:
                    await self._release(stored, hold, actor, reason, stored=True)
            except FreezeFailed as exc:
                return f"{reason}; its sandbox could not be frozen ({exc.message}): stopped"
            except Conflict:  # its agent is not running (it exited): nothing to freeze
                return None
        return None

    async def _freeze(self, run: Run, hold: Hold, actor: str, reason: str, *, stored: bool) -> Run:
        if hold.wall is None or hold.workspace is None:
            raise Conflict(
                f"run {run.id} is {run.state.replace('_', ' ')} but its agent is not running "
                "(not started yet, or it has exited): it cannot be sequestered"
            )
        await asyncio.to_thread(self.launcher.freeze, run.id)
        loop = asyncio.get_running_loop()
        hold.frozen = True
        hold.wall.stop(loop.time())
        hold.changed.set()
        if not stored:
            try:
                run = await asyncio.to_thread(
                    self.runs.transition, run.id, "sequestered", actor=actor, reason=reason
                )
            except Conflict:
                run = await asyncio.to_thread(self.runs.load, run.id)
                if run.state != "sequestered":  # ended meanwhile: the loop stops it
                    await self._thaw(run, hold)
                    raise
        hold.snapshots += 1
        hold.snapshot = asyncio.create_task(
            self._snapshot(run.id, hold.workspace, hold.snapshots), name=f"snapshot-{run.id}"
        )
        return run

    async def _release(self, run: Run, hold: Hold, actor: str, reason: str, *, stored: bool) -> Run:
        await hold.settled()
        if not stored:
            run = await asyncio.to_thread(
                self.runs.transition, run.id, "running", actor=actor, reason=reason
            )
        await self._thaw(run, hold)
        return run

    async def _thaw(self, run: Run, hold: Hold) -> None:
        await asyncio.to_thread(self.launcher.thaw, run.id)
        hold.thawed()

    async def _snapshot(self, run_id: str, ws: workspaces.Workspace, number: int) -> None:
        try:
            await asyncio.to_thread(keep_patch, self.artifacts, run_id, ws, number, self.diff_max)
        except Exception:  # the run stays frozen either way; its workspace is intact
            log.exception("the snapshot of sequestered run %s failed", run_id)


def keep_patch(
    store: ArtifactStore, run_id: str, ws: workspaces.Workspace, number: int, cap: int
) -> workspaces.DiffResult:
    """The run's change now, as ``sequestered/<number>.patch`` in the store: written as the
    diff step writes ``diff.patch`` (at most ``cap`` bytes), and its local copy removed (it
    would count against the run's disk quota)."""
    out = ws.root / "output"
    out.mkdir(exist_ok=True)
    local = out / f"sequestered-{number}.patch"
    try:
        change = workspaces.diff(ws, local, cap)
        with outputs.Folder(ws.root) as folder:
            store.collect(
                run_id, folder, f"output/{local.name}", f"{SNAPSHOTS}/{number}.patch",
                budget=cap + 2**16,
            )  # fmt: skip
    finally:
        local.unlink(missing_ok=True)
    return change


async def until_end(hold: Hold, waiter: asyncio.Future[Any], stopper: asyncio.Future[Any]) -> None:
    """Wait until the agent exits (``waiter``), a stop is asked (``stopper``) or the run's
    wall clock runs out, which it does not while the run is frozen."""
    assert hold.wall is not None
    loop = asyncio.get_running_loop()
    while True:
        hold.changed.clear()
        changed = asyncio.ensure_future(hold.changed.wait())
        left = hold.wall.left(loop.time())
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper, changed},
                timeout=None if left is None else max(left, 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            changed.cancel()
        if waiter in done or stopper in done:
            return
        left = hold.wall.left(loop.time())
        if left is not None and left <= 0:
            return
