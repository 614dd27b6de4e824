"""Review gates: the autonomy ledger (human actions on runs), review revisions and
reviewer agents' verdicts.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("continues_from", sa.String(length=40), nullable=True))
    op.create_table(
        "run_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("path", sa.String(length=1000), nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("dismissed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name="fk_run_actions_org_id_orgs"),
        sa.PrimaryKeyConstraint("id", name="pk_run_actions"),
    )
    op.create_index("ix_run_actions_run", "run_actions", ["run_id", "id"])
    op.create_index("ix_run_actions_team_at", "run_actions", ["team_id", "at"])
    op.create_table(
        "review_revisions",
        sa.Column("review_id", sa.String(length=40), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("reviewers_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("review_id", "revision", name="pk_review_revisions"),
    )
    op.create_index("ix_review_revisions_run", "review_revisions", ["run_id"], unique=True)
    op.create_table(
        "review_verdicts",
        sa.Column("review_id", sa.String(length=40), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(length=100), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("user_id", sa.String(length=40), nullable=True),
        sa.Column("verdict", sa.String(length=30), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("comments", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("review_id", "revision", "reviewer", name="pk_review_verdicts"),
    )
    op.create_index("ix_review_verdicts_run", "review_verdicts", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_review_verdicts_run", table_name="review_verdicts")
    op.drop_table("review_verdicts")
    op.drop_index("ix_review_revisions_run", table_name="review_revisions")
    op.drop_table("review_revisions")
    op.drop_index("ix_run_actions_team_at", table_name="run_actions")
    op.drop_index("ix_run_actions_run", table_name="run_actions")
    op.drop_table("run_actions")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("continues_from")
