"""OpenAI Responses requests served by a Chat Completions upstream, and the answers back."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.errors import InvalidRequest, UpstreamError
from corral.protocols import RESPONSES, Usage
from corral.protocols.responses.chat import chat_response_to_responses, responses_to_chat
from corral.protocols.responses.streams import ChatToResponsesStream
from corral.sim.generate import ToolCall
from tests.protocols.helpers import chat_body, chat_stream, reply, sse_events, translate

# -- requests ----------------------------------------------------------------------

CODEX = {
    "model": "qwen",
    "instructions": "You are Codex.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "D"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ls"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call", "call_id": "c2", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "b"}, {"type": "input_text", "text": "c"}],
        },
    ],
    "tools": [
        {
            "type": "function",
            "name": "shell",
            "description": "Run a command",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "high", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "k",
    "text": {"verbosity": "low"},
    "max_output_tokens": 512,
    "temperature": 0.2,
    "top_p": 0.9,
    "safety_identifier": "u1",
    "metadata": {"a": "b"},
    "service_tier": "auto",
    "truncation": "disabled",
    "background": False,
}


def test_a_codex_request_becomes_a_chat_request() -> None:
    """Instructions, roles, grouped calls, call outputs, tools and sampling all carry over."""
    assert responses_to_chat(CODEX) == {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "You are Codex."},
            {"role": "system", "content": "D"},
            {"role": "user", "content": "ls"},
            {
                "role": "assistant",
                "content": "ok",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "shell", "arguments": '{"cmd":"ls"}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "shell", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
            {"role": "tool", "tool_call_id": "c2", "content": "bc"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "shell",
                    "description": "Run a command",
                    "parameters": {"type": "object", "properties": {}},
                    "strict": False,
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning_effort": "high",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 512,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
    }


def test_a_string_input_is_one_user_message_and_the_max_field_is_chosen() -> None:
    body = {"model": "m", "input": "hi", "max_output_tokens": 9}
    assert responses_to_chat(body, max_tokens_field="max_tokens") == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
    }


def test_calls_without_an_assistant_message_before_them_open_one() -> None:
    body = {
        "input": [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ]
    }
    messages = responses_to_chat(body)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def test_images_become_image_url_parts() -> None:
    """Both web and data URLs pass through; the detail hint is kept."""
    content = [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
    ]
    messages = responses_to_chat({"input": [{"role": "user", "content": content}]})["messages"]
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True},
            {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_formats_become_response_formats(fmt: dict[str, Any], expected: Any) -> None:
    out = responses_to_chat({"input": "x", "text": {"format": fmt}})
    assert out.get("response_format") == expected


def test_a_function_tool_choice_names_the_function_and_needs_tools() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {}}]
    choice = {"type": "function", "name": "f"}
    out = responses_to_chat({"input": "x", "tools": tools, "tool_choice": choice})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    alone = responses_to_chat(
        {"input": "x", "tool_choice": "required", "parallel_tool_calls": True}
    )
    assert "tool_choice" not in alone
    assert "parallel_tool_calls" not in alone


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["file_search_call.results"]}, "include.0"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "f"}, {"type": "mcp"}]}, "tools.1.type"),
        ({"tools": [{"type": "local_shell"}]}, "tools.0.type"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools.0.type"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0.type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input.0.content.0.file_id",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "https://x"}],
                    }
                ]
            },
            "input.0.output.0",
        ),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ],
)
def test_features_without_a_chat_counterpart_are_refused(extra: dict[str, Any], field: str) -> None:
    """The 400 names the field, so the client's author knows what to change."""
    with pytest.raises(InvalidRequest) as info:
        responses_to_chat({"model": "m", "input": "x", **extra})
    assert info.value.message.startswith(field + ":")
    assert info.value.status == 400


# -- whole responses ---------------------------------------------------------------


def test_a_chat_completion_becomes_a_response() -> None:
    out = chat_response_to_responses(chat_body(), model="m", created=7)
    assert out["id"].startswith("resp_")
    assert (out["object"], out["model"], out["created_at"], out["status"]) == (
        "response",
        "m",
        7,
        "completed",
    )
    message, call = out["output"]
    assert message["type"] == "message"
    assert message["content"][0]["text"] == "Here is the listing you asked for."
    assert call == {
        "type": "function_call",
        "id": call["id"],
        "call_id": "call_sim01",
        "name": "Bash",
        "arguments": '{"command":"ls -la","description":"List files"}',
        "status": "completed",
    }
    assert out["usage"] == {
        "input_tokens": 1200,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 57,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1257,
    }


