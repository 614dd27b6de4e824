"""A stream the client abandons is recorded with what was delivered; upstream is cancelled."""

from __future__ import annotations

import time

import httpx

from tests.gateway.conftest import Running


def test_abandoned_stream_is_recorded_and_upstream_cancelled(corral: Running) -> None:
    sim = corral.app.sim.app
    body = {
        "model": "sim-standard",
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long essay on quotas."}],
    }
    # 20 tokens/s: the whole answer would take many seconds; we leave after a few events.
    headers = {"authorization": f"Bearer {corral.key}", "x-sim-tps": "20"}
    with (
        httpx.Client(base_url=corral.url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        received = 0
        for chunk in r.iter_raw():
            received += chunk.count(b"data: ")
            if received >= 3:
                break
    deadline = time.monotonic() + 5
    while sim.streams.abandoned < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.streams.abandoned == 1, "the upstream stream was not cancelled"
    assert sim.streams.completed == 0
    (row,) = corral.records()
    assert row.status == "cancelled"
    assert row.error_class == "client_disconnected"
    assert row.stream is True
    assert row.output_tokens >= 1, "what was delivered is recorded"
    assert row.input_tokens > 0, "the prompt was billed: it is estimated offline"
    assert row.cost_source == "estimated"
    assert row.cost_nusd > 0


def test_abandoned_anthropic_stream_keeps_reported_input(corral: Running) -> None:
    body = {
        "model": "sim-standard",
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long essay on budgets."}],
    }
    headers = {"x-api-key": corral.key, "x-sim-tps": "20"}
    with (
        httpx.Client(base_url=corral.url, timeout=30) as client,
        client.stream("POST", "/v1/messages", json=body, headers=headers) as r,
    ):
        for chunk in r.iter_raw():
            if b"content_block_delta" in chunk:
                break
    (row,) = corral.records()
    assert row.status == "cancelled"
    assert row.input_tokens > 0, "message_start's input usage is kept"
