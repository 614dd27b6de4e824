"""``/metrics``: gateway traffic counters and histograms, span pipeline gauges.

Scrapes are parsed with ``prometheus_client``'s own text parser, so a
malformed exposition fails here as it would in Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from corral.metrics import Metrics, PipelineCollector, Traffic
from corral.metrics.traffic import DURATION_BOUNDS_S, MAX_ERROR_CLASSES, OVERHEAD_BOUNDS_S
from corral.traces.spans import SPAN_DEFAULTS
from tests.conftest import StartCorral
from tests.gateway.conftest import Running, corral, gateway_corral

__all__ = ["corral"]

MODELS = ("sim-standard", "sim-economy", "standard")
TRAFFIC_FAMILIES = {
    "corral_requests": "counter",
    "corral_tokens": "counter",
    "corral_cost_usd": "counter",
    "corral_request_duration_seconds": "histogram",
    "corral_time_to_first_token_seconds": "histogram",
    "corral_gateway_overhead_seconds": "histogram",
    "corral_upstream_attempts": "counter",
    "corral_errors": "counter",
}
PIPELINE_FAMILIES = {
    "corral_ingest_queue_depth": "gauge",
    "corral_ingest_lag_seconds": "gauge",
    "corral_spans_stored": "counter",
    "corral_store_write_failures": "counter",
    "corral_ingest_refused": "counter",
    "corral_spans_replayed": "counter",
    "corral_quota_settles_pending": "gauge",
    "corral_quota_settle_failures": "counter",
}
EXPORT_FAMILIES = {
    "corral_otlp_export_queue_depth": "gauge",
    "corral_otlp_export_spans": "counter",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ---------------------------------------------------------------------------


def request_row(**values: Any) -> dict[str, Any]:
    """A gateway ``llm_request`` row: 1.5 s long, 20 ms of overhead, unless ``values`` say."""
    row = SPAN_DEFAULTS.copy()
    row.update(
        kind="llm_request",
        model_requested="sim-standard",
        provider="sim",
        deployment="sim/sim-standard",
        status="ok",
        start_ns=1_000_000_000,
        end_ns=2_500_000_000,
        overhead_ms=20.0,
    )
    row.update(values)
    return row


def attempt_row(**values: Any) -> dict[str, Any]:
    return request_row(kind="attempt", overhead_ms=None, **values)


def scrape(*collectors: Collector) -> str:
    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def parse(text: str) -> tuple[dict[str, Any], Samples]:
    """Families by name and every sample by (name, labels); raises if the text is malformed."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: Samples = {}
    for family in families.values():
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for n, labels in samples if n == name}


