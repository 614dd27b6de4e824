"""Rates: too much, too fast. Token and spend velocity against the team's own baseline,
an absolute ceiling per minute, and a storm of failed calls."""

from __future__ import annotations

import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from corral.guards.detectors._common import (
    WINDOW,
    Thresholds,
    add_evidence,
    count,
    evidence_queue,
    fit,
    is_failure,
    number,
)
from corral.guards.model import Action, Call, Finding, Signal, SubjectKind

NANO = 1_000_000_000
MAD_SCALE = 1.4826
"""The MAD of a normal distribution times this is its standard deviation."""
TEAMS = 10_000
"""Baselines kept at most (the least recently used dropped): teams are few, but a bound
keeps a detector's memory fixed whatever its input."""
STALE = 20
"""A baseline's statistics are computed again once 1/STALE of its minutes are new."""


@dataclass(slots=True)
class _Minute:
    """A subject's calls in one minute of the clock."""

    minute: int | None = None
    tokens: int = 0
    nusd: int = 0
    evidence: deque[str] = field(default_factory=evidence_queue)

    def add(self, call: Call) -> tuple[int, int] | None:
        """Count ``call``; the totals of the minute it closed (a call of a later minute
        closes the open one), if any. A late call counts in the open minute."""
        at = call.at
        closed = None
        if at - at == 0:  # finite
            minute = int(at // 60)
            if self.minute is None:
                self.minute = minute
            elif minute > self.minute:
                closed = (self.tokens, self.nusd)
                self.tokens = self.nusd = 0
                self.evidence.clear()
                self.minute = minute
        tokens = call.input_tokens + call.output_tokens
        if tokens > 0:
            self.tokens += tokens
        if call.cost_nusd > 0:
            self.nusd += call.cost_nusd
        evidence, span_id = self.evidence, call.span_id
        if not evidence or evidence[-1] != span_id:  # ``add_evidence``, inline: every call
            evidence.append(span_id)
        return closed


def _usd(nusd: float) -> str:
    return f"${nusd / NANO:,.2f}"


@dataclass(slots=True)
class _Baseline:
    """A team's last closed subject-minutes, and their median and MAD.

    The statistics are computed again once a twentieth of the history is new since they
    were (at every new minute while it is short): a median of 500 barely moves with one
    more, and sorting it at every call would cost more than all the other detectors."""

    tokens: deque[int] = field(default_factory=deque)
    nusd: deque[int] = field(default_factory=deque)
    stats: tuple[float, float, float, float] | None = None
    fresh: int = 0  # minutes added since ``stats``

    def add(self, minute: tuple[int, int], size: int) -> None:
        self.tokens = fit(self.tokens, size)
        self.nusd = fit(self.nusd, size)
        self.tokens.append(minute[0])
        self.nusd.append(minute[1])
        self.fresh += 1

    def robust(self) -> tuple[float, float, float, float]:
        """(median, MAD) of tokens, then of spend."""
        if self.stats is None or self.fresh * STALE > len(self.tokens):
            self.stats = (*_median_mad(self.tokens), *_median_mad(self.nusd))
            self.fresh = 0
        return self.stats


def _median_mad(values: deque[int]) -> tuple[float, float]:
    median = statistics.median(values)
    return median, statistics.median(abs(v - median) for v in values)


def _z(value: float, median: float, mad: float, floor: float) -> float:
    """The robust z-score. A MAD of 0 (a team whose minutes are all alike) would make any
    excess infinite: the spread is at least 1 and ``floor`` of the median."""
    return (value - median) / (MAD_SCALE * max(mad, 1.0, floor * median))


class Velocity:
    """A subject's tokens or spend in the current minute far above its team's baseline: a
    robust z-score ``(v - median) / (1.4826 * MAD)`` of at least ``z`` on tokens or spend,
    against the team's last ``history`` closed subject-minutes (each a run's or key's total
    in one minute it was active), once the team has ``min_samples`` of them and the minute
    holds at least ``min_tokens`` tokens (so a quiet team does not fire on a small burst).
    The open minute is judged at every call, so a spike is caught inside its minute. The
    spread is taken as at least ``mad_floor`` of the median (and at least 1): a team whose
    minutes are all alike has a MAD near 0, and would otherwise fire at twice its median; at
    the defaults a minute must hold about four times the median to fire. Tokens count every
    input kind, cached reads included: a run whose context grows fast is judged heavy, and
    spend (where cached reads are cheap) is the fairer signal for such teams.

    State beyond the subject's: the team baselines live on the detector instance (the
    engine makes one per process, so each process learns from the calls it sees), bounded
    to ``TEAMS`` teams of ``history`` minutes each. A minute that fired is never added to
    the baseline (the engine drops the subject's state with it), so a spike does not teach
    the baseline to expect spikes."""

    name = "velocity"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float] = MappingProxyType(
        {"z": 8, "history": 500, "min_samples": 30, "min_tokens": 20_000, "mad_floor": 0.25}
    )
    actions: tuple[Action, ...] = ("warn", "throttle", "sequester")
    summary = "token or spend velocity far above the team's own baseline"

    def __init__(self) -> None:
        self._teams: OrderedDict[str, _Baseline] = OrderedDict()
        self._thresholds = Thresholds(self._read)

    def _read(self, limits: Mapping[str, float]) -> tuple[int, float, int, float, float]:
        return (
            count(limits, self.defaults, "history", 2, WINDOW),
            number(limits, self.defaults, "min_tokens"),
            count(limits, self.defaults, "min_samples", 2),
            max(0.0, number(limits, self.defaults, "mad_floor")),
            number(limits, self.defaults, "z"),
        )

    def state(self) -> _Minute:
        return _Minute()

    @property
    def teams(self) -> int:
        """How many teams' baselines it keeps (at most ``TEAMS``)."""
        return len(self._teams)

    def baseline_samples(self, team_id: str | None) -> int:
        """How many subject-minutes the team's baseline holds (``corral guards show``)."""
        baseline = self._teams.get(team_id or "")
        return 0 if baseline is None else len(baseline.tokens)

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call):
            return None
        team = signal.team_id or ""
        history, min_tokens, min_samples, floor, z = self._thresholds(limits)
        closed = state.add(signal)
        if closed is not None:
            self._baseline(team).add(closed, history)
        if state.tokens < min_tokens:
            return None
        baseline = self._teams.get(team)
        samples = 0 if baseline is None else len(baseline.tokens)
        if baseline is None or samples < min_samples:
            return None
        med_t, mad_t, med_c, mad_c = baseline.robust()
        z_tokens = _z(state.tokens, med_t, mad_t, floor)
        z_spend = _z(state.nusd, med_c, mad_c, floor)
        if max(z_tokens, z_spend) < z:
            return None
        what = (
            f"{state.tokens:,} tokens in one minute, against a median of {med_t:,.0f}"
            if z_tokens >= z_spend
            else f"{_usd(state.nusd)} in one minute, against a median of {_usd(med_c)}"
        )
        return Finding(
            self.name,
            f"{what} for its team's runs and keys "
            f"({max(z_tokens, z_spend):.1f} robust deviations above, threshold {z:g})",
            {
                "tokens": state.tokens,
                "usd": state.nusd / NANO,
                "z_tokens": round(z_tokens, 2),
                "z_spend": round(z_spend, 2),
                "threshold": z,
                "median_tokens": med_t,
                "median_usd": med_c / NANO,
                "samples": samples,
            },
            tuple(state.evidence),
        )

    def _baseline(self, team: str) -> _Baseline:
        baseline = self._teams.get(team)
        if baseline is None:
            baseline = self._teams[team] = _Baseline()
            if len(self._teams) > TEAMS:
                self._teams.popitem(last=False)
        else:
            self._teams.move_to_end(team)
        return baseline


