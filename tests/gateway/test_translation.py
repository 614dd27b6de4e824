"""The official SDKs served across protocol families through translation (tools, streaming).

The simulator stands behind an ``openai-compatible`` provider (Chat only) and
an ``anthropic`` provider (Messages only); ``x-sim-tool-call: 1`` (forwarded
by the gateway) makes it answer with a tool call when tools are offered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from corral.settings import ModelConfig, ProviderConfig
from corral.sim.config import SimConfig
from corral.sim.testing import running_sim
from tests.gateway.conftest import Running, gateway_corral

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TOOL_CALL = {"x-sim-tool-call": "1"}


@pytest.fixture
def crossing(tmp_path: Path) -> Iterator[Running]:
    with running_sim(SimConfig(seed=3)) as sim:
        providers = [
            ProviderConfig(name="vllm", kind="openai-compatible", base_url=sim.url),
            ProviderConfig(
                name="ant", kind="anthropic", base_url=sim.url, api_key_env="TEST_ANT_KEY"
            ),
        ]
        models = [
            ModelConfig(name="local-coder", provider="vllm", upstream_model="sim-standard",
                        input_price=1, output_price=2),
            ModelConfig(name="claude-x", provider="ant", upstream_model="sim-standard",
                        input_price=3, output_price=15),
        ]  # fmt: skip
        with gateway_corral(
            tmp_path / "home",
            f"sqlite:///{tmp_path / 'c.db'}",
            providers=providers,
            models=models,
            environ={"TEST_ANT_KEY": "sk-ant-test"},
        ) as running:
            yield running


def test_anthropic_sdk_streaming_with_tools_served_by_a_chat_deployment(
    crossing: Running,
) -> None:
    client = crossing.track(anthropic.Anthropic(base_url=crossing.url, api_key=crossing.key))
    messages = [{"role": "user", "content": "What is the weather in Oslo? Use the tool."}]
    with client.messages.stream(
        model="local-coder",
        max_tokens=300,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=messages,  # type: ignore[arg-type]
        extra_headers=TOOL_CALL,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert isinstance(use.input, dict)
    assert final.usage.output_tokens > 0
    # The tool result goes back through the same crossing, and the model answers in text.
    follow = client.messages.create(
        model="local-coder",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *messages,
            {"role": "assistant", "content": final.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12 C"}],
            },
        ],  # type: ignore[arg-type]
    )
    assert follow.stop_reason == "end_turn"
    assert follow.content[0].type == "text"
    rows = crossing.records(wait_for=2)
    assert [r.protocol for r in rows] == ["messages", "messages"]
    assert all(r.deployment == "vllm/sim-standard" for r in rows)
    assert rows[0].output_tokens > 0
    assert rows[0].cost_nusd > 0


def test_openai_sdk_streaming_with_tools_served_by_an_anthropic_deployment(
    crossing: Running,
) -> None:
    client = crossing.track(openai.OpenAI(base_url=crossing.url + "/v1", api_key=crossing.key))
    tool = {
        "type": "function",
        "function": {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "parameters": WEATHER["input_schema"],
        },
    }
    stream = client.chat.completions.create(
        model="claude-x",
        max_tokens=300,
        stream=True,
        tools=[tool],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Oslo? Use the tool."}],
        extra_headers=TOOL_CALL,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert isinstance(json.loads(arguments), dict)
    assert finish == "tool_calls"
    whole = client.chat.completions.create(
        model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    rows = crossing.records(wait_for=2)
    assert all(r.deployment == "ant/sim-standard" for r in rows)
    assert all(r.protocol == "chat" for r in rows)
    assert all(r.cost_nusd > 0 for r in rows)


def test_what_cannot_be_translated_is_refused_by_name(crossing: Running) -> None:
    client = crossing.track(openai.OpenAI(base_url=crossing.url + "/v1", api_key=crossing.key))
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(
            model="claude-x",
            max_tokens=10,
            logprobs=True,
            messages=[{"role": "user", "content": "hi"}],
        )


def test_openai_responses_api_with_tools_served_by_a_chat_deployment(crossing: Running) -> None:
    client = crossing.track(openai.OpenAI(base_url=crossing.url + "/v1", api_key=crossing.key))
    tool = {
        "type": "function",
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    }
    with client.responses.stream(
        model="local-coder",
        instructions="You are terse.",
        input="Weather in Oslo? Use the tool.",
        tools=[tool],  # type: ignore[list-item]
        max_output_tokens=300,
        extra_headers=TOOL_CALL,
    ) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].arguments), dict)
    answer = client.responses.create(
        model="local-coder",
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "12 C"},
        ],
        tools=[tool],  # type: ignore[list-item]
        max_output_tokens=100,
    )
    assert answer.status == "completed"
    assert answer.output_text
    assert answer.usage is not None
    assert answer.usage.output_tokens > 0
    rows = crossing.records(wait_for=2)
    assert all(r.protocol == "responses" for r in rows)
    assert all(r.deployment == "vllm/sim-standard" for r in rows)
    assert all(r.cost_nusd > 0 for r in rows)
