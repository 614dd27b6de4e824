"""A run's key remembers the key that submitted the run (its limits apply to the run too).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("parent_key_id", sa.String(length=40), nullable=True))
    where = sa.text("parent_key_id IS NOT NULL")
    op.create_index(
        "ix_keys_parent", "keys", ["parent_key_id"], sqlite_where=where, postgresql_where=where
    )
    op.create_index("ix_runs_requested_by_key", "runs", ["requested_by_key"])


def downgrade() -> None:
    op.drop_index("ix_runs_requested_by_key", table_name="runs")
    op.drop_index("ix_keys_parent", table_name="keys")
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("parent_key_id")
