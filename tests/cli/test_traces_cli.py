"""`corral trace`, `corral spans`, `corral usage --by ...` and `corral teams set`, driven
through click against a live gateway (SQLite; the API tests cover both stores)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cli.test_cli_admin import run, run_json
from tests.conftest import StartCorral
from tests.gateway.conftest import Running, gateway_corral

from corral.traces.rollup import HOUR_NS
from corral.traces.spans import SPAN_DEFAULTS, new_span_id, new_trace_id, traceparent

SECRET = "sk-ant-api03-" + "x9Q" * 20


@pytest.fixture
def live(tmp_path: Path, start_corral: StartCorral) -> Iterator[Running]:
    """A live gateway with team payments (ada) and team search (bob), each with an admin key."""
    with gateway_corral(tmp_path / "home", f"sqlite:///{tmp_path / 'cli.db'}") as running:
        svc = running.identity
        svc.create_team("search")
        svc.create_user("bob", "search")
        yield running


def _admin_key(live: Running, team: str, user: str) -> str:
    return live.identity.create_key(team, user, role="team_admin")[1]


def _record(live: Running, *rows: dict[str, Any]) -> None:
    async def go() -> None:
        live.app.recorder.record(*rows)
        await live.app.recorder.flush()

    live.corral.server.call(go())


def _span(live: Running, kind: str, name: str, start_ns: int, ms: float, **extra: Any) -> Any:
    row = SPAN_DEFAULTS.copy()
    row.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        org_id="org_default",
        team_id=live.team_id,
        user_id=live.user_id,
        key_id=live.key_id,
        kind=kind,
        name=name,
        status="ok",
        start_ns=start_ns,
        end_ns=start_ns + int(ms * 1e6),
        source="claude-code",
    )
    row.update(extra)
    return row


def _trajectory(live: Running) -> dict[str, Any]:
    """agent -> step -> (tool error, a real gateway call, the agent's copy of that call)."""
    now = time.time_ns()
    agent = _span(live, "agent", "claude-code", now - 2 * 10**9, 9_000)
    trace_id = agent["trace_id"]
    step = _span(live, "step", "user_prompt", now - 10**9, 4_000, trace_id=trace_id,
                 parent_span_id=agent["span_id"])  # fmt: skip
    tool = _span(live, "tool", "execute_tool Bash", now - 9 * 10**8, 35, trace_id=trace_id,
                 parent_span_id=step["span_id"], status="error", error_class="tool_error",
                 error_message="exit status 2",
                 attributes={"gen_ai.tool.name": "Bash", "cwd": "/srv"})  # fmt: skip
    _record(live, agent, step, tool)
    headers = {
        "authorization": f"Bearer {live.key}",
        "traceparent": traceparent(trace_id, step["span_id"]),
    }
    ask = {"role": "user", "content": f"deploy it; token {SECRET}"}
    body = {"model": "sim-economy", "messages": [ask]}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    [gateway] = live.records()
    copy = _span(live, "llm_request", "chat sim-economy", gateway.start_ns + 10**6, 50,
                 trace_id=trace_id, parent_span_id=step["span_id"],
                 duplicate_of=gateway.span_id)  # fmt: skip
    _record(live, copy)
    return {"trace_id": trace_id, "gateway": gateway.span_id, "tool": tool["span_id"]}


def test_trace_prints_the_tree_with_errors_duplicates_and_totals(live: Running) -> None:
    """One line a span, nested under its parent; the error names its class and message; the
    agent's copy of a gateway call is marked; a totals line counts the call once."""
    made = _trajectory(live)
    out = run(live.corral, "trace", made["trace_id"]).stdout
    lines = out.splitlines()
    assert lines[0] == f"trace {made['trace_id']}"
    expected = [
        "└── agent claude-code  ",
        "    └── step user_prompt  ",
        "        ├── tool execute_tool Bash  ",
        "        ├── llm_request chat sim-economy (gateway)  ",
        "        │   └── attempt sim/sim-economy  ",
        "        └── llm_request chat sim-economy (claude-code)  ",
    ]
    assert len(lines) == len(expected) + 2
    for line, start in zip(lines[1:-1], expected, strict=True):
        assert line.startswith(start), (line, start)
    tool_line = next(line for line in lines if "execute_tool Bash" in line)
    assert "error tool_error: exit status 2" in tool_line
    assert "35 ms" in tool_line
    copy_line = [line for line in lines if "chat sim-economy" in line][-1]
    assert "(also seen by the gateway)" in copy_line
    gateway_line = next(line for line in lines if "chat sim-economy" in line)
    assert "tok" in gateway_line
    assert "$" in gateway_line
    assert "(bodies)" in gateway_line
    assert all(line.rstrip().endswith(tuple("0123456789abcdef")) for line in lines[1:-1])
    assert lines[-1].startswith("Total: 6 spans, 1 LLM call, ")
    assert "1 error" in lines[-1]

    as_json = run_json(live.corral, "trace", made["trace_id"])
    api = live.corral.get(f"/api/v1/traces/{made['trace_id']}").json()
    assert as_json == api
    bad = run(live.corral, "trace", "nonsense", ok=False)
    assert bad.exit_code == 1
    assert "neither a trace id (32 hex digits) nor a run id" in bad.output


def test_spans_show_prints_fields_attributes_and_bodies_verbatim(live: Running) -> None:
    """`spans show --bodies` prints the columns, the attributes and the stored bodies as they
    are (the redaction marker's brackets survive); --json is the API's answer."""
    made = _trajectory(live)
    out = run(live.corral, "spans", "show", made["tool"]).stdout
    assert "execute_tool Bash" in out
    assert "tool_error" in out
    assert '"cwd": "/srv"' in out
    assert "── request body" not in out
    shown = run(live.corral, "spans", "show", made["gateway"], "--bodies").stdout
    assert "── request body (application/json" in shown
    assert "deploy it; token" in shown
    assert SECRET not in shown
    assert "[REDACTED:" in shown
    assert "── response body" in shown
    none = run(live.corral, "spans", "show", made["tool"], "--bodies").stdout
    assert "body capture was off for the team, or the span carried none" in none
    as_json = run_json(live.corral, "spans", "show", made["gateway"], "--bodies")
    assert as_json["bodies"]["request"]["available"] is True
    assert as_json["span_id"] == made["gateway"]
    missing = run(live.corral, "spans", "show", "00000000000000ff", ok=False)
    assert missing.exit_code == 1
    assert "span '00000000000000ff' not found (HTTP 404" in missing.output


def test_spans_search_filters_and_pages(live: Running) -> None:
    """Filters and --attr narrow the search; a page that is not the last tells how to go on."""
    made = _trajectory(live)
    table = run(live.corral, "spans", "search", "--attr", "gen_ai.tool.name=Bash").stdout
    assert made["tool"] in table
    assert "error tool_error" in table
    assert made["gateway"] not in table
    page = run(live.corral, "spans", "search", "--limit", "2")
    assert "More: --cursor " in page.stderr
    cursor = page.stderr.split("--cursor ")[1].split()[0]
    rest = run_json(live.corral, "spans", "search", "--limit", "2", "--cursor", cursor)
    assert set(rest) == {"spans", "next_cursor"}
    first = run_json(live.corral, "spans", "search", "--limit", "2")["spans"]
    assert not {s["span_id"] for s in first} & {s["span_id"] for s in rest["spans"]}
    calls = run_json(live.corral, "spans", "search", "--kind", "llm_request", "--source",
                     "gateway", "--model", "sim-economy")  # fmt: skip
    assert [s["span_id"] for s in calls["spans"]] == [made["gateway"]]
    assert run(live.corral, "spans", "search", "--status", "cancelled").stdout.strip() == (
        "Spans: none."
    )
    bad = run(live.corral, "spans", "search", "--attr", "novalue", ok=False)
    assert bad.exit_code == 1
    assert "invalid attribute filter" in bad.output


def test_usage_by_several_dimensions_with_latency_and_errors(live: Running) -> None:
    """`usage --by team,model,day --until` groups by every dimension asked and shows error
    rate and latency percentiles; --json keeps printing the rows."""
    hour = (time.time_ns() // HOUR_NS - 3) * HOUR_NS
    rows = [
        _span(live, "llm_request", "chat", hour + m * 60 * 10**9, ms, status=status,
              model_requested=model, provider="sim", input_tokens=100, output_tokens=10,
              cost_nusd=2_000_000, source="gateway")
        for m, ms, status, model in [(10, 300, "ok", "sim-economy"), (20, 900, "error",
                                     "sim-economy"), (70, 1_200, "ok", "sim-standard")]
    ]  # fmt: skip
    _record(live, *rows)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour / 1e9))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour / 1e9 + 3600))
    args = ["usage", "--by", "team,model,day", "--since", since, "--until", until]
    out = run(live.corral, *args).stdout
    assert "Usage by team, model, day since" in out
    for text in ["p50", "p95", "p99", "1 (50.0%)", "sim-economy", "payments", "$0.004000"]:
        assert text in out, text
    assert "sim-standard" not in out  # started after --until
    [row] = run_json(live.corral, *args)
    assert (row["team"], row["model"], row["requests"], row["errors"]) == (
        "payments",
        "sim-economy",
        2,
        1,
    )
    assert row["error_rate"] == 0.5
    assert 200 <= row["latency_p50_ms"] <= 1_000
    by_hour = run_json(live.corral, "usage", "--by", "hour,model", "--since", since)
    assert [(r["model"], r["requests"]) for r in by_hour] == [
        ("sim-economy", 2),
        ("sim-standard", 1),
    ]
    bad = run(live.corral, "usage", "--by", "team,colour", ok=False)
    assert bad.exit_code == 2
    assert "'colour' is not one of team, user, key, model, provider, day, hour" in bad.output


