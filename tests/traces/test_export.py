"""OTLP export: spans sent as gzipped protobuf to a real collector on loopback."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from corral.errors import ConfigError
from corral.testing import ServerThread
from corral.traces import SPAN_DEFAULTS, new_span_id, new_trace_id
from corral.traces.export import OtlpExporter, export_request, parse_retry_after

pytestmark = pytest.mark.timeout(30)

PATH = "/v1/traces"


class Collector:
    """An OTLP/HTTP traces endpoint that records what it gets and answers from a script."""

    def __init__(self, *script: tuple[int, dict[str, str], bytes]) -> None:
        self.script = deque(script)
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        self.app = Starlette(routes=[Route(PATH, self.export, methods=["POST"])])

    async def export(self, request: Request) -> Response:
        self.received.append((time.monotonic(), dict(request.headers), await request.body()))
        status, headers, body = self.script.popleft() if self.script else (200, {}, b"")
        return Response(body, status, headers, media_type="application/x-protobuf")

    def requests(self) -> list[ExportTraceServiceRequest]:
        out = []
        for _, headers, body in self.received:
            assert headers["content-type"] == "application/x-protobuf"
            assert headers["content-encoding"] == "gzip"
            out.append(ExportTraceServiceRequest.FromString(gzip.decompress(body)))
        return out

    def spans(self) -> list[Span]:
        return [
            span
            for request in self.requests()
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, ServerThread]]:
    sink = Collector()
    with ServerThread(sink.app, lifespan="off") as server:
        yield sink, server


def row(**fields: Any) -> dict[str, Any]:
    out = SPAN_DEFAULTS.copy()
    out.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        kind="tool",
        name="execute_tool Bash",
        status="ok",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_500_000_000,
    )
    out.update(fields)
    return out


def llm_request(**fields: Any) -> dict[str, Any]:
    out = row(
        kind="llm_request",
        name="chat gpt-x",
        operation="chat",
        protocol="chat",
        model_requested="gpt-x",
        model_served="gpt-x-2025",
        provider="openai",
        deployment="openai/gpt-x",
        request_id="req_1",
        source="gateway",
        stream=True,
        http_status=200,
        finish_reason="stop",
        response_id="chatcmpl-1",
        ttft_ms=120.0,
        input_tokens=100,
        cached_input_tokens=50,
        cache_write_tokens=25,
        output_tokens=40,
        reasoning_tokens=10,
        cost_nusd=1_250_000,
        cost_source="computed",
        price_version="2025-06",
        org_id="org_1",
        team_id="team_1",
        user_id="user_1",
        key_id="key_1",
        run_id="run_1",
        owner_id="user_1",
    )
    out.update(fields)
    return out


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in span.attributes}


def plain(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def export(exporter: OtlpExporter, *batches: list[dict[str, Any]]) -> None:
    await exporter.start()
    for batch in batches:
        exporter.offer(batch)
    await exporter.stop(timeout=10)


def test_llm_request_attempt_and_tool_round_trip(
    collector: tuple[Collector, ServerThread],
) -> None:
    """Ids, kinds, times, statuses and GenAI/corral attributes arrive as the rows had them."""
    sink, server = collector
    request = llm_request(attributes={"route": {"attempts": 2}, "gen_ai.usage.input_tokens": 9})
    attempt = llm_request(
        kind="attempt",
        name="attempt openai/gpt-x",
        parent_span_id=request["span_id"],
        trace_id=request["trace_id"],
        attempt=2,
        attributes=None,
    )
    failed = llm_request(
        kind="attempt",
        status="error",
        error_class="timeout",
        error_message="upstream timed out",
        input_tokens=0,
        cached_input_tokens=0,
        cache_write_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        cost_nusd=0,
    )
    tool = row(parent_span_id=request["span_id"], source="claude-code", team_id="team_1")
    exporter = OtlpExporter(server.url + PATH, headers={"authorization": "Bearer s3cret"})
    run(export(exporter, [request, attempt, failed, tool]))

    assert exporter.sent == 4
    assert exporter.failed == exporter.dropped == exporter.queued == 0
    ((_, headers, _),) = sink.received
    assert headers["authorization"] == "Bearer s3cret"
    (req,) = sink.requests()
    resource = {kv.key: plain(kv.value) for kv in req.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "corral"
    assert req.resource_spans[0].scope_spans[0].scope.name == "corral"
    spans = {s.span_id.hex(): s for s in sink.spans()}

    got = spans[request["span_id"]]
    assert got.trace_id.hex() == request["trace_id"]
    assert got.parent_span_id == b""
    assert got.name == "chat gpt-x"
    assert got.kind == Span.SPAN_KIND_CLIENT
    assert (got.start_time_unix_nano, got.end_time_unix_nano) == (
        request["start_ns"],
        request["end_ns"],
    )
    assert got.status.code == Status.STATUS_CODE_OK
    assert attrs(got) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-x",
        "gen_ai.response.model": "gpt-x-2025",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.request.stream": True,
        "gen_ai.response.time_to_first_chunk": 0.12,
        "gen_ai.usage.input_tokens": 175,  # uncached + cache reads + cache writes
        "gen_ai.usage.output_tokens": 50,  # reasoning included
        "gen_ai.usage.cache_read.input_tokens": 50,
        "gen_ai.usage.cache_creation.input_tokens": 25,
        "gen_ai.usage.reasoning.output_tokens": 10,
        "corral.cost_usd": 0.00125,
        "corral.kind": "llm_request",
        "corral.status": "ok",
        "corral.source": "gateway",
        "corral.org_id": "org_1",
        "corral.team_id": "team_1",
        "corral.user_id": "user_1",
        "corral.key_id": "key_1",
        "corral.run_id": "run_1",
        "corral.owner_id": "user_1",
        "corral.protocol": "chat",
        "corral.deployment": "openai/gpt-x",
        "corral.request_id": "req_1",
        "corral.http_status": 200,
        "corral.ttft_ms": 120.0,
        "corral.cost_source": "computed",
        "corral.price_version": "2025-06",
        "corral.route": {"attempts": 2},
    }

    got = spans[attempt["span_id"]]
    assert got.parent_span_id.hex() == request["span_id"]
    assert got.kind == Span.SPAN_KIND_CLIENT
    a = attrs(got)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["corral.attempt"] == 2
    # an attempt's tokens are its request's: carried, but not as spend a backend would sum
    assert not any(k.startswith("gen_ai.usage.") for k in a)
    assert "corral.cost_usd" not in a
    assert a["corral.usage.input_tokens"] == 175
    assert a["corral.usage.cost_usd"] == 0.00125

    got = spans[failed["span_id"]]
    assert got.status.code == Status.STATUS_CODE_ERROR
    assert got.status.message == "upstream timed out"
    a = attrs(got)
    assert a["error.type"] == "timeout"
    assert not any("usage" in k or "cost_usd" in k for k in a), "zero values are left out"

    got = spans[tool["span_id"]]
    assert got.kind == Span.SPAN_KIND_INTERNAL
    assert got.status.code == Status.STATUS_CODE_UNSET, "a relayed ok stays unset"
    assert attrs(got) == {
        "gen_ai.operation.name": "execute_tool",
        "corral.kind": "tool",
        "corral.status": "ok",
        "corral.source": "claude-code",
        "corral.team_id": "team_1",
    }


def test_statuses_and_duplicates_map_as_documented() -> None:
    """refused is ERROR, cancelled UNSET with its error type; a duplicate carries no spend."""
    refused = llm_request(status="refused", error_class="budget_exceeded", http_status=429)
    cancelled = llm_request(status="cancelled", error_class="client_disconnected")
    duplicate = llm_request(source="claude-code", duplicate_of=new_span_id())
    bad = row(trace_id="not hex")
    request, skipped = export_request([refused, cancelled, duplicate, bad])
    assert skipped == 1
    spans = {s.span_id.hex(): s for s in request.resource_spans[0].scope_spans[0].spans}
    assert len(spans) == 3
    got = spans[refused["span_id"]]
    assert (got.status.code, got.status.message) == (Status.STATUS_CODE_ERROR, "budget_exceeded")
    got = spans[cancelled["span_id"]]
    assert got.status.code == Status.STATUS_CODE_UNSET
    assert got.status.message == ""
    assert attrs(got)["error.type"] == "client_disconnected"
    a = attrs(spans[duplicate["span_id"]])
    assert a["corral.duplicate_of"] == duplicate["duplicate_of"]
    assert "gen_ai.usage.input_tokens" not in a
    assert a["corral.usage.input_tokens"] == 175


def test_retry_after_503_then_success_delivers_each_span_once(
    collector: tuple[Collector, ServerThread],
) -> None:
    """A 503 with Retry-After: 1 is retried after a second; every span arrives exactly once."""
    sink, server = collector
    sink.script.append((503, {"retry-after": "1"}, b""))
    rows = [row() for _ in range(7)]
    exporter = OtlpExporter(server.url + PATH, batch_size=5)
    run(export(exporter, rows))

    assert exporter.sent == 7
    assert exporter.failed == 0
    (first, _), (second, _), (third, _) = [(t, h) for t, h, _ in sink.received]
    assert second - first >= 0.95, "Retry-After was honoured"
    delivered = Counter(s.span_id.hex() for s in sink.spans()[5:])  # the first request failed
    assert delivered == Counter(r["span_id"] for r in rows)
    assert third >= second


def test_connection_errors_are_retried_until_the_collector_listens() -> None:
    """Connection refused is retried with backoff; the batch arrives once the server is up."""
    sink = Collector()
    server = ServerThread(sink.app, lifespan="off")  # bound, not yet listening: refused
    starter = threading.Timer(0.4, server.start)
    starter.start()
    try:
        exporter = OtlpExporter(server.url + PATH)
        run(export(exporter, [row(), row()]))
    finally:
        starter.join()
        server.stop()
    assert exporter.sent == 2
    assert exporter.failed == 0
    assert len(sink.spans()) == 2


def test_bad_request_drops_the_batch_and_counts_it(
    collector: tuple[Collector, ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 is not retried: the batch counts as failed; the log never shows the headers."""
    sink, server = collector
    sink.script.extend([(400, {}, b"bad"), (400, {}, b"bad")])
    url = f"http://user:pa55word@{server.host}:{server.port}{PATH}"
    exporter = OtlpExporter(url, batch_size=3, headers={"x-api-key": "s3cret"})
    exporter.offer([row() for _ in range(7)])  # batches of 3, 3 and 1
    run(export(exporter))
    assert len(sink.received) == 3, "one request a batch, no retry"
    assert (exporter.sent, exporter.failed, exporter.dropped) == (1, 6, 0)
    warnings = [r.getMessage() for r in caplog.records if "400" in r.getMessage()]
    assert len(warnings) == 1, "logged once per distinct status"
    assert "s3cret" not in caplog.text
    assert "pa55word" not in caplog.text


