"""Agent telemetry (OTLP logs and traces) captured from the real CLIs, mapped onto span rows.

The payloads under data/otlp/ were recorded from Claude Code 2.1.197 and Codex
0.171.0 running against Corral's simulator (see data/otlp/README.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from corral.traces.otlp import Batch, Identity, parse_logs, parse_traces
from corral.traces.spans import SPAN_DEFAULTS, SPAN_KINDS

DATA = Path(__file__).parent / "data" / "otlp"
IDENTITY = Identity("org_1", "team_pay", "usr_ada", "key_ada", None, "usr_ada")


def load(name: str, identity: Identity = IDENTITY) -> Batch:
    body = (DATA / name).read_bytes()
    content_type = "application/json" if ".json" in name else "application/x-protobuf"
    encoding = "gzip" if name.endswith(".gz") else None
    parse = parse_traces if "traces" in name else parse_logs
    return parse(body, content_type=content_type, content_encoding=encoding, identity=identity)


def by_kind(batch: Batch) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in batch.rows:
        out.setdefault(row["kind"], []).append(row)
    return out


def tokens(row: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        row["input_tokens"],
        row["cached_input_tokens"],
        row["cache_write_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    )


ALL_FIXTURES = sorted(p.name for p in DATA.iterdir() if p.name != "README.md")


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_row_is_a_complete_span_row(name: str) -> None:
    """Each captured payload maps to rows with exactly the span columns, valid ids and kinds."""
    batch = load(name)
    assert batch.rows
    assert batch.rejected == 0
    columns = set(SPAN_DEFAULTS)
    for row in batch.rows:
        assert set(row) - {"_request_body", "_response_body"} == columns
        assert row["kind"] in SPAN_KINDS
        assert len(row["trace_id"]) == 32
        assert len(row["span_id"]) == 16
        assert row["parent_span_id"] is None or len(row["parent_span_id"]) == 16
        assert 1.7e18 < row["start_ns"] <= row["end_ns"]
        assert row["status"] in ("ok", "error")


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_identity_comes_from_the_key_and_a_claimed_run_is_only_an_attribute(name: str) -> None:
    """Team, user, key and owner are the key's; a resource's corral.run_id claim made with a
    key that is not that run's is kept as an attribute, never as the span's run."""
    for row in load(name).rows:
        assert (row["org_id"], row["team_id"], row["user_id"]) == ("org_1", "team_pay", "usr_ada")
        assert (row["key_id"], row["owner_id"], row["run_id"]) == ("key_ada", "usr_ada", None)
        assert row["attributes"]["resource"]["corral.team"] == "payments"
        assert row["attributes"]["resource"]["corral.run_id"] == "run_x"


def test_a_run_key_s_run_wins_over_the_claimed_one() -> None:
    """When the key belongs to a run, that run is written whatever the payload claims."""
    run_key = Identity("org_1", "team_pay", "usr_ada", "key_run", "run_real", "usr_ada")
    assert {row["run_id"] for row in load("claude-code-tool-logs.pb", run_key).rows} == {"run_real"}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_parsing_twice_gives_the_same_span_ids(name: str) -> None:
    """Ids are deterministic and unique: a retried payload maps onto the same rows."""
    first = [row["span_id"] for row in load(name).rows]
    second = [row["span_id"] for row in load(name).rows]
    assert first == second
    assert len(set(first)) == len(first)


@pytest.mark.parametrize("name", ["claude-code-tool-logs.pb", "claude-code-tool-logs.json"])
def test_claude_code_events(name: str) -> None:
    """user_prompt → step, api_request → llm_request, tool_result → tool, the rest → event."""
    batch = load(name)
    kinds = by_kind(batch)
    assert Counter(row["kind"] for row in batch.rows) == {
        "step": 1,
        "llm_request": 2,
        "tool": 1,
        "event": 2,
    }
    (step,) = kinds["step"]
    assert step["_request_body"] in ("List the files here", "Run a command to list the files")
    assert "prompt" not in step["attributes"]
    assert {row["source"] for row in batch.rows} == {"claude-code"}
    assert {row["trace_id"] for row in batch.rows} == {step["trace_id"]}  # one session, one trace
    assert all(row["parent_span_id"] == step["span_id"] for row in batch.rows if row is not step)
    (tool,) = kinds["tool"]
    assert (tool["name"], tool["operation"], tool["status"]) == (
        "execute_tool Bash",
        "execute_tool",
        "ok",
    )
    assert "echo corral-sim" in tool["_request_body"]
    assert tool["end_ns"] - tool["start_ns"] > 0  # duration_ms moved the start back
    names = sorted(row["name"] for row in kinds["event"])
    assert names == ["claude_code.assistant_response", "claude_code.tool_decision"]


def test_claude_code_api_request_tokens_and_reported_cost() -> None:
    """Claude Code's uncached input, cache reads and writes and cost_usd land in their columns."""
    kinds = by_kind(load("claude-code-tool-logs.json"))
    first, second = kinds["llm_request"]
    assert (first["model_requested"], first["provider"], first["name"]) == (
        "sim-standard",
        "anthropic",
        "chat sim-standard",
    )
    assert tokens(first) == (3, 0, 2915, 97, 0)
    assert tokens(second) == (3, 2915, 115, 182, 0)
    assert (first["cost_nusd"], first["cost_source"]) == (20_658_750, "reported")  # $0.02065875
    assert (second["cost_nusd"], second["cost_source"]) == (6_741_250, "reported")
    assert first["attributes"]["request_id"] == "req_sim642e437"
    assert first["response_id"] is None  # a request id is not the message id
    assert first["end_ns"] - first["start_ns"] == 86_000_000