def bucket_counts(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    return {
        dict(key)["le"]: v
        for (n, key), v in samples.items()
        if n == f"{name}_bucket" and {k: x for k, x in key if k != "le"} == labels
    }


# -- traffic, fed directly ---------------------------------------------------------------


def test_requests_tokens_and_cost_are_counted_per_team_model_and_status() -> None:
    """Each request row adds to its (team, model, status) and its tokens and cost by type."""
    traffic = Traffic(max_teams=10, models=MODELS)
    usage = {
        "input_tokens": 100,
        "cached_input_tokens": 40,
        "cache_write_tokens": 7,
        "output_tokens": 30,
        "reasoning_tokens": 5,
        "cost_nusd": 1_250_000,
    }
    traffic.observe(request_row(**usage), "payments")
    traffic.observe(request_row(**usage), "payments")
    traffic.observe(request_row(status="error", error_class="upstream_error"), "payments")
    traffic.observe(request_row(model_requested="sim-economy", status="refused"), None)
    _, samples = parse(scrape(traffic))

    requests = "corral_requests_total"
    assert value(samples, requests, team="payments", model="sim-standard", status="ok") == 2
    assert value(samples, requests, team="payments", model="sim-standard", status="error") == 1
    assert value(samples, requests, team="payments", model="sim-standard", status="refused") == 0
    assert value(samples, requests, team="none", model="sim-economy", status="refused") == 1
    tokens = {
        kind: value(
            samples, "corral_tokens_total", team="payments", model="sim-standard", type=kind
        )
        for kind in ("input", "cached_input", "cache_write", "output", "reasoning")
    }
    assert tokens == {
        "input": 200,
        "cached_input": 80,
        "cache_write": 14,
        "output": 60,
        "reasoning": 10,
    }
    cost = value(samples, "corral_cost_usd_total", team="payments", model="sim-standard")
    assert cost == pytest.approx(0.0025)
    assert value(samples, "corral_cost_usd_total", team="none", model="sim-economy") == 0


def test_histograms_put_each_duration_in_the_right_cumulative_bucket() -> None:
    """A value on a bucket's bound counts in that bucket (le); buckets are cumulative."""
    traffic = Traffic(max_teams=10, models=MODELS)
    for seconds in (0.05, 0.0501, 1.0, 1.2, 500.0):  # 0.05 and 1.0 are bounds
        traffic.observe(request_row(start_ns=0, end_ns=round(seconds * 1e9)), "payments")
    traffic.observe(request_row(status="refused", start_ns=0, end_ns=1_000_000), "payments")
    for ms in (0.1, 3.0):
        traffic.observe(request_row(ttft_ms=250.0, overhead_ms=ms), "payments")
    _, samples = parse(scrape(traffic))

    name = "corral_request_duration_seconds"
    buckets = bucket_counts(samples, name, model="sim-standard")
    assert len(buckets) == len(DURATION_BOUNDS_S) + 1
    assert buckets["0.05"] == 1
    assert buckets["0.1"] == 2
    assert buckets["0.7"] == 2
    assert buckets["1.0"] == 3
    assert buckets["1.5"] == 4 + 2  # and the two 1.5 s calls of the last loop
    assert buckets["120.0"] == 6
    assert buckets["+Inf"] == 7  # the refused call went nowhere: not timed
    assert value(samples, f"{name}_count", model="sim-standard") == 7
    assert value(samples, f"{name}_sum", model="sim-standard") == pytest.approx(
        0.05 + 0.0501 + 1.0 + 1.2 + 500.0 + 2 * 1.5
    )
    counts = list(buckets.values())
    assert counts == sorted(counts), "buckets must be cumulative"

    ttft = bucket_counts(samples, "corral_time_to_first_token_seconds", model="sim-standard")
    assert ttft["0.2"] == 0
    assert ttft["0.3"] == 2
    assert ttft["+Inf"] == 2

    overhead = bucket_counts(samples, "corral_gateway_overhead_seconds")
    assert len(overhead) == len(OVERHEAD_BOUNDS_S) + 1
    assert overhead["0.0001"] == 1  # 0.1 ms, on the bound
    assert overhead["0.0025"] == 1
    assert overhead["0.005"] == 2
    assert overhead["+Inf"] == 8  # six 20 ms calls (the refused one too) and these two
    assert value(samples, "corral_gateway_overhead_seconds_sum") == pytest.approx(
        (6 * 20 + 0.1 + 3.0) / 1000
    )


def test_team_label_is_capped_at_max_teams_then_other() -> None:
    """500 teams: the first max_teams keep their name, the rest count as ``other``."""
    traffic = Traffic(max_teams=25, models=MODELS)
    for i in range(500):
        traffic.observe(request_row(), f"team-{i:03d}")
    traffic.observe(request_row(), None)
    _, samples = parse(scrape(traffic))

    teams = label_values(samples, "corral_requests_total", "team")
    assert teams == {f"team-{i:03d}" for i in range(25)} | {"other", "none"}
    ok = {
        team: value(samples, "corral_requests_total", team=team, model="sim-standard", status="ok")
        for team in teams
    }
    assert ok["other"] == 475
    assert sum(ok.values()) == 501
    assert label_values(samples, "corral_tokens_total", "team") == teams
    assert label_values(samples, "corral_cost_usd_total", "team") == teams


def test_models_outside_the_catalog_count_as_other() -> None:
    """Only catalog model and tier names become label values; until set, every name is other."""
    traffic = Traffic(max_teams=10)
    traffic.observe(request_row(model_requested="sim-standard"), "payments")
    traffic.set_models(MODELS)
    for model in ("sim-standard", "standard", "gpt-made-up", None):
        traffic.observe(request_row(model_requested=model), "payments")
    _, samples = parse(scrape(traffic))

    def ok(model: str) -> float:
        return value(samples, "corral_requests_total", team="payments", model=model, status="ok")

    assert label_values(samples, "corral_requests_total", "model") == {
        "other",
        "sim-standard",
        "standard",
    }
    assert (ok("sim-standard"), ok("standard"), ok("other")) == (1, 1, 3)
    assert label_values(samples, "corral_request_duration_seconds_count", "model") == {
        "other",
        "sim-standard",
        "standard",
    }


def test_attempts_and_errors_are_counted_by_outcome_and_class() -> None:
    """Attempts count by provider, deployment and outcome; errors by kind and class."""
    traffic = Traffic(max_teams=10, models=MODELS)
    failed = {"status": "error", "error_class": "timeout", "deployment": "sim/sim-frontier"}
    traffic.observe(attempt_row(**failed), "payments")
    traffic.observe(attempt_row(**failed), "payments")
    traffic.observe(attempt_row(), "payments")
    traffic.observe(request_row(status="error", error_class="upstream_error"), "payments")
    traffic.observe(request_row(kind="tool"), "payments")  # not the gateway's: ignored
    _, samples = parse(scrape(traffic))

    attempts = "corral_upstream_attempts_total"
    assert {k: v for k, v in samples.items() if k[0] == attempts} == {
        (attempts, frozenset({"provider": "sim", "deployment": d, "outcome": o}.items())): n
        for d, o, n in (("sim/sim-frontier", "error", 2), ("sim/sim-standard", "ok", 1))
    }
    assert value(samples, "corral_errors_total", kind="attempt", error_class="timeout") == 2
    assert (
        value(samples, "corral_errors_total", kind="llm_request", error_class="upstream_error") == 1
    )
    assert sum(v for k, v in samples.items() if k[0] == "corral_requests_total") == 1


def test_error_classes_are_bounded() -> None:
    """Past MAX_ERROR_CLASSES distinct classes, further ones count as ``other``."""
    traffic = Traffic(max_teams=10, models=MODELS)
    for i in range(MAX_ERROR_CLASSES + 10):
        traffic.observe(attempt_row(status="error", error_class=f"class_{i}"), "payments")
    _, samples = parse(scrape(traffic))

    classes = label_values(samples, "corral_errors_total", "error_class")
    assert len(classes) == MAX_ERROR_CLASSES + 1
    assert value(samples, "corral_errors_total", kind="attempt", error_class="other") == 10


def test_an_idle_scrape_parses_with_every_family_typed_and_described() -> None:
    """With no traffic every family is still exposed, typed, with a help text."""
    families, samples = parse(scrape(Traffic(max_teams=10)))
    assert {name: f.type for name, f in families.items()} == TRAFFIC_FAMILIES
    assert all(f.documentation for f in families.values())
    assert value(samples, "corral_gateway_overhead_seconds_count") == 0


def histogram_quantile(q: float, buckets: dict[str, float]) -> float:
    """Prometheus' ``histogram_quantile`` over one series' cumulative buckets."""
    pairs = sorted((float(le), count) for le, count in buckets.items())
    rank, low, below = q * pairs[-1][1], 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if bound == float("inf"):
                return low
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return low


def test_fast_calls_read_as_fast_in_prometheus_quantiles() -> None:
    """Calls of about a millisecond: histogram_quantile over /metrics' buckets reads p50 and
    p99 under 2.5 ms (the old first bucket, 0-50 ms, read 25 and 49.5 ms)."""
    traffic = Traffic(max_teams=10, models=MODELS)
    for i in range(200):
        traffic.observe(request_row(start_ns=0, end_ns=900_000 + 1_000 * i), "payments")
    _, samples = parse(scrape(traffic))
    buckets = bucket_counts(samples, "corral_request_duration_seconds", model="sim-standard")
    for q in (0.5, 0.99):
        assert histogram_quantile(q, buckets) <= 0.0025, q


# -- pipeline ------------------------------------------------------------------------------


@dataclass
class RecorderStats:
    pending: int = 12
    last_lag_s: float = 0.25
    stored: int = 3400
    failures: int = 2
    refused: int = 5
    replayed: int = 70


@dataclass
class ExporterStats:
    queued: int = 9
    sent: int = 3000
    dropped: int = 4
    failed: int = 1


@dataclass
class QuotaStats:
    pending_settles: int = 3
    settle_failures: int = 6


@dataclass
class Host:
    recorder: RecorderStats
    exporter: ExporterStats | None
    quotas: QuotaStats


def test_pipeline_gauges_and_counters_are_read_at_scrape_time() -> None:
    """Each scrape reads the recorder's, exporter's and quota gate's numbers as they are."""
    host = Host(RecorderStats(), ExporterStats(), QuotaStats())
    collector = PipelineCollector(host)
    families, samples = parse(scrape(collector))

    assert {name: f.type for name, f in families.items()} == PIPELINE_FAMILIES | EXPORT_FAMILIES
    assert all(f.documentation for f in families.values())
    assert samples == {
        (name, frozenset(labels.items())): v
        for name, labels, v in (
            ("corral_ingest_queue_depth", {}, 12),
            ("corral_ingest_lag_seconds", {}, 0.25),
            ("corral_spans_stored_total", {}, 3400),
            ("corral_store_write_failures_total", {}, 2),
            ("corral_ingest_refused_total", {}, 5),
            ("corral_spans_replayed_total", {}, 70),
            ("corral_otlp_export_queue_depth", {}, 9),
            ("corral_otlp_export_spans_total", {"outcome": "sent"}, 3000),
            ("corral_otlp_export_spans_total", {"outcome": "dropped"}, 4),
            ("corral_otlp_export_spans_total", {"outcome": "failed"}, 1),
            ("corral_quota_settles_pending", {}, 3),
            ("corral_quota_settle_failures_total", {}, 6),
        )
    }
    host.recorder.pending = 0
    host.recorder.stored += 12
    _, samples = parse(scrape(PipelineCollector(host)))
    assert value(samples, "corral_ingest_queue_depth") == 0
    assert value(samples, "corral_spans_stored_total") == 3412


def test_export_families_are_left_out_without_an_exporter() -> None:
    """With OTLP export not configured, no export family is exposed."""
    families, _ = parse(scrape(PipelineCollector(Host(RecorderStats(), None, QuotaStats()))))
    assert set(families) == set(PIPELINE_FAMILIES)


def test_registering_reads_nothing_from_the_app() -> None:
    """Registration describes the families without touching the host (it may be half built)."""

    class Unbuilt:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"read {name} while registering")

    registry = CollectorRegistry(auto_describe=True)
    registry.register(PipelineCollector(Unbuilt()))  # type: ignore[arg-type]
    registry.register(Traffic(max_teams=1))