def test_teams_set_changes_the_trace_policy(live: Running) -> None:
    """`teams set` sets or resets body capture and retention; `teams show` shows what
    applies; another team's admin may not."""
    out = run(live.corral, "teams", "set", "payments", "--bodies", "metadata",
              "--retention-days", "14").stdout  # fmt: skip
    assert out.strip() == "Team payments: bodies metadata, retention 14 days."
    shown = run(live.corral, "teams", "show", "payments").stdout
    assert "metadata" in shown
    assert "14 days" in shown
    lead = _admin_key(live, "payments", "ada")
    back = run_json(live.corral, "teams", "set", "payments", "--bodies", "default", key=lead)
    assert (back["body_capture"], back["effective_body_capture"]) == (None, "full")
    assert "full (default)" in run(live.corral, "teams", "show", "payments").stdout
    reset = run(live.corral, "teams", "set", "payments", "--retention-days", "default").stdout
    assert reset.strip() == "Team payments: bodies full (default), retention 30 days (default)."
    other = _admin_key(live, "search", "bob")
    refused = run(live.corral, "teams", "set", "payments", "--bodies", "off", key=other, ok=False)
    assert refused.exit_code == 1
    assert "may not manage" in refused.output
    for args, words in [
        (["teams", "set", "payments"], "give --bodies, --retention-days or both"),
        (["teams", "set", "payments", "--retention-days", "0"], "--retention-days"),
        (["teams", "set", "payments", "--bodies", "some"], "--bodies"),
    ]:
        bad = run(live.corral, *args, ok=False)
        assert bad.exit_code == 2, args
        assert words in bad.output


