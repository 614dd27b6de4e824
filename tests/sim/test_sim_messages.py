"""Anthropic Messages (what Claude Code speaks) against the simulator, through the official SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
from simhelp import post, request, words

from corral.sim.testing import RunningSim

BASH = {
    "name": "Bash",
    "description": "Run a shell command.",
    "input_schema": {
        "type": "object",
        "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
        "required": ["command"],
    },
}


def test_message_says_it_is_a_simulator(anthropic_client: anthropic.Anthropic) -> None:
    """A plain request gets a text block, ``end_turn`` and usage without cache activity."""
    message = anthropic_client.messages.create(
        model="sim-frontier",
        max_tokens=1024,
        system="You are helpful.",
        messages=[{"role": "user", "content": "Who are you?"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert "Corral's simulator" in message.content[0].text
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.output_tokens > 0


def test_stream_matches_non_stream(anthropic_client: anthropic.Anthropic) -> None:
    """The streamed message accumulates to the non-streamed one, usage included."""
    kwargs: dict[str, Any] = {
        "model": "sim-standard",
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "System block."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Stream?"}]}],
    }
    whole = anthropic_client.messages.create(**kwargs)
    with anthropic_client.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds
    assert "content_block_stop" in kinds
    assert [block.model_dump() for block in final.content] == [
        block.model_dump() for block in whole.content
    ]
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.stop_reason == whole.stop_reason


def test_raw_event_order(sim: RunningSim) -> None:
    """Events: message_start, block start, ping, deltas, block stop, message_delta, stop."""
    body = {
        "model": "sim-standard",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = post(sim.url, "/v1/messages?beta=true", body, {"anthropic-version": "2023-06-01"})
    names = [name for name, _ in raw.events()]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = json.loads(raw.events()[0][1])["message"]["usage"]
    assert set(start) >= {
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    }


def test_tool_use_round_trip(anthropic_client: anthropic.Anthropic) -> None:
    """A ``tool`` model answers with tool_use; after the tool_result it answers in text."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "List files"}]
    with anthropic_client.messages.stream(
        model="sim-tool",
        max_tokens=1000,
        messages=messages,
        tools=[BASH],  # type: ignore[arg-type]
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    blocks = [block for block in first.content if block.type == "tool_use"]
    assert len(blocks) == 1
    assert blocks[0].name == "Bash"
    assert blocks[0].input == {"command": "echo corral-sim"}
    assert blocks[0].id.startswith("toolu_")
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": blocks[0].id, "content": "README.md"},
                {"type": "text", "text": "<system-reminder>keep going</system-reminder>"},
            ],
        }
    )
    second = anthropic_client.messages.create(
        model="sim-tool",
        max_tokens=1000,
        messages=messages,  # type: ignore[arg-type]
        tools=[BASH],  # type: ignore[list-item]
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert "Bash" in second.content[0].text


def test_tool_choice_any_forces_a_tool(anthropic_client: anthropic.Anthropic) -> None:
    """``tool_choice: any`` makes any model call a tool."""
    message = anthropic_client.messages.create(
        model="sim-standard",
        max_tokens=1000,
        messages=[{"role": "user", "content": "hi"}],
        tools=[BASH],  # type: ignore[list-item]
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"


def test_thinking_block_when_enabled(anthropic_client: anthropic.Anthropic) -> None:
    """With thinking enabled a thinking block (with signature) comes first, counted as output."""
    kwargs: dict[str, Any] = {
        "model": "sim-standard",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Think first."}],
    }
    with anthropic_client.messages.stream(**kwargs) as stream:
        kinds = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in kinds
    assert "signature_delta" in kinds
    thinking, text = final.content[0], final.content[1]
    assert thinking.type == "thinking"
    assert thinking.signature
    assert "simulator does not reason" in thinking.thinking
    assert text.type == "text"
    plain = anthropic_client.messages.create(**{k: v for k, v in kwargs.items() if k != "thinking"})
    assert plain.content[0].type == "text"
    assert final.usage.output_tokens > plain.usage.output_tokens


def test_max_tokens_stop_reason(anthropic_client: anthropic.Anthropic) -> None:
    """A small ``max_tokens`` truncates the text and stops with ``max_tokens``."""
    message = anthropic_client.messages.create(
        model="sim-standard", max_tokens=6, messages=[{"role": "user", "content": "Talk."}]
    )
    assert message.stop_reason == "max_tokens"
    assert 0 < message.usage.output_tokens <= 6


def test_cache_control_creates_then_reads(anthropic_client: anthropic.Anthropic) -> None:
    """A marked prefix is written on first sight and read afterwards; input excludes both."""
    system = [
        {
            "type": "text",
            "text": words(2000, "anthropic-cache"),
            "cache_control": {"type": "ephemeral"},
        }
    ]

    def ask(question: str) -> anthropic.types.Usage:
        return anthropic_client.messages.create(
            model="sim-standard",
            max_tokens=100,
            system=system,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": question}],
        ).usage

    first = ask("one")
    second = ask("two")
    assert first.cache_creation_input_tokens
    assert first.cache_creation_input_tokens > 2000
    assert first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert first.input_tokens < 20
    assert second.input_tokens < 20


def test_moving_breakpoint_reads_the_earlier_prefix(sim: RunningSim) -> None:
    """As in an agent loop: the breakpoint moves to the newest message, earlier writes are read."""
    marked = {"type": "ephemeral"}
    history = [
        {
            "role": "user",
            "content": [{"type": "text", "text": words(1500, "loop"), "cache_control": marked}],
        }
    ]
    body: dict[str, Any] = {"model": "sim-standard", "max_tokens": 50, "messages": history}
    first = post(sim.url, "/v1/messages", body).json()["usage"]
    history = [
        {"role": "user", "content": [{"type": "text", "text": words(1500, "loop")}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "next", "cache_control": marked}]},
    ]
    second = post(sim.url, "/v1/messages", {**body, "messages": history}).json()["usage"]
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] > 0


def test_count_tokens_matches_the_message_usage(anthropic_client: anthropic.Anthropic) -> None:
    """count_tokens equals input + cache reads + cache writes of the same request."""
    kwargs: dict[str, Any] = {
        "model": "sim-standard",
        "system": "You count.",
        "tools": [BASH],
        "messages": [{"role": "user", "content": "How many tokens is this?"}],
    }
    counted = anthropic_client.messages.count_tokens(**kwargs)
    usage = anthropic_client.messages.create(max_tokens=100, **kwargs).usage
    total = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert counted.input_tokens == total + (usage.cache_creation_input_tokens or 0)


def test_claude_code_extras_are_tolerated(sim: RunningSim) -> None:
    """``output_config``, ``context_management``, ``metadata`` and images do not break it."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "metadata": {"user_id": "user_abc"},
        "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "thinking": {"type": "adaptive"},
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "tools": [BASH, {"type": "web_search_20250305", "name": "web_search"}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {"type": "text", "text": "Describe", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
    }
    raw = post(sim.url, "/v1/messages?beta=true", body, {"x-api-key": "sk-ant-whatever"})
    assert raw.status == 200
    assert raw.events()[-1][0] == "message_stop"


def test_head_and_models(sim: RunningSim, anthropic_client: anthropic.Anthropic) -> None:
    """``HEAD /`` answers 200 (Claude Code's probe); both SDKs list the models."""
    assert request("HEAD", sim.url, "/").status == 200
    assert request("GET", sim.url, "/").status == 200
    listed = [model.id for model in anthropic_client.models.list()]
    assert "sim-reasoning" in listed