# -- a live Corral -------------------------------------------------------------------------


def chat(running: Running, *, stream: bool = False) -> None:
    body = {
        "model": "sim-standard",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {running.key}"}
    with httpx.Client(base_url=running.url, timeout=30) as client:
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text


def admin(running: Running) -> dict[str, str]:
    return {"authorization": f"Bearer {running.corral.admin_key}"}


def test_metrics_need_the_metrics_token_or_the_admin_key(
    tmp_path: Path, store_url: str, start_corral: StartCorral
) -> None:
    """Team names and spend are not for every key: 401 without a token, a team's key refused;
    the metrics token reads them and nothing else; metrics_public opens them."""
    token = "metrics-" + "t" * 32
    with gateway_corral(tmp_path / "home", store_url, metrics_token=token) as running:
        url = f"{running.url}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {running.key}"}).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.get(url, headers=admin(running)).status_code == 200
        api = httpx.get(f"{running.url}/api/v1/me", headers={"authorization": f"Bearer {token}"})
        assert api.status_code == 401, "the metrics token is not a key"
    public_db = f"sqlite:///{tmp_path / 'public.db'}"
    with gateway_corral(tmp_path / "home2", public_db, metrics_public=True) as running:
        assert httpx.get(f"{running.url}/metrics").status_code == 200


