"""Usage read from the spans for the admin API, the status page and run details: totals
by one dimension with readable names, a run's metered calls, provider attempts by hour.
On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from corral.clock import ManualClock
from corral.errors import InvalidRequest
from corral.identity.keys import shown_prefix
from corral.identity.service import IdentityService, parse_since
from corral.store import Store
from corral.store.schema import spans
from corral.traces import rollup
from corral.traces.query import Visibility
from corral.traces.usage import ProviderHour, UsageRow, provider_attempts, run_calls, usage

HOUR_S = 3600
_TOTALS = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def svc(store: Store, clock: ManualClock) -> IdentityService:
    service = IdentityService(store, clock)
    service.ensure_default_org()
    return service


def _store_spans(store: Store, rows: list[dict[str, Any]]) -> None:
    """Store spans as the span writer does: the rows and their roll-ups in one transaction."""
    with store.begin() as conn:
        conn.execute(spans.insert(), rows)
        rollup.apply(conn, store.is_sqlite, rollup.contributions(rows))


def _span(n: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "span_id": f"{n:016x}",
        "trace_id": f"{n:032x}",
        "kind": "llm_request",
        "name": "chat",
        "status": "ok",
        "start_ns": 1_800_000_000 * 10**9,
        "end_ns": 1_800_000_001 * 10**9,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nusd": 0,
    }
    base.update(values)
    return base


def _by(
    store: Store, by: str, since: float, *, team_id: str | None = None, key_id: str | None = None
) -> list[UsageRow]:
    return usage(store, Visibility(team_id=team_id, key_id=key_id), [by], since)


def _totals(row: UsageRow) -> dict[str, Any]:
    shown = row.to_dict()
    return {k: v for k, v in shown.items() if k in ("team", "team_id", *_TOTALS)}


def test_usage_groups_llm_requests(svc: IdentityService, store: Store, clock: ManualClock) -> None:
    """Totals per team/user/key/model, readable names, attempts not double counted."""
    pay, search = svc.create_team("payments"), svc.create_team("search")
    alice = svc.create_user("alice", pay.id)
    bob = svc.create_user("bob", search.id)
    k1, _ = svc.create_key("payments", "alice", name="laptop")
    k2, raw2 = svc.create_key("search", "bob")
    now_ns = int(clock.now() * 1e9)
    chain_a = {"team_id": pay.id, "user_id": alice.id, "key_id": k1.id}
    chain_b = {"team_id": search.id, "user_id": bob.id, "key_id": k2.id}
    rows = [
        _span(1, **chain_a, model_requested="m1", input_tokens=10, output_tokens=5,
              cached_input_tokens=3, cache_write_tokens=2, reasoning_tokens=1,
              cost_nusd=1_500, start_ns=now_ns - 10**9),
        _span(2, **chain_a, model_requested="m2", input_tokens=20, output_tokens=7,
              cost_nusd=2_000_000_001, start_ns=now_ns - 2 * 10**9),
        # the attempt under request 2: must not be counted again
        _span(3, **chain_a, kind="attempt", model_requested="m2", input_tokens=20,
              cost_nusd=2_000_000_001, start_ns=now_ns - 2 * 10**9),
        _span(4, **chain_b, model_requested="m1", input_tokens=1, cost_nusd=7,
              start_ns=now_ns - 3600 * 10**9),
        # outside a 24h window
        _span(5, **chain_b, model_requested="m1", input_tokens=1000, cost_nusd=9,
              start_ns=now_ns - 2 * 86400 * 10**9),
    ]  # fmt: skip
    _store_spans(store, rows)
    since = parse_since("24h", clock.now())

    assert [_totals(r) for r in _by(store, "team", since)] == [
        {
            "team": "payments",
            "team_id": pay.id,
            "requests": 2,
            "input_tokens": 30,
            "cached_input_tokens": 3,
            "cache_write_tokens": 2,
            "output_tokens": 12,
            "reasoning_tokens": 1,
            "cost_usd": 2.000001501,
        },
        {
            "team": "search",
            "team_id": search.id,
            "requests": 1,
            "input_tokens": 1,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": 7e-09,
        },
    ]
    assert {r.group[0][1]: r.requests for r in _by(store, "model", since)} == {"m1": 2, "m2": 1}
    assert {r.group[0][1]: r.requests for r in _by(store, "model", 0.0)} == {"m1": 3, "m2": 1}
    by_key = {r.group[0][2]: r.group[0][1] for r in _by(store, "key", since)}
    assert by_key == {k1.id: "laptop", k2.id: f"{shown_prefix(raw2)}…"}
    assert [r.group[0][1] for r in _by(store, "user", since, team_id=search.id)] == ["bob"]
    assert [r.requests for r in _by(store, "user", since, key_id=k1.id)] == [2]
    assert "model_id" not in _by(store, "model", since)[0].to_dict()
    with pytest.raises(InvalidRequest, match="cannot group usage by 'colour'"):
        _by(store, "colour", since)


def test_usage_of_spans_without_identity_is_labelled_none(store: Store) -> None:
    _store_spans(store, [_span(1, cost_nusd=5)])
    [row] = _by(store, "team", 0.0)
    assert (row.group, row.requests) == ((("team", "(none)", None),), 1)
    [row] = _by(store, "model", 0.0)
    assert row.group == (("model", "(none)", None),)


def test_run_calls_count_what_the_gateway_metered(store: Store) -> None:
    """A run's calls and cost: the gateway's requests of that run only, not its attempts,
    not what the agent reported over OTLP, not another run's calls."""
    run = {"run_id": "run_a", "source": "gateway"}
    _store_spans(store, [
        _span(1, **run, cost_nusd=100),
        _span(2, **run, cost_nusd=20, status="error"),
        _span(3, **run, kind="attempt", cost_nusd=100),
        _span(4, run_id="run_a", source="claude-code", cost_nusd=5_000),
        _span(5, run_id="run_b", source="gateway", cost_nusd=7),
    ])  # fmt: skip
    assert run_calls(store, "run_a") == (2, 120)
    assert run_calls(store, "run_b") == (1, 7)
    assert run_calls(store, "run_none") == (0, 0)


