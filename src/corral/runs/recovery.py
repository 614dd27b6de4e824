"""Runs whose executor died, and workspaces past their retention.

A server that dies leaves its runs live in the store. The next process to
start on the same host (``recover``), or any process once the run's heartbeat
is ``run_stale_after`` old (``fail_stale``), kills what is left of the run
(``Launcher.remove_leftovers``), revokes its key and marks it failed, naming
the process that ran it and the state it was in. No run is re-attached: its
agent died with its server. All methods block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Container
from pathlib import Path

from corral.clock import Clock
from corral.errors import ClientError, CorralError
from corral.identity.service import IdentityService
from corral.runs import workspace as workspaces
from corral.runs.launcher import Launcher
from corral.runs.model import HELD, Run
from corral.runs.scheduler import SYSTEM
from corral.runs.service import RunService
from corral.settings import Settings

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
"""Seconds between two looks for workspaces past their retention (it walks the runs folder)."""


class Recovery:
    def __init__(
        self,
        runs: RunService,
        identity: IdentityService,
        launcher: Launcher,
        settings: Settings,
        clock: Clock,
        *,
        executor_id: str,
        runs_dir: Path,
    ) -> None:
        self.runs = runs
        self.identity = identity
        self.launcher = launcher
        self.settings = settings
        self.clock = clock
        self.executor_id = executor_id
        self.runs_dir = runs_dir
        self._swept_at = 0.0

    def recover(self) -> None:
        """Fail the live runs of executors on this host that no longer exist."""
        here = socket.gethostname()
        for run in self.runs.in_states(tuple(HELD)):
            host, pid = _host_pid(run.executor)
            if host == here and pid is not None and not _alive(pid):
                self.fail_dead(run, f"the server process that ran it ({run.executor}) ended")

    def fail_stale(self, now: float, held: Container[str]) -> None:
        """Fail the live runs, not ``held`` here, whose heartbeat is too old."""
        stale = self.settings.run_stale_after
        for run in self.runs.in_states(tuple(HELD)):
            if run.id in held or run.executor == self.executor_id:
                continue
            if run.heartbeat_at is None or now - run.heartbeat_at > stale:
                self.fail_dead(
                    run, f"its executor ({run.executor}) sent no heartbeat for {stale:.0f} s"
                )

    def fail_dead(self, run: Run, why: str) -> None:
        killed = self.launcher.remove_leftovers(run.id)
        if run.key_id:
            with contextlib.suppress(CorralError):
                self.identity.revoke_key(run.key_id)
        reason = f"{why} while the run was {run.state}; " + (
            f"{killed} leftover processes were killed" if killed else "no process was left"
        )
        with contextlib.suppress(ClientError):
            self.runs.transition(
                run.id, "failed", actor=SYSTEM, reason=reason, ended_at=self.clock.now()
            )
            log.warning("run %s failed: %s", run.id, reason)

    def sweep(self, now: float, held: Container[str]) -> None:
        """Remove the workspace and scratch of runs ended ``run_workspace_retention`` ago
        (looked at once a minute)."""
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        keep = self.settings.run_workspace_retention
        for folder in self.runs_dir.glob("run_*/workspace"):
            run_id = folder.parent.name
            if run_id in held:
                continue
            try:
                run = self.runs.load(run_id)
            except ClientError:
                continue
            if run.ended_at is not None and now - run.ended_at >= keep:
                workspaces.remove_tree(folder)
                workspaces.remove_tree(folder.parent / "scratch")
                self.runs.update(run_id, workspace_removed_at=now)


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
