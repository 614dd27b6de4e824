"""A Responses-only deployment serving other protocols: internal form → Responses requests,
Responses answers and streams → the internal form, and the chains through it."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from corral.errors import InvalidRequest, UpstreamError
from corral.protocols import MESSAGES, RESPONSES, Crossing, Usage
from corral.protocols.messages.bodies import chat_response_to_messages
from corral.protocols.messages.streams import ChatToMessagesStream
from corral.protocols.messages.to_chat import messages_to_chat
from corral.protocols.responses.from_chat import chat_to_responses, responses_response_to_chat
from corral.protocols.responses.to_chat_stream import ResponsesToChatStream
from corral.sim import SimConfig
from corral.sim.generate import Reply, ToolCall
from corral.sim.responses import parse_responses, responses_frames, responses_json
from corral.sim.testing import running_sim
from corral.sim.wire import Meta
from corral.sim.wire import Usage as SimUsage
from tests.protocols.helpers import anthropic_final, openai_final, sse_events, translate

META = Meta(response_id="resp_sim0001", created=1_700_000_000, model="up-model", request_id="r1")
USAGE = SimUsage(prompt=1200, cache_read=1024, cache_write=0, output=57, reasoning=9)
CALL = ToolCall("call_sim01", "Bash", '{"command":"ls -la","description":"List files"}')
# Asking for summaries makes the simulator stream its reasoning as OpenAI does.
ASKED = {"model": "up-model", "input": "hi", "reasoning": {"effort": "high", "summary": "auto"}}
REQUEST_TYPE: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsStreaming)


def reply(
    text: str = "Here is the listing you asked for.",
    calls: tuple[ToolCall, ...] = (CALL,),
    thinking: str = "Listing needs ls.",
    finish: str = "",
) -> Reply:
    return Reply(text, calls, thinking, finish or ("tool_calls" if calls else "stop"))  # type: ignore[arg-type]


def upstream_stream(r: Reply | None = None, *, words: int = 2) -> bytes:
    """What a Responses upstream streams for ``r`` (the simulator's rendering)."""
    frames = responses_frames(parse_responses(ASKED), r or reply(), USAGE, META, chunk_words=words)
    return b"".join(frame.data for frame in frames)


def upstream_body(r: Reply | None = None) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(
        responses_json(parse_responses(ASKED), r or reply(), USAGE, META)
    )
    return body


def event(kind: str, **payload: Any) -> bytes:
    data = orjson.dumps({"type": kind, **payload})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def response(status: str = "completed", **extra: Any) -> dict[str, Any]:
    base = {"id": "resp_u", "object": "response", "created_at": 5, "model": "up", "status": status}
    return base | extra


CREATED = event("response.created", response=response("in_progress"))
USAGE_BLOCK = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 29,
}
COMPLETED = event("response.completed", response=response(usage=USAGE_BLOCK))


def chunks(data: bytes) -> list[Any]:
    return [payload for _, payload in sse_events(data)]


def deltas(data: bytes) -> list[dict[str, Any]]:
    return [
        c["choices"][0]["delta"] for c in chunks(data) if isinstance(c, dict) and c.get("choices")
    ]


def joined(data: bytes, key: str) -> str:
    return "".join(d.get(key) or "" for d in deltas(data))


# -- requests: the internal form as Responses ------------------------------------------


