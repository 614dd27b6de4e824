"""A Corral configured with ``otlp_export_endpoint`` sends every stored span on: here to a
second Corral's OTLP ingest, which reads them back as the same tree, each call once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from corral.store.schema import span_rollups, spans
from tests.conftest import StartCorral
from tests.gateway.conftest import gateway_corral


def test_gateway_spans_are_exported_to_another_otel_backend(
    tmp_path: Path, start_corral: StartCorral
) -> None:
    """Request and attempt arrive with their GenAI attributes, ids and parentage intact."""
    with gateway_corral(tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}") as backend:
        settings: dict[str, Any] = {
            "otlp_export_endpoint": f"{backend.url}/v1/traces",
            "otlp_export_headers": {"authorization": f"Bearer {backend.key}"},
        }
        with gateway_corral(tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", **settings) as a:
            r = httpx.post(
                f"{a.url}/v1/chat/completions",
                json={"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {a.key}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            (sent,) = a.records()
            deadline = time.monotonic() + 15
            while True:
                with backend.app.store.connect() as conn:
                    got = conn.execute(
                        select(spans).where(spans.c.trace_id == sent.trace_id)
                    ).fetchall()
                if len(got) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert a.app.exporter is not None
            assert a.app.exporter.sent >= 2
    by_kind = {row.kind: row for row in got}
    assert set(by_kind) == {"llm_request", "attempt"}, got
    request, attempt = by_kind["llm_request"], by_kind["attempt"]
    assert request.span_id == sent.span_id
    assert attempt.parent_span_id == request.span_id
    assert request.source == "otlp:corral", "an OTLP sender never takes a source of Corral's"
    assert request.model_requested == "sim-standard"
    total_in = request.input_tokens + request.cached_input_tokens + request.cache_write_tokens
    assert total_in == sent.input_tokens + sent.cached_input_tokens + sent.cache_write_tokens
    assert request.output_tokens + request.reasoning_tokens == (
        sent.output_tokens + sent.reasoning_tokens
    )
    assert request.team_id == backend.team_id, "attributed by the receiving side's key"
    with backend.app.store.connect() as conn:
        metered, reported = conn.execute(
            select(func.sum(span_rollups.c.requests), func.sum(span_rollups.c.reported_requests))
        ).one()
    # Metered by the other Corral's gateway, reported to this one: never this one's spend.
    assert (metered, reported) == (0, 1), "the attempt is not a second call"
