"""Trajectories over the admin API, against a live gateway on SQLite and on PostgreSQL.

Spans come from real gateway calls (to the in-process simulator) and from
agent-style rows recorded through the app's own recorder, so they take the
writer's path: bodies to the blob store, roll-ups in the same transaction.
Two teams prove the tenancy rule: a key never reads another team's spans or
bodies, and what it may not see is answered like what does not exist.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from tests.conftest import StartCorral
from tests.gateway.conftest import Running, gateway_corral

from corral.api.traces import Trace
from corral.identity.service import IdentityService
from corral.store.schema import keys as keys_table
from corral.traces.rollup import HOUR_NS
from corral.traces.spans import SPAN_DEFAULTS, new_span_id, new_trace_id, traceparent

RUN_ID = "run_demo0001"
SECRET = "sk-proj-" + "Zq7" * 16


@dataclass
class Tenants:
    """Team payments (ada's keys, a run key, its admin) and team search (bob, its admin)."""

    live: Running
    keys: dict[str, str]  # name -> secret
    ids: dict[str, dict[str, Any]]  # name -> identity chain of the key

    def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        return self.live.corral.get(path, self.keys[who], params=params)

    def record(self, *rows: dict[str, Any]) -> None:
        """Record rows through the app's recorder and wait until they are stored."""

        async def go() -> None:
            self.live.app.recorder.record(*rows)
            await self.live.app.recorder.flush()

        self.live.corral.server.call(go())

    def span(self, who: str, kind: str, name: str, start_ns: int, ms: float, **extra: Any) -> Any:
        """An agent-style span row of ``who``'s identity chain."""
        row = SPAN_DEFAULTS.copy()
        row.update(self.ids[who])
        row.update(
            span_id=new_span_id(),
            trace_id=new_trace_id(),
            kind=kind,
            name=name,
            status="ok",
            start_ns=start_ns,
            end_ns=start_ns + int(ms * 1e6),
            source="claude-code",
        )
        row.update(extra)
        return row


def _key(identity: IdentityService, team: str, user: str, name: str, **kw: Any) -> tuple[Any, str]:
    return identity.create_key(team, user, name=name, **kw)


@pytest.fixture
def tenants(tmp_path: Path, store_url: str, start_corral: StartCorral) -> Iterator[Tenants]:
    with gateway_corral(tmp_path / "home", store_url) as live:
        svc = live.identity
        svc.create_team("search")
        svc.create_user("bob", "search")
        made = {
            "ada": (svc.get_key(live.key_id), live.key),
            "ada-ci": _key(svc, "payments", "ada", "ada-ci"),
            "run": _key(svc, "payments", "ada", "run-key"),
            "pay-admin": _key(svc, "payments", "ada", "lead", role="team_admin"),
            "bob": _key(svc, "search", "bob", "bob-laptop"),
            "search-admin": _key(svc, "search", "bob", "search-lead", role="team_admin"),
        }
        with live.app.store.begin() as conn:  # runs have no API yet: make a run's key by hand
            conn.execute(
                update(keys_table)
                .where(keys_table.c.id == made["run"][0].id)
                .values(run_id=RUN_ID, updated_at=time.time())
            )
        ids = {
            who: {
                "org_id": key.org_id,
                "team_id": key.team_id,
                "user_id": key.user_id,
                "key_id": key.id,
                "owner_id": key.user_id,
                "run_id": RUN_ID if who == "run" else None,
            }
            for who, (key, _) in made.items()
        }
        yield Tenants(live, {who: raw for who, (_, raw) in made.items()}, ids)


def _chat(t: Tenants, who: str, text: str, parent: tuple[str, str] | None = None) -> Any:
    headers = {"authorization": f"Bearer {t.keys[who]}"}
    if parent is not None:
        headers["traceparent"] = traceparent(*parent)
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{t.live.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _gateway_span(t: Tenants, trace_id: str) -> dict[str, Any]:
    """The gateway's llm_request of a trace, once stored."""
    deadline = time.monotonic() + 10
    while True:
        found = t.get("pay-admin", "/api/v1/spans", trace=trace_id, kind="llm_request").json()
        gateway = [s for s in found["spans"] if s["source"] == "gateway"]
        if gateway or time.monotonic() > deadline:
            assert gateway, found
            return gateway[0]
        time.sleep(0.05)


def _build_run(t: Tenants) -> dict[str, Any]:
    """A run: agent -> step -> (tool error, gateway call -> attempt, agent's copy of the call),
    a second step, and an event in a second trace of the same run."""
    now = time.time_ns()
    agent = t.span("run", "agent", "claude-code", now - 2 * 10**9, 30_000)
    trace_id = agent["trace_id"]
    step1 = t.span("run", "step", "user_prompt", now - 10**9, 5_000, trace_id=trace_id,
                   parent_span_id=agent["span_id"])  # fmt: skip
    tool = t.span("run", "tool", "execute_tool Bash", now - 9 * 10**8, 120, trace_id=trace_id,
                  parent_span_id=step1["span_id"], status="error", error_class="tool_error",
                  error_message="exit status 2",
                  attributes={"gen_ai.tool.name": "Bash"})  # fmt: skip
    step2 = t.span("run", "step", "user_prompt", now + 10 * 10**9, 2_000, trace_id=trace_id,
                   parent_span_id=agent["span_id"])  # fmt: skip
    event = t.span("run", "event", "tool_decision", now, 0, attributes={"decision": "accept"})
    t.record(agent, step1, tool, step2, event)
    answer = _chat(
        t, "run", f"list the files please; my key is {SECRET}", (trace_id, step1["span_id"])
    )
    gateway = _gateway_span(t, trace_id)
    gateway_start = int(datetime.fromisoformat(gateway["start"]).timestamp() * 1e9)
    copy = t.span("run", "llm_request", "chat sim-economy", gateway_start + 10**6, 80,
                  trace_id=trace_id, parent_span_id=step1["span_id"],
                  duplicate_of=gateway["span_id"], input_tokens=gateway["input_tokens"],
                  output_tokens=gateway["output_tokens"], cost_nusd=999)  # fmt: skip
    t.record(copy)
    return {"agent": agent, "step1": step1, "tool": tool, "step2": step2, "event": event,
            "copy": copy, "gateway": gateway, "answer": answer}  # fmt: skip


def test_a_run_reads_as_one_tree_from_agent_to_upstream_attempt(tenants: Tenants) -> None:
    """The trace tree nests agent → step → tool / gateway call → attempt, children by start;
    totals count the call once although the agent reported it too."""
    run = _build_run(tenants)
    trace_id = run["agent"]["trace_id"]
    body = tenants.get("pay-admin", f"/api/v1/traces/{trace_id}").json()
    assert Trace.model_validate(body).model_dump(mode="json") == body  # follows its schema
    assert (body["kind"], body["roots"]) == ("trace", [run["agent"]["span_id"]])
    nodes = body["nodes"]
    shape = [(n["depth"], n["kind"], n["source"]) for n in nodes]
    assert shape == [
        (0, "agent", "claude-code"),
        (1, "step", "claude-code"),
        (2, "tool", "claude-code"),
        (2, "llm_request", "gateway"),
        (3, "attempt", "gateway"),
        (2, "llm_request", "claude-code"),
        (1, "step", "claude-code"),
    ]
    by_id = {n["span_id"]: n for n in nodes}
    assert by_id[run["step1"]["span_id"]]["children"] == [
        run["tool"]["span_id"],
        run["gateway"]["span_id"],
        run["copy"]["span_id"],
    ]
    tool = by_id[run["tool"]["span_id"]]
    assert (tool["status"], tool["error_class"], tool["error_message"]) == (
        "error",
        "tool_error",
        "exit status 2",
    )
    assert by_id[run["copy"]["span_id"]]["duplicate_of"] == run["gateway"]["span_id"]
    assert by_id[run["gateway"]["span_id"]]["has_bodies"] is True
    usage = run["answer"]["usage"]
    totals = body["totals"]
    assert (totals["spans"], totals["llm_calls"], totals["errors"]) == (7, 1, 1)
    assert totals["input_tokens"] + totals["cached_input_tokens"] == usage["prompt_tokens"]
    assert totals["cost_usd"] == run["gateway"]["cost_usd"] > 0  # the copy's cost is not added

    by_run = tenants.get("run", f"/api/v1/traces/{RUN_ID}").json()
    assert by_run["kind"] == "run"
    assert set(by_run["trace_ids"]) == {trace_id, run["event"]["trace_id"]}
    assert by_run["roots"] == [run["agent"]["span_id"], run["event"]["span_id"]]
    assert len(by_run["nodes"]) == 8


def test_a_span_shows_every_column_and_its_redacted_bodies(tenants: Tenants) -> None:
    """A span's detail has every column; bodies are the stored (redacted) text, or a note
    saying why there is none."""
    run = _build_run(tenants)
    gateway_id = run["gateway"]["span_id"]
    plain = tenants.get("ada", f"/api/v1/spans/{gateway_id}")
    assert plain.status_code == 200  # the run key sent it, and ada owns the run
    detail = tenants.get("run", f"/api/v1/spans/{gateway_id}", bodies="true").json()
    assert detail["kind"] == "llm_request"
    assert detail["key_id"] == tenants.ids["run"]["key_id"]
    assert detail["run_id"] == RUN_ID
    assert detail["request_blob"]
    assert detail["cost_nusd"] > 0
    request = detail["bodies"]["request"]
    assert request["available"]
    assert request["content_type"] == "application/json"
    assert "list the files please" in request["text"]
    assert SECRET not in request["text"]
    assert "REDACTED" in request["text"]
    assert request["meta"]["redactions"] >= 1
    response = detail["bodies"]["response"]
    assert run["answer"]["choices"][0]["message"]["content"][:20] in response["text"]

    raw = tenants.get("run", f"/api/v1/spans/{gateway_id}/bodies/request")
    assert raw.headers["content-type"] == "application/json"
    assert raw.text == request["text"]
    assert tenants.get("run", f"/api/v1/spans/{gateway_id}").json()["bodies"] is None

    now = time.time_ns()
    told = tenants.span("ada", "tool", "execute_tool Read", now, 5, _request_body="cat notes.txt")
    gone = tenants.span("ada", "tool", "execute_tool Read", now, 5,
                        request_blob=f"{tenants.ids['ada']['team_id']}/2001-01-01/"
                        f"{'0' * 15}1.request")  # fmt: skip
    meta = {"bytes": 2048, "redactions": 0}
    shaped = tenants.span("ada", "llm_request", "chat x", now, 5,
                          attributes={"bodies": {"request": meta}})  # fmt: skip
    tenants.record(told, gone, shaped)
    text = tenants.get("ada", f"/api/v1/spans/{told['span_id']}/bodies/request")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "cat notes.txt"
    notes = {}
    for row in (told, gone, shaped):
        shown = tenants.get("ada", f"/api/v1/spans/{row['span_id']}", bodies="true").json()
        notes[row["span_id"]] = shown["bodies"]
    assert "body capture was off" in notes[told["span_id"]]["response"]["note"]
    assert "no longer in the blob store" in notes[gone["span_id"]]["request"]["note"]
    assert "only metadata" in notes[shaped["span_id"]]["request"]["note"]
    assert notes[shaped["span_id"]]["request"]["meta"] == meta
    missing = tenants.get("ada", f"/api/v1/spans/{gone['span_id']}/bodies/request")
    assert missing.status_code == 404
    assert "no longer in the blob store" in missing.json()["error"]["message"]


def test_one_team_never_reads_another_teams_spans_or_bodies(tenants: Tenants) -> None:
    """Team search's keys get 404 for team payments' traces, spans and bodies, exactly as
    for ids that do not exist; searches and usage never show them."""
    run = _build_run(tenants)
    trace_id, gateway_id = run["agent"]["trace_id"], run["gateway"]["span_id"]
    mine = tenants.span("bob", "tool", "execute_tool Grep", time.time_ns(), 3)
    tenants.record(mine)
    _chat(tenants, "bob", "hello from search")

    def status(who: str, path: str) -> int:
        return tenants.get(who, path).status_code

    paths = [
        f"/api/v1/traces/{trace_id}",
        f"/api/v1/traces/{RUN_ID}",
        f"/api/v1/spans/{gateway_id}",
        f"/api/v1/spans/{gateway_id}?bodies=true",
        f"/api/v1/spans/{gateway_id}/bodies/request",
        f"/api/v1/spans/{gateway_id}/bodies/response",
    ]
    for path in paths:
        assert status("pay-admin", path) == 200, path
        assert status("run", path) == 200, path
        assert status("ada-ci", path) == 200, path  # any key of ada's: she owns the run
        for who in ("bob", "search-admin"):
            assert status(who, path) == 404, (who, path)
    # Refused exactly like an id that does not exist: same status, same words.
    hidden = tenants.get("search-admin", f"/api/v1/spans/{gateway_id}").json()
    absent = tenants.get("search-admin", "/api/v1/spans/00000000000000ff").json()
    assert hidden["error"]["message"] == f"span {gateway_id!r} not found"
    assert absent["error"]["message"] == "span '00000000000000ff' not found"
    assert hidden["error"]["type"] == absent["error"]["type"] == "not_found_error"
    ghost = tenants.get("search-admin", f"/api/v1/traces/{'f' * 32}").json()["error"]["message"]
    assert tenants.get("search-admin", f"/api/v1/traces/{trace_id}").json()["error"][
        "message"
    ] == ghost.replace("f" * 32, trace_id)

    for who in ("bob", "search-admin"):
        for params in ({}, {"team": "payments"}, {"trace": trace_id}, {"run": RUN_ID}):
            found = tenants.get(who, "/api/v1/spans", **params).json()["spans"]
            assert {s["team_id"] for s in found} <= {tenants.ids["bob"]["team_id"]}, params
    bob_sees = tenants.get("bob", "/api/v1/spans").json()["spans"]
    assert {s["key_id"] for s in bob_sees} == {tenants.ids["bob"]["key_id"]}
    assert mine["span_id"] in {s["span_id"] for s in bob_sees}
    assert mine["span_id"] not in {
        s["span_id"] for s in tenants.get("pay-admin", "/api/v1/spans").json()["spans"]
    }
    # The owner's other keys see the run's spans, and only the owner's.
    ada_sees = tenants.get("ada-ci", "/api/v1/spans").json()["spans"]
    assert ada_sees
    assert {s["user_id"] for s in ada_sees} == {tenants.ids["ada"]["user_id"]}

    teams = {r["team"] for r in tenants.get("search-admin", "/api/v1/usage").json()["rows"]}
    assert teams == {"search"}
    assert tenants.get("search-admin", "/api/v1/usage", team="payments").status_code == 403
    by_key = tenants.get("bob", "/api/v1/usage", by="key").json()["rows"]
    assert [r["key_id"] for r in by_key] == [tenants.ids["bob"]["key_id"]]
    org = {r["team"] for r in tenants.get("pay-admin", "/api/v1/usage").json()["rows"]}
    assert org == {"payments"}
    admin = tenants.live.corral.get("/api/v1/usage").json()["rows"]
    assert {r["team"] for r in admin} == {"payments", "search"}


def test_search_filters_attributes_and_pages(tenants: Tenants) -> None:
    """Filters combine; attribute paths match nested keys and flat dotted keys, numbers and
    booleans as such; pages follow the cursor newest first without gaps."""
    start = (time.time_ns() // 10**9 - 60) * 10**9  # whole seconds: exact as ISO times
    rows = [
        tenants.span("ada", "tool", f"execute_tool {name}", start + i * 10**9, 10,
                     attributes={"gen_ai.tool.name": name,
                                 "result": {"exit_code": code, "ok": code == 0}},
                     status="ok" if code == 0 else "error",
                     error_class=None if code == 0 else "tool_error")
        for i, (name, code) in enumerate(
            [("Bash", 0), ("Read", 0), ("Bash", 2), ("Edit", 0), ("Bash", 0), ("Grep", 1),
             ("Bash", 0)]
        )
    ]  # fmt: skip
    tenants.record(*rows)

    def ids(**params: Any) -> list[str]:
        r = tenants.get("ada", "/api/v1/spans", **params)
        assert r.status_code == 200, r.text
        return [s["span_id"] for s in r.json()["spans"]]

    newest_first = [r["span_id"] for r in reversed(rows)]
    assert ids() == newest_first
    bash = [r["span_id"] for r in reversed(rows) if "Bash" in r["name"]]
    assert ids(attr="gen_ai.tool.name=Bash") == bash
    assert ids(attr='"gen_ai.tool.name"=Bash') == bash
    assert ids(attr="attributes.result.exit_code=2") == [rows[2]["span_id"]]
    assert ids(attr="result.exit_code=2.0") == [rows[2]["span_id"]]
    assert ids(attr=["result.ok=false", "gen_ai.tool.name=Bash"]) == [rows[2]["span_id"]]
    assert ids(attr="result.ok=true", kind="tool", status="ok") == [
        r["span_id"] for r in reversed(rows) if r["status"] == "ok"
    ]
    assert ids(attr="gen_ai.tool.name=bash") == []
    assert ids(error_class="tool_error", source="claude-code", team="payments", user="ada") == [
        rows[5]["span_id"],
        rows[2]["span_id"],
    ]
    assert ids(kind="attempt") == []
    since = datetime.fromtimestamp((start + 3 * 10**9) / 1e9, tz=UTC).isoformat()
    until = datetime.fromtimestamp((start + 5 * 10**9) / 1e9, tz=UTC).isoformat()
    assert ids(since=since, until=until) == [rows[4]["span_id"], rows[3]["span_id"]]

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = tenants.get("ada", "/api/v1/spans", **params).json()
        pages.append([s["span_id"] for s in page["spans"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [span for page in pages for span in page] == newest_first

    errors = {
        "cursor=nope": 400,
        "limit=1001": 400,
        "kind=bogus": 400,
        "attr=novalue": 400,
        "since=soon": 400,
        "team=a%00b": 400,
        "attr=result.exit_code=1e999": 200,
        "attr=result.exit_code=12345678901234567890123": 200,
    }
    for query, code in errors.items():
        r = tenants.live.corral.get(f"/api/v1/spans?{query}")
        assert r.status_code == code, (query, r.text)
    assert tenants.get("ada", "/api/v1/traces/nonsense").status_code == 400


def _ns_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=UTC).isoformat().replace("+00:00", "Z")


def test_usage_is_exact_at_the_window_edges(tenants: Tenants) -> None:
    """Windows starting or ending mid-hour count exactly the calls inside them (roll-ups for
    whole hours, raw spans at the edges); refused, cancelled and duplicates as documented;
    what agents reported comes apart, as reported."""
    hour = (time.time_ns() // HOUR_NS - 6) * HOUR_NS
    minute = 60 * 10**9
    plan = [  # minute, who, status, latency ms
        (5, "ada", "ok", 120), (25, "ada", "error", 900), (55, "ada", "ok", 40),
        (65, "ada", "ok", 3_000), (95, "bob", "ok", 75), (130, "ada", "refused", 0),
        (175, "ada", "cancelled", 800), (185, "ada", "ok", 250), (239, "bob", "ok", 60),
        (250, "ada", "ok", 130),
    ]  # fmt: skip
    rows = [
        tenants.span(who, "llm_request", "chat sim-economy", hour + m * minute, ms,
                     status=status, model_requested="sim-economy", provider="sim",
                     input_tokens=100 + m, output_tokens=m, cost_nusd=1_000 * m, source="gateway")
        for m, who, status, ms in plan
    ]  # fmt: skip
    rows += [  # calls only an agent reported: shown as reported, never in the sums above
        tenants.span(who, "llm_request", "chat sim-economy", hour + m * minute, 20,
                     model_requested="sim-economy", provider="sim", input_tokens=7,
                     cost_nusd=10**6 * m)
        for m, who in ((10, "ada"), (59, "ada"), (150, "bob"))
    ]  # fmt: skip
    rows.append(tenants.span("ada", "llm_request", "chat sim-economy", hour + 70 * minute, 50,
                             duplicate_of=rows[3]["span_id"], input_tokens=10**6,
                             model_requested="sim-economy"))  # fmt: skip
    tenants.record(*rows)

    def expected(lo: int, hi: int) -> dict[str, tuple[int, ...]]:
        out: dict[str, list[int]] = {}
        for row in rows:
            if row["duplicate_of"] or not lo <= row["start_ns"] < hi:
                continue
            team = "payments" if row["key_id"] != tenants.ids["bob"]["key_id"] else "search"
            acc = out.setdefault(team, [0, 0, 0, 0, 0, 0])
            if row["source"] != "gateway":
                acc[4] += 1
                acc[5] += row["cost_nusd"]
                continue
            if row["status"] == "refused":
                acc[3] += 1
                continue
            acc[0] += 1
            acc[1] += row["status"] == "error"
            acc[2] += row["cost_nusd"]
        return {team: tuple(a) for team, a in out.items()}

    windows = [(0, 240), (20, 130), (25, 55), (30, 60), (55, 65), (60, 180), (7, 239), (1, 360)]
    for lo_m, hi_m in windows:
        lo, hi = hour + lo_m * minute, hour + hi_m * minute
        report = tenants.live.corral.get(
            "/api/v1/usage", params={"since": _ns_iso(lo), "until": _ns_iso(hi)}
        ).json()
        got = {
            r["team"]: (
                r["requests"], r["errors"], round(r["cost_usd"] * 1e9), r["refused"],
                r["reported"]["requests"], round(r["reported"]["cost_usd"] * 1e9),
            )
            for r in report["rows"]
        }  # fmt: skip
        assert got == expected(lo, hi), (lo_m, hi_m)

    since, until = _ns_iso(hour + 20 * minute), _ns_iso(hour + 200 * minute)
    grouped = tenants.get("pay-admin", "/api/v1/usage", by="team,model,hour", since=since,
                          until=until).json()  # fmt: skip
    assert grouped["dimensions"] == ["team", "model", "hour"]
    hours = [r["hour"] for r in grouped["rows"]]
    assert hours == sorted(hours)
    assert len(hours) == 4
    assert {r["model"] for r in grouped["rows"]} == {"sim-economy"}
    assert sum(r["requests"] for r in grouped["rows"]) == 5
    first = grouped["rows"][0]
    assert (first["errors"], first["error_rate"]) == (1, 0.5)
    assert first["latency_p50_ms"] is not None
    assert first["latency_p99_ms"] <= 1_000
    assert sum(r["cancelled"] for r in grouped["rows"]) == 1
    by_day = tenants.get("pay-admin", "/api/v1/usage", by="day,provider", since=since,
                         until=until).json()["rows"]  # fmt: skip
    assert sum(r["requests"] for r in by_day) == 5
    assert all(r["provider"] == "sim" and len(r["day"]) == 10 for r in by_day)


def test_the_openapi_document_describes_the_trace_routes(tenants: Tenants) -> None:
    """Every trace route is in the OpenAPI document with a real response schema."""
    doc = httpx.get(f"{tenants.live.url}/api/v1/openapi.json").json()
    paths = doc["paths"]
    for path in ["/api/v1/traces/{ref}", "/api/v1/spans", "/api/v1/spans/{span_id}"]:
        schema = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["$ref"].rsplit("/", 1)[1] in {"Trace", "SpanPage", "SpanDetail"}
    body = paths["/api/v1/spans/{span_id}/bodies/{part}"]["get"]["responses"]["200"]
    assert set(body["content"]) == {"application/json", "text/plain"}
    assert "patch" in paths["/api/v1/teams/{team}"]
    assert {"SpanNode", "TraceTotals", "TracePolicyIn", "TeamDetail"} <= set(
        doc["components"]["schemas"]
    )


def test_usage_keeps_its_old_shape_and_parameters(tenants: Tenants) -> None:
    """`by` with one dimension, `since` durations and the old row fields still work."""
    _chat(tenants, "ada", "hello")
    deadline = time.monotonic() + 10
    while not (rows := tenants.get("ada", "/api/v1/usage", by="model").json()["rows"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = tenants.get("ada", "/api/v1/usage", by="model", since="1h").json()
    assert (body["by"], body["dimensions"]) == ("model", ["model"])
    [row] = body["rows"]
    assert row["model"] == "sim-economy"
    assert {"requests", "input_tokens", "cost_usd", "latency_p95_ms", "error_rate"} <= set(row)
    assert "team" not in row
    assert rows == body["rows"]
    for bad in ({"by": "colour"}, {"by": "team,,model"}):
        r = tenants.get("ada", "/api/v1/usage", **bad)
        assert r.status_code == 400
        assert "'by'" in r.json()["error"]["message"]
    until = tenants.get("ada", "/api/v1/usage", until="soon")
    assert until.status_code == 400
    assert "invalid until" in until.json()["error"]["message"]


def test_team_trace_policy(tenants: Tenants) -> None:
    """The org admin or the team's own admin sets body capture and retention; null restores
    the default; bad values are refused with a message naming the field."""

    def patch(who: str, team: str, body: Any) -> httpx.Response:
        with tenants.live.corral.client(tenants.keys.get(who)) as c:
            return c.patch(f"/api/v1/teams/{team}", json=body)

    shown = tenants.live.corral.get("/api/v1/teams/payments").json()
    assert (shown["body_capture"], shown["retention_days"]) == (None, None)
    assert (shown["effective_body_capture"], shown["effective_retention_days"]) == ("full", 30)

    set_ = patch("admin", "payments", {"body_capture": "metadata", "retention_days": 7})
    assert set_.status_code == 200, set_.text
    assert (set_.json()["body_capture"], set_.json()["retention_days"]) == ("metadata", 7)
    lead = patch("pay-admin", "payments", {"retention_days": 14.5}).json()
    assert (lead["body_capture"], lead["retention_days"]) == ("metadata", 14.5)
    assert tenants.live.corral.get("/api/v1/teams/payments").json() == lead
    reset = patch("pay-admin", "payments", {"body_capture": None}).json()
    assert (reset["body_capture"], reset["effective_body_capture"]) == (None, "full")

    assert patch("search-admin", "payments", {"retention_days": 1}).status_code == 403
    assert patch("ada", "payments", {"retention_days": 1}).status_code == 403
    assert patch("admin", "nope", {"retention_days": 1}).status_code == 404
    for body, words in [
        ({"body_capture": "everything"}, "body_capture must be 'off', 'metadata' or 'full'"),
        ({"retention_days": 0}, "retention_days must be a number of days above 0"),
        ({"retention_days": 10_000}, "at most 3650"),
    ]:
        r = patch("admin", "payments", body)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"]
    assert patch("admin", "payments", {"colour": "red"}).status_code == 400
    final = tenants.live.corral.get("/api/v1/teams/payments").json()
    assert (final["body_capture"], final["retention_days"]) == (None, 14.5)

    assert patch("pay-admin", "payments", {"body_capture": "off"}).status_code == 200
    trace_id = new_trace_id()
    _chat(tenants, "ada", "nothing of this is kept", (trace_id, new_span_id()))
    quiet = _gateway_span(tenants, trace_id)  # this process applied the policy at once
    shown = tenants.get("ada", f"/api/v1/spans/{quiet['span_id']}", bodies="true").json()
    assert shown["request_blob"] is None
    assert "body capture was off" in shown["bodies"]["request"]["note"]
