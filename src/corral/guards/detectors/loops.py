"""Loops: an agent doing the same thing again and expecting a different outcome.

The patterns of the OpenHands SDK stuck detector and Gemini CLI's loop check, read from the
platform side: the same request sent again, the same tool call with the same result, the
same action failing the same way, two steps alternating, the model talking without acting.
The tool-step detectors read a run's tool spans when its agent reports them, else the tool
results each request carries back to the model (``Turn``), so they work for any agent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from corral.guards.detectors._common import (
    EVIDENCE,
    WINDOW,
    Source,
    Step,
    Thresholds,
    add_evidence,
    count,
    evidence_queue,
    is_failure,
    short,
    steps,
)
from corral.guards.model import Action, Call, Finding, Signal, SubjectKind


@dataclass(slots=True)
class _Requests:
    recent: deque[tuple[str, str]] = field(default_factory=deque)  # (digest, span id)
    counts: dict[str, int] = field(default_factory=dict)  # digest → copies in ``recent``

    def add(self, digest: str, span_id: str, window: int) -> int:
        """Keep the request among the last ``window``; how many copies of it they hold."""
        if self.recent.maxlen != window:
            self.recent = deque(self.recent, maxlen=window)
            self.counts = dict(Counter(seen for seen, _ in self.recent))
        if len(self.recent) == window:
            evicted = self.recent[0][0]
            left = self.counts[evicted] - 1
            if left:
                self.counts[evicted] = left
            else:
                del self.counts[evicted]
        self.recent.append((digest, span_id))
        copies = self.counts[digest] = self.counts.get(digest, 0) + 1
        return copies


class RepeatedRequest:
    """The same request (the same last turn: its text, tool calls and tool results) among a
    subject's recent successful calls. Failed calls are the error storm's: a client retrying
    a refused request is not looping."""

    name = "repeated_request"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float] = MappingProxyType({"repeats": 5, "window": 6})
    actions: tuple[Action, ...] = ("sequester",)
    summary = "the same request (last turn and tool results) sent again and again"

    def __init__(self) -> None:
        self._thresholds = Thresholds(self._read)

    def _read(self, limits: Mapping[str, float]) -> tuple[int, int]:
        repeats = count(limits, self.defaults, "repeats", 2, WINDOW)
        return repeats, max(repeats, count(limits, self.defaults, "window", 1, WINDOW))

    def state(self) -> _Requests:
        return _Requests()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call) or signal.turn is None or is_failure(signal):
            return None
        repeats, window = self._thresholds(limits)
        digest = signal.turn.digest
        if state.add(digest, signal.span_id, window) < repeats:
            return None
        spans = [span for seen, span in state.recent if seen == digest]
        return Finding(
            self.name,
            f"the same request (last turn {digest[:8]}…) was sent {len(spans)} times "
            f"in the last {len(state.recent)} successful calls",
            {"count": len(spans), "threshold": repeats, "window": window},
            tuple(spans[-EVIDENCE:]),
        )


@dataclass(slots=True)
class _Streak:
    source: Source = field(default_factory=Source)
    key: Hashable | None = None
    length: int = 0
    evidence: deque[str] = field(default_factory=evidence_queue)

    def restart(self, key: Hashable | None) -> None:
        self.key = key
        self.length = 0
        self.evidence.clear()


class _StreakDetector(ABC):
    """The same step, by ``_key``, ``repeats`` times in a row; a step without a key (another
    kind of outcome) ends the streak."""

    name: str
    signals: frozenset[str] = frozenset({"call", "tool"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float]
    actions: tuple[Action, ...] = ("sequester",)
    summary: str

    def __init__(self) -> None:
        self._repeats = Thresholds(lambda limits: count(limits, self.defaults, "repeats", 2))

    def state(self) -> _Streak:
        return _Streak()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        switched, executed = steps(state.source, signal)
        if switched:
            state.restart(None)
        if not executed:
            return None
        repeats = self._repeats(limits)
        key_of, evidence = self._key, state.evidence
        for step in executed:
            key = key_of(step)
            if key is None or key != state.key:
                state.key, state.length = key, 0
                evidence.clear()
                if key is None:
                    continue
            state.length += 1
            if not evidence or evidence[-1] != step.span_id:  # ``add_evidence``, inline
                evidence.append(step.span_id)
            if state.length >= repeats:
                return Finding(
                    self.name,
                    self._message(step, state.length),
                    {"count": state.length, "threshold": repeats},
                    tuple(state.evidence),
                )
        return None

    @abstractmethod
    def _key(self, step: Step) -> Hashable | None:
        """What makes two steps the same for this streak; None: the step ends it."""

    @abstractmethod
    def _message(self, step: Step, length: int) -> str:
        """The finding's sentence."""


