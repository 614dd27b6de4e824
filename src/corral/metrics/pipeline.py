"""The trajectory pipeline's health: span ingest and storage, OTLP export, quota settlement.

Read at scrape time from the objects on the app, through the small protocols
below, so this module knows the attributes it reads and nothing else of the
recorder, the exporter or the quota gate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class RecorderStats(Protocol):
    """The span writer (``app.recorder``)."""

    @property
    def pending(self) -> int:
        """Spans accepted (journaled) but not yet stored."""

    @property
    def last_lag_s(self) -> float:
        """Seconds the oldest span of the last stored batch waited to be stored."""

    @property
    def stored(self) -> int: ...

    @property
    def failures(self) -> int:
        """Batches the store refused (each is retried from the journal)."""

    @property
    def refused(self) -> int:
        """OTLP ingest payloads answered 429/503 because the queue was full."""

    @property
    def replayed(self) -> int:
        """Spans stored from the journals of dead processes."""


class ExporterStats(Protocol):
    """The OTLP exporter (``app.exporter``), when export is configured."""

    @property
    def queued(self) -> int: ...

    @property
    def sent(self) -> int: ...

    @property
    def dropped(self) -> int:
        """Spans dropped, oldest first, because the export queue was full."""

    @property
    def failed(self) -> int:
        """Spans the collector did not take after every retry."""


class SettleStats(Protocol):
    """The quota gate (``app.quotas``): settling leases with each call's actual cost."""

    @property
    def pending_settles(self) -> int:
        """Settlements in flight or waiting to be retried."""

    @property
    def settle_failures(self) -> int: ...


class PipelineHost(Protocol):
    """Where the pipeline's parts live (the app); read anew at every scrape."""

    @property
    def recorder(self) -> RecorderStats: ...

    @property
    def exporter(self) -> ExporterStats | None: ...

    @property
    def quotas(self) -> SettleStats: ...


class PipelineCollector(Collector):
    """Gauges and counters of the span pipeline; the export families only when it exports."""

    def __init__(self, host: PipelineHost) -> None:
        self._host = host

    def describe(self) -> Iterator[Metric]:
        """The families without samples (so registering reads nothing from the app)."""
        yield from _recorder_families()
        yield from _export_families()
        yield from _quota_families()

    def collect(self) -> Iterator[Metric]:
        host = self._host
        recorder = host.recorder
        depth, lag, stored, failures, refused, replayed = _recorder_families()
        depth.add_metric([], recorder.pending)
        lag.add_metric([], recorder.last_lag_s)
        stored.add_metric([], recorder.stored)
        failures.add_metric([], recorder.failures)
        refused.add_metric([], recorder.refused)
        replayed.add_metric([], recorder.replayed)
        yield from (depth, lag, stored, failures, refused, replayed)
        exporter = host.exporter
        if exporter is not None:
            queue, spans = _export_families()
            queue.add_metric([], exporter.queued)
            spans.add_metric(["sent"], exporter.sent)
            spans.add_metric(["dropped"], exporter.dropped)
            spans.add_metric(["failed"], exporter.failed)
            yield from (queue, spans)
        quotas = host.quotas
        pending, settle_failures = _quota_families()
        pending.add_metric([], quotas.pending_settles)
        settle_failures.add_metric([], quotas.settle_failures)
        yield from (pending, settle_failures)


def _recorder_families() -> tuple[
    GaugeMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
]:
    return (
        GaugeMetricFamily(
            "corral_ingest_queue_depth",
            "Spans accepted (journaled) but not yet stored.",
        ),
        GaugeMetricFamily(
            "corral_ingest_lag_seconds",
            "Seconds the oldest span of the last stored batch waited between being accepted "
            "and being stored.",
        ),
        CounterMetricFamily("corral_spans_stored", "Spans written to the store."),
        CounterMetricFamily(
            "corral_store_write_failures",
            "Span batches the store refused; each is kept in the journal and retried.",
        ),
        CounterMetricFamily(
            "corral_ingest_refused",
            "OTLP ingest payloads answered 429 or 503 because too many spans were waiting.",
        ),
        CounterMetricFamily(
            "corral_spans_replayed",
            "Spans stored from the journals of processes that died before storing them.",
        ),
    )


def _export_families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
    return (
        GaugeMetricFamily(
            "corral_otlp_export_queue_depth",
            "Spans waiting to be exported over OTLP.",
        ),
        CounterMetricFamily(
            "corral_otlp_export_spans",
            "Spans leaving the OTLP export queue, by outcome: sent, dropped (the queue was "
            "full; oldest first) or failed (the collector did not take them).",
            labels=["outcome"],
        ),
    )


def _quota_families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
    return (
        GaugeMetricFamily(
            "corral_quota_settles_pending",
            "Lease settlements (a call's actual cost) in flight or waiting to be retried.",
        ),
        CounterMetricFamily(
            "corral_quota_settle_failures",
            "Lease settlements the quota backend refused (each is queued for a retry).",
        ),
    )


__all__ = [
    "ExporterStats",
    "PipelineCollector",
    "PipelineHost",
    "RecorderStats",
    "SettleStats",
]
