"""Roll-ups keep agent-reported calls apart from metered ones; latency in log-spaced buckets.

``span_rollups`` gains ``reported_*`` sums (what agents reported over OTLP, never spend)
and loses its 16 coarse latency columns (``lat_b0``…``lat_b15``, 50 ms … 120 s) for the
table ``span_latency``: one row per non-empty bucket of bounds growing by 8 % from 10 µs
to 2 h. Existing rows are converted: each old bucket's count goes to the fine bucket of
the old bucket's middle (the first, 0–50 ms, to 25 ms; the open one to 120 s), so old
hours stay readable at their old precision. Agent-reported calls still in ``spans`` are
moved out of the metered sums into ``reported_*``; those of hours whose spans retention
has already deleted stay where they were counted.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen copies: the migration must build what it built on the day it was written.
_OLD_BOUNDS_MS = (50, 100, 200, 400, 700, 1_000, 1_500, 2_500, 4_000, 6_000, 10_000, 15_000,
                  30_000, 60_000, 120_000)  # fmt: skip
_OLD_BUCKETS = len(_OLD_BOUNDS_MS) + 1
_OLD_MIDDLE_MS = (
    25.0,
    *(math.sqrt(low * high) for low, high in pairwise(_OLD_BOUNDS_MS)),
    120_000.0,
)
_MIN_NS, _GROWTH, _MAX_NS = 10_000, 1.08, 2 * 3_600 * 1_000_000_000
_BOUNDS_NS = tuple(
    round(_MIN_NS * _GROWTH**i) for i in range(math.ceil(math.log(_MAX_NS / _MIN_NS, _GROWTH)) + 1)
)
_KEYS = ("hour", "org_id", "team_id", "user_id", "key_id", "model", "provider")
_TOKENS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
_REPORTED = ("requests", *_TOKENS, "cost_nusd")
_HOUR_NS = 3_600 * 1_000_000_000


def upgrade() -> None:
    with op.batch_alter_table("span_rollups") as batch:
        for name in _REPORTED:
            batch.add_column(
                sa.Column(f"reported_{name}", sa.BigInteger(), nullable=False, server_default="0")
            )
    op.create_table(
        "span_latency",
        *(_key_columns()),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*_KEYS, "bucket", name=op.f("pk_span_latency")),
    )
    op.create_index(
        "ix_span_latency_team_hour", "span_latency", ["team_id", "hour", "bucket", "count"]
    )
    conn = op.get_bind()
    _move_reported(conn)
    _convert_histograms(conn)
    with op.batch_alter_table("span_rollups") as batch:
        for i in range(_OLD_BUCKETS):
            batch.drop_column(f"lat_b{i}")
        for name in _REPORTED:  # the writer always sets them; keep the schema as declared
            batch.alter_column(f"reported_{name}", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("span_rollups") as batch:
        for i in range(_OLD_BUCKETS):
            batch.add_column(
                sa.Column(f"lat_b{i}", sa.BigInteger(), nullable=False, server_default="0")
            )
    conn = op.get_bind()
    rollups, latency = _rollups(old=True), _latency()
    old: dict[tuple[Any, ...], list[int]] = {}
    for *names, bucket, count in conn.execute(sa.select(latency)).all():
        counts = old.setdefault(tuple(names), [0] * _OLD_BUCKETS)
        counts[bisect.bisect_left(_OLD_BOUNDS_MS, _fine_value_ms(bucket))] += count
    for key, counts in old.items():
        values = {f"lat_b{i}": n for i, n in enumerate(counts)}
        conn.execute(sa.update(rollups).where(*_match(rollups, key)).values(**values))
    op.drop_index("ix_span_latency_team_hour", table_name="span_latency")
    op.drop_table("span_latency")
    with op.batch_alter_table("span_rollups") as batch:
        for name in _REPORTED:
            batch.drop_column(f"reported_{name}")
        for i in range(_OLD_BUCKETS):
            batch.alter_column(f"lat_b{i}", server_default=None)


def _key_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
    ]


def _rollups(*, old: bool) -> sa.TableClause:
    names = [*_KEYS, "requests", "errors", "cancelled", "refused", *_TOKENS, "cost_nusd"]
    names += ["latency_ms_sum", *(f"reported_{n}" for n in _REPORTED)]
    if old:
        names += [f"lat_b{i}" for i in range(_OLD_BUCKETS)]
    return sa.table("span_rollups", *(sa.column(n) for n in names))


def _latency() -> sa.TableClause:
    return sa.table("span_latency", *(sa.column(n) for n in (*_KEYS, "bucket", "count")))


def _match(table: sa.TableClause, key: Iterable[Any]) -> list[sa.ColumnElement[bool]]:
    return [table.c[name] == value for name, value in zip(_KEYS, key, strict=True)]


def _fine_bucket(ms: float) -> int:
    return bisect.bisect_left(_BOUNDS_NS, round(ms * 1e6))


def _fine_value_ms(bucket: int) -> float:
    if bucket >= len(_BOUNDS_NS):
        return _BOUNDS_NS[-1] / 1e6
    high = _BOUNDS_NS[bucket]
    low = _BOUNDS_NS[bucket - 1] if bucket else high / _GROWTH
    return 2 * low * high / (low + high) / 1e6


def _move_reported(conn: sa.Connection) -> None:
    """Take agent-reported calls still stored out of the metered sums (and old histogram)."""
    spans = sa.table(
        "spans",
        *(sa.column(n) for n in ("kind", "source", "duplicate_of", "status", "start_ns")),
        *(sa.column(n) for n in ("end_ns", "org_id", "team_id", "user_id", "key_id")),
        *(sa.column(n) for n in ("model_requested", "model_served", "provider", "cost_nusd")),
        *(sa.column(n) for n in _TOKENS),
    )
    query = sa.select(spans).where(
        spans.c.kind == "llm_request",
        spans.c.duplicate_of.is_(None),
        spans.c.source.is_not(None),
        spans.c.source != "gateway",
    )
    moves: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in conn.execute(query).mappings().all():
        key = (
            r["start_ns"] // _HOUR_NS * 3_600,
            *(r[n] or "" for n in ("org_id", "team_id", "user_id", "key_id")),
            r["model_requested"] or r["model_served"] or "",
            r["provider"] or "",
        )
        d = moves.setdefault(key, {})
        for name in _REPORTED:
            value = 1 if name == "requests" else r[name] or 0
            d[f"reported_{name}"] = d.get(f"reported_{name}", 0) + value
        if r["status"] == "refused":
            d["refused"] = d.get("refused", 0) - 1
            continue
        took_ms = max(0.0, (r["end_ns"] - r["start_ns"]) / 1e6)
        old = f"lat_b{bisect.bisect_left(_OLD_BOUNDS_MS, took_ms)}"
        for name, value in (
            ("requests", 1),
            ("errors", r["status"] == "error"),
            ("cancelled", r["status"] == "cancelled"),
            *((n, r[n] or 0) for n in (*_TOKENS, "cost_nusd")),
            ("latency_ms_sum", took_ms),
            (old, 1),
        ):
            if value:
                d[name] = d.get(name, 0) - value
    rollups = _rollups(old=True)
    for key, d in moves.items():
        values = {name: rollups.c[name] + value for name, value in d.items()}
        conn.execute(sa.update(rollups).where(*_match(rollups, key)).values(**values))


def _convert_histograms(conn: sa.Connection) -> None:
    rollups, latency = _rollups(old=True), _latency()
    batch: list[dict[str, Any]] = []
    for row in conn.execute(sa.select(rollups)).mappings().all():
        for i in range(_OLD_BUCKETS):
            count = row[f"lat_b{i}"]
            if count and count > 0:
                key = {name: row[name] for name in _KEYS}
                batch.append(key | {"bucket": _fine_bucket(_OLD_MIDDLE_MS[i]), "count": count})
        if len(batch) >= 1_000:
            conn.execute(sa.insert(latency), batch)
            batch = []
    if batch:
        conn.execute(sa.insert(latency), batch)
