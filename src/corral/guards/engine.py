"""The guards engine: signals in from the gateway, OTLP ingest and the sandboxes; detectors
run off the request path; findings become incidents and actions.

On the request path it costs a set lookup and a deque append per call: the request guard
refuses a team whose kill switch is on and a subject a guard suspended or throttles (and
hands a warning to the response's headers), the call listener queues the finished call.
A worker task drains the queue, turns each call into a ``Call`` signal (its request's last
turn from the protocol's adapter), feeds the subject's detectors, and hands findings to
``Actions``. A sampler task reads the sandbox and the workspace change of every run this
process holds. Per-subject state is bounded (least recently seen subjects are forgotten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from corral.clock import Clock
from corral.errors import CorralError, PermissionDenied, RateLimited
from corral.gateway.hooks import FinishedCall, Request
from corral.guards.actions import Actions, Mark
from corral.guards.incidents import Incident, IncidentService
from corral.guards.model import Call, Finding, Progress, Sandbox, Signal, Subject, Tool
from corral.guards.ops import DetectorView, KillSwitch
from corral.guards.policy import Policy, Rule
from corral.guards.switches import Switches
from corral.identity.service import DEFAULT_ORG_ID
from corral.protocols import ADAPTERS
from corral.protocols.base import TurnHasher

log = logging.getLogger(__name__)

_MAX_SUBJECTS = 50_000  # subjects whose detector state is kept; the least recent go first
_TURN_ERRORS = 20  # how many turn extraction failures are logged


class Lifecycle(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class HeldRuns(Protocol):
    """What the sampler reads of the runs this process holds (the executor provides it)."""

    def held_runs(self) -> Mapping[str, tuple[str, str | None]]:
        """Run id → (team id, team name) of every run this process holds."""
        ...

    def sample(self, run_id: str) -> tuple[Sandbox | None, Progress | None]:
        """A sample of the run's sandbox and workspace change (blocking), or Nones."""
        ...


class _Watch(NamedTuple):
    """A detector as one subject's signals reach it (bound once, read at every signal)."""

    name: str
    observe: Callable[[Any, Signal, Mapping[str, float]], Finding | None]
    limits: Mapping[str, float]
    fresh: Callable[[], Any]  # a new state
    rule: Rule


@dataclass(slots=True)
class _State:
    team_id: str | None
    team_name: str | None
    detectors: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, tuple[_Watch, ...]] | None = None  # by signal kind


