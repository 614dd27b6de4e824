"""Agent runs and their state transitions.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("requester_id", sa.String(length=40), nullable=True),
        sa.Column("requested_by_key", sa.String(length=40), nullable=True),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("profile", sa.String(length=40), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("base_commit", sa.String(length=64), nullable=True),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("budget_nusd", sa.BigInteger(), nullable=True),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("handoff_from", sa.String(length=40), nullable=True),
        sa.Column("sandbox", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("executor", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.Float(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("workspace_removed_at", sa.Float(), nullable=True),
        sa.Column("delivered_to", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_runs_org_id_orgs"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name="fk_runs_team_id_teams"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_runs_owner_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_team_created", "runs", ["team_id", "created_at"])
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_events_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_run_events"),
    )
    op.create_index("ix_run_events_run", "run_events", ["run_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_run_events_run", table_name="run_events")
    op.drop_table("run_events")
    op.drop_index("ix_runs_state", table_name="runs")
    op.drop_index("ix_runs_team_created", table_name="runs")
    op.drop_table("runs")
