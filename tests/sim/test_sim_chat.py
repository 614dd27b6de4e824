"""OpenAI Chat Completions against the simulator, through the official SDK."""

from __future__ import annotations

import json

import openai
import orjson
from simhelp import post, words

from corral.sim.testing import RunningSim

READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["text", "bytes"]},
            },
            "required": ["path", "mode"],
        },
    },
}


def test_text_answer_says_it_is_a_simulator(openai_client: openai.OpenAI) -> None:
    """The default answer names the simulator and the model, and finishes with stop."""
    completion = openai_client.chat.completions.create(
        model="sim-standard", messages=[{"role": "user", "content": "What is Corral?"}]
    )
    choice = completion.choices[0]
    assert "Corral's simulator" in (choice.message.content or "")
    assert "sim-standard" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert completion.object == "chat.completion"
    usage = completion.usage
    assert usage is not None
    assert 20 <= usage.completion_tokens <= 140
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_non_stream(openai_client: openai.OpenAI) -> None:
    """Streamed deltas join to the same text, and include_usage reports the same numbers."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Compare streaming and not."},
    ]
    whole = openai_client.chat.completions.create(model="sim-standard", messages=messages)
    stream = openai_client.chat.completions.create(
        model="sim-standard",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    final = chunks[-1]
    assert final.choices == []
    assert final.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_usage_is_null_on_chunks_and_absent_without_include_usage(sim: RunningSim) -> None:
    """As OpenAI does: ``usage: null`` on every chunk with include_usage, no field without."""
    body = {"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]}
    with_usage = post(
        sim.url,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = with_usage.events()
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0
    without = post(sim.url, "/v1/chat/completions", {**body, "stream": True}).events()
    assert all("usage" not in json.loads(data) for _, data in without[:-1])
    assert with_usage.headers["Content-Type"].startswith("text/event-stream")


def test_tool_call_then_text_after_tool_result(openai_client: openai.OpenAI) -> None:
    """A ``tool`` model calls the first function with required arguments, then answers."""
    messages: list[dict[str, object]] = [{"role": "user", "content": "Read the README"}]
    first = openai_client.chat.completions.create(
        model="sim-tool", messages=messages, tools=[READ_FILE]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.function.name == "read_file"
    assert json.loads(call.function.arguments) == {"path": "README.md", "mode": "text"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "# Corral"})
    second = openai_client.chat.completions.create(
        model="sim-tool", messages=messages, tools=[READ_FILE]
    )
    assert second.choices[0].finish_reason == "stop"
    assert "read_file" in (second.choices[0].message.content or "")
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_streamed_tool_call_is_parsed_by_the_sdk(openai_client: openai.OpenAI) -> None:
    """The header x-sim-tool-call turns tool calls on for any model; the SDK accumulates them."""
    with openai_client.chat.completions.stream(
        model="sim-standard",
        messages=[{"role": "user", "content": "Read it"}],
        tools=[READ_FILE],
        extra_headers={"x-sim-tool-call": "1"},
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["read_file"]
    assert json.loads(calls[0].function.arguments)["path"] == "README.md"
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.completion_tokens > 0


def test_tool_choice_forces_and_forbids(openai_client: openai.OpenAI) -> None:
    """A named tool_choice forces that tool on any model; ``none`` forbids tools."""
    other = {"type": "function", "function": {"name": "list_dir", "parameters": {}}}
    forced = openai_client.chat.completions.create(
        model="sim-standard",
        messages=[{"role": "user", "content": "go"}],
        tools=[READ_FILE, other],
        tool_choice={"type": "function", "function": {"name": "list_dir"}},
    )
    assert [c.function.name for c in forced.choices[0].message.tool_calls or []] == ["list_dir"]
    refused = openai_client.chat.completions.create(
        model="sim-tool",
        messages=[{"role": "user", "content": "go"}],
        tools=[READ_FILE],
        tool_choice="none",
    )
    assert refused.choices[0].message.tool_calls is None


def test_max_tokens_truncates_with_length(openai_client: openai.OpenAI) -> None:
    """``max_completion_tokens`` caps the output; the finish reason says ``length``."""
    completion = openai_client.chat.completions.create(
        model="sim-standard",
        messages=[{"role": "user", "content": "Say a lot."}],
        max_completion_tokens=7,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 7


def test_reasoning_tokens_count_within_completion(openai_client: openai.OpenAI) -> None:
    """A reasoning model reports reasoning tokens inside completion tokens; more effort, more."""

    def reasoning(effort: str) -> tuple[int, int]:
        completion = openai_client.chat.completions.create(
            model="sim-reasoning",
            messages=[{"role": "user", "content": "Think about effort."}],
            reasoning_effort=effort,  # type: ignore[arg-type]
        )
        usage = completion.usage
        assert usage is not None
        assert usage.completion_tokens_details is not None
        return usage.completion_tokens_details.reasoning_tokens or 0, usage.completion_tokens

    low, low_total = reasoning("low")
    high, high_total = reasoning("high")
    assert 0 < low < high
    assert low < low_total
    assert high < high_total
    plain = openai_client.chat.completions.create(
        model="sim-standard", messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.usage is not None
    assert plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


def test_prompt_caching_reports_128_token_multiples(openai_client: openai.OpenAI) -> None:
    """A repeated prefix of 1024+ tokens is reported as cached, in multiples of 128."""
    system = {"role": "system", "content": words(1500, "chat-cache")}
    first = openai_client.chat.completions.create(
        model="sim-standard", messages=[system, {"role": "user", "content": "first"}]
    )
    second = openai_client.chat.completions.create(
        model="sim-standard", messages=[system, {"role": "user", "content": "second question"}]
    )
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    details = second.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens is not None
    assert details.cached_tokens >= 1024
    assert details.cached_tokens % 128 == 0
    assert details.cached_tokens <= second.usage.prompt_tokens


def test_short_prompts_are_never_cached(openai_client: openai.OpenAI) -> None:
    """Below 1024 tokens nothing is cached, however often the prompt repeats."""
    for _ in range(2):
        completion = openai_client.chat.completions.create(
            model="sim-standard", messages=[{"role": "user", "content": words(200, "short")}]
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_same_request_same_numbers(sim: RunningSim) -> None:
    """Answers are deterministic for a request; another request gets another length."""
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "Determinism?"}]}
    one = post(sim.url, "/v1/chat/completions", body).json()
    two = post(sim.url, "/v1/chat/completions", body).json()
    assert one["choices"] == two["choices"]
    assert one["usage"] == two["usage"]
    assert one["id"] != two["id"]
    texts = set()
    for n in range(5):
        other = {**body, "messages": [{"role": "user", "content": f"Question {n}"}]}
        texts.add(post(sim.url, "/v1/chat/completions", other).json()["usage"]["completion_tokens"])
    assert len(texts) > 1


def test_prompt_tokens_grow_with_the_prompt(sim: RunningSim) -> None:
    """Input counts cover messages and tool definitions, with per-message overhead."""

    def prompt_tokens(body: dict[str, object]) -> int:
        return int(post(sim.url, "/v1/chat/completions", body).json()["usage"]["prompt_tokens"])

    base = {"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]}
    bare = prompt_tokens(base)
    longer = prompt_tokens({**base, "messages": [{"role": "user", "content": words(50)}]})
    tools = prompt_tokens({**base, "tools": [READ_FILE]})
    assert longer - bare == 49  # fifty one-token words instead of "hi"
    assert tools - bare > len(orjson.dumps(READ_FILE)) // 8
