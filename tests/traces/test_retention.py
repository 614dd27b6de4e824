"""Retention of spans, bodies and roll-ups, and the store's size, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from corral.clock import ManualClock
from corral.store import Store
from corral.store.schema import orgs, span_rollups, spans, teams
from corral.traces import SPAN_DEFAULTS, new_span_id, new_trace_id
from corral.traces.blobs import BlobStore
from corral.traces.retention import DAY_S, ROLLUP_DAYS, Retention, delete_statement

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
HOUR = 3_600


def span(team: str | None, age_s: float) -> dict[str, Any]:
    start = int((NOW - age_s) * 1e9)
    row = SPAN_DEFAULTS.copy()
    row.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        kind="llm_request",
        name="chat m",
        status="ok",
        team_id=team,
        start_ns=start,
        end_ns=start + 1_000_000,
    )
    return row


def add_teams(store: Store, windows: dict[str, float | None]) -> None:
    with store.begin() as conn:
        conn.execute(insert(orgs), [{"id": "org_1", "name": "org", "created_at": NOW}])
        conn.execute(
            insert(teams),
            [
                {"id": t, "org_id": "org_1", "name": t, "created_at": NOW, "retention_days": d}
                for t, d in windows.items()
            ],
        )


def add_spans(store: Store, blobs: BlobStore | None, rows: list[dict[str, Any]]) -> None:
    """Store rows as the writer would: each with a request body in the blob store."""
    for row in rows:
        if blobs is not None:
            key = blobs.key_for(row["team_id"], row["start_ns"], row["span_id"], "request")
            blobs.put(key, b"0123456789")
            row["request_blob"] = key
    with store.begin() as conn:
        conn.execute(insert(spans), rows)


def span_ids(store: Store) -> set[str]:
    with store.connect() as conn:
        return set(conn.scalars(select(spans.c.span_id)))


def test_expired_spans_and_bodies_go_in_batches_per_team(store: Store, tmp_path: Path) -> None:
    """Each team keeps its window, spans without a team the default; bodies go by day folder."""
    add_teams(store, {"team_a": 1.0, "team_b": 10.0, "team_c": None})
    blobs = BlobStore(tmp_path / "blobs")
    old_a = [span("team_a", 2 * DAY_S + i) for i in range(25)]
    edge_a = [span("team_a", DAY_S + 60)]  # expired, but on the cut-off's own day
    kept_a = [span("team_a", HOUR) for _ in range(5)]
    kept_b = [span("team_b", 2 * DAY_S) for _ in range(5)]
    old_b = [span("team_b", 20 * DAY_S) for _ in range(3)]
    old_c = [span("team_c", 6 * DAY_S) for _ in range(2)]
    kept_c = [span("team_c", 4 * DAY_S)]
    old_none = [span(None, 6 * DAY_S) for _ in range(4)]
    kept_none = [span(None, DAY_S) for _ in range(2)]
    everything = old_a + edge_a + kept_a + kept_b + old_b + old_c + kept_c + old_none + kept_none
    add_spans(store, blobs, everything)

    retention = Retention(store, blobs, ManualClock(NOW), default_days=5.0, batch_size=10)
    report = retention.run_once()

    expired = old_a + edge_a + old_b + old_c + old_none
    assert span_ids(store) == {r["span_id"] for r in everything} - {r["span_id"] for r in expired}
    assert report.spans_deleted == len(expired) == 35
    assert report.batches == 3 + 1 + 1 + 1  # team_a 10+10+6, team_b 3, team_c 2, no team 4
    assert report.cutoffs == {
        "team_a": NOW - DAY_S,
        "team_b": NOW - 10 * DAY_S,
        "team_c": NOW - 5 * DAY_S,
        "_": NOW - 5 * DAY_S,
    }
    # Bodies of whole days before each cut-off's day are gone; the edge span's day stays.
    gone = old_a + old_b + old_c + old_none
    assert report.blob_files_deleted == len(gone)
    assert report.blob_bytes_freed == 10 * len(gone)
    for row in gone:
        assert blobs.get(row["request_blob"]) is None
    for row in edge_a + kept_a + kept_b + kept_c + kept_none:
        assert blobs.get(row["request_blob"]) == b"0123456789"

    again = retention.run_once()
    assert (again.spans_deleted, again.batches, again.blob_files_deleted) == (0, 0, 0)


def test_rollups_are_kept_for_400_days_whatever_the_window(store: Store) -> None:
    """Roll-up hours older than ``ROLLUP_DAYS`` go; younger ones stay, even past span windows."""
    hour = int(NOW) // HOUR * HOUR
    old = hour - (ROLLUP_DAYS + 1) * DAY_S
    recent = hour - (ROLLUP_DAYS - 1) * DAY_S
    keys = {"org_id": "o", "team_id": "", "user_id": "", "key_id": "", "model": "m", "provider": ""}
    with store.begin() as conn:
        conn.execute(insert(span_rollups), [{"hour": old, **keys}, {"hour": recent, **keys}])
    report = Retention(store, None, ManualClock(NOW), default_days=1.0).run_once()
    assert report.rollups_deleted == 1
    with store.connect() as conn:
        assert list(conn.scalars(select(span_rollups.c.hour))) == [recent]


def test_blob_folders_of_unknown_teams_get_the_default(store: Store, tmp_path: Path) -> None:
    """Bodies filed under a team the store does not know expire with the default window."""
    blobs = BlobStore(tmp_path / "blobs")
    old = span("team_gone", 3 * DAY_S)
    key = blobs.key_for("team_gone", old["start_ns"], old["span_id"], "response")
    blobs.put(key, b"abc")
    report = Retention(store, blobs, ManualClock(NOW), default_days=2.0).run_once()
    assert blobs.get(key) is None
    assert report.blob_files_deleted == 1
    assert report.cutoffs["team_gone"] == NOW - 2 * DAY_S


def test_batches_pick_rows_through_the_team_index(store: Store) -> None:
    """The batch statement finds its rows with ``ix_spans_team_start`` (TID scan on Postgres)."""
    with store.begin() as conn:  # SET LOCAL lasts this transaction; EXPLAIN changes nothing
        if store.is_sqlite:
            for no_team in (False, True):
                sql = f"EXPLAIN QUERY PLAN {delete_statement(True, no_team=no_team)}"
                plan = conn.exec_driver_sql(sql, {"team": "t", "cut": 1, "n": 5}).all()
                assert "ix_spans_team_start" in " ".join(str(row[-1]) for row in plan)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # an empty table is scanned
            sql = text(f"EXPLAIN {delete_statement(False, no_team=False)}")
            plan = " ".join(r[0] for r in conn.execute(sql, {"team": "t", "cut": 1, "n": 5}))
            assert "ix_spans_team_start" in plan
            assert "Tid Scan" in plan


def test_store_size_on_both_stores(store: Store, tmp_path: Path) -> None:
    """Rows, bytes of the database and of bodies, oldest and newest start times."""
    blobs = BlobStore(tmp_path / "blobs")
    rows = [span("team_x", age) for age in (3 * DAY_S, DAY_S, HOUR)]
    add_spans(store, blobs, rows)
    retention = Retention(store, blobs, ManualClock(NOW), default_days=30.0)
    size = retention.store_size()
    assert size["spans"] == 3
    assert size["spans_estimated"] is False
    assert size["database_bytes"] > 0
    assert (size["blob_files"], size["blob_bytes"]) == (3, 30)
    assert size["oldest_span"] == pytest.approx(NOW - 3 * DAY_S)
    assert size["newest_span"] == pytest.approx(NOW - HOUR)
    if store.is_sqlite:
        assert size["spans_bytes"] is None
    else:
        assert 0 < size["spans_bytes"] <= size["database_bytes"]
        assert size["rollups_bytes"] > 0
        with store.begin() as conn:
            conn.exec_driver_sql("ANALYZE spans")
        estimated = retention.store_size()
        assert estimated["spans_estimated"] is True
        assert estimated["spans"] == 3


def test_store_size_of_an_empty_store(store: Store) -> None:
    """An empty store has no oldest or newest span and no bodies."""
    size = Retention(store, None, ManualClock(NOW), default_days=30.0).store_size()
    assert size["spans"] == 0
    assert size["oldest_span"] is None
    assert size["newest_span"] is None
    assert (size["blob_bytes"], size["blob_files"]) == (0, 0)


def test_run_forever_runs_a_pass_at_once_and_stops_when_cancelled(store: Store) -> None:
    """The loop runs its first pass right away, then waits; cancelling it stops it."""
    add_spans(store, None, [span(None, 10 * DAY_S)])

    async def main() -> None:
        task = asyncio.create_task(
            Retention(store, None, ManualClock(NOW), default_days=1.0).run_forever(3600)
        )
        for _ in range(200):
            if not span_ids(store):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert span_ids(store) == set()


def test_batch_size_must_be_positive() -> None:
    """A batch size below one row is refused when the retention is made."""
    store = Store("sqlite://")
    try:
        with pytest.raises(ValueError, match="batch_size"):
            Retention(store, None, ManualClock(NOW), default_days=1, batch_size=0)
    finally:
        store.close()


def test_counts_are_exact_after_many_batches(store: Store) -> None:
    """1,234 expired rows of a team the store does not know go in 13 batches of at most 100."""
    add_spans(store, None, [span("team_z", 3 * DAY_S) for _ in range(1234)])
    add_spans(store, None, [span("team_z", HOUR) for _ in range(7)])
    report = Retention(store, None, ManualClock(NOW), default_days=1.0, batch_size=100).run_once()
    assert (report.spans_deleted, report.batches) == (1234, 13)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(spans)).scalar_one() == 7
