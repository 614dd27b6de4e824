"""Properties over generated requests: only InvalidRequest escapes, and nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.errors import InvalidRequest
from corral.protocols.messages import chat_to_messages, messages_to_chat

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def loose_dict(keys: list[str], values: Any = json_values) -> st.SearchStrategy[dict[str, Any]]:
    """Objects using the protocol's field names (often) with arbitrary values."""
    names = st.sampled_from(keys) | st.text(max_size=8)
    return st.dictionaries(names, values, max_size=len(keys))


# -- any input: only InvalidRequest -------------------------------------------------

anthropic_blocks = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "image", "document", "tool_use", "tool_result", "thinking", "search_result"]
        )
        | json_values
    },
    optional={
        "text": st.text(max_size=10) | json_values,
        "source": loose_dict(["type", "media_type", "data", "url", "file_id"]) | json_values,
        "id": st.text(max_size=6) | json_values,
        "name": st.text(max_size=6) | json_values,
        "input": json_values,
        "tool_use_id": st.text(max_size=6) | json_values,
        "content": st.text(max_size=6) | st.lists(json_values, max_size=3) | json_values,
        "is_error": json_values,
        "citations": json_values,
    },
)
anthropic_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]) | json_values},
    optional={
        "content": st.text(max_size=10) | st.lists(anthropic_blocks, max_size=4) | json_values
    },
)
anthropic_bodies = st.fixed_dictionaries(
    {"messages": st.lists(anthropic_messages, max_size=5) | json_values},
    optional={
        "model": json_values,
        "max_tokens": st.integers(-5, 10**6) | json_values,
        "system": st.text(max_size=10) | st.lists(anthropic_blocks, max_size=3) | json_values,
        "tools": st.lists(loose_dict(["name", "type", "input_schema", "description"]), max_size=3)
        | json_values,
        "tool_choice": loose_dict(["type", "name", "disable_parallel_tool_use"]) | json_values,
        "thinking": loose_dict(["type", "budget_tokens"]) | json_values,
        "output_config": loose_dict(["effort", "format"]) | json_values,
        "metadata": loose_dict(["user_id"]) | json_values,
        "stop_sequences": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "stream": json_values,
        "cache_control": json_values,
    },
)

chat_parts = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["text", "image_url", "file", "input_audio", "refusal"])
        | json_values
    },
    optional={
        "text": st.text(max_size=10) | json_values,
        "image_url": loose_dict(["url", "detail"]) | json_values,
        "file": loose_dict(["file_data", "file_id", "filename"]) | json_values,
        "refusal": json_values,
    },
)
chat_tool_calls = st.fixed_dictionaries(
    {"id": st.text(max_size=6) | json_values, "type": st.just("function") | json_values},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.text(max_size=6) | json_values},
            optional={"arguments": st.text(max_size=12) | json_values},
        )
        | json_values
    },
)
chat_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | json_values},
    optional={
        "content": st.none()
        | st.text(max_size=10)
        | st.lists(chat_parts, max_size=3)
        | json_values,
        "tool_calls": st.lists(chat_tool_calls, max_size=2) | json_values,
        "tool_call_id": st.text(max_size=6) | json_values,
        "refusal": json_values,
    },
)
chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(chat_messages, max_size=5) | json_values},
    optional={
        "model": json_values,
        "max_tokens": st.integers(-5, 10**6) | json_values,
        "max_completion_tokens": st.integers(-5, 10**6) | json_values,
        "tools": st.lists(loose_dict(["type", "function"]), max_size=2) | json_values,
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
        "parallel_tool_calls": json_values,
        "reasoning_effort": st.sampled_from(["none", "low", "high"]) | json_values,
        "response_format": loose_dict(["type", "json_schema"]) | json_values,
        "stop": json_values,
        "temperature": json_values,
        "n": json_values,
        "user": json_values,
        "logprobs": json_values,
        "stream": json_values,
        "stream_options": json_values,
    },
)


@SETTINGS
@given(anthropic_bodies | json_values)
def test_messages_to_chat_raises_only_invalid_request(body: Any) -> None:
    """Whatever arrives, translation answers or refuses with a 400; it never crashes."""
    try:
        out = messages_to_chat(body)
    except InvalidRequest:
        return
    orjson.dumps(out)  # and what it answers is JSON


@SETTINGS
@given(chat_bodies | json_values)
def test_chat_to_messages_raises_only_invalid_request(body: Any) -> None:
    try:
        out = chat_to_messages(body)
    except InvalidRequest:
        return
    orjson.dumps(out)


# -- valid input: every text and every tool argument arrives ------------------------

texts = st.text(min_size=1, max_size=30)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
tool_inputs = st.dictionaries(st.text(max_size=8), small_json, max_size=4)
PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}