def scrape_live(running: Running) -> tuple[dict[str, Any], Samples]:
    headers = {"accept-encoding": "gzip", **admin(running)}
    r = httpx.get(f"{running.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert r.headers["content-encoding"] == "gzip"
    return parse(r.text)


def scrape_when(running: Running, name: str, at_least: float) -> tuple[dict[str, Any], Samples]:
    """Scrape until ``name`` (no labels) reaches ``at_least``, within a bounded wait."""
    deadline = time.monotonic() + 10
    while True:
        families, samples = scrape_live(running)
        if value(samples, name) >= at_least or time.monotonic() > deadline:
            return families, samples
        time.sleep(0.05)


def totals(rows: Iterable[Any]) -> dict[str, float]:
    rows = list(rows)
    return {
        "input": sum(r.input_tokens for r in rows),
        "cached_input": sum(r.cached_input_tokens for r in rows),
        "cache_write": sum(r.cache_write_tokens for r in rows),
        "output": sum(r.output_tokens for r in rows),
        "reasoning": sum(r.reasoning_tokens for r in rows),
        "cost_usd": sum(r.cost_nusd for r in rows) / 1e9,
    }


def test_live_metrics_count_the_gateways_calls(corral: Running) -> None:
    """Calls through a running gateway show on its /metrics as its stored spans say."""
    chat(corral)
    chat(corral, stream=True)
    calls = corral.records("llm_request", wait_for=2)
    # two calls and their two attempts stored
    families, samples = scrape_when(corral, "corral_spans_stored_total", 4)

    for name, kind in (TRAFFIC_FAMILIES | PIPELINE_FAMILIES).items():
        assert families[name].type == kind, name
    assert not set(EXPORT_FAMILIES) & set(families)  # export is not configured
    team = {"team": "payments", "model": "sim-standard"}
    assert value(samples, "corral_requests_total", status="ok", **team) == 2
    stored = totals(calls)
    for kind in ("input", "cached_input", "cache_write", "output", "reasoning"):
        assert value(samples, "corral_tokens_total", type=kind, **team) == stored[kind], kind
    assert stored["output"] > 0
    assert value(samples, "corral_cost_usd_total", **team) == pytest.approx(stored["cost_usd"])
    durations = sum((r.end_ns - r.start_ns) / 1e9 for r in calls)
    name = "corral_request_duration_seconds"
    assert value(samples, f"{name}_count", model="sim-standard") == 2
    assert value(samples, f"{name}_sum", model="sim-standard") == pytest.approx(durations)
    ttft = "corral_time_to_first_token_seconds_count"
    assert value(samples, ttft, model="sim-standard") == sum(r.ttft_ms is not None for r in calls)
    assert value(samples, "corral_gateway_overhead_seconds_count") == 2
    attempt = {"provider": "sim", "deployment": "sim/sim-standard", "outcome": "ok"}
    assert value(samples, "corral_upstream_attempts_total", **attempt) == 2
    assert value(samples, "corral_spans_stored_total") >= 4
    assert value(samples, "corral_ingest_queue_depth") >= 0
    assert value(samples, "corral_store_write_failures_total") == 0


def test_live_model_labels_come_from_the_catalog(corral: Running) -> None:
    """Once started, the app's catalog names are the model labels; other names are other."""
    traffic = corral.app.metrics.traffic
    assert isinstance(corral.app.metrics, Metrics)
    traffic.observe(request_row(model_requested="sim-frontier"), "payments")
    traffic.observe(request_row(model_requested="frontier"), "payments")  # a tier
    traffic.observe(request_row(model_requested="not-in-the-catalog"), "payments")
    families, samples = scrape_live(corral)

    assert families["corral_breaker_state"].type == "gauge"  # the breakers are still there

    def ok(model: str) -> float:
        return value(samples, "corral_requests_total", team="payments", model=model, status="ok")

    assert (ok("sim-frontier"), ok("frontier"), ok("other")) == (1, 1, 1)


def test_live_scrape_speaks_openmetrics_when_asked(corral: Running) -> None:
    """Prometheus' own Accept header gets OpenMetrics, which its parser reads to ``# EOF``."""
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    headers = {"accept": accept, "accept-encoding": "identity", **admin(corral)}
    r = httpx.get(f"{corral.url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert "content-encoding" not in r.headers
    families = {f.name: f for f in openmetrics_families(r.text)}
    assert set(PIPELINE_FAMILIES) | set(TRAFFIC_FAMILIES) <= set(families)
    assert families["corral_requests"].type == "counter"
