"""A stream the provider breaks ends with a well-formed error event in its own protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from corral.routing.catalog import SIM_MODELS
from corral.settings import ModelConfig
from tests.gateway.conftest import Running, gateway_corral

# A public name mapped to a simulator behaviour: stalls give up after 0.3 s.
FRAGILE = ModelConfig(
    name="fragile",
    provider="sim",
    upstream_model="sim-standard+timeout=0.3",
    input_price=1.0,
    output_price=2.0,
)


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[Running]:
    with gateway_corral(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'corral.db'}",
        models=[*SIM_MODELS, FRAGILE],
        upstream_read_timeout=5.0,
    ) as running:
        yield running


BODIES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
}


def last_event(raw: bytes) -> tuple[str | None, dict[str, object]]:
    event = raw.strip().split(b"\n\n")[-1]
    name = None
    data = b""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    return name, orjson.loads(data)


@pytest.mark.parametrize("fault", ["reset", "stall"])
@pytest.mark.parametrize("path", list(BODIES))
def test_broken_stream_ends_with_error_event(fragile: Running, path: str, fault: str) -> None:
    corral = fragile
    body = {"model": "fragile", "stream": True, **BODIES[path]}
    headers = {"authorization": f"Bearer {corral.key}", "x-sim-fault": fault}
    r = httpx.post(corral.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    name, data = last_event(r.content)
    if path == "/v1/messages":
        assert name == "error"
        assert data["type"] == "error"
    elif path == "/v1/responses":
        assert name == "error"
        assert "message" in data
    else:
        assert "error" in data
    (row,) = corral.records()
    assert row.status == "error"
    assert row.error_class in ("connection_error", "timeout")