def test_a_length_stop_is_an_incomplete_response_and_reasoning_an_item() -> None:
    resp = {
        "id": "chatcmpl-1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "par", "reasoning_content": "hmm"},
            }
        ],
    }
    out = chat_response_to_responses(resp, model="m")
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["type"] for item in out["output"]] == ["reasoning", "message"]
    assert out["output"][0]["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert RESPONSES.outcome(out).finish_reason == "max_output_tokens"


def test_corrals_responses_reader_reads_the_translated_response() -> None:
    outcome = RESPONSES.outcome(chat_response_to_responses(chat_body(), model="m"))
    assert outcome.usage == Usage(input=176, cached_input=1024, output=57)
    assert outcome.finish_reason == "completed"


def test_a_malformed_completion_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        chat_response_to_responses({"choices": []}, model="m")


def test_the_openai_sdk_parses_the_translated_response() -> None:
    body = orjson.dumps(chat_response_to_responses(chat_body(), model="m"))
    with _client(body, "application/json") as client:
        resp = client.responses.create(model="m", input="hi")
    assert resp.output_text == "Here is the listing you asked for."
    assert resp.output[1].type == "function_call"
    assert resp.usage is not None
    assert resp.usage.input_tokens_details.cached_tokens == 1024


# -- streams -----------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-u", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def test_a_chat_stream_becomes_responses_events_in_order() -> None:
    out = translate(ChatToResponsesStream(model="m"), chat_stream())
    events = sse_events(out)
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-1] == "response.completed"
    assert [data["type"] for _, data in events] == names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert "response.function_call_arguments.done" in names


def test_the_stream_ends_with_the_whole_response() -> None:
    """The completed event's response is what the whole-response translation gives."""
    stream = ChatToResponsesStream(model="m", created=5)
    events = sse_events(translate(stream, chat_stream()))
    final = events[-1][1]["response"]
    assert final == chat_response_to_responses(chat_body(), model="m", created=5)
    assert stream.done
    assert stream.outcome.usage == Usage(input=176, cached_input=1024, output=57)
    assert stream.outcome.finish_reason == "tool_calls"
    assert stream.outcome.response_id == "chatcmpl-sim0001"


def test_a_stream_cut_at_every_byte_gives_the_same_events() -> None:
    upstream = chat_stream(reply("Hi there.", (ToolCall("c9", "f", '{"a":1}'),)), words=3)
    whole = translate(ChatToResponsesStream(model="m"), upstream)
    for cut in range(1, len(upstream)):
        assert translate(ChatToResponsesStream(model="m"), upstream, [cut]) == whole
    pieces = list(range(1, len(upstream)))
    assert translate(ChatToResponsesStream(model="m"), upstream, pieces) == whole


def test_reasoning_deltas_become_a_reasoning_item() -> None:
    """Both vLLM's ``reasoning_content`` and ``reasoning`` deltas read as reasoning text."""
    upstream = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"reasoning_content": "Let me"})
        + chunk({"reasoning": " think."})
        + chunk({"content": "Done."})
        + chunk({}, "stop")
        + DONE
    )
    events = sse_events(translate(ChatToResponsesStream(model="m"), upstream))
    deltas = [d["delta"] for n, d in events if n == "response.reasoning_text.delta"]
    assert "".join(deltas) == "Let me think."
    final = events[-1][1]["response"]
    whole = {
        "id": "chatcmpl-u",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"content": "Done.", "reasoning_content": "Let me think."},
            }
        ],
    }
    assert final == chat_response_to_responses(whole, model="m")


def test_the_openai_sdk_stream_helper_accumulates_the_translated_stream() -> None:
    out = translate(ChatToResponsesStream(model="m"), chat_stream())
    with (
        _client(out) as client,
        client.responses.stream(model="m", input="hi") as stream,
    ):
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "Here is the listing you asked for."
    call = final.output[1]
    assert call.type == "function_call"
    assert call.arguments == '{"command":"ls -la","description":"List files"}'


