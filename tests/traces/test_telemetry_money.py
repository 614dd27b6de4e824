"""Attacks: telemetry must not move money, cross tenants, or take Corral's own spans.

What an agent reports over OTLP (spans and log events) is a claim: it is shown,
as *reported*, and never spends a budget, a limit or a contract; only the
gateway's records do. Matching an agent's report to a gateway record happens
within one team. A span id Corral writes itself (a run's root span, derived from
the run id) cannot be taken by an agent, before or after Corral writes it.
Every test runs a live Corral on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from corral.store.schema import spans
from corral.traces.spans import SPAN_DEFAULTS, run_trace, traceparent
from tests.conftest import ADMIN_KEY, run_corral
from tests.gateway.conftest import Running, gateway_corral

HUGE_TOKENS = 10**9
KINDS = ("input", "cached_input", "cache_write", "output", "reasoning")
FAST = {"quota_refresh_interval": 0.1}


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def post_span(url: str, key: str, service: str, **span: Any) -> None:
    """One OTLP/JSON span; ``attributes`` a dict, the rest OTLP span fields."""
    now = time.time_ns()
    attributes = span.pop("attributes", {})
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service)]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": os.urandom(16).hex(),
                                "spanId": os.urandom(8).hex(),
                                "name": "chat sim-economy",
                                "kind": 3,
                                "startTimeUnixNano": str(now - 2_000_000),
                                "endTimeUnixNano": str(now),
                                **span,
                                "attributes": [_attr(k, v) for k, v in attributes.items()],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    r = httpx.post(f"{url}/v1/traces", json=body, headers=_auth(key), timeout=10)
    assert r.status_code == 200, r.text


def post_claude_call(url: str, key: str, session: str, tokens: int, cost_usd: float) -> None:
    """A Claude Code ``api_request`` log event, as Claude Code exports it."""
    fields = {
        "session.id": session,
        "event.name": "api_request",
        "event.sequence": 1,
        "model": "sim-economy",
        "input_tokens": tokens,
        "output_tokens": tokens,
        "cache_read_tokens": 0,
        "cache_creation_tokens": 0,
        "cost_usd": cost_usd,
        "duration_ms": 40,
    }
    record = {
        "timeUnixNano": str(time.time_ns()),
        "body": {"stringValue": "claude_code.api_request"},
        "attributes": [_attr(k, v) for k, v in fields.items()],
    }
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [_attr("service.name", "claude-code")]},
                "scopeLogs": [{"logRecords": [record]}],
            }
        ]
    }
    r = httpx.post(f"{url}/v1/logs", json=body, headers=_auth(key), timeout=10)
    assert r.status_code == 200, r.text


def chat(url: str, key: str, **headers: str) -> httpx.Response:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={**_auth(key), **headers},
        timeout=30,
    )


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def stored(live: Running, **where: Any) -> list[Any]:
    """Stored spans matching ``where`` (column = value), waiting (bounded) for one."""
    deadline = time.monotonic() + 10
    while True:
        with live.app.store.connect() as conn:
            query = select(spans).where(*(spans.c[k] == v for k, v in where.items()))
            rows = conn.execute(query).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def wait_budgets(app: Any, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(app.quotas.ruleset.budgets) < count:
        assert time.monotonic() < deadline, "the budgets never loaded"
        time.sleep(0.02)


def budget_spent(client: httpx.Client) -> dict[tuple[str, str], float]:
    listing = client.get("/api/v1/budgets")
    assert listing.status_code == 200, listing.text
    return {(b["scope"]["kind"], b["resource"]): b["spent"] for b in listing.json()["budgets"]}


def test_reported_usage_spends_no_budget_before_or_after_a_restart(
    tmp_path: Path, store_url: str
) -> None:
    """A span and a log event each reporting 10⁹ tokens (and $10⁶) spend nothing: budgets
    set afterwards start from the gateway's records only, admission goes on for the team
    and for another team, and so after a restart; usage shows the claims as reported."""
    home = tmp_path / "home"
    with gateway_corral(home, store_url, **FAST) as live:
        live.identity.create_team("search")
        bob = live.identity.create_user("bob", "search")
        _, bob_key = live.identity.create_key("search", bob.id, name="bob")
        assert chat(live.url, live.key).status_code == 200  # one real, metered call
        (metered,) = stored(live, kind="llm_request", source="gateway")
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "sim-economy",
            "gen_ai.usage.input_tokens": HUGE_TOKENS,
            "gen_ai.usage.output_tokens": HUGE_TOKENS,
        }
        # "gateway" as its service name, too: a claim of being Corral's own record.
        post_span(live.url, live.key, "gateway", attributes=attributes)
        post_claude_call(live.url, live.key, "s-1", HUGE_TOKENS, 1e6)
        reported = stored(live, kind="llm_request", key_id=live.key_id)
        deadline = time.monotonic() + 10
        while len(reported) < 3 and time.monotonic() < deadline:
            reported = stored(live, kind="llm_request", key_id=live.key_id)
        assert len(reported) == 3
        assert all(r.source != "gateway" for r in reported if r.span_id != metered.span_id)
        with live.corral.client() as admin:
            for scope, resource, limit in (
                ({"kind": "team", "ref": "payments"}, "tokens", 1_000_000),
                ({"kind": "org"}, "usd", 100),
            ):
                body = {"scope": scope, "resource": resource, "limit": limit}
                r = admin.put("/api/v1/budgets", json=body)
                assert r.status_code == 200, r.text
            spent = budget_spent(admin)
            tokens = sum(getattr(metered, f"{k}_tokens") for k in KINDS)
            assert spent[("team", "tokens")] == tokens
            assert spent[("org", "usd")] == round(metered.cost_nusd / 1e9, 9)
            usage = admin.get("/api/v1/usage", params={"by": "team", "since": "1h"}).json()
            [row] = [r for r in usage["rows"] if r["team"] == "payments"]
            assert (row["requests"], row["input_tokens"]) == (1, metered.input_tokens)
            assert row["reported"]["requests"] == 2
            assert row["reported"]["input_tokens"] == 2 * HUGE_TOKENS
            assert row["reported"]["cost_usd"] >= 1e6
            scrape = admin.get("/metrics").text
            assert str(HUGE_TOKENS) not in scrape
            assert "1e+09" not in scrape
        assert chat(live.url, live.key).status_code == 200
        assert chat(live.url, bob_key).status_code == 200
    # A restart restores each budget's spend from the spans: still only the gateway's.
    with run_corral(home, store_url, **FAST) as again:
        wait_budgets(again.app, 2)
        with again.client(ADMIN_KEY) as admin:
            spent = budget_spent(admin)
        assert spent[("team", "tokens")] < 1_000
        assert spent[("org", "usd")] < 1
        assert chat(again.url, live.key).status_code == 200
        assert chat(again.url, bob_key).status_code == 200


def test_another_teams_traceparent_does_not_hide_a_teams_calls(
    tmp_path: Path, store_url: str
) -> None:
    """Team search calls the gateway with team payments' traceparent: the gateway's record
    is search's, it does not mark payments' reported call a duplicate, and payments' usage
    and trace are unchanged."""
    with gateway_corral(tmp_path / "home", store_url, **FAST) as live:
        live.identity.create_team("search")
        bob = live.identity.create_user("bob", "search")
        _, bob_key = live.identity.create_key("search", bob.id, name="bob")
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "sim-economy",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 30,
            "gen_ai.response.id": "chatcmpl-payments-1",
        }
        post_span(
            live.url,
            live.key,
            "fixer-agent",
            traceId=trace_id,
            spanId=span_id,
            attributes=attributes,
        )
        (mine,) = stored(live, span_id=span_id)
        r = chat(live.url, bob_key, traceparent=traceparent(trace_id, span_id))
        assert r.status_code == 200, r.text
        (theirs,) = stored(live, kind="llm_request", source="gateway")
        assert theirs.parent_span_id == span_id  # bob's record names payments' span
        time.sleep(0.3)  # the record is stored: any matching has run
        (mine,) = stored(live, span_id=span_id)
        assert mine.duplicate_of is None, "another team's call hid this team's call"
        with live.corral.client() as admin:
            usage = admin.get("/api/v1/usage", params={"by": "team", "since": "1h"}).json()
            tree = admin.get(f"/api/v1/traces/{trace_id}").json()
        payments = next(r for r in usage["rows"] if r["team"] == "payments")
        assert payments["reported"]["requests"] == 1
        assert payments["reported"]["input_tokens"] == 120
        # In the tree, another team's call is a root of its own, not a child of this span.
        assert set(tree["roots"]) >= {span_id, theirs.span_id}
        assert (
            tree["totals"]["reported"]["llm_calls"],
            tree["totals"]["metered"]["llm_calls"],
        ) == (
            1,
            1,
        )


def test_an_agent_cannot_take_the_run_spans_id_before_or_after_corral_writes_it(
    tmp_path: Path, store_url: str
) -> None:
    """An agent sends an 'all good' span with its run's root span id (derived from the run
    id, so anyone can compute it) before Corral writes the run span, and again after:
    the stored span is Corral's both times."""
    run_id = "run_attack1"
    trace_id, root = run_trace(run_id)
    with gateway_corral(tmp_path / "home", store_url) as live:
        fake = {"traceId": trace_id, "spanId": root, "name": "all good"}
        post_span(live.url, live.key, "claude-code", attributes={"corral.kind": "run"}, **fake)
        (early,) = stored(live, span_id=root)
        assert early.name == "all good"
        now = time.time_ns()
        run_span = {
            **SPAN_DEFAULTS,
            "span_id": root,
            "trace_id": trace_id,
            "kind": "run",
            "name": "run claude-code",
            "org_id": "org_default",
            "team_id": live.team_id,
            "run_id": run_id,
            "status": "error",
            "error_message": "the agent exited with status 1",
            "start_ns": now - 10**9,
            "end_ns": now,
            "source": "corral",
        }
        live.app.record_spans(run_span)
        deadline = time.monotonic() + 10
        while stored(live, span_id=root)[0].source != "corral":
            assert time.monotonic() < deadline, "the agent's span kept the run's id"
            time.sleep(0.05)
        post_span(live.url, live.key, "claude-code", **fake)
        time.sleep(0.3)
        (row,) = stored(live, span_id=root)
        assert (row.source, row.name, row.status) == ("corral", "run claude-code", "error")
