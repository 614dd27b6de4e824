"""The local executor as guards see it: the runs it holds, their samples, and the freezer."""

from __future__ import annotations

from collections.abc import Mapping

from corral.clock import Clock
from corral.errors import Conflict, NotFound
from corral.guards.model import Progress, Sandbox
from corral.identity.service import IdentityService
from corral.runs import progress
from corral.runs.executor import LocalExecutor

PROGRESS_EVERY = 5
"""A run's workspace is fingerprinted every this many sandbox samples (the first included)."""


class ExecutorControl:
    """``RunControl`` and ``HeldRuns`` over this process's ``LocalExecutor``."""

    def __init__(self, executor: LocalExecutor, identity: IdentityService, clock: Clock) -> None:
        self.executor = executor
        self.identity = identity
        self.clock = clock
        self._team_names: dict[str, str | None] = {}
        self._samples: dict[str, int] = {}  # run id → samples taken (progress every 5th)

    def held_runs(self) -> Mapping[str, tuple[str, str | None]]:
        return {
            run_id: (run.team_id, self._team_name(run.team_id))
            for run_id, run in self.executor.held().items()
        }

    def _team_name(self, team_id: str) -> str | None:
        if team_id not in self._team_names:
            try:
                self._team_names[team_id] = self.identity.get_team(team_id).name
            except NotFound:
                self._team_names[team_id] = None
        return self._team_names[team_id]

    def sample(self, run_id: str) -> tuple[Sandbox | None, Progress | None]:
        """The run's cgroups and workspace now (blocking); nothing while it is frozen."""
        stats = self.executor.launcher.stats(run_id)
        if stats.frozen:
            return None, None
        now = self.clock.now()
        sandbox = Sandbox(
            at=now,
            memory_bytes=stats.memory_bytes,
            memory_limit=stats.memory_limit,
            processes=stats.processes,
            process_limit=stats.process_limit,
            cpu_seconds=stats.cpu_seconds,
            refused_forks=stats.refused_forks,
            oom_kills=stats.oom_kills,
        )
        # The workspace walk costs more than reading the cgroups: every PROGRESS_EVERY samples
        taken = self._samples[run_id] = self._samples.get(run_id, -1) + 1
        if len(self._samples) > 10_000:
            self._samples = {r: n for r, n in self._samples.items() if r in self.executor.held()}
        if taken % PROGRESS_EVERY:
            return sandbox, None
        found = progress.fingerprint(self.executor.dir / run_id / "workspace")
        change = Progress(now, found[0], found[1]) if found is not None else None
        return sandbox, change

    async def sequester(self, run_id: str, *, actor: str, reason: str) -> bool:
        """Raises ``FreezeFailed`` when the run is held here but cannot be frozen."""
        try:
            return await self.executor.sequester_local(run_id, actor, reason)
        except Conflict:  # not running yet, being stopped, frozen already: not here
            return False

    async def release(self, run_id: str, *, actor: str, reason: str) -> bool:
        try:
            return await self.executor.release_local(run_id, actor, reason)
        except Conflict:
            return False

    async def kill(self, run_id: str, *, actor: str, reason: str) -> bool:
        return self.executor.kill_local(run_id, actor, reason)
