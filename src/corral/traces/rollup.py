"""Hourly roll-ups of LLM calls, kept by the span writer in the same transaction as the spans.

A month of one team's spend reads a few hundred ``span_rollups`` rows instead
of every span. Only ``llm_request`` rows count, and not those marked as a
duplicate of a gateway record (``duplicate_of``): one call is one call in
every roll-up, whoever reported it. Latency is kept as a fixed-bucket
histogram so percentiles can be merged across hours, users and models; they
are interpolated within a bucket, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.store.schema import LATENCY_BUCKETS, span_rollups

# Upper bounds (ms) of the latency buckets; the last one is open.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    50,
    100,
    200,
    400,
    700,
    1_000,
    1_500,
    2_500,
    4_000,
    6_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    float("inf"),
)
assert len(LATENCY_BOUNDS_MS) == LATENCY_BUCKETS

HOUR_NS = 3_600 * 1_000_000_000
KEY_COLUMNS = ("hour", "org_id", "team_id", "user_id", "key_id", "model", "provider")
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
BUCKET_COLUMNS = tuple(f"lat_b{i}" for i in range(LATENCY_BUCKETS))
SUM_COLUMNS = (
    "requests",
    "errors",
    "cancelled",
    "refused",
    *TOKEN_COLUMNS,
    "cost_nusd",
    "latency_ms_sum",
    *BUCKET_COLUMNS,
)

Key = tuple[Any, ...]


def counts(row: Mapping[str, Any]) -> bool:
    """Whether a span row belongs in the roll-ups."""
    return row["kind"] == "llm_request" and not row.get("duplicate_of")


def bucket_of(latency_ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def contributions(rows: Iterable[Mapping[str, Any]], sign: int = 1) -> dict[Key, list[float]]:
    """What ``rows`` add to each roll-up row (``sign=-1``: what they take away)."""
    out: dict[Key, list[float]] = {}
    width = len(SUM_COLUMNS)
    first_bucket = SUM_COLUMNS.index("lat_b0")
    for row in rows:
        if not counts(row):
            continue
        key = (
            row["start_ns"] // HOUR_NS * 3_600,
            row.get("org_id") or "",
            row.get("team_id") or "",
            row.get("user_id") or "",
            row.get("key_id") or "",
            row.get("model_requested") or row.get("model_served") or "",
            row.get("provider") or "",
        )
        acc = out.get(key)
        if acc is None:
            acc = out[key] = [0] * width
        status = row["status"]
        if status == "refused":
            acc[3] += sign
            continue
        latency = max(0.0, (row["end_ns"] - row["start_ns"]) / 1e6)
        acc[0] += sign
        acc[1] += sign if status == "error" else 0
        acc[2] += sign if status == "cancelled" else 0
        for i, name in enumerate(TOKEN_COLUMNS, 4):
            acc[i] += sign * (row.get(name) or 0)
        acc[9] += sign * (row.get("cost_nusd") or 0)
        acc[10] += sign * latency
        acc[first_bucket + bucket_of(latency)] += sign
    return out


def apply(conn: Connection, sqlite: bool, deltas: Mapping[Key, Sequence[float]]) -> None:
    """Add ``deltas`` to the roll-up rows, creating them as needed (one statement a batch)."""
    if not deltas:
        return
    values = [
        dict(zip(KEY_COLUMNS, key, strict=True))
        | {
            name: (float(v) if name == "latency_ms_sum" else int(v))
            for name, v in zip(SUM_COLUMNS, acc, strict=True)
        }
        for key, acc in deltas.items()
    ]
    insert = sqlite_insert(span_rollups) if sqlite else pg_insert(span_rollups)
    stmt = insert.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={name: span_rollups.c[name] + insert.excluded[name] for name in SUM_COLUMNS},
    )
    conn.execute(stmt, values)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0–1) of a latency histogram, in ms; None when it is empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            high = LATENCY_BOUNDS_MS[i]
            if high == float("inf"):
                return low
            return low + (high - low) * ((rank - seen) / n)
        seen += n
    return LATENCY_BOUNDS_MS[-2]
