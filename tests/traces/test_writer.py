"""The span writer: one call is one call in every roll-up, bodies leave the rows redacted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from corral.store import Store
from corral.store.schema import span_latency, span_rollups, spans
from corral.traces import SPAN_DEFAULTS, Recorder, new_span_id, new_trace_id
from corral.traces.blobs import BlobStore
from corral.traces.rollup import HOUR_NS, LATENCY_ERROR, percentile

NOW = time.time_ns()
TEAM = "team_a"


def row(**fields: Any) -> dict[str, Any]:
    out = SPAN_DEFAULTS.copy()
    out.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        kind="llm_request",
        name="chat sim-standard",
        status="ok",
        org_id="org_1",
        team_id=TEAM,
        user_id="user_1",
        key_id="key_1",
        model_requested="sim-standard",
        start_ns=NOW - 2_000_000_000,
        end_ns=NOW - 1_000_000_000,
        input_tokens=100,
        output_tokens=20,
    )
    out.update(fields)
    return out


def gateway(**fields: Any) -> dict[str, Any]:
    return row(source="gateway", provider="sim", cost_nusd=5_000, cost_source="computed", **fields)


def agent(**fields: Any) -> dict[str, Any]:
    """A call Claude Code reported as a log event (no ids: matched by fingerprint too)."""
    reported = {"source": "claude-code", "cost_nusd": 7_000, "cost_source": "reported"}
    return row(**{**reported, "_fingerprint": True, **fields})


class Pipeline:
    """A recorder on a real store, written batch by batch."""

    def __init__(self, store: Store, home: Path) -> None:
        self.store = store
        self.blobs = BlobStore(home / "blobs")
        self.recorder = Recorder(
            store, journal_dir=home / "journal", blobs=self.blobs, max_body_bytes=200
        )
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.recorder.start())

    def write(self, *rows: dict[str, Any]) -> None:
        """Journal ``rows`` and store them as one batch."""
        self.recorder.record(*rows)
        self.loop.run_until_complete(self.recorder.flush())

    def close(self) -> None:
        self.loop.run_until_complete(self.recorder.stop())
        self.loop.close()

    def duplicate_of(self, span_id: str) -> str | None:
        with self.store.connect() as conn:
            value: str | None = conn.scalar(
                select(spans.c.duplicate_of).where(spans.c.span_id == span_id)
            )
        return value

    def rolled(self) -> tuple[int, int]:
        """(requests, cost) the gateway metered, over every roll-up row."""
        return self._sums(span_rollups.c.requests, span_rollups.c.cost_nusd)

    def reported(self) -> tuple[int, int]:
        """(requests, cost) agents reported, over every roll-up row."""
        return self._sums(span_rollups.c.reported_requests, span_rollups.c.reported_cost_nusd)

    def _sums(self, *columns: Any) -> tuple[int, int]:
        with self.store.connect() as conn:
            requests, cost = conn.execute(select(*(func.sum(c) for c in columns))).one()
        return int(requests or 0), int(cost or 0)


@pytest.fixture
def pipe(store: Store, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(store, tmp_path)
    yield p
    p.close()


def test_agent_span_after_the_gateway_record_it_parents_is_a_duplicate(pipe: Pipeline) -> None:
    """The agent propagated traceparent: its chat span is the gateway record's parent."""
    a = agent()
    g = gateway(trace_id=a["trace_id"], parent_span_id=a["span_id"])
    pipe.write(g)
    pipe.write(a)
    assert pipe.duplicate_of(a["span_id"]) == g["span_id"]
    assert pipe.rolled() == (1, 5_000), "counted once, at the gateway's price"


def test_gateway_record_after_the_agent_span_marks_it_and_fixes_the_rollup(pipe: Pipeline) -> None:
    """Arriving second, the gateway record takes the agent's row out of the roll-ups."""
    a = agent()
    pipe.write(a)
    assert (pipe.rolled(), pipe.reported()) == ((0, 0), (1, 7_000)), "reported, not spent"
    pipe.write(gateway(trace_id=a["trace_id"], parent_span_id=a["span_id"]))
    assert pipe.duplicate_of(a["span_id"]) is not None
    assert (pipe.rolled(), pipe.reported()) == ((1, 5_000), (0, 0))


