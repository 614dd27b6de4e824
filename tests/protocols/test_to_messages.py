"""OpenAI Chat Completions requests rewritten as Anthropic Messages requests."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from corral.errors import InvalidRequest
from corral.protocols.messages import chat_to_messages, messages_to_chat
from corral.protocols.messages.from_chat import DEFAULT_MAX_TOKENS
from tests.protocols.corpus import BASH, claude_code_request, openai_agent_request

PNG = "iVBORw0KGgo="


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(call_id: str, name: str = "bash", arguments: str = '{"command": "ls"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_calls(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def test_plain_request_gets_a_default_output_cap() -> None:
    """Anthropic requires ``max_tokens``; without one the default (or the caller's) applies."""
    out = chat_to_messages(body(user("hi")))
    assert out == {
        "model": "gpt-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert chat_to_messages(body(user("hi")), default_max_tokens=300)["max_tokens"] == 300


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_completion_tokens": 50}, 50),
        ({"max_tokens": 60}, 60),
        ({"max_completion_tokens": 50, "max_tokens": 60}, 50),
    ],
)
def test_output_cap_fields(fields: dict[str, Any], expected: int) -> None:
    assert chat_to_messages(body(user("hi"), **fields))["max_tokens"] == expected


def test_leading_system_and_developer_messages_make_the_system_prompt() -> None:
    out = chat_to_messages(
        body(
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            user("hi"),
        )
    )
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use tools."},
    ]
    single = chat_to_messages(body({"role": "system", "content": "Be brief."}, user("hi")))
    assert single["system"] == "Be brief."


def test_a_system_message_mid_conversation_is_refused() -> None:
    """Moving it to the top would change what the model reads when."""
    request = body(
        user("hi"),
        {"role": "assistant", "content": "hello"},
        {"role": "developer", "content": "Now be terse."},
        user("more"),
    )
    with pytest.raises(InvalidRequest, match=r"^messages\[2\]: a developer message after"):
        chat_to_messages(request)


def test_user_parts_images_and_files() -> None:
    parts = [
        {"type": "text", "text": "Compare"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
        },
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {
            "type": "file",
            "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
        },
    ]
    out = chat_to_messages(body(user(parts)))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            "title": "spec.pdf",
        },
    ]


def test_tool_round_trip_becomes_tool_use_and_one_user_turn() -> None:
    """Consecutive tool messages and the user message after them make one user turn."""
    out = chat_to_messages(
        body(
            user("list and count"),
            assistant_calls(call("c1"), call("c2", "wc", '{"path":"a"}'), content="On it."),
            tool("c1", "README.md"),
            tool("c2", [{"type": "text", "text": "3"}]),
            user("thanks"),
        )
    )
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it."},
                {"type": "tool_use", "id": "c1", "name": "bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "c2", "name": "wc", "input": {"path": "a"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "README.md"},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": [{"type": "text", "text": "3"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


def test_empty_arguments_mean_no_arguments() -> None:
    out = chat_to_messages(
        body(user("go"), assistant_calls(call("c1", "now", "")), tool("c1", "12:00"), user("ok"))
    )
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "now", "input": {}}
    ]


def test_assistant_refusal_and_reasoning() -> None:
    """A refusal is text the model said; reasoning fields are another model's and are left out."""
    assistant = {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
        "reasoning_content": "private",
    }
    out = chat_to_messages(body(user("x"), assistant, user("why?")))
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I can't help with that."}],
    }


