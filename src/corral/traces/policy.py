"""Each team's trajectory policy: which bodies are kept, and for how long.

Read from the ``teams`` table (``body_capture``, ``retention_days``; NULL is
the settings' default) and held in memory, reloaded with the other rules, so
the gateway decides without touching the store.
"""

from __future__ import annotations

from sqlalchemy import select

from corral.settings import BODY_MODES, BodyMode, Settings
from corral.store import Store
from corral.store.schema import teams


class TracePolicy:
    """Body capture and retention per team, with the organisation's defaults."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self.default_bodies: BodyMode = settings.trace_bodies
        self.default_retention_days = settings.trace_retention_days
        self._bodies: dict[str, BodyMode] = {}
        self._retention: dict[str, float] = {}

    def bodies(self, team_id: str | None) -> BodyMode:
        if team_id is None:
            return self.default_bodies
        return self._bodies.get(team_id, self.default_bodies)

    def retention_days(self, team_id: str | None) -> float:
        if team_id is None:
            return self.default_retention_days
        return self._retention.get(team_id, self.default_retention_days)

    def reload(self) -> None:
        """Re-read the teams' settings (cheap: one row a team)."""
        query = select(teams.c.id, teams.c.body_capture, teams.c.retention_days)
        with self._store.connect() as conn:
            rows = conn.execute(query).fetchall()
        self._bodies = {r.id: r.body_capture for r in rows if r.body_capture in BODY_MODES}
        self._retention = {r.id: r.retention_days for r in rows if r.retention_days is not None}
