"""Route policy rules set through the API.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_policies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=True),
        sa.Column("task_class", sa.String(length=200), nullable=True),
        sa.Column("priority", sa.String(length=8), nullable=True),
        sa.Column("tier", sa.String(length=100), nullable=True),
        sa.Column("allowed_tiers", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_policies")),
    )


def downgrade() -> None:
    op.drop_table("route_policies")