class RepeatedTool(_StreakDetector):
    """The same tool call (name and arguments) returning the same result, again and again.
    A failure, or a span that reports no result, ends the streak (failures are
    ``failing_action``'s)."""

    name = "repeated_tool"
    defaults: Mapping[str, float] = MappingProxyType({"repeats": 4})
    summary = "the same tool call with the same result, several times in a row"

    def _key(self, step: Step) -> Hashable | None:
        if step.failed or step.outcome is None:
            return None
        return (step.action, step.outcome)

    def _message(self, step: Step, length: int) -> str:
        return (
            f"the same tool call ({short(step.action)}) returned the same result "
            f"{length} times in a row"
        )


class FailingAction(_StreakDetector):
    """The same tool call failing with the same error again and again: from tool spans with
    an error, or tool results their protocol marks an error. A success ends the streak."""

    name = "failing_action"
    defaults: Mapping[str, float] = MappingProxyType({"repeats": 3})
    summary = "the same action ending in the same error, several times in a row"

    def _key(self, step: Step) -> Hashable | None:
        return (step.action, step.outcome) if step.failed else None

    def _message(self, step: Step, length: int) -> str:
        return (
            f"the same tool call ({short(step.action)}) failed with the same error "
            f"{length} times in a row"
        )


Pair = tuple[str, str, bool]  # (action, outcome, failed)


@dataclass(slots=True)
class _Alternation:
    source: Source = field(default_factory=Source)
    last: Pair | None = None
    before: Pair | None = None
    run: int = 0  # the steps ending here that alternate between ``before`` and ``last``
    spans: deque[str] = field(default_factory=evidence_queue)  # one per step, newest last

    def add(self, pair: Pair | None, span_id: str) -> int:
        if pair is None or pair == self.last:
            self.run = 0 if pair is None else 1
        elif pair == self.before and self.run >= 2:
            self.run += 1
        else:
            self.run = 2 if self.last is not None else 1
        self.before, self.last = (None, None) if pair is None else (self.last, pair)
        self.spans.append(span_id)
        return self.run


class Oscillation:
    """A-B-A-B: the last ``length`` executed steps (tool call and outcome) alternate between
    exactly two. A step whose outcome is unknown (a span without a result) ends the run:
    two steps cannot be told equal without it. O(1) per step: the run's length is kept,
    not the steps."""

    name = "oscillation"
    signals: frozenset[str] = frozenset({"call", "tool"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float] = MappingProxyType({"length": 6})
    actions: tuple[Action, ...] = ("sequester",)
    summary = "two tool calls alternating A-B-A-B with the same results"

    def __init__(self) -> None:
        self._length = Thresholds(lambda limits: count(limits, self.defaults, "length", 4))

    def state(self) -> _Alternation:
        return _Alternation()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        switched, executed = steps(state.source, signal)
        if switched:
            state.add(None, "")
        for step in executed:
            pair = None if step.outcome is None else (step.action, step.outcome, step.failed)
            run = state.add(pair, step.span_id)
            length = self._length(limits)
            if run < length:
                continue
            evidence = evidence_queue()
            for span in list(state.spans)[-min(run, EVIDENCE) :]:
                add_evidence(evidence, span)
            return Finding(
                self.name,
                f"two tool calls ({short(state.before[0])} and {short(state.last[0])}) "
                f"alternated with the same results for {run} steps",
                {"count": run, "threshold": length},
                tuple(evidence),
            )
        return None


@dataclass(slots=True)
class _Idle:
    last_request: tuple[str, int] | None = None
    length: int = 0
    evidence: deque[str] = field(default_factory=evidence_queue)


class IdleTurns:
    """Requests whose latest assistant message called no tool, in a row: the model answered
    in prose and the agent prompted it again. A request with no assistant message (a new
    conversation, a side request such as a title) neither counts nor ends the streak; a
    request sent again as it was (a retry) is not a new turn. Runs only: a person chatting
    is idle by nature."""

    name = "idle_turns"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run"})
    defaults: Mapping[str, float] = MappingProxyType({"turns": 3})
    actions: tuple[Action, ...] = ("warn", "sequester")
    summary = "assistant turns with no action, prompted again and again"

    def __init__(self) -> None:
        self._turns = Thresholds(lambda limits: count(limits, self.defaults, "turns", 2))

    def state(self) -> _Idle:
        return _Idle()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call) or signal.turn is None or signal.turn.acted is None:
            return None
        request = (signal.turn.digest, signal.turn.messages)
        if request == state.last_request:
            return None
        state.last_request = request
        if signal.turn.acted:
            state.length = 0
            state.evidence.clear()
            return None
        state.length += 1
        add_evidence(state.evidence, signal.span_id)
        turns = self._turns(limits)
        if state.length < turns:
            return None
        return Finding(
            self.name,
            f"the model answered {state.length} turns in a row without calling a tool "
            "and was prompted again each time",
            {"count": state.length, "threshold": turns},
            tuple(state.evidence),
        )
