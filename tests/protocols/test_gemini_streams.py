"""Gemini streams to and from internal chunks, whatever the byte boundaries and endings."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from corral.protocols import CHAT, GEMINI, MESSAGES, Crossing
from corral.protocols.base import StreamTranslator, Usage
from corral.protocols.common import tool_call_id

# -- fixtures -----------------------------------------------------------------------


def gemini_event(parts: list[dict[str, Any]], **extra: Any) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if "finish" in extra:
        candidate["finishReason"] = extra.pop("finish")
    payload = {
        "candidates": [candidate],
        "modelVersion": "gemini-x-001",
        "responseId": "resp-1",
        **extra,
    }
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


FINAL_USAGE = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 1000,
    "candidatesTokenCount": 40,
    "thoughtsTokenCount": 25,
    "totalTokenCount": 1265,
}
GEMINI_STREAM = b"".join(
    [
        gemini_event(
            [{"text": "Let me see.", "thought": True}], usageMetadata={"promptTokenCount": 1200}
        ),
        gemini_event([{"text": "Here "}]),
        gemini_event([{"text": "you go."}]),
        gemini_event(
            [
                {
                    "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2ln",
                }
            ],
            finish="STOP",
            usageMetadata=FINAL_USAGE,
        ),
    ]
)


def chat_chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> bytes:
    payload: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "model": "up",
    }
    if delta is not None or finish is not None:
        payload["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    payload.update(extra)
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def fragment(index: int, arguments: str, **first: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if "name" in first:
        function["name"] = first.pop("name")
    return {"tool_calls": [{"index": index, **first, "function": function}]}


CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 65,
    "total_tokens": 1265,
    "prompt_tokens_details": {"cached_tokens": 1000},
    "completion_tokens_details": {"reasoning_tokens": 25},
}
CHAT_STREAM = b"".join(
    [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"reasoning_content": "Let me see."}),
        chat_chunk({"content": "Here "}),
        chat_chunk({"content": "you go."}),
        chat_chunk(fragment(0, "", id="call_1", type="function", name="weather")),
        chat_chunk(fragment(0, '{"city":')),
        chat_chunk(fragment(0, '"Paris"}')),
        chat_chunk(fragment(1, "{}", id="call_2", type="function", name="time")),
        chat_chunk({}, "tool_calls"),
        chat_chunk(choices=[], usage=CHAT_USAGE),
        b"data: [DONE]\n\n",
    ]
)


def translate(stream: StreamTranslator, data: bytes, cuts: list[int] | None = None) -> bytes:
    bounds = [0, *(cuts or []), len(data)]
    out = b"".join(stream.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    return out + stream.close()


def data_events(out: bytes, sep: bytes) -> list[Any]:
    events = []
    for block in out.split(sep):
        if block.strip():
            payload = block.removeprefix(b"data: ")
            events.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return events


def _sse(body: bytes) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx.Client(transport=httpx.MockTransport(handler))


def sdk_stream(body: bytes) -> Iterator[types.GenerateContentResponse]:
    """The chunks the google-genai SDK parses from a streamed ``body``."""
    options = types.HttpOptions(base_url="http://test", httpx_client=_sse(body))
    client = genai.Client(api_key="k", http_options=options)
    config = types.GenerateContentConfig(
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
    )
    yield from client.models.generate_content_stream(model="m", contents="hi", config=config)


def openai_chunks(body: bytes) -> list[Any]:
    client = openai.OpenAI(
        api_key="x", base_url="http://test/v1", http_client=_sse(body), max_retries=0
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return list(stream)


# -- Gemini → internal --------------------------------------------------------------


def test_gemini_stream_becomes_chat_chunks() -> None:
    stream = GEMINI.stream_to_internal("client-model")
    assert stream is not None
    out = translate(stream, GEMINI_STREAM)
    events = data_events(out, b"\n\n")
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas[:4] == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me see."},
        {"content": "Here "},
        {"content": "you go."},
    ]
    call = deltas[4]["tool_calls"][0]
    assert call == {
        "index": 0,
        "id": tool_call_id("resp-1", 0),
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
    }
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"]["prompt_tokens"] == 1200
    assert stream.done
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)
    assert (stream.outcome.response_id, stream.outcome.model, stream.outcome.finish_reason) == (
        "resp-1",
        "gemini-x-001",
        "STOP",
    )


def test_the_openai_sdk_reads_a_translated_gemini_stream() -> None:
    stream = GEMINI.stream_to_internal("client-model")
    assert stream is not None
    chunks = openai_chunks(translate(stream, GEMINI_STREAM))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Here you go."
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 65
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1000


def test_gemini_stream_cut_at_every_byte_gives_the_same_chunks() -> None:
    whole = GEMINI.stream_to_internal("m")
    assert whole is not None
    expected = translate(whole, GEMINI_STREAM)
    for cut in range(1, len(GEMINI_STREAM)):
        stream = GEMINI.stream_to_internal("m")
        assert stream is not None
        assert translate(stream, GEMINI_STREAM, [cut]) == expected
    stream = GEMINI.stream_to_internal("m")
    assert stream is not None
    assert translate(stream, GEMINI_STREAM, list(range(1, len(GEMINI_STREAM)))) == expected


def test_gemini_stream_ending_early_ends_with_an_error_chunk() -> None:
    stream = GEMINI.stream_to_internal("m")
    assert stream is not None
    cut = GEMINI_STREAM[: GEMINI_STREAM.index(b"data:", GEMINI_STREAM.index(b"you go."))]
    events = data_events(translate(stream, cut), b"\n\n")
    assert "error" in events[-1]
    assert "ended before" in events[-1]["error"]["message"]
    assert stream.done
    assert stream.outcome.error


def test_gemini_error_event_becomes_a_chat_error_with_its_status() -> None:
    error = b'data: {"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}\r\n\r\n'
    stream = GEMINI.stream_to_internal("m")
    assert stream is not None
    events = data_events(translate(stream, gemini_event([{"text": "a"}]) + error), b"\n\n")
    assert events[-1]["error"]["message"] == "quota"
    assert events[-1]["error"]["type"] == "rate_limit_error"
    assert stream.outcome.error == "quota"


def test_googles_bare_json_error_becomes_a_chat_error() -> None:
    """Google ends a failing stream with a pretty-printed JSON error, no ``data:`` field."""
    detail = {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}
    error = orjson.dumps({"error": detail}, option=orjson.OPT_INDENT_2) + b"\n"
    data = gemini_event([{"text": "a"}]) + error
    for cut in range(1, len(data)):
        stream = GEMINI.stream_to_internal("m")
        assert stream is not None
        events = data_events(translate(stream, data, [cut]), b"\n\n")
        assert events[-1]["error"]["message"] == "overloaded"
        assert events[-1]["error"]["type"] == "server_error"
        assert stream.outcome.error == "overloaded"


# -- internal → Gemini --------------------------------------------------------------


def test_chat_stream_becomes_gemini_events() -> None:
    stream = GEMINI.stream_from_internal("client-model")
    assert stream is not None
    out = translate(stream, CHAT_STREAM)
    events = data_events(out, b"\r\n\r\n")
    parts = [e["candidates"][0]["content"]["parts"] for e in events]
    assert parts[:3] == [
        [{"text": "Let me see.", "thought": True}],
        [{"text": "Here "}],
        [{"text": "you go."}],
    ]
    last = events[-1]
    assert parts[-1] == [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}},
        {"functionCall": {"name": "time", "args": {}, "id": "call_2"}},
    ]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"] == {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 25,
        "totalTokenCount": 1265,
    }
    assert all(e["modelVersion"] == "client-model" for e in events)
    assert stream.done
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)
    assert (stream.outcome.response_id, stream.outcome.finish_reason) == (
        "chatcmpl-up",
        "tool_calls",
    )


def test_the_genai_sdk_reads_a_translated_chat_stream() -> None:
    stream = GEMINI.stream_from_internal("client-model")
    assert stream is not None
    chunks = list(sdk_stream(translate(stream, CHAT_STREAM)))
    assert "".join(c.text or "" for c in chunks) == "Here you go."
    calls = [call for c in chunks for call in c.function_calls or []]
    assert [(c.id, c.name, c.args) for c in calls] == [
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "time", {}),
    ]
    usage = chunks[-1].usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (
        1200,
        40,
        25,
    )


def test_chat_stream_cut_at_every_byte_gives_the_same_events() -> None:
    whole = GEMINI.stream_from_internal("m")
    assert whole is not None
    expected = translate(whole, CHAT_STREAM)
    for cut in range(1, len(CHAT_STREAM)):
        stream = GEMINI.stream_from_internal("m")
        assert stream is not None
        assert translate(stream, CHAT_STREAM, [cut]) == expected


@pytest.mark.parametrize("end", [b"chat_chunk_cut", b"no_done"])
def test_chat_stream_endings(end: bytes) -> None:
    """Cut before the finish: an error event the SDK raises on. Finished but no [DONE]:
    ends normally at close."""
    stream = GEMINI.stream_from_internal("m")
    assert stream is not None
    if end == b"no_done":
        out = translate(stream, CHAT_STREAM[: CHAT_STREAM.index(b"data: [DONE]")])
        assert data_events(out, b"\r\n\r\n")[-1]["candidates"][0]["finishReason"] == "STOP"
        return
    out = translate(
        stream, CHAT_STREAM[: CHAT_STREAM.index(b"data:", CHAT_STREAM.index(b"you go."))]
    )
    with pytest.raises(genai_errors.ServerError) as raised:
        list(sdk_stream(out))
    assert raised.value.code == 502
    assert "ended" in (raised.value.message or "")


def test_chat_error_event_becomes_a_google_error() -> None:
    error = b'data: {"error":{"message":"slow down","type":"rate_limit_error"}}\n\n'
    stream = GEMINI.stream_from_internal("m")
    assert stream is not None
    out = translate(stream, chat_chunk({"content": "a"}) + error)
    assert data_events(out, b"\r\n\r\n")[-1] == {
        "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
    }


def test_tool_arguments_that_are_not_an_object_end_with_an_error() -> None:
    stream = GEMINI.stream_from_internal("m")
    assert stream is not None
    body = chat_chunk(fragment(0, "[1]", id="c", type="function", name="f")) + chat_chunk(
        {}, "tool_calls"
    )
    events = data_events(translate(stream, body + b"data: [DONE]\n\n"), b"\r\n\r\n")
    assert "not a JSON object" in events[-1]["error"]["message"]


# -- crossings through the hub ---------------------------------------------------------


def test_gemini_client_over_a_chat_upstream_stream() -> None:
    crossing = Crossing(GEMINI, CHAT)
    stream = crossing.stream("gemini-x")
    chunks = list(sdk_stream(translate(stream, CHAT_STREAM, list(range(1, len(CHAT_STREAM), 7)))))
    assert "".join(c.text or "" for c in chunks) == "Here you go."
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)


def test_chat_client_over_a_gemini_upstream_stream() -> None:
    crossing = Crossing(CHAT, GEMINI)
    stream = crossing.stream("gpt-x")
    chunks = openai_chunks(translate(stream, GEMINI_STREAM, list(range(1, len(GEMINI_STREAM), 5))))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Here you go."
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)


def _anthropic_stream() -> bytes:
    """What an Anthropic upstream streams for the same answer as ``CHAT_STREAM``."""
    stream = MESSAGES.stream_from_internal("claude-x")
    assert stream is not None
    return translate(stream, CHAT_STREAM)


def test_gemini_client_over_an_anthropic_upstream_stream() -> None:
    stream = Crossing(GEMINI, MESSAGES).stream("gemini-x")
    chunks = list(sdk_stream(translate(stream, _anthropic_stream())))
    assert "".join(c.text or "" for c in chunks) == "Here you go."
    calls = [call for c in chunks for call in c.function_calls or []]
    assert [(c.name, c.args) for c in calls] == [("weather", {"city": "Paris"}), ("time", {})]
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=65)


def test_anthropic_client_over_a_gemini_upstream_stream() -> None:
    stream = Crossing(MESSAGES, GEMINI).stream("claude-x")
    out = translate(stream, GEMINI_STREAM)
    client = anthropic.Anthropic(
        api_key="x", base_url="http://test", http_client=_sse(out), max_retries=0
    )
    with client.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as messages:
        final = messages.get_final_message()
    kinds = [block.type for block in final.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert final.stop_reason == "tool_use"
    assert final.usage.cache_read_input_tokens == 1000
    assert stream.outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)
