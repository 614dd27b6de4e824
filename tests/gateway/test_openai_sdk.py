"""The official ``openai`` SDK, unmodified, against Corral with a virtual key (upstream: sim)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.gateway.conftest import Running

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file from the repository",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]
TOOL_CALL = {"x-sim-tool-call": "1"}


def client(corral: Running) -> openai.OpenAI:
    return corral.track(
        openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key, max_retries=0)
    )


def expected_cost(corral: Running, model: str, row: object) -> int:
    prices = corral.app.catalog.resolve(model).prices
    return prices.cost_nusd(
        row.input_tokens,  # type: ignore[attr-defined]
        row.cached_input_tokens,  # type: ignore[attr-defined]
        row.cache_write_tokens,  # type: ignore[attr-defined]
        row.output_tokens,  # type: ignore[attr-defined]
        row.reasoning_tokens,  # type: ignore[attr-defined]
    )


def test_chat_completion_is_metered_to_the_key(corral: Running) -> None:
    """A non-streamed chat completion passes through and its usage is recorded as reported."""
    reply = client(corral).chat.completions.create(
        model="sim-standard",
        messages=[{"role": "user", "content": "Say hello to the platform team."}],
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    (row,) = corral.records()
    assert row.key_id == corral.key_id
    assert row.team_id == corral.team_id
    assert row.user_id == corral.user_id
    assert row.org_id
    assert row.protocol == "chat"
    assert row.model_requested == "sim-standard"
    assert row.provider == "sim"
    assert row.status == "ok"
    assert row.http_status == 200
    cached = (
        reply.usage.prompt_tokens_details.cached_tokens if reply.usage.prompt_tokens_details else 0
    )
    assert row.input_tokens + row.cached_input_tokens == reply.usage.prompt_tokens
    assert row.cached_input_tokens == (cached or 0)
    assert row.output_tokens + row.reasoning_tokens == reply.usage.completion_tokens
    assert row.cost_nusd == expected_cost(corral, "sim-standard", row) > 0
    assert row.cost_source == "computed"
    assert row.price_version == corral.app.catalog.price_version
    assert row.response_id == reply.id


def test_cost_matches_the_price_table_by_hand(corral: Running) -> None:
    """sim-standard costs $3 per 1M input and $15 per 1M output tokens."""
    client(corral).chat.completions.create(
        model="sim-standard", messages=[{"role": "user", "content": "price check"}]
    )
    (row,) = corral.records()
    by_hand = (Decimal(row.input_tokens) * 3 + Decimal(row.output_tokens) * 15) * 1000
    assert row.cost_nusd == int(by_hand)


def test_chat_stream_without_usage_request_hides_the_usage_chunk(corral: Running) -> None:
    """Corral asks the upstream for usage but the client, which did not, never sees it."""
    stream = client(corral).chat.completions.create(
        model="sim-economy",
        messages=[{"role": "user", "content": "Stream me something."}],
        stream=True,
    )
    chunks = list(stream)
    assert chunks
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    (row,) = corral.records()
    assert row.stream is True
    assert row.status == "ok"
    assert row.input_tokens > 0
    assert row.output_tokens > 0
    assert row.finish_reason == "stop"
    assert row.ttft_ms is not None


def test_chat_stream_usage_equals_what_upstream_reported(corral: Running) -> None:
    stream = client(corral).chat.completions.create(
        model="sim-economy",
        messages=[{"role": "user", "content": "Stream with usage, please."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    assert chunks[-1].choices == []
    (row,) = corral.records()
    assert row.input_tokens + row.cached_input_tokens == usage.prompt_tokens
    assert row.output_tokens + row.reasoning_tokens == usage.completion_tokens


def test_chat_tool_calls_stream_and_not(corral: Running) -> None:
    c = client(corral)
    messages = [{"role": "user", "content": "Read README.md"}]
    reply = c.chat.completions.create(
        model="sim-standard", messages=messages, tools=TOOLS, extra_headers=TOOL_CALL
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "read_file"
    assert '"path"' in call.function.arguments
    assert reply.choices[0].finish_reason == "tool_calls"
    stream = c.chat.completions.create(
        model="sim-standard", messages=messages, tools=TOOLS, extra_headers=TOOL_CALL, stream=True
    )
    names = [
        tc.function.name
        for chunk in stream
        for tc in (chunk.choices[0].delta.tool_calls or [])
        if tc.function and tc.function.name
    ]
    assert names == ["read_file"]
    rows = corral.records(wait_for=2)
    assert [r.finish_reason for r in rows] == ["tool_calls", "tool_calls"]


def test_responses_api_stream_and_not_with_tools(corral: Running) -> None:
    c = client(corral)
    tools = [
        {
            "type": "function",
            "name": "run",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"cmd": {"type": "string"}},
                "required": ["cmd"],
            },
        }
    ]
    reply = c.responses.create(model="sim-frontier", input="List the files.")
    assert reply.output_text
    assert reply.usage is not None
    with c.responses.stream(
        model="sim-frontier", input="Run ls.", tools=tools, extra_headers=TOOL_CALL
    ) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls
    assert calls[0].name == "run"
    rows = corral.records(wait_for=2)
    assert [r.protocol for r in rows] == ["responses", "responses"]
    first, second = rows
    assert first.input_tokens + first.cached_input_tokens == reply.usage.input_tokens
    assert first.output_tokens + first.reasoning_tokens == reply.usage.output_tokens
    assert final.usage is not None
    assert second.input_tokens + second.cached_input_tokens == final.usage.input_tokens
    assert second.output_tokens + second.reasoning_tokens == final.usage.output_tokens
    assert second.stream is True


def test_reasoning_tokens_go_to_their_own_column(corral: Running) -> None:
    reply = client(corral).chat.completions.create(
        model="sim-reasoning", messages=[{"role": "user", "content": "Think first."}]
    )
    details = reply.usage.completion_tokens_details  # type: ignore[union-attr]
    assert details is not None
    assert details.reasoning_tokens
    (row,) = corral.records()
    assert row.reasoning_tokens == details.reasoning_tokens
    assert row.output_tokens == reply.usage.completion_tokens - details.reasoning_tokens  # type: ignore[union-attr]


def test_models_lists_what_the_key_may_use(corral: Running) -> None:
    names = {m.id for m in client(corral).models.list()}
    assert {"sim-frontier", "sim-standard", "sim-economy"} <= names
    _, limited = corral.identity.create_key(corral.team_id, corral.user_id, models=["sim-economy"])
    c = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=limited, max_retries=0))
    assert [m.id for m in c.models.list()] == ["sim-economy"]
    with pytest.raises(openai.PermissionDeniedError, match="not allowed for this key"):
        c.chat.completions.create(model="sim-standard", messages=[{"role": "user", "content": "x"}])


def test_every_response_carries_request_id_and_overhead(corral: Running) -> None:
    raw = client(corral).chat.completions.with_raw_response.create(
        model="sim-economy", messages=[{"role": "user", "content": "headers"}]
    )
    assert raw.headers["x-corral-request-id"].startswith("req_")
    assert float(raw.headers["x-corral-overhead-ms"]) >= 0
    (row,) = corral.records()
    assert row.request_id == raw.headers["x-corral-request-id"]
    attempts = corral.records("attempt")
    assert len(attempts) == 1
    assert attempts[0].parent_span_id == row.span_id
    assert attempts[0].trace_id == row.trace_id


def test_traceparent_is_honoured(corral: Running) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client(corral).chat.completions.create(
        model="sim-economy",
        messages=[{"role": "user", "content": "traced"}],
        extra_headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    (row,) = corral.records()
    assert row.trace_id == trace_id
    assert row.parent_span_id == parent


def test_models_retrieve(corral: Running) -> None:
    c = client(corral)
    assert c.models.retrieve("sim-economy").id == "sim-economy"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.models.retrieve("gpt-nope")
