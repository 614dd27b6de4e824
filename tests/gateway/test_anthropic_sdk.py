"""The official ``anthropic`` SDK, unmodified, against Corral with a virtual key."""

from __future__ import annotations

import anthropic
import pytest

from tests.gateway.conftest import Running

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def client(corral: Running, **kw: object) -> anthropic.Anthropic:
    return corral.track(
        anthropic.Anthropic(base_url=corral.url, api_key=corral.key, max_retries=0, **kw)
    )  # type: ignore[arg-type]


def test_messages_non_streaming_recorded_as_reported(corral: Running) -> None:
    msg = client(corral).messages.create(
        model="sim-standard",
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello from the platform team"}],
    )
    assert msg.content[0].type == "text"
    assert msg.content[0].text
    (row,) = corral.records()
    assert row.protocol == "messages"
    assert row.status == "ok"
    assert row.input_tokens == msg.usage.input_tokens
    assert row.cached_input_tokens == (msg.usage.cache_read_input_tokens or 0)
    assert row.cache_write_tokens == (msg.usage.cache_creation_input_tokens or 0)
    assert row.output_tokens == msg.usage.output_tokens
    assert row.finish_reason == msg.stop_reason == "end_turn"
    assert row.response_id == msg.id


def test_messages_streaming_with_tools(corral: Running) -> None:
    c = client(corral, default_headers={"x-sim-tool-call": "1"})
    with c.messages.stream(
        model="sim-frontier",
        max_tokens=300,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Lisbon?"}],
    ) as stream:
        final = stream.get_final_message()
    tool_uses = [b for b in final.content if b.type == "tool_use"]
    assert tool_uses
    assert tool_uses[0].name == "get_weather"
    assert "city" in tool_uses[0].input  # type: ignore[operator]
    assert final.stop_reason == "tool_use"
    (row,) = corral.records()
    assert row.stream is True
    assert row.finish_reason == "tool_use"
    assert row.input_tokens == final.usage.input_tokens
    assert row.output_tokens == final.usage.output_tokens


def test_tool_result_round_trip(corral: Running) -> None:
    msg = client(corral).messages.create(
        model="sim-standard",
        max_tokens=200,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Lisbon?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Lisbon"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C sunny"}
                ],
            },
        ],
    )
    assert msg.stop_reason == "end_turn"


def test_prompt_caching_columns_do_not_overlap(corral: Running) -> None:
    system = [
        {
            "type": "text",
            "text": "Long shared context. " * 400,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    c = client(corral)
    first = c.messages.create(
        model="sim-standard",
        max_tokens=50,
        system=system,
        messages=[{"role": "user", "content": "a"}],
    )
    second = c.messages.create(
        model="sim-standard",
        max_tokens=50,
        system=system,
        messages=[{"role": "user", "content": "b"}],
    )
    assert first.usage.cache_creation_input_tokens
    assert second.usage.cache_read_input_tokens
    rows = corral.records(wait_for=2)
    assert rows[0].cache_write_tokens == first.usage.cache_creation_input_tokens
    assert rows[1].cached_input_tokens == second.usage.cache_read_input_tokens
    assert rows[1].input_tokens == second.usage.input_tokens


def test_count_tokens(corral: Running) -> None:
    c = client(corral)
    messages = [{"role": "user", "content": "How many tokens is this?"}]
    counted = c.messages.count_tokens(model="sim-standard", messages=messages)
    msg = c.messages.create(model="sim-standard", max_tokens=20, messages=messages)
    assert counted.input_tokens == msg.usage.input_tokens > 0


def test_claude_code_style_request_passes(corral: Running) -> None:
    """Query string ?beta=true, system blocks, unknown fields and beta headers pass through."""
    c = client(
        corral,
        default_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
    )
    msg = c.messages.create(
        model="sim-standard",
        max_tokens=8000,
        system=[{"type": "text", "text": "You are Claude Code."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        metadata={"user_id": "user_abc"},
        extra_query={"beta": "true"},
        extra_body={"context_management": {"edits": []}},
    )
    assert msg.content


def test_models_list_and_retrieve_in_anthropic_shape(corral: Running) -> None:
    c = client(corral)
    names = [m.id for m in c.models.list()]
    assert "sim-standard" in names
    assert c.models.retrieve("sim-standard").id == "sim-standard"
    with pytest.raises(anthropic.NotFoundError):
        c.models.retrieve("no-such-model")
