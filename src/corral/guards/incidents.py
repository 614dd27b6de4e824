"""Incidents in the store: what a detector's firing opens, who owns it, and its timeline.

A firing on a subject (a run, or a key that is not a run's) adds to that subject's open or
acknowledged incident, else opens one. An incident keeps the evidence of each firing (the
last ``EVIDENCE_CAP`` of them; how many older ones were dropped is counted), the strongest
action taken, and a timeline (``incident_events``) naming who did each step. People move it
along ``TRANSITIONS`` (acknowledge, release, kill); the guards engine does what a release or
a kill means for the run and its key, then records the state here.

Every method blocks (the API calls them in a thread). Two processes firing on one subject at
once open one incident, not two: ``record_finding`` serialises on the subject (a
transaction-scoped advisory lock on PostgreSQL, the database's write lock on SQLite) and
looks for the open incident again once it holds it.
"""

from __future__ import annotations

import builtins
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, or_, select, text

from corral.clock import Clock
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.guards.model import Action, Finding, Subject, stronger
from corral.identity.service import new_id
from corral.store import Store
from corral.store.schema import incident_events, incidents

STATES = ("open", "acknowledged", "released", "killed")
OPEN = STATES[:2]
"""States in which an incident collects further firings on its subject."""
TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "open": ("acknowledged", "released", "killed"),
    "acknowledged": ("released", "killed"),
}
"""Where each state may go; released and killed are final."""
EVENT_KINDS: Mapping[str, str] = {"acknowledged": "ack", "released": "release", "killed": "kill"}
"""The timeline event a move to each state writes."""
EVIDENCE_CAP = 50
"""Firings an incident keeps the evidence of (the newest); older ones are counted as dropped."""
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One step of an incident's timeline: ``actor`` is ``guard:<detector>``, ``admin``,
    ``user:<id>`` or ``key:<id>``; ``kind`` is opened, fired, ack, release, kill, or what the
    engine records (an action taken, a webhook delivered)."""

    at: float
    actor: str
    kind: str
    detail: str | None = None
    data: Any = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "kind": self.kind,
            "detail": self.detail,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Incident:
    """A row of ``incidents``. ``evidence`` is the newest firings, oldest first, each a
    ``Finding.as_json()`` with ``at`` and the ``action`` it took; ``evidence_dropped`` counts
    the older ones no longer kept. ``events`` is filled by ``IncidentService.get`` only."""

    id: str
    org_id: str
    team_id: str | None
    owner_id: str | None
    subject: str  # "run" or "key"
    run_id: str | None
    key_id: str | None
    detector: str
    state: str
    action: str
    summary: str
    evidence: tuple[dict[str, Any], ...]
    evidence_dropped: int
    opened_at: float
    updated_at: float
    closed_at: float | None
    events: tuple[Event, ...] = field(default=())

    @property
    def target(self) -> Subject:
        """The subject it is about."""
        if self.subject == "run":
            return Subject("run", self.run_id or "")
        return Subject("key", self.key_id or "")

    @property
    def is_open(self) -> bool:
        return self.state in OPEN

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.org_id,
            "team_id": self.team_id,
            "owner_id": self.owner_id,
            "subject": self.subject,
            "run_id": self.run_id,
            "key_id": self.key_id,
            "detector": self.detector,
            "state": self.state,
            "action": self.action,
            "summary": self.summary,
            "evidence": [dict(e) for e in self.evidence],
            "evidence_dropped": self.evidence_dropped,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "closed_at": self.closed_at,
            "events": [e.as_json() for e in self.events],
        }

    @classmethod
    def from_row(cls, row: Any, events: tuple[Event, ...] = ()) -> Incident:
        entries, dropped = _unpack(row.evidence)
        return cls(
            id=row.id, org_id=row.org_id, team_id=row.team_id, owner_id=row.owner_id,
            subject=row.subject, run_id=row.run_id, key_id=row.key_id, detector=row.detector,
            state=row.state, action=row.action, summary=row.summary, evidence=entries,
            evidence_dropped=dropped, opened_at=row.opened_at, updated_at=row.updated_at,
            closed_at=row.closed_at, events=events,
        )  # fmt: skip


def _unpack(stored: Any) -> tuple[tuple[dict[str, Any], ...], int]:
    """The ``evidence`` column: ``{"entries": [...], "dropped": n}``."""
    if not isinstance(stored, dict):
        return (), 0
    return tuple(stored.get("entries") or ()), int(stored.get("dropped") or 0)


def _storable(finding: Finding) -> dict[str, Any]:
    """The finding as JSON every store keeps: an infinite or NaN number (a z-score over a
    flat baseline) becomes its text, which JSON (and PostgreSQL's json type) can hold."""
    found = finding.as_json()
    found["numbers"] = {
        name: value if not isinstance(value, float) or math.isfinite(value) else str(value)
        for name, value in found["numbers"].items()
    }
    return found


def _pack(entries: builtins.list[dict[str, Any]], dropped: int) -> dict[str, Any]:
    """Keep the newest ``EVIDENCE_CAP`` entries; count the rest as dropped."""
    extra = max(0, len(entries) - EVIDENCE_CAP)
    return {"entries": entries[extra:], "dropped": dropped + extra}


def check_state(state: str | None) -> None:
    """``InvalidRequest`` naming the valid states when ``state`` is not one."""
    if state is not None and state not in STATES:
        raise InvalidRequest(
            f"unknown incident state {state[:40]!r}; use one of {', '.join(STATES)}"
        )


class IncidentService:
    """Incidents and their timelines in the store. Blocking: call it in a thread."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    # -- firings ----------------------------------------------------------------------------

    def record_finding(
        self,
        *,
        subject: Subject,
        org_id: str,
        team_id: str | None,
        owner_id: str | None,
        run_id: str | None,
        key_id: str | None,
        finding: Finding,
        action: Action,
    ) -> tuple[Incident, bool]:
        """Add ``finding`` (and the ``action`` it takes) to the subject's open or acknowledged
        incident, or open one; the incident, and whether it was opened. The incident's action
        becomes the stronger of the old and the new."""
        now = self._clock.now()
        entry = {**_storable(finding), "at": now, "action": action}
        new: dict[str, Any] = {
            "id": new_id("inc"), "org_id": org_id, "team_id": team_id, "owner_id": owner_id,
            "subject": subject.kind, "run_id": run_id, "key_id": key_id,
            "detector": finding.detector, "state": "open", "action": action,
            "summary": finding.message, "evidence": _pack([entry], 0), "opened_at": now,
            "updated_at": now, "closed_at": None,
        }  # fmt: skip
        with self._store.begin() as conn:
            self._lock(conn, subject)
            row = conn.execute(_open_query(subject)).first()
            # A person may close it meanwhile (``set_state`` does not take the lock): then
            # this firing opens a new incident rather than add to a closed one.
            added = row is not None and _add_to(conn, row, entry, action, now)
            incident_id: str = row.id if added and row is not None else new["id"]
            if not added:
                conn.execute(incidents.insert().values(**new))
            conn.execute(
                incident_events.insert().values(
                    incident_id=incident_id, at=now, actor=f"guard:{finding.detector}",
                    kind="fired" if added else "opened", detail=finding.message, data=entry,
                )
            )  # fmt: skip
        return self._load(incident_id), not added

    def _lock(self, conn: Connection, subject: Subject) -> None:
        """Hold, until the transaction ends, a lock no other ``record_finding`` on this
        subject gets meanwhile (a state change elsewhere does not take it: its compare-and-set
        on ``state`` is enough, and the open incident is looked up after this)."""
        if self._store.is_sqlite:
            # The first write of a transaction takes SQLite's one write lock (waiting out the
            # busy timeout), and what this transaction reads afterwards is the newest.
            conn.execute(incidents.update().where(incidents.c.id == "").values(id=""))
            return
        digest = hashlib.blake2b(f"incident:{subject.kind}:{subject.id}".encode(), digest_size=8)
        lock_id = int.from_bytes(digest.digest(), "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})

    # -- timeline and state ---------------------------------------------------------------------

    def add_event(
        self,
        incident_id: str,
        *,
        actor: str,
        kind: str,
        detail: str | None = None,
        data: Any = None,
    ) -> Event:
        """Append a step to the incident's timeline (``NotFound`` when there is no such
        incident); the incident's ``updated_at`` moves to now."""
        now = self._clock.now()
        with self._store.begin() as conn:
            touched = conn.execute(
                incidents.update().where(incidents.c.id == incident_id).values(updated_at=now)
            ).rowcount
            if touched != 1:
                raise NotFound(f"incident {_shown(incident_id)} not found")
            conn.execute(
                incident_events.insert().values(
                    incident_id=incident_id, at=now, actor=actor, kind=kind, detail=detail,
                    data=data,
                )
            )  # fmt: skip
        return Event(now, actor, kind, detail, data)

    def set_state(
        self, incident_id: str, new: str, *, actor: str, comment: str | None = None
    ) -> Incident:
        """Move the incident to ``new`` along ``TRANSITIONS`` (compare-and-set on its state)
        and write the step (``ack``, ``release`` or ``kill``, the comment as its detail);
        released and killed close it. ``Conflict`` naming its state when it may not move so."""
        check_state(new)
        current = self.get(incident_id)
        if new not in TRANSITIONS.get(current.state, ()):
            raise Conflict(
                f"incident {incident_id} is {current.state}; it cannot become {new}"
                + ("" if current.is_open else " (it is closed)")
            )
        now = self._clock.now()
        values: dict[str, Any] = {"state": new, "updated_at": now}
        if new not in OPEN:
            values["closed_at"] = now
        with self._store.begin() as conn:
            done = conn.execute(
                incidents.update()
                .where(incidents.c.id == incident_id, incidents.c.state == current.state)
                .values(**values)
            ).rowcount
            if done != 1:
                raise Conflict(
                    f"incident {incident_id} changed meanwhile; it is no longer {current.state}"
                )
            conn.execute(
                incident_events.insert().values(
                    incident_id=incident_id, at=now, actor=actor, kind=EVENT_KINDS[new],
                    detail=comment,
                )
            )  # fmt: skip
        return self.get(incident_id)

    # -- read ---------------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        """The incident with its timeline; ``NotFound`` when there is none."""
        with self._store.connect() as conn:
            row = None
            if _usable(incident_id):
                row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
            if row is None:
                raise NotFound(f"incident {_shown(incident_id)} not found")
            steps = conn.execute(
                select(incident_events)
                .where(incident_events.c.incident_id == incident_id)
                .order_by(incident_events.c.id)
            )
            events = tuple(Event(e.at, e.actor, e.kind, e.detail, e.data) for e in steps)
        return Incident.from_row(row, events)

    def list(
        self,
        *,
        team_id: str | None = None,
        state: str | None = None,
        run_id: str | None = None,
        key_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> builtins.list[Incident]:
        """Incidents newest first (by ``opened_at``, then id), without their timelines; the
        next page is the one ``before`` the last incident of this one (its id)."""
        check_state(state)
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(f"limit must be from 1 to {MAX_LIST}")
        filters = (team_id, run_id, key_id)
        if not all(_usable(v) for v in filters if v is not None):
            return []  # no id holds such characters
        query = select(incidents).order_by(incidents.c.opened_at.desc(), incidents.c.id.desc())
        for column, value in (
            (incidents.c.team_id, team_id),
            (incidents.c.state, state),
            (incidents.c.run_id, run_id),
            (incidents.c.key_id, key_id),
        ):
            if value is not None:
                query = query.where(column == value)
        with self._store.connect() as conn:
            if before is not None:
                query = query.where(_older_than(conn, before))
            return [Incident.from_row(row) for row in conn.execute(query.limit(limit))]

    def open_for(self, subject: Subject) -> Incident | None:
        """The subject's open or acknowledged incident (without its timeline), if any."""
        with self._store.connect() as conn:
            row = conn.execute(_open_query(subject)).first()
        return None if row is None else Incident.from_row(row)

    def _load(self, incident_id: str) -> Incident:
        with self._store.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).one()
        return Incident.from_row(row)