def test_the_openai_sdk_reads_each_translated_event() -> None:
    out = translate(ChatToResponsesStream(model="m"), chat_stream())
    with _client(out) as client:
        kinds = [
            event.type for event in client.responses.create(model="m", input="hi", stream=True)
        ]
    assert kinds == [name for name, _ in sse_events(out)]


def test_corrals_responses_meter_reads_the_translated_stream() -> None:
    out = translate(ChatToResponsesStream(model="m"), chat_stream())
    meter = RESPONSES.meter(strip_usage=False)
    forwarded, terminal = meter.feed(out)
    assert forwarded == out
    assert terminal
    assert meter.outcome.usage == Usage(input=176, cached_input=1024, output=57)
    assert meter.outcome.finish_reason == "completed"


def test_a_length_stop_ends_with_response_incomplete() -> None:
    upstream = chat_stream(reply("cut", ())).replace(
        b'"finish_reason":"stop"', b'"finish_reason":"length"'
    )
    events = sse_events(translate(ChatToResponsesStream(model="m"), upstream))
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_stream_ending_early_ends_with_an_error_and_a_failed_response(keep: float) -> None:
    upstream = chat_stream()
    stream = ChatToResponsesStream(model="m")
    events = sse_events(translate(stream, upstream[: int(len(upstream) * keep)]))
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"]
    assert events[-1][1]["response"]["status"] == "failed"
    assert stream.done
    assert stream.outcome.error


def test_a_stream_that_finished_but_lost_done_ends_normally() -> None:
    upstream = chat_stream().removesuffix(b"data: [DONE]\n\n")
    events = sse_events(translate(ChatToResponsesStream(model="m"), upstream))
    assert events[-1][0] == "response.completed"


def test_an_upstream_error_chunk_becomes_an_error_event() -> None:
    upstream = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    stream = ChatToResponsesStream(model="m")
    events = sse_events(translate(stream, upstream))
    assert events == [
        (
            "error",
            {
                "type": "error",
                "code": "server_error",
                "message": "overloaded",
                "param": None,
                "sequence_number": 0,
            },
        )
    ]
    assert stream.outcome.error == "overloaded"
    assert stream.feed(chat_stream()) == b""


def test_arguments_before_the_name_wait_for_it() -> None:
    upstream = (
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": '{"a"'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]})
        + chunk({}, "tool_calls")
        + DONE
    )
    events = sse_events(translate(ChatToResponsesStream(model="m"), upstream))
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"a":1}'
    assert events[-1][1]["response"]["output"][0]["arguments"] == '{"a":1}'


# -- any input: only InvalidRequest ------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "reasoning", "web_search_call"]
        )
        | json_values,
        "role": st.sampled_from(["user", "assistant", "system", "developer"]) | json_values,
        "content": st.text(max_size=6)
        | st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["input_text", "output_text", "input_image"])
                    | json_values
                },
                optional={"text": json_values, "image_url": json_values, "detail": json_values},
            ),
            max_size=3,
        )
        | json_values,
        "call_id": json_values,
        "name": json_values,
        "arguments": json_values,
        "output": json_values,
    },
)
bodies = st.fixed_dictionaries(
    {"input": st.text(max_size=6) | st.lists(items, max_size=4) | json_values},
    optional={
        "model": json_values,
        "instructions": json_values,
        "tools": st.lists(
            st.fixed_dictionaries(
                {"type": st.just("function") | json_values}, optional={"name": json_values}
            ),
            max_size=2,
        )
        | json_values,
        "tool_choice": json_values,
        "text": json_values,
        "reasoning": json_values,
        "include": json_values,
        "store": json_values,
        "stream": json_values,
        "max_output_tokens": json_values,
        "parallel_tool_calls": json_values,
        "truncation": json_values,
        "user": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies | json_values)
def test_responses_to_chat_raises_only_invalid_request(body: Any) -> None:
    """Whatever arrives, translation answers or refuses with a 400; it never crashes."""
    try:
        out = responses_to_chat(body)
    except InvalidRequest:
        return
    orjson.dumps(out)


# -- helpers -----------------------------------------------------------------------


def _client(body: bytes, content_type: str = "text/event-stream") -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="x", base_url="http://test/v1", http_client=http, max_retries=0)