def test_another_teams_keys_read_nothing_from_the_cli(live: Running) -> None:
    """With team search's admin key, team payments' trace and spans do not exist."""
    made = _trajectory(live)
    own = _admin_key(live, "payments", "ada")
    other = _admin_key(live, "search", "bob")
    assert "claude-code" in run(live.corral, "trace", made["trace_id"], key=own).stdout
    assert run(live.corral, "spans", "show", made["gateway"], "--bodies", key=own).exit_code == 0
    for args in (["trace", made["trace_id"]], ["spans", "show", made["gateway"], "--bodies"]):
        hidden = run(live.corral, *args, key=other, ok=False)
        assert hidden.exit_code == 1
        assert "not found (HTTP 404, not_found_error)" in hidden.output
        assert SECRET[:8] not in hidden.output
    for args in (["spans", "search"], ["spans", "search", "--team", "payments"]):
        assert run(live.corral, *args, key=other).stdout.strip() == "Spans: none."
    assert run_json(live.corral, "usage", key=other) == []


def test_store_reports_its_size_and_prunes_past_the_teams_window(live: Running) -> None:
    """`corral store --prune` deletes spans older than the team's window and reports sizes;
    a team admin may not run it."""
    now = time.time_ns()
    old = _span(live, "llm_request", "chat old", now - 40 * 86_400 * 10**9, 5)
    recent = _span(live, "llm_request", "chat recent", now - 10**9, 5)
    _record(live, old, recent)
    before = run_json(live.corral, "store")["size"]
    assert before["spans"] >= 2
    assert before["database_bytes"] > 0
    pruned = run_json(live.corral, "store", "--prune")
    assert pruned["retention"]["spans_deleted"] == 1, "30 days by default: the 40-day-old span"
    assert pruned["size"]["spans"] == before["spans"] - 1
    text = run(live.corral, "store").output
    assert "spans" in text
    assert "on disk" in text
    refused = run(live.corral, "store", key=_admin_key(live, "payments", "ada"), ok=False)
    assert refused.exit_code != 0


