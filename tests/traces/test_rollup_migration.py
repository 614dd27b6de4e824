"""Migration 0007 keeps old roll-ups readable: the coarse latency histogram moves into the
log-spaced buckets, and agent-reported calls still stored move out of the metered sums."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

from corral.settings import Settings
from corral.store import Store
from corral.store.schema import span_latency, span_rollups
from corral.traces.query import Visibility
from corral.traces.rollup import HOUR_NS, LATENCY_ERROR, bucket_value_ms
from corral.traces.usage import usage

MIGRATIONS = Path(__file__).parents[2] / "src" / "corral" / "store" / "migrations"
HOUR_S = 1_800_000_000 // 3600 * 3600
KEY = {
    "hour": HOUR_S,
    "org_id": "org_1",
    "team_id": "team_a",
    "user_id": "user_1",
    "key_id": "key_1",
    "model": "sim-economy",
    "provider": "sim",
}


@pytest.fixture
def old_store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A store at revision 0006 (before 0007)."""
    store = Store(Settings(home=tmp_path, database_url=store_url).resolved_database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
    try:
        yield store
    finally:
        store.close()


def test_old_rollups_convert_and_reported_calls_move_apart(old_store: Store) -> None:
    """Five metered calls (3 under 50 ms, 2 at 700–1000 ms) and one Claude Code call of
    30 ms that the old writer summed in: after 0007 the sums are the gateway's, the agent's
    call is reported, and percentiles read the old buckets' middles."""
    sums = {"requests": 6, "errors": 0, "cancelled": 0, "refused": 0, "input_tokens": 560}
    sums |= {"cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0}
    sums |= {"reasoning_tokens": 0, "cost_nusd": 12_000, "latency_ms_sum": 1_800.0}
    buckets = {f"lat_b{i}": 0 for i in range(16)} | {"lat_b0": 4, "lat_b5": 2}
    names = [*KEY, *sums, *buckets]
    with old_store.engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO span_rollups ({', '.join(names)}) VALUES "  # noqa: S608
                 f"({', '.join(':' + n for n in names)})"),
            KEY | sums | buckets,
        )  # fmt: skip
        start = HOUR_S * 10**9 + 60 * 10**9
        conn.execute(
            text(
                "INSERT INTO spans (span_id, trace_id, kind, name, org_id, team_id, user_id, "
                "key_id, model_requested, provider, status, start_ns, end_ns, input_tokens, "
                "cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, "
                "cost_nusd, source) VALUES ('00000000000000a1', :trace, 'llm_request', 'chat', "
                "'org_1', 'team_a', 'user_1', 'key_1', 'sim-economy', 'sim', 'ok', :start, :end, "
                "60, 0, 0, 0, 0, 7000, 'claude-code')"
            ),
            {"trace": "ab" * 16, "start": start, "end": start + 30_000_000},
        )
    old_store.migrate()
    with old_store.connect() as conn:
        row = conn.execute(select(span_rollups)).one()
        latency = dict(conn.execute(select(span_latency.c.bucket, span_latency.c.count)).all())
    assert (row.requests, row.input_tokens, row.cost_nusd) == (5, 500, 5_000)
    assert (row.reported_requests, row.reported_input_tokens, row.reported_cost_nusd) == (
        1,
        60,
        7_000,
    )
    assert sorted(latency.values()) == [2, 3]
    assert sorted(round(bucket_value_ms(b)) for b in latency) == [
        pytest.approx(25, rel=LATENCY_ERROR),
        pytest.approx(837, rel=LATENCY_ERROR),
    ]
    [usage_row] = usage(old_store, Visibility(), "team", HOUR_S, (HOUR_S * 10**9 + HOUR_NS) / 1e9)
    assert usage_row.requests == 5
    assert usage_row.reported["requests"] == 1
    assert usage_row.latency_ms(0.5) == pytest.approx(25, rel=LATENCY_ERROR)