@st.composite
def anthropic_conversations(
    draw: st.DrawFn, *, errors: bool = True, images: bool = True
) -> dict[str, Any]:
    """A valid Messages request: turns alternate, every tool_use answered in the next turn."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn in range(draw(st.integers(0, 4))):
        results = [
            {
                "type": "tool_result",
                "tool_use_id": call_id,
                "content": draw(
                    texts
                    | st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2)
                ),
                "is_error": draw(st.booleans()) if errors else False,
            }
            for call_id in pending
        ]
        if images and results and draw(st.booleans()) and isinstance(results[0]["content"], list):
            results[0]["content"].append(PNG)
        extra = draw(st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2))
        if images and draw(st.booleans()):
            extra.append(PNG)
        content: Any = results + extra
        if not content:
            content = draw(texts)
        messages.append({"role": "user", "content": content})
        blocks: list[dict[str, Any]] = [
            {"type": "text", "text": t} for t in draw(st.lists(texts, max_size=2))
        ]
        pending = [f"toolu_{turn}_{i}" for i in range(draw(st.integers(0, 2)))]
        blocks += [
            {"type": "tool_use", "id": call_id, "name": draw(texts), "input": draw(tool_inputs)}
            for call_id in pending
        ]
        messages.append({"role": "assistant", "content": blocks or draw(texts)})
    closing = [{"type": "tool_result", "tool_use_id": i, "content": draw(texts)} for i in pending]
    messages.append({"role": "user", "content": [*closing, {"type": "text", "text": draw(texts)}]})
    body: dict[str, Any] = {"model": "m", "max_tokens": 1000, "messages": messages}
    if draw(st.booleans()):
        body["system"] = draw(texts)
    return body


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def anthropic_texts(body: dict[str, Any]) -> list[str]:
    found = [body["system"]] if isinstance(body.get("system"), str) else []
    for message in body["messages"]:
        content = message["content"]
        found += [content] if isinstance(content, str) else []
        for block in content if isinstance(content, list) else ():
            if block["type"] == "text":
                found.append(block["text"])
            elif block["type"] == "tool_result":
                inner = block["content"]
                found += (
                    [inner]
                    if isinstance(inner, str)
                    else [b["text"] for b in inner if b["type"] == "text"]
                )
    return found


def anthropic_calls(body: dict[str, Any]) -> dict[str, Any]:
    return {
        block["id"]: (block["name"], block["input"])
        for message in body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_use"
    }


@SETTINGS
@given(anthropic_conversations())
def test_messages_to_chat_keeps_every_text_and_argument(body: dict[str, Any]) -> None:
    out = messages_to_chat(body)
    seen = list(strings(out["messages"]))
    for text in anthropic_texts(body):
        assert any(text in s for s in seen), text
    calls = {
        call["id"]: (call["function"]["name"], orjson.loads(call["function"]["arguments"]))
        for message in out["messages"]
        for call in message.get("tool_calls") or ()
    }
    assert calls == anthropic_calls(body)
    for i, message in enumerate(out["messages"]):  # each tool message follows its call
        if message["role"] == "tool":
            before = out["messages"][i - 1]
            ids = [c["id"] for c in before.get("tool_calls") or ()]
            assert message["tool_call_id"] in ids or before["role"] == "tool"


def flatten(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The conversation as (role, kind, value) items, whatever the message boundaries."""
    items: list[tuple[Any, ...]] = []
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            kind = block["type"]
            if kind == "text":
                items.append((message["role"], "text", block["text"]))
            elif kind == "tool_use":
                items.append(
                    (message["role"], "tool_use", block["id"], block["name"], block["input"])
                )
            elif kind == "tool_result":
                inner = block["content"]
                inner = [inner] if isinstance(inner, str) else [b["text"] for b in inner]
                items.append(
                    (
                        message["role"],
                        "tool_result",
                        block["tool_use_id"],
                        tuple(t for t in inner if t),
                    )
                )
            else:
                items.append((message["role"], kind, orjson.dumps(block["source"])))
    return items


@SETTINGS
@given(anthropic_conversations(errors=False, images=False))
def test_messages_round_trip_through_chat(body: dict[str, Any]) -> None:
    """Messages → Chat → Messages keeps the conversation item for item."""
    assert flatten(chat_to_messages(messages_to_chat(body))) == flatten(body)


@st.composite
def chat_conversations(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Chat request: system first, tool messages right after their calls."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": draw(texts)}]
    for turn in range(draw(st.integers(0, 4))):
        messages.append({"role": "user", "content": draw(texts)})
        calls = [
            {
                "id": f"call_{turn}_{i}",
                "type": "function",
                "function": {
                    "name": draw(texts),
                    "arguments": orjson.dumps(draw(tool_inputs)).decode(),
                },
            }
            for i in range(draw(st.integers(0, 2)))
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | texts)}
        if calls:
            assistant["tool_calls"] = calls
        elif assistant["content"] is None:
            assistant["content"] = draw(texts)
        messages.append(assistant)
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": draw(texts)} for c in calls
        ]
    messages.append({"role": "user", "content": [{"type": "text", "text": draw(texts)}]})
    return {"model": "m", "messages": messages, "max_completion_tokens": 500}


@SETTINGS
@given(chat_conversations())
def test_chat_to_messages_keeps_every_text_and_argument(body: dict[str, Any]) -> None:
    out = chat_to_messages(body)
    seen = list(strings(out["messages"])) + list(strings(out.get("system")))
    for message in body["messages"]:
        for text in strings(message.get("content")):
            if text != "text":
                assert any(text in s for s in seen), text
    calls = {
        call["id"]: (call["function"]["name"], orjson.loads(call["function"]["arguments"]))
        for message in body["messages"]
        for call in message.get("tool_calls") or ()
    }
    assert anthropic_calls(out) == calls
