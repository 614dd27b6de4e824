"""An agent instrumented with the OpenTelemetry SDK shows one tree, down to raw bodies.

The agent exports its spans over OTLP/HTTP (protobuf, the SDK's own exporter)
to Corral and propagates ``traceparent`` on its model call, so the gateway's
request record and attempt nest under the agent's ``chat`` span.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import func, select

from corral.store.schema import span_rollups, spans
from tests.conftest import StartCorral
from tests.gateway.conftest import Running, gateway_corral

SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def run_agent(corral: Running, exporter: Any) -> str:
    """One agent turn: a tool call, then a model call through the gateway; its trace id."""
    provider = TracerProvider(resource=Resource({"service.name": "fixer-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fixer")
    agent_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "fixer"}
    with tracer.start_as_current_span("invoke_agent fixer", attributes=agent_attrs) as root:
        tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "read_file"}
        with tracer.start_as_current_span("execute_tool read_file", attributes=tool):
            time.sleep(0.01)
        chat_attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "sim-standard"}
        with tracer.start_as_current_span(
            "chat sim-standard", kind=SpanKind.CLIENT, attributes=chat_attrs
        ) as chat:
            headers: dict[str, str] = {"authorization": f"Bearer {corral.key}"}
            TraceContextTextMapPropagator().inject(headers, context=set_span_in_context(chat))
            body = {
                "model": "sim-standard",
                "messages": [{"role": "user", "content": f"fix the test; token {SECRET}"}],
            }
            response = httpx.post(
                f"{corral.url}/v1/chat/completions", json=body, headers=headers, timeout=30
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            usage = answer["usage"]
            chat.set_attribute("gen_ai.response.id", answer["id"])
            chat.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
            chat.set_attribute("gen_ai.usage.output_tokens", usage["completion_tokens"])
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.force_flush()
    provider.shutdown()
    return trace_id


def stored_trace(corral: Running, trace_id: str, want: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        with corral.app.store.connect() as conn:
            rows = conn.execute(select(spans).where(spans.c.trace_id == trace_id)).fetchall()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_otel_sdk_agent_and_gateway_make_one_tree(corral: Running) -> None:
    """Agent → tool and chat → the gateway's request → its attempt, with bodies, counted once."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=f"{corral.url}/v1/traces", headers={"authorization": f"Bearer {corral.key}"}
    )
    trace_id = run_agent(corral, exporter)
    rows = stored_trace(corral, trace_id, 5)
    by_kind: dict[str, list[Any]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    assert sorted(by_kind) == ["agent", "attempt", "llm_request", "tool"], rows
    (agent,) = by_kind["agent"]
    (tool,) = by_kind["tool"]
    (attempt,) = by_kind["attempt"]
    chat = next(r for r in by_kind["llm_request"] if r.source == "fixer-agent")
    request = next(r for r in by_kind["llm_request"] if r.source == "gateway")
    assert agent.parent_span_id is None
    assert tool.parent_span_id == agent.span_id
    assert chat.parent_span_id == agent.span_id
    assert request.parent_span_id == chat.span_id, "the gateway honoured traceparent"
    assert attempt.parent_span_id == request.span_id
    for r in rows:  # every node attributed through the key, never through the payload
        assert (r.team_id, r.user_id, r.key_id) == (corral.team_id, corral.user_id, corral.key_id)
    # The agent's own chat span and the gateway record are one call in the roll-ups.
    assert chat.duplicate_of == request.span_id
    with corral.app.store.connect() as conn:
        calls = conn.scalar(
            select(func.sum(span_rollups.c.requests)).where(
                span_rollups.c.team_id == corral.team_id
            )
        )
    assert calls == 1
    # Raw bodies: in the blob store, redacted, referenced from the gateway's record.
    assert request.request_blob
    assert request.response_blob
    sent = corral.app.blobs.get(request.request_blob)
    got = corral.app.blobs.get(request.response_blob)
    assert sent is not None
    assert got is not None
    assert b"fix the test" in sent
    assert SECRET.encode() not in sent
    assert b"REDACTED" in sent
    assert b"choices" in got


def test_api_tree_of_the_trace(corral: Running) -> None:
    """The trace's tree over the API nests the gateway request under the agent's chat span."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=f"{corral.url}/v1/traces", headers={"authorization": f"Bearer {corral.key}"}
    )
    trace_id = run_agent(corral, exporter)
    stored_trace(corral, trace_id, 5)
    tree = httpx.get(
        f"{corral.url}/api/v1/traces/{trace_id}",
        headers={"authorization": f"Bearer {corral.key}"},
        timeout=10,
    )
    assert tree.status_code == 200, tree.text
    text = tree.text
    for name in ("invoke_agent fixer", "execute_tool read_file", "chat sim-standard"):
        assert name in text


def test_a_run_keys_calls_attach_to_the_run_without_traceparent(corral: Running) -> None:
    """No traceparent: a run key's request still lands in its run's trace, under its root."""
    from sqlalchemy import update

    from corral.store.schema import keys
    from corral.traces.spans import run_trace

    with corral.app.store.begin() as conn:
        conn.execute(
            update(keys)
            .where(keys.c.id == corral.key_id)
            .values(run_id="run_attach1", updated_at=time.time())
        )
    r = httpx.post(
        f"{corral.url}/v1/chat/completions",
        json={"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {corral.key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    (row,) = corral.records()
    trace_id, root = run_trace("run_attach1")
    assert (row.run_id, row.trace_id, row.parent_span_id) == ("run_attach1", trace_id, root)


def test_a_stream_past_the_body_cap_is_kept_cut_with_a_marker(
    tmp_path: Path, store_url: str, start_corral: StartCorral
) -> None:
    """The gateway holds a stream only up to the cap; the stored body says how much it was."""
    with gateway_corral(tmp_path / "home", store_url, trace_body_max_bytes=300) as corral:
        body = {
            "model": "sim-standard",
            "stream": True,
            "max_tokens": 200,
            "messages": [{"role": "user", "content": "write a long answer"}],
        }
        with httpx.stream(
            "POST",
            f"{corral.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {corral.key}"},
            timeout=30,
        ) as r:
            sent = b"".join(r.iter_bytes())
        assert len(sent) > 300
        (row,) = corral.records()
        stored = corral.app.blobs.get(row.response_blob)
        assert stored is not None
        assert stored.startswith(sent[:300])
        assert stored.endswith(f"[corral: body truncated: kept 300 of {len(sent)} bytes]".encode())
        assert row.attributes["bodies"]["response"]["truncated"] is True
