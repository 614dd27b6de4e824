"""What this process's guards did: incidents opened, findings, actions and how fast.

The guards engine calls ``GuardMetrics`` on the event loop (``incident_opened``, ``finding``,
``action``), which only bumps dict counters and a fixed-bucket histogram; the families are
built at scrape time, and ``corral_runs_sequestered`` is read then from the engine (as are
the engine's counts of signals judged and dropped, when it is given a ``signals`` callable).
Label values are bounded: ``detector`` takes the registered detectors' names, ``action``
the actions' (anything else counts as ``other``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from corral.metrics.traffic import OTHER, Histogram

# From the call that crossed a threshold to its action in force: a warn or throttle takes a
# millisecond or two, a sequester (freeze, suspend the key everywhere, snapshot) up to the
# 1 s the issue allows; the tail past it is what an operator must see.
ACTION_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip


class GuardMetrics(Collector):
    """Counters of the guards engine, exported as a Prometheus collector.

    ``detectors`` and ``actions`` are the label values each may take; ``sequestered`` says
    how many runs are sequestered now; ``signals``, when given, how many signals the engine
    has judged and how many its full queue dropped, since it started (both are called at
    each scrape, on the loop, never at registration).
    """

    def __init__(
        self,
        detectors: Iterable[str],
        actions: Iterable[str],
        sequestered: Callable[[], int],
        signals: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._detectors = frozenset(detectors)
        self._actions = frozenset(actions)
        self._sequestered = sequestered
        self._signals = signals
        self._opened: dict[str, int] = dict.fromkeys(self._detectors, 0)
        self._findings: dict[str, int] = dict.fromkeys(self._detectors, 0)
        self._taken: dict[str, int] = dict.fromkeys(self._actions, 0)
        self._seconds: dict[str, Histogram] = {a: Histogram(ACTION_BOUNDS_S) for a in self._actions}

    # -- the engine's side -------------------------------------------------------------

    def incident_opened(self, detector: str) -> None:
        """An incident was opened by ``detector``'s finding."""
        label = detector if detector in self._detectors else OTHER
        self._opened[label] = self._opened.get(label, 0) + 1

    def finding(self, detector: str) -> None:
        """``detector`` crossed a threshold (on a new incident or an open one)."""
        label = detector if detector in self._detectors else OTHER
        self._findings[label] = self._findings.get(label, 0) + 1

    def action(self, action: str, seconds: float) -> None:
        """``action`` is in force, ``seconds`` after the signal that crossed the threshold."""
        label = action if action in self._actions else OTHER
        self._taken[label] = self._taken.get(label, 0) + 1
        histogram = self._seconds.get(label)
        if histogram is None:
            histogram = self._seconds[label] = Histogram(ACTION_BOUNDS_S)
        histogram.observe(max(seconds, 0.0))

    # -- scrape ------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families without samples (registering reads nothing from the engine)."""
        yield from _families()
        if self._signals is not None:
            yield from _signal_families()

    def collect(self) -> Iterator[Metric]:
        opened, findings, actions, seconds, sequestered = _families()
        for detector, n in sorted(self._opened.items()):
            opened.add_metric([detector], n)
        for detector, n in sorted(self._findings.items()):
            findings.add_metric([detector], n)
        for action, n in sorted(self._taken.items()):
            actions.add_metric([action], n)
        for action, histogram in sorted(self._seconds.items()):
            seconds.add_metric([action], histogram.buckets(), histogram.sum)
        sequestered.add_metric([], self._sequestered())
        yield from (opened, findings, actions, seconds, sequestered)
        if self._signals is not None:
            judged, dropped = _signal_families()
            handled, lost = self._signals()
            judged.add_metric([], handled)
            dropped.add_metric([], lost)
            yield from (judged, dropped)


def _families() -> tuple[
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    HistogramMetricFamily,
    GaugeMetricFamily,
]:
    return (
        CounterMetricFamily(
            "corral_guard_incidents_opened",
            "Incidents this process's guards opened, by the detector that fired.",
            labels=["detector"],
        ),
        CounterMetricFamily(
            "corral_guard_findings",
            "Thresholds crossed, by detector (each opens an incident or adds to an open one).",
            labels=["detector"],
        ),
        CounterMetricFamily(
            "corral_guard_actions",
            "Guard actions put in force, by action (warn, throttle, sequester, kill).",
            labels=["action"],
        ),
        HistogramMetricFamily(
            "corral_guard_action_seconds",
            "Time from the signal that crossed a threshold to its action being in force.",
            labels=["action"],
        ),
        GaugeMetricFamily(
            "corral_runs_sequestered",
            "Runs sequestered now (frozen, key suspended) and waiting for release or kill.",
        ),
    )


def _signal_families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
    # Counters, though read from the engine at scrape time: both only grow while the
    # process lives, and rate() of them is what an operator graphs.
    return (
        CounterMetricFamily(
            "corral_guard_signals_judged",
            "Signals (calls, tool spans, samples) the guards' worker has taken off its queue "
            "and judged (or skipped, for a team whose guards are off).",
        ),
        CounterMetricFamily(
            "corral_guard_signals_dropped",
            "Signals the guards' full queue pushed out unjudged (guards.queue_max).",
        ),
    )


__all__ = ["ACTION_BOUNDS_S", "GuardMetrics"]
