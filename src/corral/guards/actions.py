"""What a finding does: an incident opened or added to, and the action its ladder names.

* **warn** — recorded; the subject's responses carry ``x-corral-guard-warning`` (the
  reference agent shows it to its model);
* **throttle** — the subject may make ``throttle_rpm`` calls a minute (429 past it);
* **sequester** — the key is suspended (every process refuses it once its key cache polls;
  this one at once), and a run is frozen where it runs, its change snapshotted, its slot
  released (``sequestered``); a key that is not a run's is suspended;
* **kill** — the key suspended and a run ended ``failed``, the reason naming the incident.

Each action also does what the ones before it do (a sequestered subject is warned). Marks
(what the request guard enforces here) are dropped when the incident is released or killed,
by whichever process: ``refresh`` re-reads the marked incidents' states. Store work runs in
worker threads, one firing at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from corral.clock import Clock
from corral.errors import ClientError, CorralError, NotFound
from corral.guards.incidents import OPEN, Incident, IncidentService
from corral.guards.model import Finding, Subject
from corral.guards.policy import Rule
from corral.guards.switches import Switches
from corral.identity.keys import KeyCache
from corral.identity.service import IdentityService
from corral.runs.service import RunService

log = logging.getLogger(__name__)


class RunControl(Protocol):
    """The runs this process holds, as guards act on them (the executor provides it)."""

    def held_runs(self) -> Mapping[str, tuple[str, str | None]]:
        """Run id → (team id, team name) of every run this process holds."""
        ...

    async def sequester(self, run_id: str, *, actor: str, reason: str) -> bool:
        """Freeze a run held here; False when this process does not hold it (live)."""
        ...

    async def release(self, run_id: str, *, actor: str, reason: str) -> bool:
        """Thaw a run frozen here; False when this process does not hold it frozen."""
        ...

    async def kill(self, run_id: str, *, actor: str, reason: str) -> bool:
        """Stop a run held here, ending it failed; False when this process does not hold it."""
        ...


_Effects = Callable[["Incident", str, "str | None"], Awaitable[list[str]]]


class Notify(Protocol):
    def notify(self, team_id: str | None, payload: Mapping[str, Any], event: str) -> None: ...


class Measure(Protocol):
    def incident_opened(self, detector: str) -> None: ...
    def finding(self, detector: str) -> None: ...
    def action(self, action: str, seconds: float) -> None: ...


@dataclass(slots=True)
class Throttle:
    """At most ``rpm`` calls a minute, evenly spaced (no burst: a runaway gets no credit)."""

    rpm: int
    next_at: float = 0.0

    def take(self, now: float) -> float:
        """0 when a call may go now (and counts it); else the seconds until one may."""
        if now >= self.next_at:
            self.next_at = now + 60.0 / self.rpm
            return 0.0
        return self.next_at - now


@dataclass(slots=True)
class Mark:
    """What this process's request guard enforces for one subject."""

    incident: str
    reason: str
    warning: str | None = None
    throttle: Throttle | None = None
    suspended: str | None = None  # the incident, once sequestered or killed


@dataclass(frozen=True, slots=True)
class _Firing:
    subject: Subject
    team_id: str | None
    rule: Rule
    finding: Finding
    at: float


@dataclass(frozen=True, slots=True)
class _Who:
    """Whom a subject belongs to: what an incident records."""

    org_id: str
    team_id: str | None
    owner_id: str | None
    run_id: str | None
    key_id: str | None


