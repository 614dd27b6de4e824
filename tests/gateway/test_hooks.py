"""The gateway's three stages, registered in-process (``CorralApp(hooks=...)``): a request
guard refuses or annotates before admission, a response observer sees every relayed chunk
with the usage known so far, a call listener sees each finished call after its record.
Extensions register the same stages through entry points (tests/test_plugins.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from corral.errors import PermissionDenied
from corral.gateway.hooks import FinishedCall, GatewayHooks, Request
from corral.protocols import Outcome
from tests.gateway.conftest import Running, gateway_corral


class Recorder:
    """Every stage at once; what each saw, for the test to read."""

    def __init__(self) -> None:
        self.guarded: list[Request] = []
        self.chunks: dict[str, list[tuple[int, int | None, float]]] = {}
        self.finished: list[FinishedCall] = []

    def guard(self, request: Request) -> Mapping[str, Any] | None:
        self.guarded.append(request)
        if request.headers.get("x-test-block") == "yes":
            raise PermissionDenied("blocked by the test guard", code="test_blocked")
        if request.headers.get("x-test-break") == "yes":
            raise RuntimeError("the guard itself is broken")
        return {"test": request.protocol}

    def observe(self, request: Request, chunk: bytes, outcome: Outcome, elapsed: float) -> None:
        output = outcome.usage.output if outcome.usage is not None else None
        self.chunks.setdefault(request.request_id, []).append((len(chunk), output, elapsed))

    def listen(self, call: FinishedCall) -> None:
        self.finished.append(call)


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[tuple[Running, Recorder]]:
    seen = Recorder()
    hooks = GatewayHooks.of([seen.guard], [seen.observe], [seen.listen])
    with gateway_corral(tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", hooks=hooks) as c:
        yield c, seen


def test_a_guard_refuses_in_the_callers_shape_and_the_refusal_is_recorded(
    hooked: tuple[Running, Recorder],
) -> None:
    corral, seen = hooked
    chat = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat.chat.completions.create(
            model="sim-standard",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-block": "yes"},
        )
    assert refused.value.body["code"] == "test_blocked"  # type: ignore[index]
    claude = corral.track(
        anthropic.Anthropic(base_url=corral.url, api_key=corral.key, max_retries=0)
    )
    with pytest.raises(anthropic.PermissionDeniedError, match="blocked by the test guard"):
        claude.messages.create(
            model="sim-standard",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-block": "yes"},
        )
    rows = corral.records(wait_for=2)
    assert [(r.status, r.http_status, r.error_class) for r in rows] == [
        ("refused", 403, "test_blocked"),
        ("refused", 403, "test_blocked"),
    ]
    assert rows[0].attributes["guard"]["refused"] == "test_blocked"
    assert [r.key.key_id for r in seen.finished] == [corral.key_id, corral.key_id]
    assert seen.chunks == {}, "a refused call never reached the upstream"


def test_a_broken_guard_fails_closed(hooked: tuple[Running, Recorder]) -> None:
    corral, _ = hooked
    chat = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key))
    with pytest.raises(openai.InternalServerError) as refused:
        chat.with_options(max_retries=0).chat.completions.create(
            model="sim-standard",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-break": "yes"},
        )
    assert refused.value.body["code"] == "guard_failed"  # type: ignore[index]
    [row] = corral.records()
    assert (row.status, row.http_status, row.error_class) == ("refused", 500, "guard_failed")


def test_an_observer_sees_each_chunk_and_a_listener_the_record(
    hooked: tuple[Running, Recorder],
) -> None:
    corral, seen = hooked
    chat = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key))
    stream = chat.chat.completions.create(
        model="sim-standard",
        messages=[{"role": "user", "content": "Count to twenty."}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-sim-tps": "400"},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    [request] = seen.guarded
    assert (request.protocol, request.model, request.stream) == ("chat", "sim-standard", True)
    assert request.key.key_id == corral.key_id
    observed = seen.chunks[request.request_id]
    assert len(observed) > 1
    assert [e for _, _, e in observed] == sorted(e for _, _, e in observed)
    assert observed[-1][1] == usage.completion_tokens, "the final usage reached the observer"
    [row] = corral.records()
    assert row.attributes["guards"] == {"test": "chat"}
    [finished] = seen.finished
    assert finished.span["span_id"] == row.span_id
    assert finished.span["output_tokens"] == usage.completion_tokens
    assert finished.span["cost_nusd"] == row.cost_nusd > 0
    assert {r["kind"] for r in finished.rows} == {"llm_request", "attempt"}
