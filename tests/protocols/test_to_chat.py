"""Anthropic Messages requests rewritten as OpenAI Chat Completions requests."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from corral.errors import InvalidRequest
from corral.protocols import CHAT
from corral.protocols.messages import chat_to_messages, messages_to_chat
from tests.protocols.corpus import claude_code_request

PNG = "iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def chat(**fields: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = messages_to_chat(body(user("hi"), **fields))["messages"]
    return messages


def test_plain_request_keeps_model_and_caps_output() -> None:
    """The model stays as given; ``max_tokens`` goes in ``max_completion_tokens``."""
    out = messages_to_chat(body(user("hi")))
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 100,
    }


def test_max_tokens_field_is_the_callers_choice() -> None:
    """Servers that read only the older field get ``max_tokens``."""
    out = messages_to_chat(body(user("hi")), max_tokens_field="max_tokens")
    assert out["max_tokens"] == 100
    assert "max_completion_tokens" not in out


def test_system_string_becomes_first_system_message() -> None:
    assert chat(system="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_system_blocks_keep_their_boundaries_and_lose_cache_markers() -> None:
    """Several system blocks become text parts; ``cache_control`` is a hint and goes."""
    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Long prompt.", "cache_control": {"type": "ephemeral"}},
    ]
    assert chat(system=system)[0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Long prompt."},
        ],
    }


def test_mid_conversation_system_message_stays_in_place() -> None:
    """Claude Code's mid-conversation system messages keep their position."""
    out = messages_to_chat(
        body(
            user("one"),
            {"role": "assistant", "content": "two"},
            {"role": "system", "content": [{"type": "text", "text": "reminder"}]},
            user("three"),
        )
    )
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "system", "user"]
    assert out["messages"][2]["content"] == "reminder"


def test_text_blocks_travel_as_a_string_or_parts() -> None:
    single = chat()
    assert single == [{"role": "user", "content": "hi"}]
    out = messages_to_chat(
        body(user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]))
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


def test_images_become_image_url_parts() -> None:
    """Base64 images become data URLs; URL images keep their URL."""
    blocks = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]
    content = messages_to_chat(body(user(blocks)))["messages"][0]["content"]
    assert content == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]


def test_pdf_document_becomes_a_file_part() -> None:
    doc = {
        "type": "document",
        "title": "spec.pdf",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    content = messages_to_chat(body(user([doc, {"type": "text", "text": "Sum up"}])))
    assert content["messages"][0]["content"][0] == {
        "type": "file",
        "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
    }


def test_assistant_tool_use_becomes_tool_calls_and_thinking_is_left_out() -> None:
    """Arguments are the input as compact JSON text; thinking blocks are not carried."""
    assistant = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        ],
    }
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "README.md"}
    out = messages_to_chat(body(user("list"), assistant, user([result])))
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "README.md"},
    ]


def test_assistant_with_only_tool_calls_has_null_content() -> None:
    assistant = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}],
    }
    out = messages_to_chat(body(user("go"), assistant, user([_result("t1", "ok")])))
    assert out["messages"][1]["content"] is None
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


def _result(call_id: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, **extra}


def _calls(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": i, "name": "Read", "input": {}} for i in ids],
    }


def test_tool_results_come_first_then_the_rest_of_the_user_turn() -> None:
    """Chat wants tool messages right after the calls; the user's text follows them."""
    turn = user(
        [
            {"type": "text", "text": "<system-reminder>note</system-reminder>"},
            _result("a", "first"),
            _result("b", [{"type": "text", "text": "second"}]),
        ]
    )
    out = messages_to_chat(body(user("go"), _calls("a", "b"), turn))["messages"]
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "first"},
        {"role": "tool", "tool_call_id": "b", "content": "second"},
        {"role": "user", "content": "<system-reminder>note</system-reminder>"},
    ]