def test_a_conversation_becomes_instructions_and_input_items() -> None:
    """Every kind of message lands as the item Responses reads it as."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is here?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "reasoning_content": "I should list.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
            {"role": "developer", "content": "Answer in French."},
            {"role": "assistant", "content": None, "refusal": "I cannot."},
            {"role": "user", "content": [{"type": "text", "text": "Try again."}]},
        ],
    }
    out = chat_to_responses(body)
    assert out["instructions"] == "Be brief."
    assert out["input"] == [
        {"type": "message", "role": "user", "content": "What is here?"},
        {"type": "message", "role": "assistant", "content": "Let me look."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "Bash",
            "arguments": '{"command":"ls"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        {"type": "message", "role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "assistant", "content": "I cannot."},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Try again."}],
        },
    ]
    assert out["store"] is False
    assert out["model"] == "m"
    REQUEST_TYPE.validate_python({**out, "stream": True})


def test_a_system_prompt_of_several_parts_stays_a_message() -> None:
    """Joining parts into one ``instructions`` string would change the text the model reads."""
    parts = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    out = chat_to_responses({"messages": [{"role": "system", "content": parts}]})
    assert "instructions" not in out
    assert out["input"] == [
        {
            "type": "message",
            "role": "system",
            "content": [
                {"type": "input_text", "text": "One."},
                {"type": "input_text", "text": "Two."},
            ],
        }
    ]


def test_images_and_files_become_input_parts() -> None:
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
        },
    ]
    out = chat_to_responses({"messages": [{"role": "user", "content": content}]})
    assert out["input"][0]["content"] == [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
        {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
        {
            "type": "input_file",
            "file_data": "data:application/pdf;base64,JVBE",
            "filename": "a.pdf",
        },
    ]
    REQUEST_TYPE.validate_python({**out, "model": "m", "stream": True})


def test_tool_outputs_in_parts_keep_their_parts() -> None:
    message = {
        "role": "tool",
        "tool_call_id": "c",
        "name": "f",  # some clients name the function a result answers: the id says it
        "content": [{"type": "text", "text": "ok"}],
    }
    out = chat_to_responses({"messages": [message]})
    assert out["input"] == [
        {
            "type": "function_call_output",
            "call_id": "c",
            "output": [{"type": "input_text", "text": "ok"}],
        }
    ]


def test_tools_are_flattened_and_loose_unless_marked_strict() -> None:
    """Responses makes an unmarked tool strict; a Chat tool is loose unless it says so."""
    tools = [
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "b", "description": "B.", "strict": True}},
    ]
    out = chat_to_responses(
        {"messages": [], "tools": tools, "tool_choice": "required", "parallel_tool_calls": False}
    )
    assert out["tools"] == [
        {"type": "function", "name": "a", "parameters": {"type": "object"}, "strict": False},
        {
            "type": "function",
            "name": "b",
            "parameters": {"type": "object", "properties": {}},
            "strict": True,
            "description": "B.",
        },
    ]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    REQUEST_TYPE.validate_python({**out, "model": "m", "stream": True})


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ({"type": "function", "function": {"name": "a"}}, {"type": "function", "name": "a"}),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "a"}}],
                },
            },
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "a"}],
            },
        ),
    ],
)
def test_tool_choices(choice: Any, expected: Any) -> None:
    tools = [{"type": "function", "function": {"name": "a"}}]
    out = chat_to_responses({"messages": [], "tools": tools, "tool_choice": choice})
    assert out["tool_choice"] == expected


def test_a_tool_choice_without_tools_is_left_out() -> None:
    out = chat_to_responses(
        {"messages": [], "tool_choice": "required", "parallel_tool_calls": True}
    )
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


def test_sampling_limits_format_and_identity_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {
        "messages": [],
        "max_completion_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
        "verbosity": "low",
        "reasoning_effort": "xhigh",
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k",
        "service_tier": "flex",
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
        "metadata": {"a": "b"},
        "n": 1,
        "stop": [],
        "logprobs": False,
        "store": False,
    }
    out = chat_to_responses(body)
    assert out == {
        "input": [],
        "max_output_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "text": {
            "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True},
            "verbosity": "low",
        },
        "reasoning": {"effort": "xhigh"},
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k",
        "service_tier": "flex",
        "stream": True,
        "store": False,
    }
    REQUEST_TYPE.validate_python({**out, "model": "m"})


def test_the_older_output_cap_and_json_mode() -> None:
    out = chat_to_responses(
        {"messages": [], "max_tokens": 50, "response_format": {"type": "json_object"}}
    )
    assert out["max_output_tokens"] == 50
    assert out["text"] == {"format": {"type": "json_object"}}
    plain = chat_to_responses({"messages": [], "response_format": {"type": "text"}})
    assert "text" not in plain


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("stop", ["END"]),
        ("stop", "END"),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("logit_bias", {"50256": -100}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("store", True),
        ("best_of", 2),
    ],
)
def test_fields_responses_cannot_hold_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_responses({"messages": [], field: value})
    assert caught.value.message.startswith(f"{field}: ")
    assert "OpenAI Responses" in caught.value.message


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({"role": "user", "content": "hi", "name": "ann"}, "messages[0].name"),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "messages[0].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]},
            "messages[0].content[0].file",
        ),
        ({"role": "assistant", "content": "x", "audio": {"id": "a"}}, "messages[0].audio"),
        ({"role": "function", "name": None, "content": "x"}, "messages[0].role"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]},
            "messages[0].tool_calls[0].type",
        ),
    ],
)
def test_message_parts_responses_cannot_hold_are_refused_by_path(
    message: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_responses({"messages": [message]})
    assert caught.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("tools", [{"type": "custom", "custom": {"name": "c"}}], "tools[0].type"),
        ("tool_choice", {"type": "custom", "custom": {"name": "c"}}, "tool_choice"),
    ],
)
def test_custom_tools_are_refused(field: str, value: Any, path: str) -> None:
    tools = [{"type": "function", "function": {"name": "a"}}]
    with pytest.raises(InvalidRequest) as caught:
        chat_to_responses({"messages": [], "tools": tools, field: value})
    assert caught.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [], "reasoning_effort": "huge"},
        {"messages": [], "verbosity": "loud"},
        {"messages": [], "stream": "yes"},
        {"messages": [], "max_completion_tokens": "ten"},
        {"messages": [], "response_format": {"type": "json_schema", "json_schema": {}}},
    ],
)
def test_malformed_requests_say_what_is_wrong(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        chat_to_responses(body)


# -- whole responses: Responses answers as chat completions --------------------------


def test_a_response_becomes_a_chat_completion() -> None:
    out = responses_response_to_chat(upstream_body(), model="client-model")
    ChatCompletion.model_validate(out)
    assert out["model"] == "client-model"
    assert out["created"] == META.created
    assert out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Here is the listing you asked for.",
        "refusal": None,
        "reasoning_content": "Listing needs ls.",
        "tool_calls": [
            {
                "id": "call_sim01",
                "type": "function",
                "function": {"name": "Bash", "arguments": CALL.arguments},
            }
        ],
    }
    assert out["usage"] == {
        "prompt_tokens": 1200,
        "completion_tokens": 57,
        "total_tokens": 1257,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 9},
    }


@pytest.mark.parametrize(
    ("status", "details", "calls", "finish"),
    [
        ("completed", None, (), "stop"),
        ("completed", None, (CALL,), "tool_calls"),
        ("incomplete", {"reason": "max_output_tokens"}, (), "length"),
        ("incomplete", {"reason": "max_output_tokens"}, (CALL,), "length"),
        ("incomplete", {"reason": "content_filter"}, (), "content_filter"),
    ],
)
def test_statuses_become_finish_reasons(
    status: str, details: Any, calls: tuple[ToolCall, ...], finish: str
) -> None:
    body = upstream_body(reply(calls=calls))
    body["status"], body["incomplete_details"] = status, details
    out = responses_response_to_chat(body, model="m")
    assert out["choices"][0]["finish_reason"] == finish


def test_refusals_and_reasoning_text_and_summaries() -> None:
    """Reasoning text wins over its summary; summary parts and items keep a blank line apart."""
    body = response(
        output=[
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "S1"}],
                "content": [{"type": "reasoning_text", "text": "R1"}],
            },
            {
                "type": "reasoning",
                "summary": [
                    {"type": "summary_text", "text": "S2"},
                    {"type": "summary_text", "text": "S3"},
                ],
                "encrypted_content": "opaque",
            },
            {"type": "message", "content": [{"type": "refusal", "refusal": "No."}]},
        ]
    )
    message = responses_response_to_chat(body, model="m")["choices"][0]["message"]
    assert message["reasoning_content"] == "R1\n\nS2\n\nS3"
    assert message["refusal"] == "No."
    assert message["content"] == ""


def test_a_call_without_an_id_gets_one_and_no_text_means_null_content() -> None:
    body = response(output=[{"type": "function_call", "name": "f", "arguments": ""}])
    message = responses_response_to_chat(body, model="m")["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["id"].startswith("call_")
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"id": "r"}, "no output list"),
        (response("failed", output=[], error={"code": "server_error", "message": "boom"}), "boom"),
        (response("in_progress", output=[]), "'in_progress'"),
        (response(output=[{"type": "web_search_call", "id": "ws"}]), "'web_search_call'"),
        (response(output=[{"type": "message", "content": [{"type": "audio"}]}]), "'audio'"),
        (response(output=[{"type": "function_call", "arguments": "{}"}]), "no name"),
    ],
)
def test_responses_chat_cannot_carry_are_upstream_errors(body: dict[str, Any], says: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        responses_response_to_chat(body, model="m")
    assert says in caught.value.message


# -- streams: Responses events as internal chunks -------------------------------------


def test_a_stream_becomes_chat_chunks() -> None:
    stream = ResponsesToChatStream(model="client-model")
    out = translate(stream, upstream_stream())
    assert chunks(out)[-1] == "[DONE]"
    assert deltas(out)[0] == {"role": "assistant"}
    assert joined(out, "content") == "Here is the listing you asked for."
    assert joined(out, "reasoning_content") == "Listing needs ls."
    calls = [d["tool_calls"][0] for d in deltas(out) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "call_sim01",
        "type": "function",
        "function": {"name": "Bash", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls) == CALL.arguments
    assert stream.done
    assert stream.usage == Usage(input=176, cached_input=1024, output=48, reasoning=9)
    assert stream.outcome.response_id == "resp_sim0001"
    assert stream.outcome.model == "up-model"
    assert stream.outcome.finish_reason == "completed"


def test_the_outcome_is_what_the_responses_meter_reads() -> None:
    data = upstream_stream()
    meter = RESPONSES.meter(False)
    meter.feed(data)
    stream = ResponsesToChatStream(model="m")
    translate(stream, data)
    assert stream.outcome == meter.outcome


def test_the_openai_sdk_accumulates_the_stream_to_the_whole_translation() -> None:
    final = openai_final(translate(ResponsesToChatStream(model="m"), upstream_stream()))
    whole = responses_response_to_chat(upstream_body(), model="m")
    assert final.id == whole["id"]
    assert final.choices[0].message.content == whole["choices"][0]["message"]["content"]
    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls or []
    dumped = [c.model_dump(exclude_none=True, exclude={"parsed_arguments", "index"}) for c in calls]
    assert dumped == whole["choices"][0]["message"]["tool_calls"]
    assert final.usage is not None
    assert final.usage.model_dump(exclude_none=True) == whole["usage"]


def test_a_stream_cut_at_every_byte_gives_the_same_chunks() -> None:
    small = reply(text="Hi there.", calls=(ToolCall("call_x1", "Bash", '{"command":"ls"}'),))
    upstream = upstream_stream(small, words=1)
    expected = translate(ResponsesToChatStream(model="m"), upstream)
    for cut in range(1, len(upstream)):
        assert translate(ResponsesToChatStream(model="m"), upstream, [cut]) == expected, cut
    every = list(range(1, len(upstream)))
    assert translate(ResponsesToChatStream(model="m"), upstream, every) == expected
    crlf = upstream.replace(b"\n", b"\r\n")
    assert translate(ResponsesToChatStream(model="m"), crlf, list(range(1, len(crlf)))) == expected


def test_summary_parts_and_reasoning_items_stream_as_the_whole_response_reads() -> None:
    upstream = (
        CREATED
        + event("response.output_item.added", output_index=0, item={"type": "reasoning"})
        + event("response.reasoning_summary_text.delta", output_index=0, summary_index=0, delta="S")
        + event("response.reasoning_summary_text.delta", output_index=0, summary_index=0, delta="1")
        + event(
            "response.reasoning_summary_text.delta", output_index=0, summary_index=1, delta="S2"
        )
        + event("response.output_item.added", output_index=1, item={"type": "reasoning"})
        + event("response.reasoning_text.delta", output_index=1, content_index=0, delta="R")
        + event("response.reasoning_summary_text.delta", output_index=1, summary_index=0, delta="x")
        + COMPLETED
    )
    out = translate(ResponsesToChatStream(model="m"), upstream)
    assert joined(out, "reasoning_content") == "S1\n\nS2\n\nR"


def test_text_and_arguments_only_in_done_events_still_go_out() -> None:
    """A server that streams no deltas: the ``.done`` events carry the whole text."""
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}
    done_call = {**call, "arguments": '{"a":1}'}
    upstream = (
        CREATED
        + event("response.output_item.added", output_index=0, item={"type": "message"})
        + event("response.output_text.delta", output_index=0, content_index=0, delta="Hel")
        + event("response.output_text.done", output_index=0, content_index=0, text="Hello")
        + event("response.refusal.done", output_index=0, content_index=1, refusal="No.")
        + event("response.output_item.added", output_index=1, item=call)
        + event("response.output_item.done", output_index=1, item=done_call)
        + event("response.function_call_arguments.done", output_index=1, arguments='{"a":1}')
        + COMPLETED
    )
    out = translate(ResponsesToChatStream(model="m"), upstream)
    assert joined(out, "content") == "Hello"
    assert joined(out, "refusal") == "No."
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas(out) if "tool_calls" in d]
    assert "".join(pieces) == '{"a":1}'
    assert chunks(out)[-3]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_incomplete_response_finishes_with_length() -> None:
    cut = response(
        "incomplete", incomplete_details={"reason": "max_output_tokens"}, usage=USAGE_BLOCK
    )
    stream = ResponsesToChatStream(model="m")
    out = translate(stream, CREATED + event("response.incomplete", response=cut))
    assert chunks(out)[-3]["choices"][0]["finish_reason"] == "length"
    assert chunks(out)[-2]["usage"]["completion_tokens"] == 9
    assert stream.outcome.finish_reason == "max_output_tokens"
    assert stream.usage == Usage(input=16, cached_input=4, output=6, reasoning=3)


@pytest.mark.parametrize(
    ("tail", "message", "kind"),
    [
        (
            event("error", code="rate_limit_exceeded", message="slow down"),
            "slow down",
            "rate_limit_error",
        ),
        (
            event("error", error={"type": "server_error", "message": "inner"}),
            "inner",
            "server_error",
        ),
        (
            event(
                "response.failed",
                response=response("failed", error={"code": "server_error", "message": "boom"}),
            ),
            "boom",
            "server_error",
        ),
        (
            event("response.output_item.added", output_index=0, item={"type": "web_search_call"}),
            "'web_search_call'",
            "server_error",
        ),
        (
            event("response.function_call_arguments.delta", output_index=3, delta="{"),
            "never opened",
            "server_error",
        ),
        (b"event: response.output_text.delta\ndata: [1]\n\n", "not a JSON object", "server_error"),
    ],
)
def test_failures_end_the_stream_with_an_error_chunk(tail: bytes, message: str, kind: str) -> None:
    stream = ResponsesToChatStream(model="m")
    out = translate(stream, CREATED + tail + COMPLETED)
    last = chunks(out)[-1]
    assert message in last["error"]["message"]
    assert last["error"]["type"] == kind
    assert stream.done
    assert stream.outcome.error is not None
    assert message in stream.outcome.error


def test_a_stream_cut_short_ends_with_an_error_chunk() -> None:
    partial = CREATED + event("response.output_text.delta", output_index=0, delta="Hel")
    stream = ResponsesToChatStream(model="m")
    out = translate(stream, partial)
    assert joined(out, "content") == "Hel"
    assert "ended before the response was complete" in chunks(out)[-1]["error"]["message"]
    assert stream.outcome.usage is None


def test_nothing_follows_the_end() -> None:
    stream = ResponsesToChatStream(model="m")
    out = translate(stream, CREATED + COMPLETED + b"data: [DONE]\n\n" + CREATED)
    assert chunks(out)[-1] == "[DONE]"
    assert stream.feed(CREATED) == b""


# -- composition: an Anthropic client in front of a Responses-only deployment ------


CLAUDE_REQUEST = {
    "model": "claude-x",
    "max_tokens": 4000,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "List the files."},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "ls", "signature": "sig"},
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"},
                {"type": "text", "text": "And now?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "Bash",
            "description": "Run a command.",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
        }
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stream": True,
}


def test_a_messages_request_reaches_responses_through_the_internal_form() -> None:
    out = chat_to_responses(messages_to_chat(CLAUDE_REQUEST))
    assert out["instructions"] == "You are terse."
    assert out["input"] == [
        {"type": "message", "role": "user", "content": "List the files."},
        {"type": "message", "role": "assistant", "content": "Listing."},
        {
            "type": "function_call",
            "call_id": "toolu_1",
            "name": "Bash",
            "arguments": '{"command":"ls"}',
        },
        {"type": "function_call_output", "call_id": "toolu_1", "output": "a.txt"},
        {"type": "message", "role": "user", "content": "And now?"},
    ]
    assert out["tools"][0]["name"] == "Bash"
    assert out["tools"][0]["strict"] is False
    assert out["parallel_tool_calls"] is False
    assert out["reasoning"] == {"effort": "low"}
    assert out["max_output_tokens"] == 4000
    assert out["stream"] is True
    assert "stream_options" not in out
    REQUEST_TYPE.validate_python({**out, "model": "m"})


def test_a_messages_request_responses_cannot_hold_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_to_responses(messages_to_chat({**CLAUDE_REQUEST, "stop_sequences": ["END"]}))
    assert caught.value.message.startswith("stop: ")


def test_a_responses_answer_reaches_an_anthropic_client() -> None:
    chat = responses_response_to_chat(upstream_body(), model="claude-x")
    message = anthropic.types.Message.model_validate(
        chat_response_to_messages(chat, model="claude-x")
    )
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].model_dump(exclude_none=True) == {
        "type": "tool_use",
        "id": "call_sim01",
        "name": "Bash",
        "input": {"command": "ls -la", "description": "List files"},
    }
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 176
    assert message.usage.cache_read_input_tokens == 1024
    assert message.usage.output_tokens == 57


def test_a_responses_stream_reaches_the_anthropic_sdk_as_the_whole_answer_does() -> None:
    crossing = Crossing(MESSAGES, RESPONSES)
    stream = crossing.stream("claude-x")
    final = anthropic_final(translate(stream, upstream_stream()))
    body, outcome = crossing.response(upstream_body(), "claude-x")
    whole = orjson.loads(body)
    assert final.id == whole["id"]
    assert [b.model_dump(exclude_none=True) for b in final.content] == whole["content"]
    assert final.stop_reason == whole["stop_reason"] == "tool_use"
    assert final.usage.input_tokens == whole["usage"]["input_tokens"]
    assert final.usage.cache_read_input_tokens == whole["usage"]["cache_read_input_tokens"]
    assert final.usage.output_tokens == whole["usage"]["output_tokens"]
    assert stream.outcome == outcome


def test_the_chained_stream_cut_at_every_byte_gives_the_same_events() -> None:
    upstream = upstream_stream(reply(text="Hi.", thinking="Hm."), words=1)
    expected = translate(
        ChatToMessagesStream(model="m"), translate(ResponsesToChatStream(model="m"), upstream)
    )
    chained = Crossing(MESSAGES, RESPONSES)
    assert translate(chained.stream("m"), upstream) == expected
    for cut in range(1, len(upstream)):
        assert translate(chained.stream("m"), upstream, [cut]) == expected, cut


def test_an_upstream_error_reaches_the_anthropic_client_in_its_shape() -> None:
    upstream = CREATED + event("error", code="rate_limit_exceeded", message="slow down")
    out = translate(Crossing(MESSAGES, RESPONSES).stream("m"), upstream)
    name, payload = sse_events(out)[-1]
    assert name == "error"
    assert payload == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


def _anthropic_client(body: bytes) -> anthropic.Anthropic:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return anthropic.Anthropic(api_key="x", base_url="http://test", http_client=http, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_sdk_call_served_by_the_simulators_responses_api(stream: bool) -> None:
    """The request crosses to Responses, a real simulator answers over a socket, and the
    answer crosses back into what the anthropic SDK parses."""
    crossing = Crossing(MESSAGES, RESPONSES)
    request = {**CLAUDE_REQUEST, "stream": stream, "tool_choice": {"type": "tool", "name": "Bash"}}
    upstream = crossing.request(
        request,
        stream=stream,
        upstream_model="sim-reason",
        provider_kind="openai",
        default_max=8192,
    )
    with running_sim(SimConfig(seed=3)) as sim:
        answer = httpx.post(
            f"{sim.url}/v1/responses",
            content=upstream,
            headers={"content-type": "application/json", "authorization": "Bearer x"},
        )
    assert answer.status_code == 200, answer.text
    if stream:
        translator = crossing.stream("claude-x")
        message = anthropic_final(translate(translator, answer.content))
        usage = translator.outcome.usage
    else:
        body, outcome = crossing.response(answer.json(), "claude-x")
        with _anthropic_client(body) as client:
            message = client.messages.create(
                model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        usage = outcome.usage
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.content[0].name == "Bash"
    assert usage is not None
    assert usage.input > 0
    assert usage.reasoning > 0
    assert message.usage.output_tokens == usage.output + usage.reasoning


def test_an_openai_chat_client_reads_the_translated_stream() -> None:
    """Chat clients get the internal chunks as they are: the openai SDK parses every one."""
    out = translate(ResponsesToChatStream(model="m"), upstream_stream())
    with (
        httpx.Client(
            transport=httpx.MockTransport(
                lambda request: httpx.Response(
                    200, content=out, headers={"content-type": "text/event-stream"}
                )
            )
        ) as http,
        openai.OpenAI(
            api_key="x", base_url="http://test/v1", http_client=http, max_retries=0
        ) as client,
    ):
        parsed = list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert len(parsed) == len(chunks(out)) - 1  # all but [DONE]
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.prompt_tokens == 1200
