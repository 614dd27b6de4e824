"""What guards watch and what they decide: signals, detectors, findings, actions.

A **subject** is whose behaviour is watched: a run (its key's calls, its agent's tool spans,
its sandbox) or a key that is not a run's (a person's laptop Claude Code, a service). Each
subject has a live stream of **signals**:

* ``Call`` — a finished gateway call (the request's last turn as hashes, status, tokens,
  cost), for every run and every key;
* ``Tool`` — a tool span the agent reported over OTLP (reference agent, Claude Code, Codex,
  Gemini CLI), where it reports them;
* ``Sandbox`` — a sample of a run's cgroups (memory, processes, CPU) against its limits;
* ``Progress`` — a sample of a run's workspace change (a fingerprint of it, its size).

A **detector** reads the signals it names, keeps its own state per subject, and returns a
``Finding`` when a threshold is crossed (the evidence: numbers and span ids). Thresholds are
numbers in ``Detector.defaults``, overridden by the ``[guards]`` settings and per team. The
engine (``corral.guards.engine``) turns findings into incidents and **actions**, escalating
along the detector's ladder (``warn`` < ``throttle`` < ``sequester`` < ``kill``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal, NamedTuple, Protocol, get_args

from corral.protocols.base import Turn

SubjectKind = Literal["run", "key"]
Action = Literal["warn", "throttle", "sequester", "kill"]
ACTIONS: tuple[Action, ...] = get_args(Action)
"""In escalating order: each does what the ones before it do (a sequester also warns)."""


def stronger(a: str, b: str) -> str:
    """The stronger of two actions (``ACTIONS`` order)."""
    return a if ACTIONS.index(a) >= ACTIONS.index(b) else b


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose stream a signal belongs to: a run (by run id) or a key (by key id)."""

    kind: SubjectKind
    id: str


class Step(NamedTuple):
    """One tool call an agent executed and what came of it."""

    action: str  # the tool's name and a hash of its arguments
    outcome: str | None  # the result's hash, the error's hash when it failed; None: unknown
    failed: bool
    span_id: str  # the span that reported it


@dataclass(slots=True, eq=False)
class Call:
    """A finished gateway call, as detectors see it. Read-only by convention (not frozen: a
    frozen dataclass costs twice as much to make, and one is made for every call judged)."""

    at: float  # the clock's seconds when it finished
    span_id: str  # its llm_request span
    key_id: str
    team_id: str | None
    status: str  # "ok", "error" or "refused"
    http_status: int
    error_class: str | None
    input_tokens: int  # every input kind: fresh, cached, cache write
    output_tokens: int  # output and reasoning
    cost_nusd: int
    turn: Turn | None  # the request's last turn (None: its protocol could not say)
    _steps: tuple[Step, ...] | None = field(default=None, init=False, repr=False)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def steps(self) -> tuple[Step, ...]:
        """The tool calls the agent executed since its previous call (the latest assistant
        message's calls with the results the request carries back); read by several
        detectors, made once."""
        steps = self._steps
        if steps is None:
            steps = self._steps = _steps_of(self.turn, self.span_id)
        return steps


def _steps_of(turn: Turn | None, span_id: str) -> tuple[Step, ...]:
    if turn is None or not turn.results:
        return ()
    results, failed = turn.results, turn.failed
    if len(failed) < len(results):  # a turn made by hand: a result it did not mark is not
        failed = (*failed, *(False,) * (len(results) - len(failed)))
    return tuple(map(Step, turn.actions, results, failed, repeat(span_id)))


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool span an agent reported: which tool, a hash of its input, of its result, and
    whether it failed (with a hash of the error)."""

    at: float
    span_id: str
    name: str
    action: str  # name + a hash of its arguments (as ``Turn.actions``)
    result: str | None  # a hash of its result, when the agent reported one
    error: str | None  # a hash of its error text when it failed (the status message)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A sample of a live run's sandbox."""

    at: float
    memory_bytes: int | None
    memory_limit: int | None
    processes: int | None
    process_limit: int | None
    cpu_seconds: float | None
    refused_forks: int | None = None  # forks the process limit refused so far
    oom_kills: int | None = None  # processes the memory limit killed so far


@dataclass(frozen=True, slots=True)
class Progress:
    """A sample of a live run's workspace: a fingerprint of its change and its size."""

    at: float
    diff: str
    size: int


Signal = Call | Tool | Sandbox | Progress
SIGNALS: Mapping[str, type] = {"call": Call, "tool": Tool, "sandbox": Sandbox, "progress": Progress}


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's threshold crossed: what, and the evidence."""

    detector: str
    message: str  # one sentence, e.g. "the same request was sent 8 times in a row"
    numbers: Mapping[str, float | int | str]  # what crossed, and the threshold it crossed
    span_ids: tuple[str, ...] = ()  # the spans that are the evidence (most recent last)

    def as_json(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "message": self.message,
            "numbers": dict(self.numbers),
            "span_ids": list(self.span_ids),
        }


class Detector(Protocol):
    """One runaway pattern. ``observe`` runs off the request path, once per signal of the
    kinds in ``signals``, for one subject at a time, with that subject's state (made by
    ``state()``) and the effective thresholds (``defaults`` with the settings' overrides).
    After a finding the engine gives the subject a fresh state: the detector fires again
    only when the threshold is crossed again."""

    name: str
    """How settings, incidents and metrics name it (snake_case)."""
    signals: frozenset[str]
    """The signal kinds it reads: a subset of ``SIGNALS``."""
    subjects: frozenset[SubjectKind]
    """Runs, keys or both (tool, sandbox and progress signals exist only for runs)."""
    defaults: Mapping[str, float]
    """Its thresholds, by name; the settings override any of them (and nothing else)."""
    actions: tuple[Action, ...]
    """The escalation ladder: the n-th firing on an incident takes the n-th (the last
    repeats)."""
    summary: str
    """What it watches, in one line (``corral guards show``, docs)."""

    def state(self) -> Any:
        """A fresh per-subject state."""

    def observe(
        self, state: Any, signal: Signal, limits: Mapping[str, float]
    ) -> Finding | None: ...


__all__ = [
    "ACTIONS",
    "SIGNALS",
    "Action",
    "Call",
    "Detector",
    "Finding",
    "Progress",
    "Sandbox",
    "Signal",
    "Step",
    "Subject",
    "SubjectKind",
    "Tool",
    "stronger",
]
