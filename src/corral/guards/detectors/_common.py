"""What the built-in detectors share: reading thresholds, the steps an agent executed, and
how evidence is kept and named.

Everything here is pure and total: thresholds that are missing, non-numeric or absurd fall
back to the detector's default or are clamped, and malformed signals yield nothing rather
than raise (a detector runs on a queue the gateway feeds; an exception there would drop
every later signal of the subject).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from corral.guards.model import Call, Signal, Step, Tool

__all__ = ["Step"]  # re-exported: the loop detectors read steps

EVIDENCE = 20
"""At most this many span ids back a finding (the most recent ones)."""

T = TypeVar("T")
_NUMBERS = frozenset({int, float})


def number(limits: Mapping[str, float], defaults: Mapping[str, float], key: str) -> float:
    """The threshold ``key``: the override when it is a finite number, else the default.

    Read at every signal, so it is written for speed: an exact type check (a bool is not a
    threshold) and ``v - v == 0``, false for infinities and NaN."""
    try:
        value = limits.get(key)
    except AttributeError:  # not a mapping at all
        value = None
    if type(value) in _NUMBERS and value - value == 0:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return float(defaults[key])


def count(
    limits: Mapping[str, float],
    defaults: Mapping[str, float],
    key: str,
    minimum: int = 1,
    maximum: int = 1_000_000_000,
) -> int:
    """The threshold ``key`` as a whole count within ``minimum`` and ``maximum``: a count of
    0 or 1 repeats would fire on every signal, which no setting can mean, and a count that
    sizes a window bounds the detector's memory."""
    return min(maximum, max(minimum, int(number(limits, defaults, key))))


class Thresholds(Generic[T]):
    """A detector's thresholds as it uses them (defaulted, clamped), read once per limits
    mapping rather than at every signal: the engine hands a subject its team rule's mapping
    each time, and those never change while the process runs. A mapping is known by
    identity and held while it is known (so its id cannot be reused by another); at most
    ``_KNOWN`` are, a few teams' worth."""

    __slots__ = ("_known", "_last", "_last_values", "_read")
    _KNOWN = 256

    def __init__(self, read: Callable[[Any], T]) -> None:
        self._read = read
        self._known: dict[int, tuple[object, T]] = {}
        self._last: object = self  # the mapping read last (none yet), and its values
        self._last_values: T | None = None

    def __call__(self, limits: Mapping[str, float]) -> T:
        if limits is self._last:  # one team's subjects in a row: the common case
            return self._last_values  # type: ignore[return-value]
        known = self._known.get(id(limits))
        if known is not None and known[0] is limits:
            values = known[1]
        else:
            values = self._read(limits)
            if len(self._known) >= self._KNOWN:
                self._known.clear()
            self._known[id(limits)] = (limits, values)
        self._last, self._last_values = limits, values
        return values


WINDOW = 10_000
"""The largest window (of signals kept per subject) a threshold may ask for."""


def fit(queue: deque[T], size: int) -> deque[T]:
    """``queue`` with room for ``size`` items (its newest kept): thresholds may change for a
    subject while its state lives (a team override edited and reloaded)."""
    return queue if queue.maxlen == size else deque(queue, maxlen=size)


def short(action: str) -> str:
    """``run_tests:3fa2b9c01d4e`` → ``run_tests:3fa2…``: a name people read, a hash to match."""
    name, sep, digest = action.rpartition(":")
    if not sep:
        return action[:40]
    return f"{name[:40]}:{digest[:4]}…"


def is_failure(call: Call) -> bool:
    """The gateway answered with an error (its own refusal or the upstream's 4xx/5xx)."""
    return call.status in ("error", "refused") or call.http_status >= 400


@dataclass(slots=True)
class Source:
    """Where a subject's executed steps are read from. A subject that has reported a tool
    span is judged on its spans alone (an agent's own telemetry is exact: one span per
    execution), else on the tool results its requests carry back to the model."""

    spans: bool = False
    last_request: tuple[str, int] | None = None  # (digest, messages) of the last call read


def steps(source: Source, signal: Signal) -> tuple[bool, tuple[Step, ...]]:
    """The steps ``signal`` reports, and whether the subject just switched from calls to
    spans (a detector then forgets what it had read from calls, so nothing is counted
    twice)."""
    if type(signal) is Call:  # the common signal first, by exact type: this runs per call
        turn = signal.turn
        if source.spans or turn is None or not turn.results:
            return _NONE
        # A request sent again as it was (same last turn, same length: a client's retry)
        # carries the same results, not new executions. The same tool call executed again
        # with the same result also repeats the last turn, but the conversation grew by it.
        request = (turn.digest, turn.messages)
        if request == source.last_request:
            return _NONE
        source.last_request = request
        return False, signal.steps  # made once per call, shared by the detectors reading it
    if isinstance(signal, Tool):
        switched = not source.spans
        source.spans = True
        if signal.error is not None:
            return switched, (Step(signal.action, signal.error, True, signal.span_id),)
        return switched, (Step(signal.action, signal.result, False, signal.span_id),)
    return _NONE


_NONE: tuple[bool, tuple[Step, ...]] = (False, ())


def add_evidence(evidence: deque[str], span_id: str) -> None:
    """Keep ``span_id`` as evidence once (a call carrying several results is one span)."""
    if not evidence or evidence[-1] != span_id:
        evidence.append(span_id)


def evidence_queue() -> deque[str]:
    """An empty place for evidence: the most recent ``EVIDENCE`` span ids."""
    return deque(maxlen=EVIDENCE)