def test_tool_result_errors_say_so_in_the_text() -> None:
    """Chat has no is_error flag: the result text starts with "Error: "."""
    turn = user(
        [
            _result("a", "No such file", is_error=True),
            _result("b", [{"type": "text", "text": "boom"}], is_error=True),
            _result("c", "", is_error=True),
        ]
    )
    out = messages_to_chat(body(user("go"), _calls("a", "b", "c"), turn))["messages"]
    assert [m["content"] for m in out[2:]] == ["Error: No such file", "Error: boom", "Error"]


def test_images_in_tool_results_move_to_the_user_message() -> None:
    """Chat tool messages hold text only; the screenshot follows in the user turn."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    turn = user(
        [
            _result("a", [{"type": "text", "text": "screenshot:"}, image]),
            {"type": "text", "text": "What do you see?"},
        ]
    )
    out = messages_to_chat(body(user("go"), _calls("a"), turn))["messages"]
    assert out[2] == {"role": "tool", "tool_call_id": "a", "content": "screenshot:"}
    assert out[3] == {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "text", "text": "What do you see?"},
        ],
    }


def test_tools_and_tool_choices() -> None:
    tools = [
        {"name": "Bash", "description": "Run", "input_schema": SCHEMA, "cache_control": {}},
        {"type": "custom", "name": "Read", "input_schema": SCHEMA, "strict": True},
    ]
    out = messages_to_chat(body(user("hi"), tools=tools))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "Bash", "description": "Run", "parameters": SCHEMA},
        },
        {"type": "function", "function": {"name": "Read", "parameters": SCHEMA, "strict": True}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "Bash"},
            {"type": "function", "function": {"name": "Bash"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    tools = [{"name": "Bash", "input_schema": SCHEMA}]
    out = messages_to_chat(body(user("hi"), tools=tools, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert out.get("parallel_tool_calls") == parallel


def test_tool_choice_without_tools_is_left_out() -> None:
    """Chat refuses a tool choice when no tools are offered."""
    out = messages_to_chat(body(user("hi"), tool_choice={"type": "auto"}))
    assert "tool_choice" not in out


def test_sampling_stop_user_and_stream() -> None:
    """Sampling as it is, ``stop_sequences`` as ``stop``, the user id as ``user``, and a
    streamed request asks for the usage chunk."""
    out = messages_to_chat(
        body(
            user("hi"),
            temperature=0.3,
            top_p=0.9,
            stop_sequences=["END", "\n\nHuman:"],
            metadata={"user_id": "u-42"},
            stream=True,
        )
    )
    assert out["temperature"] == 0.3
    assert out["top_p"] == 0.9
    assert out["stop"] == ["END", "\n\nHuman:"]
    assert out["user"] == "u-42"
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("thinking", "config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
        ({"type": "adaptive"}, None, None),
        ({"type": "disabled"}, None, None),
        ({"type": "adaptive"}, {"effort": "low"}, "low"),
        ({"type": "enabled", "budget_tokens": 1024}, {"effort": "max"}, "xhigh"),
    ],
)
def test_thinking_becomes_reasoning_effort(
    thinking: dict[str, Any], config: dict[str, Any] | None, effort: str | None
) -> None:
    fields: dict[str, Any] = {"thinking": thinking}
    if config is not None:
        fields["output_config"] = config
    out = messages_to_chat(body(user("hi"), **fields))
    assert out.get("reasoning_effort") == effort


def test_output_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fields = {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    out = messages_to_chat(body(user("hi"), **fields))
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_hints_are_dropped() -> None:
    """Cache markers, service tier and context management change no word the model reads."""
    out = messages_to_chat(
        body(
            user("hi"),
            cache_control={"type": "ephemeral"},
            service_tier="auto",
            context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        )
    )
    assert set(out) == {"model", "messages", "max_completion_tokens"}


def test_the_input_is_not_changed() -> None:
    """Translation builds new dicts; the caller's body is left as it was."""
    original = claude_code_request()
    kept = copy.deepcopy(original)
    messages_to_chat(original)
    assert original == kept