class Actions:
    def __init__(
        self,
        *,
        incidents: IncidentService,
        identity: IdentityService,
        runs: RunService,
        keys: KeyCache,
        clock: Clock,
        throttle_rpm: int,
        control: RunControl | None = None,
        notifier: Notify | None = None,
        metrics: Measure | None = None,
        forget: Callable[[Subject], None] = lambda subject: None,
    ) -> None:
        self.incidents = incidents
        self.identity = identity
        self.runs = runs
        self.keys = keys
        self.clock = clock
        self.throttle_rpm = throttle_rpm
        self.control = control
        self.notifier = notifier
        self.metrics = metrics
        self.forget = forget
        self.marks: dict[str, Mark] = {}
        self._firings: Counter[tuple[Subject, str]] = Counter()
        self._queue: asyncio.Queue[_Firing] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._switched: dict[str, str] = {}  # run id → the switch's reason, frozen by it here

    # -- findings ---------------------------------------------------------------------------

    def fire(self, subject: Subject, team_id: str | None, rule: Rule, finding: Finding, *,
             at: float) -> None:  # fmt: skip
        """Queue a finding (never blocks; called by the engine's worker)."""
        if self.metrics is not None:
            self.metrics.finding(finding.detector)
        if self._queue is None:
            raise RuntimeError("guards' actions are not started")
        self._queue.put_nowait(_Firing(subject, team_id, rule, finding, at))

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(), name="corral-guard-actions")

    async def stop(self) -> None:
        for sending in list(self._sending):
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            firing = await self._queue.get()
            try:
                await self._act(firing)
            except Exception:
                log.exception("guards: acting on %s's finding failed", firing.subject)

    async def _act(self, firing: _Firing) -> None:
        subject, finding = firing.subject, firing.finding
        who = await asyncio.to_thread(self._who, subject)
        if who is None:
            return  # the run or key is gone (a made-up id in telemetry, say)
        self._firings[(subject, finding.detector)] += 1
        action = firing.rule.action_for(self._firings[(subject, finding.detector)])
        incident, opened = await asyncio.to_thread(
            self.incidents.record_finding, subject=subject, org_id=who.org_id,
            team_id=who.team_id, owner_id=who.owner_id, run_id=who.run_id, key_id=who.key_id,
            finding=finding, action=action,
        )  # fmt: skip
        if opened and self.metrics is not None:
            self.metrics.incident_opened(finding.detector)
        detail = await self._apply(action, subject, who, incident, finding)
        seconds = max(0.0, self.clock.now() - firing.at)
        if self.metrics is not None:
            self.metrics.action(action, seconds)
        await asyncio.to_thread(
            self.incidents.add_event, incident.id, actor=f"guard:{finding.detector}",
            kind="action", detail=detail,
            data={"action": action, "seconds": round(seconds, 4), "detector": finding.detector},
        )  # fmt: skip
        self._notify(incident.id, "incident.opened" if opened else "incident.updated")

    async def _apply(
        self, action: str, subject: Subject, who: _Who, incident: Incident, finding: Finding
    ) -> str:
        """Put the action in force; what was done, in words."""
        mark = self.marks.get(subject.id)
        if mark is None or mark.incident != incident.id:
            mark = self.marks[subject.id] = Mark(incident.id, finding.message)
        mark.reason = finding.message
        mark.warning = f"{incident.id}: {finding.message}"
        if action == "warn":
            return f"warned: {finding.message}"
        if action == "throttle":
            if mark.throttle is None:
                mark.throttle = Throttle(self.throttle_rpm)
            return f"throttled to {self.throttle_rpm} calls a minute"
        mark.suspended = incident.id
        done = await self._suspend(who, incident.id)
        actor = f"guard:{finding.detector}"
        if who.run_id is None:
            return f"key {who.key_id} suspended" + ("" if done else " (it already was)")
        if action == "sequester":
            reason = f"sequestered by incident {incident.id}: {finding.message}"
            where = await self._sequester_run(who.run_id, actor, reason)
            return f"run {who.run_id} sequestered ({where}); its key suspended"
        reason = f"killed by incident {incident.id}: {finding.message}"
        where = await self._kill_run(who.run_id, actor, reason)
        return f"run {who.run_id} killed ({where}); its key suspended"

    async def _suspend(self, who: _Who, incident_id: str) -> bool:
        if who.key_id is None:
            return False
        return await asyncio.to_thread(self.identity.suspend_key, who.key_id, incident_id)

    async def _sequester_run(self, run_id: str, actor: str, reason: str) -> str:
        if self.control is not None:
            try:
                if await self.control.sequester(run_id, actor=actor, reason=reason):
                    return "frozen here"
            except CorralError as exc:  # held here, but its sandbox cannot be frozen
                killed = f"{reason}; it could not be frozen ({exc.message}), so it was killed"
                return "not frozen, killed: " + await self._kill_run(run_id, actor, killed)
        try:  # held by another process (or none): the store tells its holder
            await asyncio.to_thread(
                self.runs.transition, run_id, "sequestered", actor=actor, reason=reason
            )
        except ClientError as exc:  # no longer running, or gone
            return f"not frozen: {exc.message}"
        return "its server freezes it at its next heartbeat"

    async def _kill_run(self, run_id: str, actor: str, reason: str) -> str:
        if self.control is not None and await self.control.kill(run_id, actor=actor, reason=reason):
            return "stopped here"
        try:
            await asyncio.to_thread(
                self.runs.transition, run_id, "failed", actor=actor, reason=reason,
                ended_at=self.clock.now(),
            )  # fmt: skip
        except ClientError as exc:
            return f"not stopped: {exc.message}"
        return "its server stops it at its next heartbeat"

    def _who(self, subject: Subject) -> _Who | None:
        try:
            if subject.kind == "run":
                run = self.runs.load(subject.id)
                return _Who(run.org_id, run.team_id, run.owner_id, run.id, run.key_id)
            key = self.identity.get_key(subject.id)
        except CorralError:  # gone, or a made-up id in telemetry
            return None
        return _Who(key.org_id, key.team_id, key.user_id, None, key.id)

    # -- what people do -----------------------------------------------------------------------

    async def release(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        return await self._close(incident_id, "released", actor, comment, self._undo)

    async def kill(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        return await self._close(incident_id, "killed", actor, comment, self._end)

    async def _close(
        self, incident_id: str, state: str, actor: str, comment: str | None, effects: _Effects
    ) -> Incident:
        """The incident moved to ``state`` (a ``Conflict`` if it was closed already, before
        anything is done), then what that means for its run and key, on its timeline."""
        incident = await asyncio.to_thread(
            self.incidents.set_state, incident_id, state, actor=actor, comment=comment
        )
        self._forget(_subject_of(incident))
        done = await effects(incident, actor, comment)
        await asyncio.to_thread(
            self.incidents.add_event, incident.id, actor=actor, kind="action",
            detail="; ".join(done) or "nothing was in force",
        )  # fmt: skip
        self._notify(incident.id, f"incident.{state}")
        return await asyncio.to_thread(self.incidents.get, incident.id)

    async def _undo(self, incident: Incident, actor: str, comment: str | None) -> list[str]:
        """Release: the key restored, the run thawed."""
        done: list[str] = []
        if incident.key_id is not None:
            # a run's key expires with its wall clock, which stood still while it was frozen
            frozen = self.clock.now() - incident.opened_at if incident.run_id else 0.0
            restored = await asyncio.to_thread(
                self.identity.restore_key, incident.key_id, incident.id, extend_by=frozen
            )
            if restored:
                done.append(f"key {incident.key_id} restored")
        if incident.run_id is not None:
            done.append(await self._release_run(incident.run_id, actor, incident.id))
        return done

    async def _end(self, incident: Incident, actor: str, comment: str | None) -> list[str]:
        """Kill: the key suspended for good, the run failed."""
        done: list[str] = []
        if incident.key_id is not None:
            await asyncio.to_thread(self.identity.suspend_key, incident.key_id, incident.id)
            done.append(f"key {incident.key_id} stays suspended")
        if incident.run_id is not None:
            why = f": {comment}" if comment else ""
            reason = f"killed by {actor} through incident {incident.id}{why}"
            stopped = await self._kill_run(incident.run_id, actor, reason)
            done.append(f"run {incident.run_id} {stopped}")
        return done

    async def _release_run(self, run_id: str, actor: str, incident_id: str) -> str:
        reason = f"released from incident {incident_id} by {actor}"
        if self.control is not None and await self.control.release(
            run_id, actor=actor, reason=reason
        ):
            return f"run {run_id} thawed here"
        try:
            await asyncio.to_thread(
                self.runs.transition, run_id, "running", actor=actor, reason=reason
            )
        except ClientError as exc:
            return f"run {run_id} not resumed: {exc.message}"
        return f"run {run_id} resumes at its server's next heartbeat"

    def _forget(self, subject: Subject) -> None:
        self.marks.pop(subject.id, None)
        for key in [k for k in self._firings if k[0] == subject]:
            del self._firings[key]
        self.forget(subject)

    def _notify(self, incident_id: str, event: str) -> None:
        """Tell the team's webhook (the notifier queues and returns at once; the incident is
        read in a thread first)."""
        if self.notifier is None:
            return
        task = asyncio.create_task(self._send(incident_id, event), name="corral-guard-notify")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, incident_id: str, event: str) -> None:
        assert self.notifier is not None
        try:
            incident = await asyncio.to_thread(self.incidents.get, incident_id)
        except CorralError as exc:
            log.error("guards: incident %s not notified: %s", incident_id, exc.message)
            return
        self.notifier.notify(incident.team_id, incident.as_json(), event)

    # -- keeping marks and switches true ----------------------------------------------------------

    async def refresh(self) -> None:
        """Drop the marks of incidents released or killed by any process."""
        if not self.marks:
            return
        ids = {mark.incident for mark in self.marks.values()}
        closed = await asyncio.to_thread(self._closed, ids)
        for subject_id, mark in list(self.marks.items()):
            if mark.incident in closed:
                del self.marks[subject_id]
                for key in [k for k in self._firings if k[0].id == subject_id]:
                    del self._firings[key]  # a new incident climbs its ladder from the start

    def _closed(self, ids: set[str]) -> set[str]:
        closed = set()
        for incident_id in ids:
            try:
                if self.incidents.get(incident_id).state not in OPEN:
                    closed.add(incident_id)
            except NotFound:
                closed.add(incident_id)
        return closed

    async def follow_switches(self, switches: Switches) -> None:
        """Freeze the runs held here whose team's (or the org's) switch is on; thaw the ones
        frozen by a switch that is off again."""
        if self.control is None:
            return
        held = self.control.held_runs()
        for run_id, (team_id, team_name) in held.items():
            switch = switches.stopped(team_id)
            if switch is not None and run_id not in self._switched:
                whose = f"team {team_name or team_id}'s" if switch.team_id else "the organisation's"
                reason = f"{whose} kill switch is on (by {switch.actor})"
                self._switched[run_id] = reason
                if not await self.control.sequester(run_id, actor=switch.actor, reason=reason):
                    self._switched.pop(run_id, None)
            elif switch is None and run_id in self._switched:
                del self._switched[run_id]
                await self.control.release(
                    run_id, actor="kill-switch", reason="the kill switch is off again"
                )
        for run_id in [r for r in self._switched if r not in held]:
            del self._switched[run_id]


def _subject_of(incident: Incident) -> Subject:
    if incident.subject == "run" and incident.run_id is not None:
        return Subject("run", incident.run_id)
    return Subject("key", incident.key_id or "")
