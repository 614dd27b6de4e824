"""The record pipeline: journal, batch insert, replay of a dead process's segments."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from corral.store import Store
from corral.store.schema import spans
from corral.traces import SPAN_DEFAULTS, Recorder, new_span_id, new_trace_id


def span(**fields: Any) -> dict[str, Any]:
    row = SPAN_DEFAULTS.copy()
    row.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        kind="llm_request",
        name="chat x",
        status="ok",
        start_ns=1,
        end_ns=2,
        **fields,
    )
    return row


def stored(store: Store) -> dict[str, Any]:
    with store.connect() as conn:
        return {r.span_id: r for r in conn.execute(select(spans))}


def test_spans_round_trip_with_attributes(store: Store, tmp_path: Path) -> None:
    """Every column, JSON attributes included, reads back as written, on both stores."""

    async def main() -> None:
        recorder = Recorder(store, journal_dir=tmp_path / "journal")
        await recorder.start()
        recorder.record(span(attributes={"a": [1, "x"], "ok": True}, input_tokens=5, stream=True))
        await recorder.stop()

    asyncio.run(main())
    (row,) = stored(store).values()
    assert row.attributes == {"a": [1, "x"], "ok": True}
    assert row.input_tokens == 5
    assert row.stream is True
    assert list((tmp_path / "journal").iterdir()) == [], "stored segments are deleted"


def test_orphaned_segment_is_replayed_once(store: Store, tmp_path: Path) -> None:
    """A dead process's segment is stored by the next recorder; a torn last line is ignored."""
    journal = tmp_path / "journal"
    journal.mkdir()
    rows = [span() for _ in range(3)]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"span_id": "torn'
    (journal / "seg-99999-deadbeef0000-00000001.jsonl").write_bytes(lines)

    async def main() -> int:
        recorder = Recorder(store, journal_dir=journal)
        await recorder.start()
        replayed = recorder.replayed
        await recorder.stop()
        return replayed

    assert asyncio.run(main()) == 3
    assert set(stored(store)) == {r["span_id"] for r in rows}
    assert not any(journal.iterdir())
    # replaying the same records again (a second process racing) duplicates nothing
    (journal / "seg-99999-deadbeef0000-00000002.jsonl").write_bytes(lines)
    assert asyncio.run(main()) == 3
    assert len(stored(store)) == 3


def test_a_live_segment_is_not_replayed(store: Store, tmp_path: Path) -> None:
    """Another live process's segment (its flock held) is left alone."""

    async def main() -> None:
        first = Recorder(store, journal_dir=tmp_path / "journal", flush_interval=60)
        await first.start()
        first.record(span())
        second = Recorder(store, journal_dir=tmp_path / "journal")
        await second.start()
        assert second.replayed == 0
        await second.stop()
        assert stored(store) == {}
        await first.stop()

    asyncio.run(main())
    assert len(stored(store)) == 1
    assert os.listdir(tmp_path / "journal") == []


def test_concurrent_flushes_store_everything(store: Store, tmp_path: Path) -> None:
    """Flushes racing each other (the pipeline's and a caller's) lose no segment."""

    async def main() -> None:
        recorder = Recorder(store, journal_dir=tmp_path / "journal", flush_interval=60)
        await recorder.start()
        for _ in range(5):
            recorder.record(span())
            await asyncio.gather(recorder.flush(), recorder.flush(), recorder.flush())
        await recorder.stop()

    asyncio.run(main())
    assert len(stored(store)) == 5


def test_a_replay_settles_leases_of_gateway_records_only(store: Store, tmp_path: Path) -> None:
    """An agent's span claiming a lease in its attributes (``admission.lease``, any value an
    OTLP attribute can carry) is replayed from a dead process's journal like any span, but
    never handed on to settle that lease: only the gateway's own record is."""
    journal = tmp_path / "journal"
    journal.mkdir()
    admission = {"admission": {"lease": "lease-of-someone-else", "decision": "admitted"}}
    forged = span(source="claude-code", attributes=admission, input_tokens=10**9)
    record = span(source="gateway", attributes={"admission": {"lease": "lease-1"}})
    lines = b"".join(orjson.dumps(r) + b"\n" for r in (forged, record))
    (journal / "seg-99999-deadbeef0000-00000001.jsonl").write_bytes(lines)
    settled: list[str] = []

    async def main() -> None:
        recorder = Recorder(store, journal_dir=journal)
        recorder.on_replay = lambda rows: settled.extend(r["span_id"] for r in rows)
        await recorder.start()
        await recorder.stop()

    asyncio.run(main())
    assert set(stored(store)) == {forged["span_id"], record["span_id"]}
    assert settled == [record["span_id"]]