def test_same_batch_and_response_id_match(pipe: Pipeline) -> None:
    """Both in one batch, linked only by the provider's response id."""
    g = gateway(response_id="msg_123")
    a = agent(response_id="msg_123", input_tokens=1, output_tokens=1)
    pipe.write(a, g)
    assert pipe.duplicate_of(a["span_id"]) == g["span_id"]
    assert pipe.rolled() == (1, 5_000)


def test_fingerprint_matches_log_events_one_to_one(pipe: Pipeline) -> None:
    """Two identical calls reported by events without ids claim two distinct records."""
    g1, g2 = gateway(), gateway(end_ns=NOW - 900_000_000)
    pipe.write(g1, g2)
    a1, a2 = agent(), agent()
    pipe.write(a1, a2)
    assert {pipe.duplicate_of(a1["span_id"]), pipe.duplicate_of(a2["span_id"])} == {
        g1["span_id"],
        g2["span_id"],
    }
    assert pipe.rolled() == (2, 10_000)


def test_fingerprint_needs_same_team_tokens_and_model(pipe: Pipeline) -> None:
    """Calls the gateway never saw are counted apart, at the agent's reported cost."""
    pipe.write(gateway())
    others = [
        agent(team_id="team_b"),
        agent(output_tokens=21),
        agent(model_requested="other-model"),
        agent(end_ns=NOW + 300_000_000_000, start_ns=NOW + 299_000_000_000),
    ]
    pipe.write(*others)
    assert all(pipe.duplicate_of(a["span_id"]) is None for a in others)
    assert (pipe.rolled(), pipe.reported()) == ((1, 5_000), (4, 4 * 7_000))


def test_agent_event_waiting_in_memory_is_claimed_by_a_later_gateway_record(
    pipe: Pipeline,
) -> None:
    """An event that arrived before its record is remembered and marked when it comes."""
    a = agent()
    pipe.write(a)
    pipe.write(gateway())
    assert pipe.duplicate_of(a["span_id"]) is not None
    assert pipe.rolled() == (1, 5_000)


def test_replayed_rows_are_not_counted_twice(pipe: Pipeline) -> None:
    """A batch stored again (journal replay, retry) changes neither rows nor roll-ups."""
    g = gateway()
    pipe.write(g)
    pipe.recorder.writer.write([dict(g)], check_existing=True)
    assert pipe.rolled() == (1, 5_000)


def test_rollup_hours_errors_and_latency(pipe: Pipeline) -> None:
    """Hours split the roll-up; errors and refusals are counted apart; latency is bucketed."""
    hour = NOW // HOUR_NS * HOUR_NS
    pipe.write(
        gateway(start_ns=hour - 10**9, end_ns=hour - 10**9 + 300 * 10**6),
        gateway(start_ns=hour + 10**9, end_ns=hour + 10**9 + 300 * 10**6, status="error"),
        gateway(start_ns=hour + 2 * 10**9, end_ns=hour + 2 * 10**9, status="refused"),
        gateway(kind="attempt"),
    )
    with pipe.store.connect() as conn:
        rows = conn.execute(select(span_rollups).order_by(span_rollups.c.hour)).fetchall()
    assert [r.hour for r in rows] == [hour // 10**9 - 3600, hour // 10**9]
    assert [(r.requests, r.errors, r.refused) for r in rows] == [(1, 0, 0), (1, 1, 1)]
    with pipe.store.connect() as conn:
        buckets = conn.execute(
            select(span_latency.c.bucket, span_latency.c.count).where(
                span_latency.c.hour == rows[0].hour
            )
        ).fetchall()
    p50 = percentile(dict(buckets), 0.5)
    assert p50 == pytest.approx(300, rel=LATENCY_ERROR)


def test_bodies_are_redacted_capped_and_kept_out_of_the_row(pipe: Pipeline) -> None:
    """Full capture writes a redacted, capped blob; metadata keeps only the shape."""
    secret = "sk-ant-api03-" + "x" * 40
    full = gateway(
        _body_mode="full",
        _request_body='{"model": "m", "messages": [{"role": "user", "content": "key '
        + secret
        + '"}]}',
        _response_body="y" * 1000,
    )
    meta = gateway(_body_mode="metadata", _request_body='{"model": "m", "stream": true}')
    pipe.write(full, meta)
    with pipe.store.connect() as conn:
        stored = {r.span_id: r for r in conn.execute(select(spans))}
    f, m = stored[full["span_id"]], stored[meta["span_id"]]
    request = pipe.blobs.get(f.request_blob)
    response = pipe.blobs.get(f.response_blob)
    assert request is not None
    assert response is not None
    assert secret.encode() not in request
    assert b"REDACTED" in request
    assert b"truncated" in response
    assert len(response) < 400
    assert f.attributes["bodies"]["response"]["truncated"] is True
    assert m.request_blob is None
    assert m.response_blob is None
    assert m.attributes["bodies"]["request"]["bytes"] > 0
    assert "_request_body" not in f._mapping


def test_a_failing_store_answers_503_and_loses_nothing(pipe: Pipeline) -> None:
    """While the store refuses writes, ingest is told 503 with a retry delay; the batch waits
    in the journal and is stored once the store is back."""
    from corral.errors import StoreError

    rows = [gateway() for _ in range(3)]
    with pipe.store.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE spans RENAME TO spans_away")
    try:
        with pytest.raises(StoreError):
            pipe.write(*rows)
        with pytest.raises(StoreError) as refused:
            pipe.recorder.check_capacity(10)
        assert refused.value.status == 503
        assert refused.value.retry_after
        assert pipe.recorder.pending == 3
    finally:
        with pipe.store.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE spans_away RENAME TO spans")
    pipe.loop.run_until_complete(pipe.recorder.flush())
    pipe.recorder.check_capacity(10)  # healthy again
    with pipe.store.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(spans)) == 3
    assert pipe.rolled() == (3, 15_000), "rolled up once, not once per try"