def test_tools_and_choices() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = chat_to_messages(body(user("hi"), tools=[BASH, bare], tool_choice="required"))
    assert out["tools"] == [
        {
            "name": "bash",
            "description": "Run a shell command.",
            "input_schema": BASH["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "bash"}},
            None,
            {"type": "tool", "name": "bash"},
        ),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    out = chat_to_messages(
        body(user("hi"), tools=[BASH], tool_choice=choice, parallel_tool_calls=parallel)
    )
    assert out["tool_choice"] == expected


def test_tool_choice_without_tools_is_left_out() -> None:
    out = chat_to_messages(body(user("hi"), tool_choice="none", parallel_tool_calls=False))
    assert "tool_choice" not in out


def test_sampling_stop_user_stream() -> None:
    out = chat_to_messages(
        body(user("hi"), temperature=0.5, top_p=0.8, stop="END", user="u-1", stream=True)
    )
    assert out["temperature"] == 0.5
    assert out["top_p"] == 0.8
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert out["stream"] is True
    listed = chat_to_messages(body(user("hi"), stop=["a", "b"], safety_identifier="s-1"))
    assert listed["stop_sequences"] == ["a", "b"]
    assert listed["metadata"] == {"user_id": "s-1"}


@pytest.mark.parametrize(
    ("effort", "cap", "thinking"),
    [
        ("none", 4000, {"type": "disabled"}),
        ("minimal", 4000, {"type": "enabled", "budget_tokens": 1024}),
        ("low", 4000, {"type": "enabled", "budget_tokens": 2048}),
        ("medium", 32000, {"type": "enabled", "budget_tokens": 8192}),
        ("high", 32000, {"type": "enabled", "budget_tokens": 16384}),
        ("high", 4000, {"type": "enabled", "budget_tokens": 3999}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(
    effort: str, cap: int, thinking: dict[str, Any]
) -> None:
    out = chat_to_messages(body(user("hi"), reasoning_effort=effort, max_completion_tokens=cap))
    assert out["thinking"] == thinking


def test_thinking_stays_off_when_answering_tool_calls() -> None:
    """Anthropic wants the continued turn's signed thinking, which a Chat history never has."""
    request = body(
        user("go"),
        assistant_calls(call("c1")),
        tool("c1", "done"),
        reasoning_effort="high",
        max_completion_tokens=32000,
    )
    assert chat_to_messages(request)["thinking"] == {"type": "disabled"}


def test_json_schema_response_format_becomes_output_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    out = chat_to_messages(body(user("hi"), response_format=fmt))
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in chat_to_messages(
        body(user("hi"), response_format={"type": "text"})
    )


def test_no_op_values_and_hints_are_accepted() -> None:
    """Fields that ask for nothing (n=1, logprobs=false, …) and provider hints pass quietly."""
    out = chat_to_messages(
        body(
            user("hi"),
            n=1,
            logprobs=False,
            frequency_penalty=0,
            presence_penalty=0.0,
            modalities=["text"],
            store=False,
            seed=7,
            service_tier="auto",
            prompt_cache_key="k",
            metadata={"app": "x"},
            stream_options={"include_usage": True},
        )
    )
    assert set(out) == {"model", "max_tokens", "messages"}


REFUSALS = [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": 1}, "presence_penalty"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"store": True}, "store"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"verbosity": "low"}, "verbosity"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"frobnicate": True}, "frobnicate"),
    ({"temperature": 1.5}, "temperature"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    ({"reasoning_effort": "low", "max_completion_tokens": 1000}, "reasoning_effort"),
]


@pytest.mark.parametrize(("fields", "path"), REFUSALS)
def test_untranslatable_fields_are_refused_by_name(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_messages(body(user("hi"), **fields))
    assert caught.value.message.startswith(f"{path}: ")
    assert "Anthropic Messages" in caught.value.message


MESSAGE_REFUSALS = [
    ({"role": "user", "content": "hi", "name": "alice"}, "messages[0].name"),
    (
        user([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]),
        "messages[0].content[0].type",
    ),
    (user([{"type": "file", "file": {"file_id": "file-1"}}]), "messages[0].content[0].file"),
    (
        user([{"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}}]),
        "messages[0].content[0].file",
    ),
    (
        user([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]),
        "messages[0].content[0].image_url.url",
    ),
    ({"role": "function", "name": None, "content": "x"}, "messages[0].role"),
]


@pytest.mark.parametrize(("message", "path"), MESSAGE_REFUSALS)
def test_untranslatable_messages_are_refused_by_path(message: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_messages(body(message, user("more")))
    assert caught.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_arguments_that_are_not_an_object_are_refused(arguments: str) -> None:
    request = body(
        user("go"), assistant_calls(call("c1", "x", arguments)), tool("c1", "r"), user("ok")
    )
    with pytest.raises(
        InvalidRequest, match=r"^messages\[1\]\.tool_calls\[0\]\.function\.arguments"
    ):
        chat_to_messages(request)


def test_final_assistant_message_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"^messages\[1\]: .*prefill"):
        chat_to_messages(body(user("hi"), {"role": "assistant", "content": "Sure, the"}))


def test_the_input_is_not_changed() -> None:
    original = openai_agent_request()
    kept = copy.deepcopy(original)
    chat_to_messages(original)
    assert original == kept


# -- round trips ---------------------------------------------------------------


def test_messages_round_trip_through_chat() -> None:
    """Messages → Chat → Messages gives back the request, less hints and thinking."""
    source: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": 2000,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "List files"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Listing."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Bash",
                        "input": {"command": "ls"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a\nb"},
                    {"type": "text", "text": "Now count them"},
                ],
            },
        ],
        "tools": [
            {"name": "Bash", "description": "Run", "input_schema": BASH["function"]["parameters"]}
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "temperature": 0.7,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u"},
        "stream": True,
    }
    assert chat_to_messages(messages_to_chat(source)) == source


def _normalised_chat(request: dict[str, Any]) -> dict[str, Any]:
    """A Chat request with argument text parsed, for comparing meaning, not spacing."""
    out = orjson.loads(orjson.dumps(request))
    for message in out["messages"]:
        for c in message.get("tool_calls") or ():
            c["function"]["arguments"] = orjson.loads(c["function"]["arguments"])
    return dict(out)


def test_chat_round_trip_through_messages() -> None:
    """Chat → Messages → Chat gives back the request (the cap lands in max_completion_tokens)."""
    source = openai_agent_request()
    back = messages_to_chat(chat_to_messages(source))
    assert _normalised_chat(back) == _normalised_chat(source)


def test_claude_code_session_round_trips_its_conversation() -> None:
    """The long session survives both directions: every text, call and result in order."""
    source = claude_code_request()
    back = chat_to_messages(messages_to_chat(source))
    # Errors carry their "Error: " prefix; thinking maps to an effort and back to a budget.
    assert back["tools"] == source["tools"]
    assert len(back["messages"]) == len(source["messages"])
    for before, after in zip(source["messages"], back["messages"], strict=True):
        assert before["role"] == after["role"]
        for old, new in zip(before["content"], after["content"], strict=True):
            assert old["type"] == new["type"]
            if old["type"] == "tool_use":
                assert old["input"] == new["input"]
            elif old["type"] == "tool_result":
                assert new["content"].endswith(old["content"])
            else:
                assert old["text"] == new["text"]