class Ceiling:
    """An absolute cap whatever the baseline: more than ``tokens_per_minute`` tokens or
    ``usd_per_minute`` dollars in one minute of the clock."""

    name = "ceiling"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float] = MappingProxyType(
        {"tokens_per_minute": 2_000_000, "usd_per_minute": 5.0}
    )
    actions: tuple[Action, ...] = ("sequester",)
    summary = "an absolute cap on tokens and spend per minute"

    def __init__(self) -> None:
        self._thresholds = Thresholds(
            lambda limits: (
                number(limits, self.defaults, "tokens_per_minute"),
                number(limits, self.defaults, "usd_per_minute"),
            )
        )

    def state(self) -> _Minute:
        return _Minute()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call):
            return None
        state.add(signal)
        tokens, usd = self._thresholds(limits)
        if state.tokens <= tokens and state.nusd <= usd * NANO:
            return None
        numbers = {
            "tokens": state.tokens,
            "tokens_threshold": tokens,
            "usd": state.nusd / NANO,
            "usd_threshold": usd,
        }
        if state.tokens > tokens:
            message = f"{state.tokens:,} tokens in one minute, above the ceiling of {tokens:,.0f}"
        elif state.nusd > usd * NANO:
            message = (
                f"{_usd(state.nusd)} spent in one minute, above the ceiling of {_usd(usd * NANO)}"
            )
        else:
            return None
        return Finding(self.name, message, numbers, tuple(state.evidence))


@dataclass(slots=True)
class _Failures:
    recent: deque[tuple[float, str, int]] = field(default_factory=deque)  # at, span, status


class ErrorStorm:
    """Many failed calls in a short time: ``errors`` calls the gateway answered with an
    error or a refusal (any 4xx or 5xx) within ``window_s`` seconds."""

    name = "error_storm"
    signals: frozenset[str] = frozenset({"call"})
    subjects: frozenset[SubjectKind] = frozenset({"run", "key"})
    defaults: Mapping[str, float] = MappingProxyType({"errors": 20, "window_s": 60})
    actions: tuple[Action, ...] = ("throttle", "sequester")
    summary = "a storm of failed calls (4xx/5xx) in a short window"

    def __init__(self) -> None:
        self._thresholds = Thresholds(
            lambda limits: (
                count(limits, self.defaults, "errors", 2, WINDOW),
                number(limits, self.defaults, "window_s"),
            )
        )

    def state(self) -> _Failures:
        return _Failures()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Call) or not is_failure(signal):
            return None
        errors, window = self._thresholds(limits)
        state.recent = fit(state.recent, errors)
        state.recent.append((signal.at, signal.span_id, signal.http_status))
        seconds = signal.at - state.recent[0][0]
        if len(state.recent) < errors or not seconds <= window:
            return None
        status, _ = Counter(s for _, _, s in state.recent).most_common(1)[0]
        evidence = evidence_queue()
        for _, span, _ in state.recent:
            add_evidence(evidence, span)
        return Finding(
            self.name,
            f"{len(state.recent)} calls failed within {seconds:.0f} seconds "
            f"(most with HTTP {status})",
            {
                "count": len(state.recent),
                "threshold": errors,
                "seconds": round(seconds, 3),
                "window_s": window,
                "http_status": status,
            },
            tuple(evidence),
        )