def test_provider_attempts_by_hour_and_contract(store: Store) -> None:
    """Attempts to the providers asked for, from ``since``, by hour and by whether the
    contract's reserved capacity priced them; requests and agents' reports left out."""
    hour = 500_000 * HOUR_S
    at = {"kind": "attempt", "source": "gateway", "provider": "acme", "cost_source": "contract"}
    _store_spans(store, [
        _span(1, **at, input_tokens=10, output_tokens=5,
              start_ns=(hour + 60) * 10**9),
        _span(2, **at, cached_input_tokens=1, reasoning_tokens=2,
              cache_write_tokens=3, start_ns=(hour + 120) * 10**9),
        _span(3, **{**at, "cost_source": "computed"}, input_tokens=7,
              start_ns=(hour + 180) * 10**9),
        _span(4, **at, input_tokens=1,
              start_ns=(hour + HOUR_S + 1) * 10**9),
        _span(5, **at, input_tokens=1, start_ns=(hour - 1) * 10**9),
        _span(6, **{**at, "provider": "other"}, input_tokens=1, start_ns=(hour + 1) * 10**9),
        _span(7, **{**at, "kind": "llm_request"}, input_tokens=1, start_ns=(hour + 1) * 10**9),
        _span(8, **{**at, "source": "codex"}, input_tokens=1, start_ns=(hour + 1) * 10**9),
    ])  # fmt: skip
    found = sorted(provider_attempts(store, ["acme"], hour), key=lambda r: (r.hour, r.reserved))
    h = hour // HOUR_S
    assert found == [
        ProviderHour("acme", h, False, 1, 7),
        ProviderHour("acme", h, True, 2, 21),
        ProviderHour("acme", h + 1, True, 1, 1),
    ]
    assert provider_attempts(store, [], 0.0) == []