def _claude_event(live: Running, session: str, seq: int, tokens_in: int, tokens_out: int) -> None:
    """A Claude Code ``api_request`` event (no ids, as Claude Code exports it)."""
    from tests.traces.test_telemetry_money import _attr

    fields = {
        "session.id": session, "event.name": "api_request", "event.sequence": seq,
        "model": "sim-economy", "input_tokens": tokens_in, "output_tokens": tokens_out,
        "cache_read_tokens": 0, "cache_creation_tokens": 0, "cost_usd": 0.5, "duration_ms": 30,
    }  # fmt: skip
    record = {
        "timeUnixNano": str(time.time_ns()),
        "body": {"stringValue": "claude_code.api_request"},
        "attributes": [_attr(k, v) for k, v in fields.items()],
    }
    resource = {"attributes": [_attr("service.name", "claude-code")]}
    body = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [record]}]}]}
    headers = {"authorization": f"Bearer {live.key}"}
    r = httpx.post(f"{live.url}/v1/logs", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text


def test_trace_footer_totals_the_calls_the_tree_shows(
    tmp_path: Path, store_url: str, start_corral: StartCorral
) -> None:
    """A Claude Code turn seen only through its telemetry: one call the gateway metered in a
    trace of its own (matched by fingerprint), one the gateway never saw. The footer counts
    both, says which is metered and which reported, and the API's totals agree."""
    with gateway_corral(tmp_path / "home", store_url) as live:
        r = httpx.post(
            f"{live.url}/v1/chat/completions",
            json={"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {live.key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        (record,) = live.records()
        _claude_event(live, "turn-1", 1, usage["prompt_tokens"], usage["completion_tokens"])
        _claude_event(live, "turn-1", 2, 1_000, 50)
        calls = live.records(wait_for=3)
        agent_calls = [c for c in calls if c.source == "claude-code"]
        assert [c.duplicate_of for c in agent_calls].count(record.span_id) == 1
        trace_id = agent_calls[0].trace_id
        assert trace_id != record.trace_id  # the gateway's record is in a trace of its own
        out = run(live.corral, "trace", trace_id).stdout
        footer = out.strip().splitlines()[-1]
        assert footer.startswith("Total: 2 spans, 2 LLM calls, "), footer
        assert "metered by the gateway: 1 call" in footer
        assert "reported by agents: 1 call, 1,000→50 tokens, $0.5000" in footer
        totals = live.corral.get(f"/api/v1/traces/{trace_id}").json()["totals"]
        assert (totals["metered"]["llm_calls"], totals["reported"]["llm_calls"]) == (1, 1)
        assert totals["metered"]["cost_usd"] == round(record.cost_nusd / 1e9, 9)
        assert totals["cost_usd"] == pytest.approx(totals["metered"]["cost_usd"] + 0.5)


def test_spans_search_status_error_finds_a_refused_call(
    tmp_path: Path, store_url: str, start_corral: StartCorral
) -> None:
    """A call a budget refused (402) is found by --status error (and by --status refused),
    in the CLI and the API alike, with its refusal's code."""
    budgets = [{"team": "payments", "tokens": 1, "window": "day"}]
    settings: dict[str, Any] = {"budgets": budgets, "quota_refresh_interval": 0.1}
    with gateway_corral(tmp_path / "home", store_url, **settings) as live:
        deadline = time.monotonic() + 10
        while not live.app.quotas.ruleset.budgets:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(
            f"{live.url}/v1/chat/completions",
            json={"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {live.key}"},
            timeout=30,
        )
        assert r.status_code == 402, r.text
        (refused,) = live.records()
        assert (refused.status, refused.http_status) == ("refused", 402)
        for status in ("error", "refused"):
            found = run_json(live.corral, "spans", "search", "--status", status)["spans"]
            assert [s["span_id"] for s in found] == [refused.span_id], status
            api = live.corral.get("/api/v1/spans", params={"status": status}).json()["spans"]
            assert [s["span_id"] for s in api] == [refused.span_id], status
        table = run(live.corral, "spans", "search", "--status", "error").stdout
        assert "refused budget_exceeded" in table
        assert run(live.corral, "spans", "search", "--status", "ok").stdout.strip() == (
            "Spans: none."
        )
