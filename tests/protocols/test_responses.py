"""Whole responses and error bodies, translated both ways."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from corral.errors import UpstreamError
from corral.protocols.messages import (
    anthropic_error_to_openai,
    chat_response_to_messages,
    messages_response_to_chat,
    openai_error_to_anthropic,
)
from corral.sim.generate import ToolCall
from corral.sim.wire import Usage
from tests.protocols.helpers import chat_body, messages_body, reply


def completion(
    message: dict[str, Any], finish: str | None = "stop", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        **extra,
    }


def anthropic_message(
    content: list[dict[str, Any]], stop: str = "end_turn", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "up",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        **extra,
    }


# -- Chat → Messages -------------------------------------------------------------


def test_simulated_chat_answer_matches_the_simulated_messages_answer() -> None:
    """The simulator renders one reply in both protocols; translating the Chat rendering
    gives the Messages rendering (ids aside: each side makes its own)."""
    usage = Usage(prompt=900, cache_read=512, cache_write=0, output=40, reasoning=0)
    translated = chat_response_to_messages(chat_body(usage=usage), model="up-model")
    native = messages_body(usage=usage)
    for block in (*translated["content"], *native["content"]):
        block.pop("id", None)
    native["usage"].pop("service_tier")
    assert {**translated, "id": None} == {**native, "id": None}


def test_text_reasoning_and_tool_calls() -> None:
    resp = completion(
        {
            "content": "Let me check.",
            "reasoning_content": "The user wants files.",
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                },
                {"type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        finish="tool_calls",
    )
    out = chat_response_to_messages(resp, model="claude-x")
    assert out["model"] == "claude-x"
    assert out["content"][0] == {
        "type": "thinking",
        "thinking": "The user wants files.",
        "signature": "",
    }
    assert out["content"][1] == {"type": "text", "text": "Let me check."}
    assert out["content"][2] == {
        "type": "tool_use",
        "id": "call_9",
        "name": "bash",
        "input": {"command": "ls"},
    }
    missing_id = out["content"][3]
    assert missing_id["id"].startswith("call_")
    assert missing_id["input"] == {}
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "called", "stop"),
    [
        ("stop", False, "end_turn"),
        ("stop", True, "tool_use"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("something_new", False, "end_turn"),
    ],
)
def test_finish_reasons(finish: str | None, called: bool, stop: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if called:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    assert chat_response_to_messages(completion(message, finish), model="m")["stop_reason"] == stop


def test_usage_splits_cached_and_written_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 300,
        "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 200},
    }
    out = chat_response_to_messages(completion({"content": "x"}, usage=usage), model="m")
    assert out["usage"] == {
        "input_tokens": 300,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 600,
        "output_tokens": 300,
    }


def test_ids_are_derived_from_the_upstream_id() -> None:
    one = chat_response_to_messages(completion({"content": "x"}), model="m")
    again = chat_response_to_messages(completion({"content": "y"}), model="m")
    other = chat_response_to_messages(
        {**completion({"content": "x"}), "id": "chatcmpl-2"}, model="m"
    )
    assert one["id"].startswith("msg_")
    assert one["id"] == again["id"] != other["id"]


def test_refusal_text_is_kept() -> None:
    out = chat_response_to_messages(
        completion({"content": None, "refusal": "I can't."}, "content_filter"), model="m"
    )
    assert out["content"] == [{"type": "text", "text": "I can't."}]
    assert out["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    "resp",
    [
        {"id": "x", "choices": []},
        {"id": "x"},
        completion(
            {
                "content": "x",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
            }
        ),
        completion(
            {
                "content": "x",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
            }
        ),
        completion({"content": "x", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}),
    ],
)
def test_malformed_completions_are_upstream_errors(resp: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError):
        chat_response_to_messages(resp, model="m")


# -- Messages → Chat -------------------------------------------------------------


def test_simulated_messages_answer_matches_the_simulated_chat_answer() -> None:
    usage = Usage(prompt=900, cache_read=512, cache_write=0, output=40, reasoning=0)
    calls = (ToolCall("call_a1", "Bash", '{"command":"ls"}'), ToolCall("call_a2", "Read", "{}"))
    r = reply(calls=calls)
    translated = messages_response_to_chat(
        messages_body(r, usage=usage), model="up-model", created=1_700_000_000
    )
    native = chat_body(r, usage=usage)
    t_message, n_message = translated["choices"][0]["message"], native["choices"][0]["message"]
    assert t_message["content"] == n_message["content"]
    assert [c["function"] for c in t_message["tool_calls"]] == [
        c["function"] for c in n_message["tool_calls"]
    ]
    assert translated["choices"][0]["finish_reason"] == native["choices"][0]["finish_reason"]
    assert translated["usage"]["prompt_tokens"] == native["usage"]["prompt_tokens"]
    assert translated["usage"]["completion_tokens"] == native["usage"]["completion_tokens"]
    assert translated["usage"]["prompt_tokens_details"]["cached_tokens"] == 512
    assert translated["created"] == 1_700_000_000


def test_blocks_join_into_one_message() -> None:
    """Text blocks (cut by citations, say) join without separators; thinking joins into
    ``reasoning_content``; redacted thinking is opaque and left out."""
    out = messages_response_to_chat(
        anthropic_message(
            [
                {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "The answer", "citations": [{"type": "char_location"}]},
                {"type": "text", "text": " is 4."},
                {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"x": [1, 2]}},
            ],
            stop="tool_use",
        ),
        model="gpt-x",
    )
    message = out["choices"][0]["message"]
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "gpt-x"
    assert message["content"] == "The answer is 4."
    assert message["reasoning_content"] == "Hmm."
    assert message["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "calc", "arguments": '{"x":[1,2]}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_only_tool_calls_means_null_content() -> None:
    out = messages_response_to_chat(
        anthropic_message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_use"),
        model="m",
    )
    assert out["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop: str | None, finish: str) -> None:
    resp = anthropic_message([{"type": "text", "text": "x"}], stop)  # type: ignore[arg-type]
    assert messages_response_to_chat(resp, model="m")["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_as_prompt() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 50,
        "output_tokens_details": {"thinking_tokens": 30},
    }
    out = messages_response_to_chat(
        anthropic_message([{"type": "text", "text": "x"}], usage=usage), model="m"
    )
    assert out["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 50,
        "total_tokens": 1260,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


def test_usage_round_trips() -> None:
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 50,
    }
    chat = messages_response_to_chat(
        anthropic_message([{"type": "text", "text": "x"}], usage=usage), model="m"
    )
    back = chat_response_to_messages(chat, model="m")
    assert back["usage"] == usage


def test_server_tool_blocks_are_upstream_errors() -> None:
    resp = anthropic_message(
        [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]
    )
    with pytest.raises(UpstreamError, match="server_tool_use"):
        messages_response_to_chat(resp, model="m")


# -- error bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_openai_errors_take_anthropics_shape(status: int, kind: str) -> None:
    body = {"error": {"message": "Something went wrong", "type": "x", "param": None, "code": "y"}}
    out = orjson.loads(openai_error_to_anthropic(status, body))
    assert out == {"type": "error", "error": {"type": kind, "message": "Something went wrong"}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"object":"error","message":"vLLM says no","type":"BadRequestError","code":400}',
            "vLLM says no",
        ),
        (b'{"error":"ollama says no"}', "ollama says no"),
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"", "upstream error (HTTP 502)"),
    ],
)
def test_other_openai_compatible_error_bodies(body: bytes, message: str) -> None:
    out = orjson.loads(openai_error_to_anthropic(502, body))
    assert out["error"]["message"] == message


def test_anthropic_errors_take_openais_shape() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}'
    assert orjson.loads(anthropic_error_to_openai(429, body)) == {
        "error": {
            "message": "Slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_error",
        }
    }


def test_a_too_long_prompt_gets_openais_context_length_code() -> None:
    body = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum",
        },
    }
    out = orjson.loads(anthropic_error_to_openai(400, body))
    assert out["error"]["code"] == "context_length_exceeded"
    assert out["error"]["type"] == "invalid_request_error"