def test_endpoint_must_be_http() -> None:
    """An endpoint that is not an http(s) URL is a ConfigError at construction."""
    with pytest.raises(ConfigError):
        OtlpExporter("collector:4318")
    with pytest.raises(ConfigError):
        OtlpExporter("ftp://collector/v1/traces")


def test_partial_success_counts_rejected_spans_as_failed(
    collector: tuple[Collector, ServerThread],
) -> None:
    """Spans a 200 response says it rejected count as failed, the rest as sent."""
    sink, server = collector
    partial = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=2, error_message="too old")
    )
    sink.script.append((200, {}, partial.SerializeToString()))
    exporter = OtlpExporter(server.url + PATH)
    run(export(exporter, [row() for _ in range(5)]))
    assert (exporter.sent, exporter.failed) == (3, 2)


def test_retries_give_up_after_max_retry_s(collector: tuple[Collector, ServerThread]) -> None:
    """A collector that keeps answering 503 costs the batch after max_retry_s, not forever."""
    sink, server = collector
    sink.script.extend([(503, {"retry-after": "0"}, b"")] * 3 + [(503, {"retry-after": "5"}, b"")])
    exporter = OtlpExporter(server.url + PATH, max_retry_s=3.0)
    started = time.monotonic()
    run(export(exporter, [row(), row()]))
    assert time.monotonic() - started < 4.5, "a Retry-After past the deadline ends at once"
    assert len(sink.received) == 4
    assert (exporter.sent, exporter.failed) == (0, 2)


