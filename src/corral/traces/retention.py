"""Retention: spans and bodies past their team's window, deleted in bulk; the store's size.

Each team keeps spans for ``teams.retention_days`` (NULL: the default), spans
without a team for the default. Spans go in batches of ``batch_size`` rows,
each batch its own short transaction, so the span writer (and on SQLite every
other writer) waits at most one batch. A batch is one statement that picks
its rows through ``ix_spans_team_start`` by physical row id (``rowid`` on
SQLite, ``ctid`` on PostgreSQL): no row is read twice and none is deleted
one by one. Bodies go a whole day folder at a time, once every span that
could point into the folder is gone. Hourly roll-ups are small and kept for
``ROLLUP_DAYS`` whatever the teams' windows.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, text

from corral.clock import Clock
from corral.store import Store
from corral.store.schema import span_latency, span_rollups, spans, teams
from corral.traces.blobs import NO_TEAM, BlobBackend

log = logging.getLogger(__name__)

DAY_S = 86_400
ROLLUP_DAYS = 400


@dataclass
class RetentionReport:
    """What one retention pass did. ``cutoffs``: per team id (``"_"``: spans without a
    team), the start time (epoch seconds) before which spans were deleted. ``batches``
    counts the transactions that deleted spans."""

    spans_deleted: int = 0
    batches: int = 0
    blob_files_deleted: int = 0
    blob_bytes_freed: int = 0
    rollups_deleted: int = 0
    cutoffs: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0


def delete_statement(sqlite: bool, *, no_team: bool) -> str:
    """The SQL of one batch: ``:team`` (unless ``no_team``), ``:cut`` (ns) and ``:n`` rows."""
    team = "team_id IS NULL" if no_team else "team_id = :team"
    row_id = "rowid" if sqlite else "ctid"
    pick = f"SELECT {row_id} FROM spans WHERE {team} AND start_ns < :cut LIMIT :n"  # noqa: S608
    # PostgreSQL: `= ANY(ARRAY(...))` is one TID scan of the picked rows (`IN` adds a join).
    chosen = f"rowid IN ({pick})" if sqlite else f"ctid = ANY(ARRAY({pick}))"
    return f"DELETE FROM spans WHERE {chosen}"  # noqa: S608 - fixed fragments


class Retention:
    """Deletes what is past its window; ``run_once`` is one pass, ``run_forever`` the loop."""

    def __init__(
        self,
        store: Store,
        blobs: BlobBackend | None,
        clock: Clock,
        *,
        default_days: float,
        batch_size: int = 10_000,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._blobs = blobs
        self._clock = clock
        self._default_days = default_days
        self._batch_size = batch_size

    def run_once(self) -> RetentionReport:
        """Delete expired spans (in batches) and body folders of every team, then old roll-ups."""
        started = self._clock.monotonic()
        now = self._clock.now()
        report = RetentionReport()
        for team, days in self._windows().items():
            cut = now - days * DAY_S
            report.cutoffs[team or NO_TEAM] = cut
            deleted, batches = self._delete_spans(team, int(cut * 1e9))
            report.spans_deleted += deleted
            report.batches += batches
            if self._blobs is not None:
                # Strictly before the cut-off's day: every span of such a day is gone by now.
                files, freed = self._blobs.delete_days_before(team, _utc_day(cut))
                report.blob_files_deleted += files
                report.blob_bytes_freed += freed
        report.rollups_deleted = self._delete_rollups(now - ROLLUP_DAYS * DAY_S)
        report.duration_s = self._clock.monotonic() - started
        return report

    async def run_forever(self, interval: float) -> None:
        """A pass now and then every ``interval`` seconds, in a worker thread, until cancelled.
        A failed pass is logged; the next one tries again."""
        while True:
            try:
                report = await asyncio.to_thread(self.run_once)
            except Exception:  # a background loop must outlive a bad pass (disk, database)
                log.exception("retention pass failed; the next one is in %.0f s", interval)
            else:
                log.info(
                    "retention: %d spans in %d batches, %d bodies (%d bytes) deleted in %.1f s",
                    report.spans_deleted,
                    report.batches,
                    report.blob_files_deleted,
                    report.blob_bytes_freed,
                    report.duration_s,
                )
            await asyncio.sleep(interval)

    def store_size(self) -> dict[str, Any]:
        """How big the trajectory store is: span rows (``spans_estimated``: from PostgreSQL's
        statistics), bytes on disk of the database (SQLite: pages and the WAL; PostgreSQL:
        the database, with ``spans_bytes``/``rollups_bytes`` of those two tables), bytes and
        files of bodies, and the start times (epoch seconds) of the oldest and newest spans."""
        bounds = select(func.min(spans.c.start_ns), func.max(spans.c.start_ns))
        with self._store.connect() as conn:
            oldest, newest = conn.execute(bounds).one()
            sizes = _sqlite_sizes(conn) if self._store.is_sqlite else _postgres_sizes(conn)
        usage = self._blobs.usage() if self._blobs is not None else {"bytes": 0, "files": 0}
        return {
            "dialect": self._store.dialect,
            **sizes,
            "blob_bytes": usage["bytes"],
            "blob_files": usage["files"],
            "oldest_span": None if oldest is None else oldest / 1e9,
            "newest_span": None if newest is None else newest / 1e9,
        }

    # -- internals ---------------------------------------------------------------------------

    def _windows(self) -> dict[str | None, float]:
        """Days to keep, per team id (None: spans without a team). Spans and body folders of a
        team the store does not know (deleted, or another store's) get the default."""
        with self._store.connect() as conn:
            rows = conn.execute(select(teams.c.id, teams.c.retention_days)).all()
            in_spans = list(conn.scalars(_SPAN_TEAMS))
        windows: dict[str | None, float] = {
            row.id: self._default_days if row.retention_days is None else row.retention_days
            for row in rows
        }
        folders = self._blobs.teams() if self._blobs is not None else []
        for team in [None, *in_spans, *folders]:
            windows.setdefault(None if team == NO_TEAM else team, self._default_days)
        return windows

    def _delete_spans(self, team: str | None, cut_ns: int) -> tuple[int, int]:
        """Delete the team's spans that started before ``cut_ns``; returns (rows, batches)."""
        sql = text(delete_statement(self._store.is_sqlite, no_team=team is None))
        params: dict[str, Any] = {"cut": cut_ns, "n": self._batch_size}
        if team is not None:
            params["team"] = team
        deleted = batches = 0
        while True:
            with self._store.begin() as conn:  # one short transaction a batch
                count = conn.execute(sql, params).rowcount
            if count > 0:
                deleted += count
                batches += 1
            if count < self._batch_size:
                return deleted, batches

    def _delete_rollups(self, cut: float) -> int:
        stmt = delete(span_rollups).where(span_rollups.c.hour < int(cut))
        with self._store.begin() as conn:
            conn.execute(delete(span_latency).where(span_latency.c.hour < int(cut)))
            return conn.execute(stmt).rowcount


# The distinct team ids of spans by a loose index scan: one seek of ix_spans_team_start per
# team, where DISTINCT would read the whole index.
_SPAN_TEAMS = text(
    """
    WITH RECURSIVE t(team_id) AS (
        SELECT min(team_id) FROM spans
        UNION ALL
        SELECT (SELECT min(s.team_id) FROM spans s WHERE s.team_id > t.team_id)
        FROM t WHERE t.team_id IS NOT NULL
    )
    SELECT team_id FROM t WHERE team_id IS NOT NULL
    """
)


def _utc_day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def _sqlite_sizes(conn: Connection) -> dict[str, Any]:
    page_count = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
    wal = 0
    for _seq, name, path in conn.exec_driver_sql("PRAGMA database_list"):
        if name == "main" and path:
            try:
                wal = os.stat(f"{path}-wal").st_size
            except FileNotFoundError:
                wal = 0
    rows = conn.execute(select(func.count()).select_from(spans)).scalar_one()
    return {
        "spans": rows,
        "spans_estimated": False,
        "database_bytes": page_count * page_size + wal,
        "spans_bytes": None,
        "rollups_bytes": None,
    }


def _postgres_sizes(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        text(
            "SELECT (SELECT reltuples::bigint FROM pg_class WHERE oid = 'spans'::regclass),"
            " pg_database_size(current_database()),"
            " pg_total_relation_size('spans'), pg_total_relation_size('span_rollups')"
        )
    ).one()
    estimate, database, spans_bytes, rollups_bytes = row
    estimated = estimate is not None and estimate >= 0  # -1: never analysed yet
    if not estimated:
        estimate = conn.execute(select(func.count()).select_from(spans)).scalar_one()
    return {
        "spans": int(estimate),
        "spans_estimated": estimated,
        "database_bytes": int(database),
        "spans_bytes": int(spans_bytes),
        "rollups_bytes": int(rollups_bytes),
    }