def test_claude_code_api_error() -> None:
    """api_error → llm_request with status error, the HTTP status and the message (gzip body)."""
    batch = load("claude-code-api-error-logs.pb.gz")
    (call,) = by_kind(batch)["llm_request"]
    assert (call["status"], call["http_status"], call["error_class"]) == ("error", 500, "api_error")
    assert "fault injected" in call["error_message"]
    assert (call["cost_nusd"], call["cost_source"]) == (0, None)
    assert [row["name"] for row in by_kind(batch)["event"]] == ["claude_code.api_retries_exhausted"]


def test_claude_code_trace_spans_stay_spans() -> None:
    """Claude Code's beta trace spans keep their tree but are not counted as model calls."""
    batch = load("claude-code-tool-traces.pb")
    assert {row["kind"] for row in batch.rows} == {"span"}
    ids = {row["name"]: row["span_id"] for row in batch.rows}
    interaction = ids["claude_code.interaction"]
    calls = [row for row in batch.rows if row["name"] == "claude_code.llm_request"]
    assert len(calls) == 2
    assert all(row["parent_span_id"] == interaction for row in calls)
    assert calls[0]["model_requested"] == "sim-standard"  # gen_ai.request.model is still read
    assert calls[0]["attributes"]["input_tokens"] == 3
    assert tokens(calls[0]) == (0, 0, 0, 0, 0)


def test_claude_code_failed_trace_span() -> None:
    """A span with status ERROR is an error row with the status message."""
    batch = load("claude-code-api-error-traces.pb.gz")
    (call,) = (row for row in batch.rows if row["name"] == "claude_code.llm_request")
    assert (call["status"], call["error_class"]) == ("error", "error")
    assert "fault injected" in call["error_message"]


@pytest.mark.parametrize("name", ["codex-tool-logs.pb", "codex-tool-logs.json"])
def test_codex_events(name: str) -> None:
    """One llm_request per response.completed with counts; SSE deltas are not stored."""
    batch = load(name)
    kinds = by_kind(batch)
    assert len(kinds["llm_request"]) == 2
    assert len(kinds["step"]) == 1
    assert len(kinds["tool"]) == 1
    assert not any(row["name"] == "codex.sse_event" for row in batch.rows)
    (step,) = kinds["step"]
    assert step["_request_body"] in ("List the files here", "Run a command to list the files")
    for row in kinds["llm_request"] + kinds["tool"]:
        assert row["parent_span_id"] == step["span_id"]
    (tool,) = kinds["tool"]
    assert tool["name"] == "execute_tool exec_command"
    assert "echo corral-sim" in tool["_request_body"]
    assert "corral-sim" in tool["_response_body"]
    assert {row["source"] for row in batch.rows} == {"codex_exec"}
    assert {row["trace_id"] for row in batch.rows} == {step["trace_id"]}