def test_spans_with_ids_are_not_matched_by_fingerprint(pipe: Pipeline) -> None:
    """An agent span (not a log event) with neither link nor response id is its own call."""
    pipe.write(gateway())
    span = agent()
    del span["_fingerprint"]
    pipe.write(span)
    assert pipe.duplicate_of(span["span_id"]) is None


def test_an_agent_row_holding_a_gateway_records_id_is_evicted_exactly(pipe: Pipeline) -> None:
    """An agent's row that took the id of a gateway record first (learnt from a header, say)
    gives way when the record comes: the stored row is the gateway's, and the roll-ups hold
    its call as metered and nothing of the agent's claim."""
    g = gateway()
    squatter = agent(span_id=g["span_id"], _fingerprint=False, input_tokens=10**9)
    pipe.write(squatter)
    assert pipe.reported() == (1, 7_000)
    pipe.write(g)
    with pipe.store.connect() as conn:
        source = conn.scalar(select(spans.c.source).where(spans.c.span_id == g["span_id"]))
    assert source == "gateway"
    assert (pipe.rolled(), pipe.reported()) == ((1, 5_000), (0, 0))
    pipe.write(dict(squatter))  # and it cannot come back
    assert (pipe.rolled(), pipe.reported()) == ((1, 5_000), (0, 0))


def test_a_resent_agent_payload_is_counted_once(pipe: Pipeline) -> None:
    """An exporter resending after a timeout (same span ids) adds no second reported call."""
    a = agent(_fingerprint=False)
    pipe.write(a)
    pipe.write(dict(a))
    assert pipe.reported() == (1, 7_000)


def test_matching_never_crosses_teams(pipe: Pipeline) -> None:
    """Another team's gateway record naming this team's span as its parent, or carrying the
    same response id, marks nothing: the team's reported call stays counted."""
    a = agent(response_id="resp-1", _fingerprint=False)
    pipe.write(a)
    pipe.write(gateway(team_id="team_b", trace_id=a["trace_id"], parent_span_id=a["span_id"]))
    pipe.write(gateway(team_id="team_b", response_id="resp-1"))
    assert pipe.duplicate_of(a["span_id"]) is None
    assert pipe.reported() == (1, 7_000)
    late = agent(response_id="resp-2", _fingerprint=False)  # and from the agent's side
    pipe.write(gateway(team_id="team_b", response_id="resp-2"))
    pipe.write(late)
    assert pipe.duplicate_of(late["span_id"]) is None
