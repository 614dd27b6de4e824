"""Initial schema: identity (orgs, teams, users, keys), spans, meta_kv.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from corral.store.schema import keys, meta_kv, orgs, spans, teams, users

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TABLES = [orgs, teams, users, keys, spans, meta_kv]


def upgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind)