def test_codex_tokens_are_split_and_left_unpriced() -> None:
    """Codex counts (input with cached, output with reasoning) are split; Corral prices them."""
    first, second = by_kind(load("codex-tool-logs.pb"))["llm_request"]
    # codex exec reported, for the turn: 26503 input (12928 cached), 452 output (332 reasoning)
    assert tokens(first) == (13041, 0, 0, 17, 208)
    assert tokens(second) == (534, 12928, 0, 103, 124)
    for row in (first, second):
        assert (row["cost_nusd"], row["cost_source"]) == (0, None)
        assert (row["model_requested"], row["operation"]) == ("sim-standard", "chat")
        assert row["end_ns"] > row["start_ns"]  # started at the matching codex.api_request


def test_codex_internal_trace_spans_are_plain_spans() -> None:
    """Codex's trace exporter sends its internal tracing: span rows, no model calls, no tokens."""
    batch = load("codex-tool-traces-2.pb")
    assert {row["kind"] for row in batch.rows} == {"span"}
    assert all(sum(tokens(row)) == 0 for row in batch.rows)
    assert load("codex-tool-traces-2.json.gz").rows[0]["source"] == "codex_exec"


def test_gemini_cli_api_error_capture() -> None:
    """Gemini CLI 0.61 (real capture): prompt → step, api_error → failed llm_request under it."""
    batch = load("gemini-cli-api-error-logs.json")
    kinds = by_kind(batch)
    (step,) = kinds["step"]
    (call,) = kinds["llm_request"]
    assert step["_request_body"] == "Say hello"
    assert (call["status"], call["http_status"], call["error_class"]) == ("error", 404, "ApiError")
    assert (call["model_requested"], call["parent_span_id"]) == (
        "gemini-2.5-flash",
        step["span_id"],
    )
    assert {row["source"] for row in batch.rows} == {"gemini-cli"}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_content_never_stays_in_attributes(name: str) -> None:
    """Prompts, tool inputs/outputs and GenAI messages are in the bodies, not in attributes."""
    content = {
        "prompt",
        "tool_input",
        "tool_parameters",
        "arguments",
        "output",
        "response",
        "request_text",
        "gen_ai.input.messages",
        "gen_ai.system_instructions",
        "gen_ai.output.messages",
    }
    for row in load(name).rows:
        if row["source"] == "codex_exec" and row["kind"] == "span":
            continue  # Codex's internal tracing: no agent content keys
        assert not content & set(row["attributes"]), row["name"]


def test_claude_code_tool_decision_keeps_its_parameters_in_the_body() -> None:
    """tool_decision stays an event, its tool parameters in the request body."""
    rows = load("claude-code-tool-logs.pb").rows
    (decision,) = (row for row in rows if row["name"] == "claude_code.tool_decision")
    assert decision["kind"] == "event"
    assert "echo corral-sim" in decision["_request_body"]
    assert decision["attributes"]["decision"] == "accept"


# --- records built here: Gemini CLI calls that answered, records of no known agent ------------


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value
    return kv


def logs_request(service: str, *records: dict[str, Any]) -> bytes:
    request = ExportLogsServiceRequest()
    group = request.resource_logs.add()
    group.resource.attributes.append(_kv("service.name", service))
    scope = group.scope_logs.add()
    for fields in records:
        record = scope.log_records.add()
        record.time_unix_nano = fields.pop("time", 1_800_000_000_000_000_000)
        if "trace_id" in fields:
            record.trace_id = bytes.fromhex(fields.pop("trace_id"))
            record.span_id = bytes.fromhex(fields.pop("span_id"))
        if "body" in fields:
            record.body.string_value = fields.pop("body")
        record.attributes.extend(_kv(key, value) for key, value in fields.items())
    return request.SerializeToString()


def parse(body: bytes) -> Batch:
    return parse_logs(
        body, content_type="application/x-protobuf", content_encoding=None, identity=IDENTITY
    )


