"""Progress: an agent working without getting anywhere, a run's conversation or workspace
seen over many calls."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from corral.guards.detectors._common import (
    EVIDENCE,
    WINDOW,
    Thresholds,
    add_evidence,
    count,
    evidence_queue,
    fit,
    is_failure,
    number,
)
from corral.guards.model import Action, Call, Finding, Progress, Signal, SubjectKind

SIDE_REQUEST = 4
"""Requests with fewer messages are side requests (a title, a topic, a quota probe) that
agents such as Claude Code interleave with the conversation: they say nothing of its size."""


@dataclass(slots=True)
class _Compactions:
    previous: int | None = None  # messages in the last request that was not a side request
    # (span id, messages before the drop) per request, the level None when it was no drop
    recent: deque[tuple[str, int | None]] = field(default_factory=deque)


class CompactionThrash:
    """The conversation compacted again and again: a request's messages fell to at most
    ``drop`` of the previous request's (from at least ``min_messages``) ``compactions``
    times within ``window`` requests.

    Agents with subagents (Claude Code's Task tool) interleave conversations, so a drop can
    be a switch to a smaller conversation: when a later request jumps back (to at least
    1/``drop`` of the one before it, and at least the level the drop fell from), that drop
    is not counted. A compacted conversation grows back a few messages per request, never
    in one jump."""

    name = "compaction_thrash"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run"})
    defaults: Mapping[str, float] = MappingProxyType(
        {"compactions": 5, "window": 40, "drop": 0.5, "min_messages": 8}
    )
    actions: tuple[Action, ...] = ("warn", "sequester")
    summary = "the conversation compacted again and again (context thrash)"

    def __init__(self) -> None:
        self._thresholds = Thresholds(self._read)

    def _read(self, limits: Mapping[str, float]) -> tuple[int, int, float, float]:
        threshold = count(limits, self.defaults, "compactions", 2, WINDOW)
        window = max(threshold, count(limits, self.defaults, "window", 1, WINDOW))
        drop = min(0.95, max(0.05, number(limits, self.defaults, "drop")))
        return threshold, window, drop, number(limits, self.defaults, "min_messages")

    def state(self) -> _Compactions:
        return _Compactions()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call) or signal.turn is None:
            return None
        messages = signal.turn.messages
        if messages < SIDE_REQUEST:
            return None
        threshold, window, drop, floor = self._thresholds(limits)
        state.recent = fit(state.recent, window)
        previous, state.previous = state.previous, messages
        level = None
        if previous is not None and previous >= floor and messages <= drop * previous:
            level = previous
        elif previous is not None and messages * drop >= previous:
            _undo_last_drop(state.recent, messages)
        state.recent.append((signal.span_id, level))
        if level is None:
            return None
        spans = [span for span, fell_from in state.recent if fell_from is not None]
        if len(spans) < threshold:
            return None
        return Finding(
            self.name,
            f"the conversation was compacted {len(spans)} times in the last "
            f"{len(state.recent)} requests",
            {"count": len(spans), "threshold": threshold, "window": window},
            tuple(spans[-EVIDENCE:]),
        )


def _undo_last_drop(recent: deque[tuple[str, int | None]], messages: int) -> None:
    """A jump back to the level the last drop fell from: that drop was a switch between
    conversations, not a compaction."""
    for i in range(len(recent) - 1, -1, -1):
        span, level = recent[i]
        if level is not None:
            if level <= messages:
                recent[i] = (span, None)
            return


@dataclass(slots=True)
class _Stall:
    diff: str | None = None  # the workspace change's fingerprint; None: no sample yet
    size: int = 0
    turns: int = 0
    tokens: int = 0
    evidence: deque[str] = field(default_factory=evidence_queue)


class StalledProgress:
    """Tokens spent while the workspace change stays the same: the Progress fingerprint has
    not moved for ``turns`` successful calls that used at least ``tokens`` tokens together.
    Before the run's first Progress sample it cannot say, and does not fire. A run whose
    task changes no file (a review, a question) is judged the same: raise ``turns`` for
    teams that run those."""

    name = "stalled_progress"
    signals: frozenset[str] = frozenset({"call", "progress"})
    subjects: frozenset[SubjectKind] = frozenset({"run"})
    defaults: Mapping[str, float] = MappingProxyType({"turns": 40, "tokens": 400_000})
    actions: tuple[Action, ...] = ("warn", "sequester")
    summary = "tokens rising while the workspace change does not move"

    def __init__(self) -> None:
        self._thresholds = Thresholds(
            lambda limits: (
                count(limits, self.defaults, "turns"),
                number(limits, self.defaults, "tokens"),
            )
        )

    def state(self) -> _Stall:
        return _Stall()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if isinstance(signal, Progress):
            if signal.diff != state.diff:
                state.diff = signal.diff
                state.turns = state.tokens = 0
                state.evidence.clear()
            state.size = signal.size
            return None
        if not isinstance(signal, Call) or state.diff is None or is_failure(signal):
            return None
        state.turns += 1
        state.tokens += max(0, signal.tokens)
        add_evidence(state.evidence, signal.span_id)
        turns, tokens = self._thresholds(limits)
        if state.turns < turns or state.tokens < tokens:
            return None
        return Finding(
            self.name,
            f"{state.turns} calls used {state.tokens:,} tokens while the workspace change "
            f"did not move (its size stays {state.size:,})",
            {
                "count": state.turns,
                "threshold": turns,
                "tokens": state.tokens,
                "tokens_threshold": tokens,
                "diff_size": state.size,
            },
            tuple(state.evidence),
        )
