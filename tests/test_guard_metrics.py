"""``/metrics`` for guards: incidents, findings, actions, time to action, sequestered runs.

Scrapes are parsed with ``prometheus_client``'s own text parser (``tests.test_metrics``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.metrics import GuardMetrics, Metrics
from corral.metrics.guards import ACTION_BOUNDS_S
from corral.settings import Settings
from tests.test_metrics import (
    bucket_counts,
    histogram_quantile,
    label_values,
    parse,
    scrape,
    value,
)

DETECTORS = ("repeated_request", "repeated_tool", "error_storm")
ACTIONS = ("warn", "throttle", "sequester", "kill")
GUARD_FAMILIES = {
    "corral_guard_incidents_opened": "counter",
    "corral_guard_findings": "counter",
    "corral_guard_actions": "counter",
    "corral_guard_action_seconds": "histogram",
    "corral_runs_sequestered": "gauge",
}


class Sequestered:
    """The engine's count of sequestered runs, as a callable the collector reads."""

    def __init__(self) -> None:
        self.now = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now


def guard_metrics(sequestered: Sequestered | None = None) -> GuardMetrics:
    return GuardMetrics(DETECTORS, ACTIONS, sequestered or Sequestered())


def test_incidents_findings_and_actions_are_counted_by_label() -> None:
    """Each call counts under its detector or action; time to action goes to its histogram."""
    metrics = guard_metrics()
    metrics.finding("repeated_request")
    metrics.incident_opened("repeated_request")
    metrics.finding("repeated_request")
    metrics.finding("error_storm")
    metrics.incident_opened("error_storm")
    metrics.action("warn", 0.002)
    metrics.action("sequester", 0.3)
    metrics.action("sequester", 0.9)
    _, samples = parse(scrape(metrics))

    opened = "corral_guard_incidents_opened_total"
    assert {d: value(samples, opened, detector=d) for d in DETECTORS} == {
        "repeated_request": 1,
        "repeated_tool": 0,
        "error_storm": 1,
    }
    findings = "corral_guard_findings_total"
    assert value(samples, findings, detector="repeated_request") == 2
    assert value(samples, findings, detector="error_storm") == 1
    actions = "corral_guard_actions_total"
    assert {a: value(samples, actions, action=a) for a in ACTIONS} == {
        "warn": 1,
        "throttle": 0,
        "sequester": 2,
        "kill": 0,
    }
    seconds = "corral_guard_action_seconds"
    assert value(samples, f"{seconds}_count", action="sequester") == 2
    assert value(samples, f"{seconds}_sum", action="sequester") == pytest.approx(1.2)
    assert bucket_counts(samples, seconds, action="sequester")["0.5"] == 1
    assert bucket_counts(samples, seconds, action="sequester")["1.0"] == 2
    assert bucket_counts(samples, seconds, action="warn")["0.0025"] == 1


def test_the_sequestered_gauge_is_read_at_each_scrape() -> None:
    """``corral_runs_sequestered`` is what the engine says at scrape time."""
    sequestered = Sequestered()
    metrics = guard_metrics(sequestered)
    sequestered.now = 3
    _, samples = parse(scrape(metrics))
    assert value(samples, "corral_runs_sequestered") == 3
    sequestered.now = 1
    _, samples = parse(scrape(metrics))
    assert value(samples, "corral_runs_sequestered") == 1


def test_unknown_detectors_and_actions_count_as_other() -> None:
    """Only the registered detectors and actions become label values; the rest is other."""
    metrics = guard_metrics()
    for n in range(50):
        metrics.incident_opened(f"plugin_{n}")
        metrics.finding(f"plugin_{n}")
        metrics.action(f"page_{n}", 0.01)
    _, samples = parse(scrape(metrics))

    for name in ("corral_guard_incidents_opened_total", "corral_guard_findings_total"):
        assert label_values(samples, name, "detector") == {*DETECTORS, "other"}
        assert value(samples, name, detector="other") == 50
    assert label_values(samples, "corral_guard_actions_total", "action") == {*ACTIONS, "other"}
    assert value(samples, "corral_guard_actions_total", action="other") == 50
    assert value(samples, "corral_guard_action_seconds_count", action="other") == 50


