"""Kill switches in the store: a row per switch that is on (a team's, or the org's).

Every process polls them (``Switches.refresh``, every ``key_refresh_interval``) and its
gateway refuses the traffic of a switched-off team within that interval; its executor
freezes the team's runs it holds and thaws them when the switch goes off.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.clock import Clock
from corral.guards.ops import KillSwitch
from corral.store import Store
from corral.store.schema import kill_switches

ORG = "org"
"""The ``scope`` of the organisation's switch (a team's is its id)."""


class Switches:
    """The switches on, as this process last read them."""

    def __init__(self, store: Store, clock: Clock, org_id: str | None = None) -> None:
        self._store = store
        self._clock = clock
        self.org_id = org_id
        self.on: dict[str | None, KillSwitch] = {}  # team id (None: the org) → switch
        self.teams: frozenset[str] = frozenset()
        self.org = False

    def refresh(self) -> dict[str | None, KillSwitch]:
        """Re-read the switches (blocking); what is on now."""
        with self._store.connect() as conn:
            rows = conn.execute(select(kill_switches)).fetchall()
        on = {
            (None if r.scope == ORG else r.scope): KillSwitch(
                None if r.scope == ORG else r.scope, r.on_at, r.actor, r.comment
            )
            for r in rows
        }
        self.on = on
        self.teams = frozenset(t for t in on if t is not None)
        self.org = None in on
        return on

    def stopped(self, team_id: str | None) -> KillSwitch | None:
        """The switch that stops ``team_id``'s traffic, if one is on (the org's first)."""
        if self.org:
            return self.on.get(None)
        if team_id is not None and team_id in self.teams:
            return self.on.get(team_id)
        return None

    def set(
        self, org_id: str, team_id: str | None, on: bool, *, actor: str, comment: str | None
    ) -> dict[str | None, KillSwitch]:
        """Switch a team's (or, ``team_id`` None, the org's) traffic off or back on; setting
        a switch that is already so changes nothing. Returns the switches on now."""
        scope = ORG if team_id is None else team_id
        with self._store.begin() as conn:
            if not on:
                conn.execute(delete(kill_switches).where(kill_switches.c.scope == scope))
            else:
                # Insert or nothing: two admins switching it on at once both succeed (the
                # first one's row stands), where a read-then-insert would fail the second.
                insert = sqlite_insert if self._store.is_sqlite else pg_insert
                conn.execute(
                    insert(kill_switches)
                    .values(
                        scope=scope,
                        org_id=org_id,
                        on_at=self._clock.now(),
                        actor=actor,
                        comment=comment,
                    )
                    .on_conflict_do_nothing(index_elements=["scope"])
                )
        return self.refresh()