class Guards:
    """The engine of one process: ``guard`` and ``listen`` are the gateway's hooks,
    ``ingested`` OTLP ingest's listener."""

    def __init__(
        self,
        *,
        policy: Policy,
        actions: Actions,
        switches: Switches,
        clock: Clock,
        queue_max: int,
        refresh_interval: float,
        sample_interval: float,
        runs: HeldRuns | None = None,
        notifier: Lifecycle | None = None,
    ) -> None:
        self.policy = policy
        self.actions = actions
        self.switches = switches
        self.clock = clock
        self.runs = runs
        self.notifier = notifier
        self._refresh_interval = refresh_interval
        self._sample_interval = sample_interval
        self._queue: deque[tuple[Subject, Any, float]] = deque(maxlen=queue_max)
        self._wake = asyncio.Event()
        self._states: OrderedDict[Subject, _State] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # signals the full queue pushed out
        self.handled = 0
        self._turn_errors = 0

    def describe(self) -> str:
        """One line for ``corral serve``: what watches, what is stopped."""
        rules = self.policy.rules(None)
        text = f"{len(rules)} of {len(self.policy.detectors)} detectors on" if rules else "off"
        if self.switches.on:
            text += f"; kill switches on: {len(self.switches.on)}"
        return text + " (corral guards show)"

    # -- the gateway's hooks (request path: cheap) ------------------------------------------

    def guard(self, request: Request) -> Mapping[str, Any] | None:
        """Refuse a stopped team, a suspended or throttled subject; warn the warned."""
        key = request.key
        if self.switches.on:
            switch = self.switches.stopped(key.team_id)
            if switch is not None:
                raise PermissionDenied(_stopped_message(switch.team_id, key.team_name),
                                       code="traffic_stopped")  # fmt: skip
        marks = self.actions.marks
        if not marks:
            return None
        mark = marks.get(key.run_id or key.key_id)
        if mark is None:
            return None
        return self._marked(mark)

    def _marked(self, mark: Mark) -> Mapping[str, Any] | None:
        if mark.suspended is not None:
            raise PermissionDenied(
                f"this key is suspended by incident {mark.suspended}: a guard stopped its "
                f"traffic ({mark.reason}); its owner or a team admin can release it (corral "
                f"incidents release {mark.suspended})",
                code="key_suspended",
            )
        if mark.throttle is not None:
            wait = mark.throttle.take(time.monotonic())
            if wait > 0:
                raise RateLimited(
                    f"throttled by incident {mark.incident}: {mark.reason}; at most "
                    f"{mark.throttle.rpm} calls a minute until it is released",
                    code="guard_throttled",
                    retry_after=wait,
                )
        if mark.warning is not None:
            return {"warning": mark.warning}
        return None

    def listen(self, call: FinishedCall) -> None:
        """Queue a finished call for the detectors (call listener)."""
        key = call.key
        subject = Subject("run", key.run_id) if key.run_id else Subject("key", key.key_id)
        self._push(subject, call, self.clock.now())

    def ingested(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue the tool spans of an accepted OTLP batch (read while their bodies are still
        attached)."""
        now = self.clock.now()
        for row in rows:
            if row.get("kind") != "tool":
                continue
            run_id, key_id = row.get("run_id"), row.get("key_id")
            if run_id:
                subject = Subject("run", run_id)
            elif key_id:
                subject = Subject("key", key_id)
            else:
                continue
            # Hashed here (bounded: ``TurnHasher`` reads 64 KiB at most), so the queue never
            # holds a tenant's tool bodies, whatever their size or the backlog.
            self._push(subject, _tool_of(row, now), now)

    def _push(self, subject: Subject, item: object, at: float) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((subject, item, at))
        if not self._wake.is_set():
            self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.switches.refresh)
        self._tasks = [
            asyncio.create_task(self._work(), name="corral-guards"),
            asyncio.create_task(self._poll(), name="corral-guards-switches"),
        ]
        if self.runs is not None:
            self._tasks.append(asyncio.create_task(self._sample(), name="corral-guards-sampler"))
        await self.actions.start()
        if self.notifier is not None:
            await self.notifier.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.actions.stop()
        if self.notifier is not None:
            await self.notifier.stop()

    # -- what people do (``GuardOps``) -----------------------------------------------------

    @property
    def incidents(self) -> IncidentService:
        return self.actions.incidents

    async def acknowledge(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        return await asyncio.to_thread(
            self.incidents.set_state, incident_id, "acknowledged", actor=actor, comment=comment
        )

    async def release(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        return await self.actions.release(incident_id, actor=actor, comment=comment)

    async def kill(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        return await self.actions.kill(incident_id, actor=actor, comment=comment)

    async def kill_switch(
        self, team_id: str | None, on: bool, *, actor: str, comment: str | None
    ) -> list[KillSwitch]:
        org_id = self.switches.org_id or DEFAULT_ORG_ID
        found = await asyncio.to_thread(
            self.switches.set, org_id, team_id, on, actor=actor, comment=comment
        )
        await self.actions.follow_switches(self.switches)  # here at once; elsewhere at a poll
        return list(found.values())

    def switches_on(self) -> list[KillSwitch]:
        return list(self.switches.on.values())

    def effective(self, team_id: str | None) -> list[DetectorView]:
        name = None
        if team_id is not None:
            with contextlib.suppress(CorralError):
                name = self.actions.identity.get_team(team_id).name
        return self.policy.views(team_id, name)

    # -- the worker -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            handled = 0
            while self._queue:
                subject, item, at = self._queue.popleft()
                try:
                    self._judge(subject, item, at)
                except Exception:  # one odd signal must not stop the guards
                    log.exception("guards: judging a signal of %s failed", subject)
                handled += 1
                if handled % 256 == 0:
                    await asyncio.sleep(0)  # let the gateway run between long batches
            self.handled += handled

    def _judge(self, subject: Subject, item: object, at: float) -> None:
        mark = self.actions.marks.get(subject.id)
        if mark is not None and mark.suspended is not None:
            return  # stopped already: what it does now (refused calls) is not new evidence
        if isinstance(item, FinishedCall):
            state = self._state(subject, item.key.team_id, item.key.team_name)
            kind = "call"
        else:
            state = self._states.get(subject) or self._state(subject, None, None)
            kind = _KINDS[type(item)]
        watch = state.watch
        if watch is None:
            watch = state.watch = self._watching(state, subject)
        applicable = watch[kind]
        if not applicable:
            return  # no detector reads this signal here (guards off for the team, say)
        signal: Signal = self._call_of(item, at) if isinstance(item, FinishedCall) else item  # type: ignore[assignment]
        states = state.detectors
        for name, observe, limits, fresh, rule in applicable:
            mine = states.get(name)
            if mine is None:
                mine = states[name] = fresh()
            finding = observe(mine, signal, limits)
            if finding is not None:
                states[name] = fresh()
                self.actions.fire(subject, state.team_id, rule, finding, at=at)

    def _watching(self, state: _State, subject: Subject) -> dict[str, tuple[_Watch, ...]]:
        """The subject's detectors by the signal kind they read (resolved once per subject:
        the settings do not change while the process runs)."""
        rules = self.policy.rules(state.team_id, state.team_name)
        return {
            kind: tuple(
                _Watch(
                    rule.detector.name,
                    rule.detector.observe,
                    rule.limits,
                    rule.detector.state,
                    rule,
                )
                for rule in rules
                if kind in rule.detector.signals and subject.kind in rule.detector.subjects
            )
            for kind in _KINDS.values()
        }

    def _state(self, subject: Subject, team_id: str | None, team_name: str | None) -> _State:
        state = self._states.get(subject)
        if state is None:
            state = self._states[subject] = _State(team_id, team_name)
            if len(self._states) > _MAX_SUBJECTS:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(subject)
            if team_id is not None and state.team_id is None:
                state.team_id, state.team_name = team_id, team_name
                state.watch = None  # its team's detectors, not the defaults
        return state

    def forget(self, subject: Subject) -> None:
        """Start the subject's detectors afresh (released: its past is not held against it)."""
        self._states.pop(subject, None)

    def _call_of(self, call: FinishedCall, at: float) -> Call:
        row, key, request = call.span, call.key, call.request
        turn = None
        if request is not None:
            adapter = ADAPTERS.get(request.protocol)
            if adapter is not None:
                try:
                    turn = adapter.turn(request.body)
                except Exception:  # the adapters promise not to raise; keep judging if they do
                    self._turn_errors += 1
                    if self._turn_errors <= _TURN_ERRORS:
                        log.exception("guards: reading the last turn of a %s request failed",
                                      request.protocol)  # fmt: skip
        get = row.get
        return Call(
            at,
            row["span_id"],
            key.key_id,
            key.team_id,
            row["status"],
            get("http_status") or 0,
            get("error_class"),
            (get("input_tokens") or 0)
            + (get("cached_input_tokens") or 0)
            + (get("cache_write_tokens") or 0),
            (get("output_tokens") or 0) + (get("reasoning_tokens") or 0),
            get("cost_nusd") or 0,
            turn,
        )

    # -- the pollers --------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Re-read the kill switches; freeze or thaw this process's runs to match."""
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await asyncio.to_thread(self.switches.refresh)
                await self.actions.follow_switches(self.switches)
                await self.actions.refresh()
            except Exception:
                log.exception("guards: reading the kill switches failed; retrying")

    async def _sample(self) -> None:
        assert self.runs is not None
        runs = self.runs
        while True:
            await asyncio.sleep(self._sample_interval)
            try:
                held = runs.held_runs()
                for run_id, (team_id, team_name) in held.items():
                    sandbox, progress = await asyncio.to_thread(runs.sample, run_id)
                    subject = Subject("run", run_id)
                    if subject not in self._states:
                        self._state(subject, team_id, team_name)
                    for signal in (sandbox, progress):
                        if signal is not None:
                            self._push(subject, signal, signal.at)
            except Exception:
                log.exception("guards: sampling the runs' sandboxes failed; retrying")


