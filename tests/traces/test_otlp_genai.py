"""GenAI semantic-convention spans from the real OpenTelemetry SDK and OTLP/HTTP exporter.

The exporter sends to a capture server on loopback; what it sent is parsed as
Corral's endpoint would parse it, in protobuf, gzip and (converted) JSON.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from corral.traces.otlp import Batch, Identity, parse_traces

IDENTITY = Identity("org_1", "team_1", "usr_1", "key_1", None, "usr_1")
INPUT = [{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
SYSTEM = [{"type": "text", "content": "You are terse."}]
OUTPUT = [{"role": "assistant", "parts": [{"type": "text", "content": "Rainy."}]}]


@dataclass
class Captured:
    path: str
    content_type: str
    content_encoding: str | None
    body: bytes


@dataclass
class Sink:
    """An OTLP/HTTP receiver on loopback that keeps every request."""

    url: str
    requests: list[Captured] = field(default_factory=list)


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A capture server for one test, stopped afterwards."""
    captured: list[Captured] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            captured.append(
                Captured(
                    self.path,
                    self.headers.get("Content-Type") or "",
                    self.headers.get("Content-Encoding"),
                    body,
                )
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Sink(f"http://127.0.0.1:{server.server_address[1]}", captured)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def export_agent_turn(sink: Sink, compression: Compression = Compression.NoCompression) -> None:
    """An agent turn as a GenAI-instrumented app reports it: agent, chat, tool, failed chat."""
    resource = Resource.create(
        {"service.name": "support-bot", "service.version": "1.2.0", "corral.run_id": "run_9"}
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("genai-test")
    with tracer.start_as_current_span(
        "invoke_agent helper",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"},
    ):
        with tracer.start_as_current_span("chat gpt-5", kind=SpanKind.CLIENT) as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-5",
                    "gen_ai.response.model": "gpt-5-2025-08-07",
                    "gen_ai.response.id": "chatcmpl-42",
                    "gen_ai.response.finish_reasons": ["tool_calls"],
                    "gen_ai.usage.input_tokens": 1500,
                    "gen_ai.usage.cache_read.input_tokens": 1024,
                    "gen_ai.usage.cache_creation.input_tokens": 100,
                    "gen_ai.usage.output_tokens": 300,
                    "gen_ai.usage.reasoning.output_tokens": 200,
                    "gen_ai.input.messages": orjson.dumps(INPUT).decode(),
                    "gen_ai.system_instructions": orjson.dumps(SYSTEM).decode(),
                    "gen_ai.output.messages": orjson.dumps(OUTPUT).decode(),
                    "server.address": "api.openai.com",
                    "app.trace_dump": "x" * 10_000,
                }
            )
            chat.add_event("gen_ai.client.retry", {"attempt": 1})
        with tracer.start_as_current_span("execute_tool get_weather") as tool:
            tool.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "get_weather",
                    "gen_ai.tool.call.id": "call_1",
                    "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                    "gen_ai.tool.call.result": '{"sky": "rain"}',
                }
            )
        with tracer.start_as_current_span("chat gpt-5", kind=SpanKind.CLIENT) as failed:
            failed.set_attributes(
                {"gen_ai.operation.name": "chat", "error.type": "rate_limit_exceeded"}
            )
            failed.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
    provider.shutdown()


def parse(captured: Captured) -> Batch:
    return parse_traces(
        captured.body,
        content_type=captured.content_type,
        content_encoding=captured.content_encoding,
        identity=IDENTITY,
    )


def rows_by_name(batch: Batch) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in batch.rows:
        out.setdefault(row["name"], []).append(row)
    return out


def all_rows(sink: Sink) -> Batch:
    batches = [parse(captured) for captured in sink.requests]
    return Batch([row for b in batches for row in b.rows], sum(b.rejected for b in batches), [])


def test_chat_span_maps_to_an_llm_request(sink: Sink) -> None:
    """A semconv chat span: kind, model, provider, ids, finish reason, split usage."""
    export_agent_turn(sink)
    assert {c.content_type for c in sink.requests} == {"application/x-protobuf"}
    rows = rows_by_name(all_rows(sink))
    chat, failed = rows["chat gpt-5"]
    assert (chat["kind"], chat["operation"], chat["status"]) == ("llm_request", "chat", "ok")
    assert (chat["model_requested"], chat["model_served"]) == ("gpt-5", "gpt-5-2025-08-07")
    assert (chat["provider"], chat["response_id"], chat["finish_reason"]) == (
        "openai",
        "chatcmpl-42",
        "tool_calls",
    )
    # 1500 input = 376 uncached + 1024 read + 100 written; 300 output = 100 + 200 reasoning
    assert (chat["input_tokens"], chat["cached_input_tokens"], chat["cache_write_tokens"]) == (
        376,
        1024,
        100,
    )
    assert (chat["output_tokens"], chat["reasoning_tokens"]) == (100, 200)
    assert (chat["cost_nusd"], chat["cost_source"], chat["source"]) == (0, None, "support-bot")
    assert chat["run_id"] is None  # a claim; only a run's own key sets the run
    assert (failed["status"], failed["error_class"]) == ("error", "rate_limit_exceeded")
    assert failed["error_message"] == "429 Too Many Requests"