def test_gemini_cli_events() -> None:
    """Gemini CLI (documented shapes): api_response → llm_request, tool_call → tool."""
    session = {"session.id": "s-1", "prompt_id": "p-1"}
    body = logs_request(
        "gemini-cli",
        {"event.name": "gemini_cli.user_prompt", "prompt": "fix it", **session},
        {
            "event.name": "gemini_cli.api_response",
            "model": "gemini-2.5-pro",
            "input_token_count": 1000,
            "cached_content_token_count": 600,
            "output_token_count": 50,
            "thoughts_token_count": 30,
            "duration_ms": 1200,
            "status_code": 200,
            **session,
        },
        {
            "event.name": "gemini_cli.api_error",
            "model": "gemini-2.5-pro",
            "error": "quota",
            "error_type": "RESOURCE_EXHAUSTED",
            "status_code": 429,
            **session,
        },
        {
            "event.name": "gemini_cli.tool_call",
            "function_name": "read_file",
            "function_args": '{"path": "a.py"}',
            "success": False,
            "error": "missing",
            **session,
        },
    )
    step, call, error, tool = parse(body).rows
    assert (step["kind"], step["_request_body"]) == ("step", "fix it")
    assert call["kind"] == "llm_request"
    assert tokens(call) == (400, 600, 0, 50, 30)
    assert (call["provider"], call["end_ns"] - call["start_ns"]) == ("gcp.gemini", 1_200_000_000)
    assert (error["kind"], error["status"], error["http_status"]) == ("llm_request", "error", 429)
    assert error["error_class"] == "RESOURCE_EXHAUSTED"
    assert (tool["kind"], tool["name"], tool["status"]) == (
        "tool",
        "execute_tool read_file",
        "error",
    )
    assert tool["_request_body"] == '{"path": "a.py"}'
    assert {row["parent_span_id"] for row in (call, error, tool)} == {step["span_id"]}


def test_other_records_are_events_with_their_trace_context() -> None:
    """A record of no known agent is an event; its trace context is kept, its body attributed."""
    body = logs_request(
        "billing-worker",
        {"body": "charged 3 invoices", "trace_id": "ab" * 16, "span_id": "cd" * 8},
        {"body": "no context"},
    )
    first, second = parse(body).rows
    assert (first["kind"], first["name"], first["trace_id"]) == ("event", "log", "ab" * 16)
    assert first["parent_span_id"] == "cd" * 8
    assert first["attributes"]["body"] == "charged 3 invoices"
    assert second["parent_span_id"] is None
    assert second["trace_id"] != first["trace_id"]


def test_identical_records_get_distinct_ids() -> None:
    """Two records identical in every field are two rows, with stable distinct ids."""
    body = logs_request("svc", {"body": "tick"}, {"body": "tick"})
    ids = [row["span_id"] for row in parse(body).rows]
    assert len(set(ids)) == 2
    assert ids == [row["span_id"] for row in parse(body).rows]


def test_records_without_any_time_are_rejected() -> None:
    """A record with no time, no observed time and no event.timestamp is rejected, not stored."""
    body = logs_request("svc", {"body": "when?", "time": 0}, {"body": "now"})
    batch = parse(body)
    assert (len(batch.rows), batch.rejected) == (1, 1)
    assert "time" in batch.errors[0]


def test_identity_is_never_taken_from_the_payload() -> None:
    """Identity-looking resource or record attributes do not change the identity columns."""
    body = logs_request(
        "claude-code",
        {
            "event.name": "user_prompt",
            "org_id": "org_evil",
            "team_id": "team_evil",
            "user.id": "someone",
            "session.id": "s",
        },
    )
    (row,) = parse(body).rows
    assert (row["org_id"], row["team_id"], row["user_id"]) == ("org_1", "team_pay", "usr_ada")


def test_another_team_reusing_a_session_gets_ids_of_its_own() -> None:
    """Ids made from log records derive from the tenant too: another team replaying this
    team's session (same session and prompt ids, same records) lands in a trace of its own,
    and no span id of its can collide with (take) one of this team's."""
    other = Identity("org_1", "team_search", "usr_bob", "key_bob", None, "usr_bob")
    mine = load("claude-code-tool-logs.json").rows
    theirs = load("claude-code-tool-logs.json", other).rows
    assert {r["trace_id"] for r in mine}.isdisjoint({r["trace_id"] for r in theirs})
    assert {r["span_id"] for r in mine}.isdisjoint({r["span_id"] for r in theirs})


def test_an_agent_cannot_report_as_the_gateway() -> None:
    """A ``service.name`` that names one of Corral's own sources is kept, marked as a claim:
    its rows are never taken for the gateway's records (nor for Corral's run spans)."""
    for claimed in ("gateway", "corral"):
        body = logs_request(claimed, {"event.name": "x", "session.id": "s"})
        assert {row["source"] for row in parse(body).rows} == {f"otlp:{claimed}"}
