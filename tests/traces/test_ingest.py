"""OTLP/HTTP ingest: authenticated, attributed by key, backpressure a client can retry through,
and nothing answered 200 is lost, not even across a SIGKILL."""

from __future__ import annotations

import gzip
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import func, select

from corral.clock import SystemClock
from corral.identity.service import IdentityService
from corral.store import Store
from corral.store.schema import spans
from tests.conftest import ADMIN_KEY, StartCorral
from tests.gateway.conftest import Running, gateway_corral
from tests.gateway.serve import start_server, stop_server
from tests.services import free_port

PB = {"content-type": "application/x-protobuf"}


def payload(n: int, *, model: str = "sim-standard", service: str = "load-agent") -> bytes:
    """``n`` GenAI chat spans in one trace, as the OpenTelemetry SDK would send them."""
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attr = resource.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", service
    scope = resource.scope_spans.add()
    trace_id = os.urandom(16)
    now = time.time_ns()
    for i in range(n):
        span = scope.spans.add()
        span.trace_id, span.span_id = trace_id, os.urandom(8)
        span.name, span.kind = f"chat {model}", Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano, span.end_time_unix_nano = now - 10**9 + i, now + i
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", model)):
            kv = span.attributes.add()
            kv.key, kv.value.string_value = key, value
        for key, number in (
            ("gen_ai.usage.input_tokens", 1000),
            ("gen_ai.usage.output_tokens", 50),
        ):
            kv = span.attributes.add()
            kv.key, kv.value.int_value = key, number
    return request.SerializeToString()


def count(store: Store, **where: str) -> int:
    query = select(func.count()).select_from(spans)
    for column, value in where.items():
        query = query.where(spans.c[column] == value)
    with store.connect() as conn:
        return int(conn.scalar(query) or 0)


def wait_count(store: Store, want: int, timeout: float = 15, **where: str) -> int:
    deadline = time.monotonic() + timeout
    while (got := count(store, **where)) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **PB}


def test_spans_are_attributed_to_the_key_and_priced(corral: Running) -> None:
    """Team, user and key come from the key; a known model without a reported cost is priced."""
    body = gzip.compress(payload(3))
    r = httpx.post(
        f"{corral.url}/v1/traces",
        content=body,
        headers={**auth(corral.key), "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-protobuf")
    assert wait_count(corral.app.store, 3, source="load-agent") == 3
    with corral.app.store.connect() as conn:
        rows = conn.execute(select(spans).where(spans.c.source == "load-agent")).fetchall()
    for row in rows:
        assert (row.team_id, row.key_id) == (corral.team_id, corral.key_id)
        assert row.kind == "llm_request"
        assert row.cost_source == "computed"
        assert row.cost_nusd > 0


def test_json_encoding_is_accepted(corral: Running) -> None:
    """The OTLP JSON encoding (hex ids, string int64s) lands like protobuf does."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    now = time.time_ns()
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "execute_tool grep",
                                "kind": 1,
                                "startTimeUnixNano": str(now - 1000),
                                "endTimeUnixNano": str(now),
                                "attributes": [
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "execute_tool"},
                                    }
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    r = httpx.post(
        f"{corral.url}/v1/traces",
        json=body,
        headers={"authorization": f"Bearer {corral.key}"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert wait_count(corral.app.store, 1, span_id=span_id) == 1


@pytest.mark.parametrize(
    ("case", "status"),
    [("no key", 401), ("unknown key", 401), ("text/plain", 415), ("brotli", 415)],
)
def test_bad_requests_are_refused_with_an_otlp_status(
    corral: Running, case: str, status: int
) -> None:
    """Missing or bad keys, unknown encodings: a clear status, nothing stored."""
    headers = {
        "no key": PB,
        "unknown key": auth("sk-corral-" + "x" * 40),
        "text/plain": {**auth(corral.key), "content-type": "text/plain"},
        "brotli": {**auth(corral.key), "content-encoding": "br"},
    }[case]
    r = httpx.post(f"{corral.url}/v1/traces", content=payload(1), headers=headers)
    assert r.status_code == status, r.text
    assert count(corral.app.store, source="load-agent") == 0


def test_garbage_protobuf_is_a_400(corral: Running) -> None:
    """A body that is not an OTLP message says so."""
    r = httpx.post(f"{corral.url}/v1/traces", content=b"\xff\x00garbage", headers=auth(corral.key))
    assert r.status_code == 400


@pytest.fixture
def slow_corral(tmp_path: Path, store_url: str, start_corral: StartCorral) -> Iterator[Running]:
    """A gateway whose queue fills fast: 150 spans, flushed every 2 s."""
    with gateway_corral(
        tmp_path / "home", store_url, ingest_queue_max=150, record_flush_interval=2.0
    ) as running:
        yield running


def test_overload_answers_429_with_retry_after_and_the_client_retries(
    slow_corral: Running,
) -> None:
    """Past ingest_queue_max: 429 + Retry-After; resending later succeeds; nothing is lost."""
    corral = slow_corral
    accepted = refused = 0
    deadline = time.monotonic() + 40
    with httpx.Client(timeout=10) as client:
        for _ in range(6):
            while True:
                r = client.post(
                    f"{corral.url}/v1/traces", content=payload(60), headers=auth(corral.key)
                )
                if r.status_code == 200:
                    accepted += 60
                    break
                assert r.status_code == 429, r.text
                retry_after = float(r.headers["retry-after"])
                assert 1 <= retry_after <= 30
                refused += 1
                assert time.monotonic() < deadline, "the queue never drained"
                time.sleep(min(retry_after, 1.0))
    assert refused >= 1, "the queue never filled"
    assert wait_count(corral.app.store, accepted, source="load-agent") == accepted
    assert corral.app.recorder.refused >= refused


def test_accepted_spans_survive_sigkill(tmp_path: Path) -> None:
    """Spans answered 200 but not yet stored are replayed from the journal after SIGKILL."""
    home, port = tmp_path / "home", free_port()
    proc = start_server(home, port, CORRAL_RECORD_FLUSH_INTERVAL="60")
    try:
        store = Store(f"sqlite:///{home / 'corral.db'}")
        identity = IdentityService(store, SystemClock())
        team = identity.create_team("payments")
        user = identity.create_user("ada", team.id)
        _, key = identity.create_key(team.id, user.id, name="agent")
        url = f"http://127.0.0.1:{port}"
        for _ in range(5):
            r = httpx.post(f"{url}/v1/traces", content=payload(100), headers=auth(key), timeout=10)
            assert r.status_code == 200, r.text
        assert count(store, source="load-agent") == 0, "still in the journal only"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_server(home, port, CORRAL_RECORD_FLUSH_INTERVAL="0.1")
        assert wait_count(store, 500, source="load-agent") == 500
        assert count(store, source="load-agent", team_id=team.id) == 500
        store.close()
    finally:
        stop_server(proc)


def test_admin_key_is_accepted_org_level(corral: Running) -> None:
    """The organisation admin key may send spans; they carry no team."""
    r = httpx.post(f"{corral.url}/v1/traces", content=payload(1), headers=auth(ADMIN_KEY))
    assert r.status_code == 200, r.text
