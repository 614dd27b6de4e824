"""OpenAI Responses (what Codex CLI speaks) against the simulator, through the official SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
from simhelp import post

from corral.sim.testing import RunningSim

SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Run a command.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}},
            "workdir": {"type": "string"},
        },
        "required": ["command"],
    },
}
# What Codex sends beside function tools; the simulator accepts and never calls them.
CODEX_TOOLS: list[dict[str, Any]] = [
    {"type": "web_search"},
    {"type": "custom", "name": "apply_patch", "description": "Patch.", "format": {"type": "text"}},
    {"type": "namespace", "name": "mcp__docs", "description": "MCP", "tools": []},
    {"type": "tool_search"},
    SHELL,
]


def codex_body(**extra: Any) -> dict[str, Any]:
    """A request shaped like Codex CLI's."""
    return {
        "model": "sim-standard",
        "instructions": "You are Codex, a coding agent.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>full</permissions>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "<environment_context>cwd</environment_context>"}
                ],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "List the files"}],
            },
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "client_metadata": {"originator": "codex_exec"},
        **extra,
    }


def test_non_streamed_response(openai_client: openai.OpenAI) -> None:
    """``input`` as a string gives a completed response with a message and usage."""
    response = openai_client.responses.create(
        model="sim-standard", input="Hello", instructions="Be brief."
    )
    assert response.status == "completed"
    assert response.object == "response"
    assert "Corral's simulator" in response.output_text
    assert response.instructions == "Be brief."
    usage = response.usage
    assert usage is not None
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_stream_events_and_final_response(openai_client: openai.OpenAI) -> None:
    """The SDK's stream helper accumulates the events into the same response as non-streamed."""
    whole = openai_client.responses.create(model="sim-standard", input="Stream me")
    with openai_client.responses.stream(model="sim-standard", input="Stream me") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.output_text == whole.output_text
    assert final.usage == whole.usage


def test_function_call_round_trip(openai_client: openai.OpenAI) -> None:
    """A ``tool`` model calls the function; after ``function_call_output`` it answers in text."""
    with openai_client.responses.stream(
        model="sim-tool",
        input="List the files",
        tools=[SHELL],  # type: ignore[list-item]
    ) as stream:
        events = list(stream)
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "shell"
    assert json.loads(call.arguments) == {"command": ["echo corral-sim"]}
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[-1].item.type == "function_call"
    assert done[-1].item.arguments == call.arguments  # the full item, as Codex requires
    second = openai_client.responses.create(
        model="sim-tool",
        input=[
            {"role": "user", "content": "List the files"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "shell",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "README.md"},
        ],
        tools=[SHELL],  # type: ignore[list-item]
    )
    assert [item.type for item in second.output] == ["message"]
    assert "shell" in second.output_text


def test_codex_shaped_request(sim: RunningSim) -> None:
    """Codex's fields and non-function tools are accepted; the stream ends with completed."""
    raw = post(sim.url, "/v1/responses", codex_body(), {"x-sim-tool-call": "1"})
    assert raw.status == 200
    events = [(name, json.loads(data)) for name, data in raw.events()]
    assert all(name == payload["type"] for name, payload in events)
    done_items = [p["item"] for n, p in events if n == "response.output_item.done"]
    assert [item["type"] for item in done_items] == ["reasoning", "function_call"]
    assert done_items[0]["encrypted_content"]
    assert done_items[0]["summary"][0]["type"] == "summary_text"
    assert done_items[1]["name"] == "shell"  # the first *function* tool, not apply_patch
    completed = events[-1][1]["response"]
    assert events[-1][0] == "response.completed"
    assert completed["output"] == done_items
    usage = completed["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    assert usage["output_tokens"] > usage["output_tokens_details"]["reasoning_tokens"]


def test_history_items_of_every_kind_are_tolerated(openai_client: openai.OpenAI) -> None:
    """Reasoning items, custom tool calls and unknown item types in ``input`` are counted."""
    response = openai_client.responses.create(
        model="sim-standard",
        input=[
            {"role": "user", "content": "patch it"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** x"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"},
            {"type": "brand_new_item", "payload": {"anything": True}},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
        ],  # type: ignore[list-item]
    )
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens > 800


def test_max_output_tokens_makes_it_incomplete(sim: RunningSim) -> None:
    """Truncation gives ``status: incomplete`` and a ``response.incomplete`` event."""
    body = {"model": "sim-standard", "input": "Say a lot", "max_output_tokens": 5}
    whole = post(sim.url, "/v1/responses", body).json()
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["usage"]["output_tokens"] <= 5
    events = post(sim.url, "/v1/responses", {**body, "stream": True}).events()
    assert events[-1][0] == "response.incomplete"


def test_reasoning_summary_is_streamed(openai_client: openai.OpenAI) -> None:
    """With a summary requested, the reasoning item carries it and its events are sent."""
    with openai_client.responses.stream(
        model="sim-standard", input="Why?", reasoning={"effort": "low", "summary": "detailed"}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds
    reasoning = [item for item in final.output if item.type == "reasoning"]
    assert reasoning
    assert "simulator does not reason" in reasoning[0].summary[0].text
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens > 0


def test_prompt_cache_on_responses(sim: RunningSim) -> None:
    """The second identical long request reports cached input tokens."""
    body = codex_body(instructions="x " * 3000, stream=False)
    first = post(sim.url, "/v1/responses", body).json()["usage"]
    second = post(sim.url, "/v1/responses", body).json()["usage"]
    assert first["input_tokens_details"]["cached_tokens"] == 0
    cached = second["input_tokens_details"]["cached_tokens"]
    assert cached % 128 == 0
    assert 1024 <= cached <= second["input_tokens"]
    assert second["input_tokens"] == first["input_tokens"]
