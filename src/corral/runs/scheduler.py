"""Which queued run goes next: priority, then first come first served, within team limits.

A team at its limit of live runs (``run_team_concurrency``, per team
``run_team_limits``) is skipped, not waited on; so is a team a hold names (``holds``:
guards' kill switches), whose runs stay queued until it is lifted. Claiming a run is a
compare-and-set on its state, so two processes never start the same run; team
limits are counted across processes from the store (two processes admitting in
the same instant can exceed a team's limit by one). All methods block.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.clock import Clock
from corral.errors import ClientError
from corral.identity.service import IdentityService
from corral.runs.model import LIVE, PRIORITIES, Run
from corral.runs.service import RunService
from corral.settings import Settings

SYSTEM = "executor"
"""The actor of the transitions the executor makes."""


class Scheduler:
    """Admits queued runs for one executor (``executor_id``)."""

    def __init__(
        self,
        runs: RunService,
        identity: IdentityService,
        settings: Settings,
        clock: Clock,
        executor_id: str,
    ) -> None:
        self.runs = runs
        self.identity = identity
        self.settings = settings
        self.clock = clock
        self.executor_id = executor_id
        self.holds: list[Callable[[str], object | None]] = []
        """Each says, for a team id, why its runs must wait (None: they need not)."""

    def admit(self, free: int) -> list[Run]:
        """Claim up to ``free`` queued runs, in order, skipping teams at their limit."""
        admitted: list[Run] = []
        if free <= 0:
            return admitted
        queued = self.order(self.runs.queued())
        if not queued:
            return admitted
        live_by_team: dict[str, int] = {}
        # LIVE, not HELD: a sequestered run is frozen and takes no slot of its team either
        for run in self.runs.in_states(tuple(LIVE)):
            live_by_team[run.team_id] = live_by_team.get(run.team_id, 0) + 1
        for run in queued:
            if len(admitted) >= free:
                break
            if live_by_team.get(run.team_id, 0) >= self.team_limit(run.team_id):
                continue
            if any(hold(run.team_id) is not None for hold in self.holds):
                continue
            claimed = self._claim(run)
            if claimed is not None:
                live_by_team[run.team_id] = live_by_team.get(run.team_id, 0) + 1
                admitted.append(claimed)
        return admitted

    @staticmethod
    def order(queued: list[Run]) -> list[Run]:
        """Priority (high, normal, low), then first come first served."""
        return sorted(queued, key=lambda r: (PRIORITIES[r.priority], r.created_at))

    def team_limit(self, team_id: str) -> int:
        """How many live runs the team may have."""
        s = self.settings
        if s.run_team_limits:
            name = self.identity.get_team(team_id).name
            if name in s.run_team_limits:
                return s.run_team_limits[name]
        return s.run_team_concurrency

    def _claim(self, run: Run) -> Run | None:
        try:
            return self.runs.transition(
                run.id, "admitted", actor=SYSTEM, reason=f"admitted by {self.executor_id}",
                executor=self.executor_id, heartbeat_at=self.clock.now(),
            )  # fmt: skip
        except ClientError:
            return None  # another process took it, or it was cancelled