def test_an_idle_scrape_has_every_family_typed_and_described() -> None:
    """With nothing fired every family is exposed, typed, with a help text, at zero."""
    families, samples = parse(scrape(guard_metrics()))
    assert {name: f.type for name, f in families.items()} == GUARD_FAMILIES
    assert all(f.documentation for f in families.values())
    assert value(samples, "corral_runs_sequestered") == 0
    assert value(samples, "corral_guard_action_seconds_count", action="sequester") == 0


def test_time_to_action_reads_true_from_a_millisecond_to_five_seconds() -> None:
    """The buckets span 1 ms to 5 s: Prometheus' quantiles of fast warns read in
    milliseconds and of slow sequesters in seconds, each within its bucket."""
    assert (ACTION_BOUNDS_S[0], ACTION_BOUNDS_S[-1]) == (0.001, 5.0)
    metrics = guard_metrics()
    for i in range(100):
        metrics.action("warn", 0.0015 + i * 0.00001)
        metrics.action("sequester", 3.0 + i * 0.01)
    _, samples = parse(scrape(metrics))
    warn = bucket_counts(samples, "corral_guard_action_seconds", action="warn")
    sequester = bucket_counts(samples, "corral_guard_action_seconds", action="sequester")
    assert 0.001 <= histogram_quantile(0.99, warn) <= 0.0025
    assert 2.5 <= histogram_quantile(0.5, sequester) <= 5.0


def test_registering_reads_nothing_from_the_engine() -> None:
    """Registration describes the families without asking the engine anything."""
    sequestered = Sequestered()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(guard_metrics(sequestered))
    assert sequestered.reads == 0


def test_the_metrics_endpoint_exposes_the_guards_families(tmp_path: Path) -> None:
    """``Metrics(..., guards=...)`` keeps the hook as ``metrics.guards`` and its families show
    on ``/metrics`` beside the traffic families; without it there are none."""
    sequestered = Sequestered()
    guards = guard_metrics(sequestered)
    settings = Settings(home=tmp_path, metrics_public=True)
    with_guards = Metrics(settings, keys=NoKeys(), on_loop=(), guards=guards)
    assert with_guards.guards is guards
    guards.incident_opened("error_storm")
    sequestered.now = 2

    families, samples = parse(asyncio.run(get_metrics(with_guards)))
    assert {name: families[name].type for name in GUARD_FAMILIES} == GUARD_FAMILIES
    assert "corral_requests" in families
    assert value(samples, "corral_guard_incidents_opened_total", detector="error_storm") == 1
    assert value(samples, "corral_runs_sequestered") == 2

    without = Metrics(settings, keys=NoKeys(), on_loop=())
    families, _ = parse(asyncio.run(get_metrics(without)))
    assert without.guards is None
    assert not set(GUARD_FAMILIES) & set(families)


class NoKeys:
    """An authenticator with no keys (the endpoint is public in these tests)."""

    async def authenticate(self, raw: str | None) -> NoReturn:
        raise AssertionError("a public /metrics authenticates nobody")


async def get_metrics(metrics: Metrics) -> str:
    transport = httpx.ASGITransport(app=metrics)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def test_the_engines_signal_counts_are_read_at_each_scrape() -> None:
    """Given the engine's (judged, dropped) counts, both are counters read at scrape time;
    without them neither family is exposed."""
    counts = [(0, 0)]
    metrics = GuardMetrics(DETECTORS, ACTIONS, Sequestered(), lambda: counts[-1])
    counts.append((1200, 3))
    families, samples = parse(scrape(metrics))
    assert families["corral_guard_signals_judged"].type == "counter"
    assert families["corral_guard_signals_dropped"].type == "counter"
    assert value(samples, "corral_guard_signals_judged_total") == 1200
    assert value(samples, "corral_guard_signals_dropped_total") == 3
    counts.append((1500, 3))
    _, samples = parse(scrape(metrics))
    assert value(samples, "corral_guard_signals_judged_total") == 1500

    families, _ = parse(scrape(guard_metrics()))
    assert "corral_guard_signals_judged" not in families
