"""Trajectories: span source, duplicates and body references; team trace policy; roll-ups.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LATENCY_BUCKETS = 16


def upgrade() -> None:
    with op.batch_alter_table("spans") as batch:
        batch.add_column(sa.Column("source", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("duplicate_of", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("request_blob", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("response_blob", sa.String(length=200), nullable=True))
    # Fewer and partial indexes: each one costs every insert of OTLP ingest.
    op.drop_index("ix_spans_user_start", table_name="spans")
    op.drop_index("ix_spans_key_start", table_name="spans")
    op.drop_index("ix_spans_run", table_name="spans")
    op.drop_index("ix_spans_request", table_name="spans")
    for name in ("run_id", "request_id", "response_id"):
        where = sa.text(f"{name} IS NOT NULL")
        op.create_index(
            f"ix_spans_{name.removesuffix('_id')}",
            "spans",
            [name],
            unique=False,
            sqlite_where=where,
            postgresql_where=where,
        )
    gateway = sa.text("kind = 'llm_request' AND source = 'gateway'")
    op.create_index(
        "ix_spans_gateway_parent",
        "spans",
        ["parent_span_id"],
        unique=False,
        sqlite_where=gateway,
        postgresql_where=gateway,
    )
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("body_capture", sa.String(length=10), nullable=True))
        batch.add_column(sa.Column("retention_days", sa.Float(), nullable=True))
    op.create_table(
        "span_rollups",
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cancelled", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nusd", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        *(sa.Column(f"lat_b{i}", sa.BigInteger(), nullable=False) for i in range(_LATENCY_BUCKETS)),
        sa.PrimaryKeyConstraint(
            "hour",
            "org_id",
            "team_id",
            "user_id",
            "key_id",
            "model",
            "provider",
            name=op.f("pk_span_rollups"),
        ),
    )
    op.create_index("ix_span_rollups_team_hour", "span_rollups", ["team_id", "hour"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_span_rollups_team_hour", table_name="span_rollups")
    op.drop_table("span_rollups")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("retention_days")
        batch.drop_column("body_capture")
    op.drop_index("ix_spans_gateway_parent", table_name="spans")
    for name in ("response", "request", "run"):
        op.drop_index(f"ix_spans_{name}", table_name="spans")
    op.create_index("ix_spans_request", "spans", ["request_id"], unique=False)
    op.create_index("ix_spans_run", "spans", ["run_id"], unique=False)
    op.create_index("ix_spans_key_start", "spans", ["key_id", "start_ns"], unique=False)
    op.create_index("ix_spans_user_start", "spans", ["user_id", "start_ns"], unique=False)
    with op.batch_alter_table("spans") as batch:
        batch.drop_column("response_blob")
        batch.drop_column("request_blob")
        batch.drop_column("duplicate_of")
        batch.drop_column("source")