def test_claude_code_session_translates_whole() -> None:
    """A long Claude Code session: every turn arrives, every call is answered in order."""
    source = claude_code_request()
    out = messages_to_chat(source)
    roles = [m["role"] for m in out["messages"]]
    assert roles[0] == "system"
    assert roles.count("tool") == roles.count("assistant") == 30
    for i, message in enumerate(out["messages"]):
        if message["role"] == "tool":
            previous = out["messages"][i - 1]
            assert previous["tool_calls"][0]["id"] == message["tool_call_id"]
    assert len(out["tools"]) == 20
    assert out["reasoning_effort"] == "high"
    assert out["user"] == source["metadata"]["user_id"]
    assert len(orjson.dumps(out)) > 90_000


def test_top_k_travels_as_the_internal_forms_extension() -> None:
    """vLLM and llama.cpp take ``top_k``; OpenAI's own API does not, so it is left out there."""
    hi = [{"role": "user", "content": "hi"}]
    body = {"model": "m", "max_tokens": 5, "top_k": 40, "messages": hi}
    out = messages_to_chat(body)
    assert out["top_k"] == 40
    assert CHAT.from_internal(out, default_max=5, provider_kind="openai-compatible")["top_k"] == 40
    assert "top_k" not in CHAT.from_internal(out, default_max=5, provider_kind="openai")
    assert chat_to_messages(out)["top_k"] == 40


REFUSALS = [
    ({"container": "c1"}, "container"),
    ({"mcp_servers": []}, "mcp_servers"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"metadata": {"tenant": "x"}}, "metadata.tenant"),
    ({"output_config": {"task_budget": 5}}, "output_config.task_budget"),
    (
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "tools.0.type",
    ),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
]


@pytest.mark.parametrize(("fields", "path"), REFUSALS)
def test_untranslatable_fields_are_refused_by_name(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(body(user("hi"), **fields))
    assert caught.value.message.startswith(f"{path}: ")
    assert "OpenAI Chat Completions" in caught.value.message
    assert caught.value.status == 400


BLOCK_REFUSALS = [
    (
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        "messages.0.content.0.source",
    ),
    (
        {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
        "messages.0.content.0.source",
    ),
    (
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
        "messages.0.content.0.source",
    ),
    (
        {
            "type": "document",
            "citations": {"enabled": True},
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        "messages.0.content.0.citations",
    ),
    (
        {"type": "search_result", "source": "s", "title": "t", "content": []},
        "messages.0.content.0.type",
    ),
    (
        _result("a", [{"type": "document", "source": {"type": "url", "url": "u"}}]),
        "messages.0.content.0.content.0.type",
    ),
]


@pytest.mark.parametrize(("block", "path"), BLOCK_REFUSALS)
def test_untranslatable_blocks_are_refused_by_path(block: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat(body(user([block])))
    assert caught.value.message.startswith(f"{path}: ")


def test_server_tool_blocks_in_history_are_refused() -> None:
    assistant = {
        "role": "assistant",
        "content": [{"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}}],
    }
    with pytest.raises(InvalidRequest, match=r"^messages\.1\.content\.0\.type: .*server_tool_use"):
        messages_to_chat(body(user("hi"), assistant, user("more")))


def test_prefill_is_refused() -> None:
    """A final assistant message would be continued by Anthropic; Chat cannot."""
    with pytest.raises(InvalidRequest, match=r"^messages\.1: .*prefill"):
        messages_to_chat(body(user("hi"), {"role": "assistant", "content": "The answer is"}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": "hi"}, "messages: must be a list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [user(5)]}, "messages.0.content"),
        ({"messages": [user([{"type": "text", "text": 5}])]}, "messages.0.content.0.text"),
        ({"system": 5}, "system"),
        ({"tools": {}}, "tools: must be a list"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ],
)
def test_malformed_bodies_are_invalid_requests(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{message}"):
        messages_to_chat({**body(user("hi")), **fields})
