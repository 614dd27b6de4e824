"""This process's run executor: slots, live runs, whether runs are refused, runs ended.

Read at scrape time from ``app.executor`` through ``RunStats``; nothing here reads the
store, so a scrape costs the same with a million runs. Queue depth across processes is the
store's to tell (``GET /api/v1/runs?state=queued``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class RunStats(Protocol):
    @property
    def slots(self) -> int: ...

    @property
    def live(self) -> int:
        """Runs this process holds (admitted or running)."""

    @property
    def refusal(self) -> str | None:
        """Why this process refuses runs (its sandbox probe failed), or None."""

    @property
    def ended(self) -> Mapping[str, int]:
        """Runs this process ended, by the state they ended in."""


class RunsHost(Protocol):
    @property
    def executor(self) -> RunStats: ...


class RunsCollector(Collector):
    def __init__(self, host: RunsHost) -> None:
        self._host = host

    def describe(self) -> Iterator[Metric]:
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        stats = self._host.executor
        slots, live, refused, ended = _families()
        slots.add_metric([], stats.slots)
        live.add_metric([], stats.live)
        refused.add_metric([], 1 if stats.refusal else 0)
        for state, count in sorted(stats.ended.items()):
            ended.add_metric([state], count)
        yield from (slots, live, refused, ended)


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily
]:
    return (
        GaugeMetricFamily("corral_run_slots", "Runs this process may execute at once."),
        GaugeMetricFamily("corral_runs_live", "Runs this process holds (admitted or running)."),
        GaugeMetricFamily(
            "corral_runs_refused",
            "1 when this process refuses runs because its sandbox probe failed (see its log).",
        ),
        CounterMetricFamily(
            "corral_runs_ended",
            "Runs this process ended, by final state (awaiting_review, failed, cancelled).",
            labels=["state"],
        ),
    )
