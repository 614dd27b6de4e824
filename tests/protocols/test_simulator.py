"""End to end against the simulator: translated requests served by the other protocol, and
the answers translated back and read by the official SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.protocols.messages import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_response_to_messages,
    chat_to_messages,
    messages_response_to_chat,
    messages_to_chat,
)
from corral.sim import SimConfig
from corral.sim.testing import RunningSim, running_sim
from tests.protocols.corpus import claude_code_request, openai_agent_request
from tests.protocols.helpers import anthropic_final, openai_final


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with running_sim(SimConfig(seed=11, chunk_words=3)) as running:
        yield running


def post(sim: RunningSim, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(sim.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def stream(sim: RunningSim, path: str, body: dict[str, Any], translator: Any) -> bytes:
    """POST a streamed request and pass the raw body through ``translator`` as it arrives."""
    out: list[bytes] = []
    with httpx.stream("POST", sim.url + path, json=body, timeout=10) as response:
        assert response.status_code == 200
        out += [translator.feed(chunk) for chunk in response.iter_raw()]
    out.append(translator.close())
    return b"".join(out)


def test_claude_code_served_by_an_openai_compatible_model(sim: RunningSim) -> None:
    """A Claude Code session on a Chat-only model: the tool call it gets back is one it can run,
    and the streamed answer is the non-streamed one."""
    request = claude_code_request(turns=6, tools=4)
    request["model"] = "sim-local"
    request["tool_choice"] = {"type": "any"}
    del request["thinking"]  # Anthropic refuses forced tool use with thinking; keep it honest
    chat = messages_to_chat(request, max_tokens_field="max_tokens")
    translator = ChatToMessagesStream(model="claude-sonnet-4-5")
    final = anthropic_final(stream(sim, "/v1/chat/completions", chat, translator))
    assert final.model == "claude-sonnet-4-5"
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use"
    assert call.name in {tool["name"] for tool in request["tools"]}
    assert "file_path" in call.input
    assert translator.usage is not None
    assert translator.usage.input > 0
    assert translator.usage.output == final.usage.output_tokens

    whole = chat_response_to_messages(
        post(sim, "/v1/chat/completions", {**chat, "stream": False}), model="claude-sonnet-4-5"
    )
    assert [b.model_dump(exclude_none=True) for b in final.content] == whole["content"]


def test_claude_code_text_answer_through_a_chat_model(sim: RunningSim) -> None:
    """Without a forced tool the simulator answers in text, quoting the last user words."""
    request = {
        "model": "sim-local",
        "max_tokens": 500,
        "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello please"}]}],
    }
    final = anthropic_final(
        stream(
            sim, "/v1/chat/completions", messages_to_chat(request), ChatToMessagesStream(model="m")
        )
    )
    assert final.stop_reason == "end_turn"
    assert "Say hello please" in final.content[0].text


def test_openai_agent_served_by_an_anthropic_model(sim: RunningSim) -> None:
    """The openai SDK on an Anthropic-only model, tool call forced, streamed and not."""
    request = openai_agent_request()
    request["model"] = "sim-frontier"
    request["tool_choice"] = "required"
    messages = chat_to_messages(request)
    translator = MessagesToChatStream(model="gpt-4.1")
    final = openai_final(stream(sim, "/v1/messages", messages, translator))
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "bash"
    assert translator.usage is not None
    assert final.usage is not None
    assert final.usage.completion_tokens == translator.usage.output

    whole = messages_response_to_chat(
        post(sim, "/v1/messages", {**messages, "stream": False}), model="gpt-4.1"
    )
    assert message.content == whole["choices"][0]["message"]["content"]
    assert [c.model_dump(exclude_none=True, exclude={"index"}) for c in message.tool_calls] == (
        whole["choices"][0]["message"]["tool_calls"]
    )


def test_reasoning_from_an_anthropic_model_reaches_the_chat_client(sim: RunningSim) -> None:
    """``reasoning_effort`` turns on thinking; the thinking streams as ``reasoning_content``."""
    request = {
        "model": "sim-frontier",
        "messages": [{"role": "user", "content": "Think, then answer."}],
        "reasoning_effort": "low",
        "max_completion_tokens": 4000,
        "stream": True,
    }
    messages = chat_to_messages(request)
    assert messages["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    final = openai_final(stream(sim, "/v1/messages", messages, MessagesToChatStream(model="gpt-x")))
    message = final.choices[0].message
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"]
    assert message.content