def test_content_moves_into_bodies(sink: Sink) -> None:
    """Messages and tool arguments/results leave attributes for the request/response bodies."""
    export_agent_turn(sink)
    rows = rows_by_name(all_rows(sink))
    chat = rows["chat gpt-5"][0]
    assert orjson.loads(chat["_request_body"]) == {
        "gen_ai.system_instructions": SYSTEM,
        "gen_ai.input.messages": INPUT,
    }
    assert orjson.loads(chat["_response_body"]) == OUTPUT
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in chat["attributes"])
    (tool,) = rows["execute_tool get_weather"]
    assert (tool["kind"], tool["_request_body"], tool["_response_body"]) == (
        "tool",
        '{"city": "Paris"}',
        '{"sky": "rain"}',
    )
    assert tool["attributes"]["gen_ai.tool.name"] == "get_weather"
    assert "gen_ai.tool.call.arguments" not in tool["attributes"]


def test_attributes_are_capped_and_carry_resource_and_events(sink: Sink) -> None:
    """Long strings are cut with a marker; resource facts and span events are kept compactly."""
    export_agent_turn(sink)
    chat = rows_by_name(all_rows(sink))["chat gpt-5"][0]
    attrs = chat["attributes"]
    assert attrs["app.trace_dump"].startswith("x" * 4096)
    assert attrs["app.trace_dump"].endswith("…[cut 5904 chars]")
    assert attrs["server.address"] == "api.openai.com"
    assert attrs["resource"]["service.version"] == "1.2.0"
    assert attrs["resource"]["corral.run_id"] == "run_9"
    assert attrs["resource"]["otel.scope.name"] == "genai-test"
    (event,) = attrs["events"]
    assert (event["name"], event["attributes"]) == ("gen_ai.client.retry", {"attempt": 1})


def test_tree_of_agent_chat_and_tool(sink: Sink) -> None:
    """The agent span is the parent of its chat and tool spans, all in one trace."""
    export_agent_turn(sink)
    batch = all_rows(sink)
    rows = rows_by_name(batch)
    (agent,) = rows["invoke_agent helper"]
    assert (agent["kind"], agent["parent_span_id"]) == ("agent", None)
    children = [row for row in batch.rows if row is not agent]
    assert {row["parent_span_id"] for row in children} == {agent["span_id"]}
    assert {row["trace_id"] for row in batch.rows} == {agent["trace_id"]}


def test_gzip_export(sink: Sink) -> None:
    """The exporter's gzip compression is undone; the rows are the uncompressed ones."""
    export_agent_turn(sink, Compression.Gzip)
    assert {c.content_encoding for c in sink.requests} == {"gzip"}
    assert sorted(rows_by_name(all_rows(sink))) == [
        "chat gpt-5",
        "execute_tool get_weather",
        "invoke_agent helper",
    ]


def otlp_json(body: bytes, *, snake_case: bool) -> bytes:
    """The OTLP JSON encoding of a protobuf export: the proto3 JSON mapping with hex ids."""
    request = ExportTraceServiceRequest.FromString(body)
    data = MessageToDict(request, preserving_proto_field_name=snake_case)
    for group in data.get("resource_spans" if snake_case else "resourceSpans", []):
        for scoped in group.get("scope_spans" if snake_case else "scopeSpans", []):
            for span in scoped["spans"]:
                for key in list(span):
                    if key.replace("_", "").lower() in ("traceid", "spanid", "parentspanid"):
                        span[key] = _base64_to_hex(span[key])
    return orjson.dumps(data)


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


@pytest.mark.parametrize("snake_case", [False, True])
def test_json_encoding_gives_the_same_rows(sink: Sink, snake_case: bool) -> None:
    """The same export in OTLP JSON (camelCase or snake_case) maps to identical rows."""
    export_agent_turn(sink)
    for captured in sink.requests:
        as_json = otlp_json(captured.body, snake_case=snake_case)
        from_json = parse_traces(
            as_json, content_type="application/json", content_encoding=None, identity=IDENTITY
        )
        assert from_json.rows == parse(captured).rows


def test_structured_content_values_become_json_bodies() -> None:
    """Messages sent as AnyValue arrays/kvlists (not strings) are serialized to JSON bodies."""
    message = {
        "kvlistValue": {
            "values": [
                {"key": "role", "value": {"stringValue": "user"}},
                {"key": "content", "value": {"stringValue": "hi"}},
            ]
        }
    }
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat m",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.input.messages", "value": {"arrayValue": {"values": [message]}}},
        ],
    }
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    (row,) = parse_traces(
        body, content_type="application/json", content_encoding=None, identity=IDENTITY
    ).rows
    assert orjson.loads(row["_request_body"]) == [{"role": "user", "content": "hi"}]
    assert row["source"] == "otlp"  # no service.name