_KINDS: dict[type, str] = {Call: "call", Tool: "tool", Sandbox: "sandbox", Progress: "progress"}


def _stopped_message(team_id: str | None, team_name: str | None) -> str:
    if team_id is None:
        return (
            "the organisation's kill switch is on: all agent traffic is stopped; the org admin "
            "switches it off with `corral guards kill-switch off`"
        )
    team = team_name or team_id
    return (
        f"team {team}'s kill switch is on: its agent traffic is stopped; a team admin switches "
        f"it off with `corral guards kill-switch off --team {team}`"
    )


def _tool_of(row: Mapping[str, Any], at: float) -> Tool:
    """A tool span as a signal: hashed as a request's last turn hashes its tool calls."""
    name = str(row.get("name") or "tool").removeprefix("execute_tool ")
    failed = row.get("status") == "error"
    error = (row.get("error_message") or row.get("error_class")) if failed else None
    hasher = TurnHasher()
    hasher.action(name, row.get("_request_body"))
    result = row.get("_response_body")
    if result is not None:
        hasher.result(result, failed)
    if error:
        hasher.result(error, True)
    return Tool(
        at=at,
        span_id=str(row.get("span_id") or ""),
        name=name,
        action=hasher.actions[0],
        result=hasher.results[0] if result is not None else None,
        error=hasher.results[-1] if error else None,
    )


__all__ = ["Guards", "HeldRuns"]