def _usable(ref: str) -> bool:
    """Whether ``ref`` could be an id at all (NUL bytes and lone surrogates upset
    PostgreSQL, which would answer a 503 for what is the caller's mistake)."""
    if not 0 < len(ref) <= 40 or "\x00" in ref:
        return False
    try:
        ref.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(ref: str) -> str:
    """An id as a message may quote it: as it is when it could be one, else ``repr``'d."""
    return ref if _usable(ref) else repr(ref[:40])


def _open_query(subject: Subject) -> Any:
    """The subject's newest incident that still collects firings."""
    column = incidents.c.run_id if subject.kind == "run" else incidents.c.key_id
    return (
        select(incidents)
        .where(
            incidents.c.subject == subject.kind,
            column == subject.id,
            incidents.c.state.in_(OPEN),
        )
        .order_by(incidents.c.opened_at.desc(), incidents.c.id.desc())
        .limit(1)
    )


def _add_to(conn: Connection, row: Any, entry: dict[str, Any], action: str, now: float) -> bool:
    """Add a firing to the open incident ``row``; False when it was closed meanwhile."""
    entries, dropped = _unpack(row.evidence)
    return bool(
        conn.execute(
            incidents.update()
            .where(incidents.c.id == row.id, incidents.c.state.in_(OPEN))
            .values(
                evidence=_pack([*entries, entry], dropped),
                action=stronger(row.action, action),
                updated_at=now,
            )
        ).rowcount
        == 1
    )


def _older_than(conn: Connection, before: str) -> Any:
    """Incidents after ``before`` in newest-first order: opened earlier, or at the same time
    with a smaller id (the order ``list`` sorts by)."""
    cursor = None
    if _usable(before):
        cursor = conn.execute(
            select(incidents.c.opened_at, incidents.c.id).where(incidents.c.id == before)
        ).first()
    if cursor is None:
        raise NotFound(f"incident {_shown(before)} (the page cursor 'before') not found")
    return or_(
        incidents.c.opened_at < cursor.opened_at,
        and_(incidents.c.opened_at == cursor.opened_at, incidents.c.id < cursor.id),
    )


__all__ = [
    "EVIDENCE_CAP",
    "OPEN",
    "STATES",
    "TRANSITIONS",
    "Event",
    "Incident",
    "IncidentService",
    "check_state",
]
