"""Hourly roll-ups of LLM calls, kept by the span writer in the same transaction as the spans.

A month of one team's spend reads a few hundred ``span_rollups`` rows instead
of every span. Only ``llm_request`` rows count, and not those marked as a
duplicate of a gateway record (``duplicate_of``): one call is one call in
every roll-up, whoever reported it. What the gateway metered (its own
records) and what agents reported over OTLP are kept apart: the first in
the plain columns (the spend), the second in the ``reported_*`` columns,
never summed into spend.

Latency is a histogram over fixed log-spaced buckets (``span_latency``, one
row per non-empty bucket), so it merges across hours, users and models by
summing counts, in SQL or here. Bucket *i* holds durations in
``(LATENCY_BOUNDS_NS[i-1], LATENCY_BOUNDS_NS[i]]``; consecutive bounds grow
by ``LATENCY_GROWTH``, and a quantile is reported as its bucket's value
``2·lo·hi/(lo+hi)`` (as DDSketch does), which is within
``(γ−1)/(γ+1)`` (3.9 %) of every duration in the bucket. The bounds are part
of the stored data: changing them needs a migration.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.store.schema import span_latency, span_rollups
from corral.traces.spans import GATEWAY

LATENCY_MIN_NS = 10_000  # 10 µs: the first bucket holds everything at or below it
LATENCY_GROWTH = 1.08
LATENCY_MAX_NS = 2 * 3_600 * 1_000_000_000  # 2 h: longer calls share the last, open bucket
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    round(LATENCY_MIN_NS * LATENCY_GROWTH**i)
    for i in range(math.ceil(math.log(LATENCY_MAX_NS / LATENCY_MIN_NS, LATENCY_GROWTH)) + 1)
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_NS) + 1  # the last one is open
LATENCY_ERROR = (LATENCY_GROWTH - 1) / (LATENCY_GROWTH + 1)
"""The largest relative error of a reported percentile (bounds are whole nanoseconds)."""

HOUR_NS = 3_600 * 1_000_000_000
KEY_COLUMNS = ("hour", "org_id", "team_id", "user_id", "key_id", "model", "provider")
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
REPORTED_COLUMNS = (
    "reported_requests",
    *(f"reported_{name}" for name in TOKEN_COLUMNS),
    "reported_cost_nusd",
)
SUM_COLUMNS = (
    "requests",
    "errors",
    "cancelled",
    "refused",
    *TOKEN_COLUMNS,
    "cost_nusd",
    "latency_ms_sum",
    *REPORTED_COLUMNS,
)
_REPORTED_AT = SUM_COLUMNS.index("reported_requests")

Key = tuple[Any, ...]


@dataclass(slots=True)
class Deltas:
    """What a batch adds to (or takes from) the roll-ups: sums and latency bucket counts."""

    sums: dict[Key, list[float]] = field(default_factory=dict)
    latency: dict[tuple[Key, int], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.sums)

    def add(self, rows: Iterable[Mapping[str, Any]], sign: int = 1) -> Deltas:
        """Count ``rows`` (``sign=-1``: take them away); returns itself."""
        width = len(SUM_COLUMNS)
        for row in rows:
            if not counts(row):
                continue
            key = key_of(row)
            acc = self.sums.get(key)
            if acc is None:
                acc = self.sums[key] = [0] * width
            if row.get("source") not in (None, GATEWAY):  # an agent's report: never spend
                acc[_REPORTED_AT] += sign
                for i, name in enumerate((*TOKEN_COLUMNS, "cost_nusd"), _REPORTED_AT + 1):
                    acc[i] += sign * (row.get(name) or 0)
                continue
            status = row["status"]
            if status == "refused":
                acc[3] += sign
                continue
            took = max(0, row["end_ns"] - row["start_ns"])
            acc[0] += sign
            acc[1] += sign if status == "error" else 0
            acc[2] += sign if status == "cancelled" else 0
            for i, name in enumerate(TOKEN_COLUMNS, 4):
                acc[i] += sign * (row.get(name) or 0)
            acc[9] += sign * (row.get("cost_nusd") or 0)
            acc[10] += sign * took / 1e6
            slot = (key, bucket_of(took))
            self.latency[slot] = self.latency.get(slot, 0) + sign
        return self

    def merge(self, other: Deltas) -> None:
        for key, values in other.sums.items():
            acc = self.sums.get(key)
            if acc is None:
                self.sums[key] = list(values)
            else:
                for i, v in enumerate(values):
                    acc[i] += v
        for slot, n in other.latency.items():
            self.latency[slot] = self.latency.get(slot, 0) + n


def counts(row: Mapping[str, Any]) -> bool:
    """Whether a span row belongs in the roll-ups (metered or reported)."""
    return row["kind"] == "llm_request" and not row.get("duplicate_of")


def key_of(row: Mapping[str, Any]) -> Key:
    return (
        row["start_ns"] // HOUR_NS * 3_600,
        row.get("org_id") or "",
        row.get("team_id") or "",
        row.get("user_id") or "",
        row.get("key_id") or "",
        row.get("model_requested") or row.get("model_served") or "",
        row.get("provider") or "",
    )


def bucket_of(took_ns: int) -> int:
    """The latency bucket of a duration in nanoseconds (a bound belongs to its own bucket)."""
    return bisect.bisect_left(LATENCY_BOUNDS_NS, took_ns)


def bucket_value_ms(bucket: int) -> float:
    """The one duration (ms) that stands for every duration in ``bucket``."""
    if bucket >= len(LATENCY_BOUNDS_NS):
        return LATENCY_BOUNDS_NS[-1] / 1e6
    high = LATENCY_BOUNDS_NS[bucket]
    low = LATENCY_BOUNDS_NS[bucket - 1] if bucket else high / LATENCY_GROWTH
    return 2 * low * high / (low + high) / 1e6


def contributions(rows: Iterable[Mapping[str, Any]], sign: int = 1) -> Deltas:
    """What ``rows`` add to the roll-ups (``sign=-1``: what they take away)."""
    return Deltas().add(rows, sign)


def apply(conn: Connection, sqlite: bool, deltas: Deltas) -> None:
    """Add ``deltas`` to the roll-up rows, creating them as needed (one statement a table)."""
    if not deltas:
        return
    values = [
        dict(zip(KEY_COLUMNS, key, strict=True))
        | {
            name: (float(v) if name == "latency_ms_sum" else int(v))
            for name, v in zip(SUM_COLUMNS, acc, strict=True)
        }
        for key, acc in deltas.sums.items()
    ]
    _upsert(conn, sqlite, span_rollups, (*KEY_COLUMNS,), SUM_COLUMNS, values)
    buckets = [
        dict(zip(KEY_COLUMNS, key, strict=True)) | {"bucket": bucket, "count": n}
        for (key, bucket), n in deltas.latency.items()
        if n
    ]
    if buckets:
        _upsert(conn, sqlite, span_latency, (*KEY_COLUMNS, "bucket"), ("count",), buckets)


def _upsert(
    conn: Connection,
    sqlite: bool,
    table: Table,
    keys: Sequence[str],
    sums: Sequence[str],
    values: list[dict[str, Any]],
) -> None:
    insert = sqlite_insert(table) if sqlite else pg_insert(table)
    stmt = insert.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + insert.excluded[name] for name in sums},
    )
    conn.execute(stmt, values)


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0–1) of a latency histogram (bucket → count), in ms, by nearest
    rank: the value of the bucket holding the ``ceil(q·n)``-th smallest duration; None when
    it is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_value_ms(bucket)
    return bucket_value_ms(max(histogram))