def test_overflow_drops_the_oldest(collector: tuple[Collector, ServerThread]) -> None:
    """Beyond queue_max the oldest queued spans are dropped and counted; the newest are sent."""
    sink, server = collector
    exporter = OtlpExporter(server.url + PATH, queue_max=5)
    rows = [row() for _ in range(8)]
    exporter.offer(rows[:3])
    exporter.offer(rows[3:])
    assert (exporter.queued, exporter.dropped) == (5, 3)
    run(export(exporter))
    assert [s.span_id.hex() for s in sink.spans()] == [r["span_id"] for r in rows[3:]]
    assert (exporter.sent, exporter.dropped) == (5, 3)


def test_offer_from_other_threads(collector: tuple[Collector, ServerThread]) -> None:
    """Threads offering concurrently while the sender runs lose and duplicate nothing."""
    sink, server = collector
    batches = [[row() for _ in range(50)] for _ in range(8)]
    exporter = OtlpExporter(server.url + PATH, batch_size=64)

    async def main() -> None:
        await exporter.start()
        threads = [threading.Thread(target=exporter.offer, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await exporter.stop(timeout=10)

    run(main())
    expected = Counter(r["span_id"] for b in batches for r in b)
    assert Counter(s.span_id.hex() for s in sink.spans()) == expected
    assert exporter.sent == 400
    assert all(len(r.resource_spans[0].scope_spans[0].spans) <= 64 for r in sink.requests())


def test_stop_drains_the_queue(collector: tuple[Collector, ServerThread]) -> None:
    """Spans queued when stop is called are all sent before it returns."""
    sink, server = collector
    exporter = OtlpExporter(server.url + PATH, batch_size=512)
    rows = [row() for _ in range(1200)]

    async def main() -> None:
        await exporter.start()
        exporter.offer(rows)
        await exporter.stop(timeout=10)

    run(main())
    assert len(sink.received) == 3
    assert len(sink.spans()) == 1200
    assert exporter.sent == 1200
    assert exporter.queued == 0


def test_stop_gives_up_at_its_timeout(collector: tuple[Collector, ServerThread]) -> None:
    """Against a collector that stays down, stop returns at its timeout, counting the rest."""
    sink, server = collector
    sink.script.extend([(503, {"retry-after": "1"}, b"")] * 10)
    exporter = OtlpExporter(server.url + PATH, batch_size=2)

    async def main() -> float:
        await exporter.start()
        exporter.offer([row() for _ in range(5)])
        started = time.monotonic()
        await exporter.stop(timeout=0.5)
        return time.monotonic() - started

    assert run(main()) < 2.5
    assert (exporter.sent, exporter.dropped, exporter.queued) == (0, 5, 0)
    exporter.offer([row()])
    assert exporter.dropped == 6, "after stop, offered spans are dropped at once"


def test_parse_retry_after() -> None:
    """Retry-After is read as delay-seconds or an HTTP-date; garbage is None."""
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
