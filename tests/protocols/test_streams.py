"""Streams translated event by event, whatever the chunk boundaries and however they end."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from corral.protocols import CHAT, MESSAGES, Usage
from corral.protocols.messages import (
    ChatToMessagesStream,
    MessagesToChatStream,
    chat_response_to_messages,
    messages_response_to_chat,
)
from corral.sim.generate import ToolCall
from tests.protocols.helpers import (
    anthropic_final,
    chat_body,
    chat_stream,
    messages_body,
    messages_stream,
    openai_chunks,
    openai_final,
    reply,
    sse_events,
    translate,
)

SMALL = reply(text="Hi there.", calls=(ToolCall("call_x1", "Bash", '{"command":"ls"}'),))


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {"id": "chatcmpl-u", "model": "up", "object": "chat.completion.chunk"}
    if delta is not None or finish is not None:
        payload["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    payload.update(extra)
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def fragment(index: int, arguments: str, **first: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if "name" in first:
        function["name"] = first.pop("name")
    return {"tool_calls": [{"index": index, **first, "function": function}]}


USAGE_CHUNK = chunk(usage={"prompt_tokens": 20, "completion_tokens": 5}, choices=[])
DONE = b"data: [DONE]\n\n"


def names(data: bytes) -> list[str | None]:
    return [name for name, _ in sse_events(data)]


# -- OpenAI Chat chunks → Anthropic events -------------------------------------


def test_chat_stream_becomes_anthropic_events() -> None:
    """Text then a tool call: one block each, the stop reason and usage at the end."""
    stream = ChatToMessagesStream(model="claude-x")
    out = translate(stream, chat_stream())
    kinds = names(out)
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    starts = [
        data["content_block"]["type"]
        for name, data in sse_events(out)
        if name == "content_block_start"
    ]
    assert starts == ["text", "tool_use"]
    assert kinds.count("content_block_stop") == 2
    assert stream.done
    assert stream.usage == Usage(input=176, cached_input=1024, output=57)
    assert stream.outcome.finish_reason == "tool_calls"
    assert stream.outcome.response_id == "chatcmpl-sim0001"


def test_chat_stream_accumulates_to_the_translated_whole_response() -> None:
    """The anthropic SDK's accumulator builds exactly the non-streamed translation."""
    final = anthropic_final(translate(ChatToMessagesStream(model="claude-x"), chat_stream()))
    whole = chat_response_to_messages(chat_body(), model="claude-x")
    assert final.id == whole["id"]
    assert [b.model_dump(exclude_none=True) for b in final.content] == whole["content"]
    assert final.stop_reason == whole["stop_reason"]
    assert final.usage.input_tokens == whole["usage"]["input_tokens"]
    assert final.usage.cache_read_input_tokens == whole["usage"]["cache_read_input_tokens"]
    assert final.usage.output_tokens == whole["usage"]["output_tokens"]


def test_chat_stream_cut_at_every_byte_gives_the_same_events() -> None:
    """Events split across chunks anywhere (and CRLF line ends) translate identically."""
    upstream = chat_stream(SMALL, words=1)
    expected = translate(ChatToMessagesStream(model="m"), upstream)
    for cut in range(1, len(upstream)):
        assert translate(ChatToMessagesStream(model="m"), upstream, [cut]) == expected, cut
    byte_by_byte = list(range(1, len(upstream)))
    assert translate(ChatToMessagesStream(model="m"), upstream, byte_by_byte) == expected
    crlf = upstream.replace(b"\n", b"\r\n")
    assert translate(ChatToMessagesStream(model="m"), crlf, list(range(1, len(crlf)))) == expected


def test_reasoning_deltas_become_a_thinking_block() -> None:
    upstream = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"reasoning_content": "Think"})
        + chunk({"reasoning": " more."})
        + chunk({"content": "Answer."})
        + chunk({}, "stop")
        + USAGE_CHUNK
        + DONE
    )
    final = anthropic_final(translate(ChatToMessagesStream(model="m"), upstream))
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Think more."
    assert final.content[1].text == "Answer."
    assert final.stop_reason == "end_turn"


def test_parallel_tool_calls_become_one_block_each() -> None:
    upstream = (
        chunk(fragment(0, "", id="call_a", name="read", type="function"))
        + chunk(fragment(0, '{"path":'))
        + chunk(fragment(0, '"a"}'))
        + chunk(fragment(1, '{"path":"b"}', id="call_b", name="read", type="function"))
        + chunk({}, "tool_calls")
        + USAGE_CHUNK
        + DONE
    )
    final = anthropic_final(translate(ChatToMessagesStream(model="m"), upstream))
    assert [(b.id, b.input) for b in final.content] == [
        ("call_a", {"path": "a"}),
        ("call_b", {"path": "b"}),
    ]
    assert final.stop_reason == "tool_use"
    assert final.usage.input_tokens == 20


def test_arguments_before_the_name_wait_for_it() -> None:
    upstream = (
        chunk(fragment(0, '{"a":', id="call_a"))
        + chunk(fragment(0, "1}", name="f"))
        + chunk({}, "stop")
        + DONE
    )
    final = anthropic_final(translate(ChatToMessagesStream(model="m"), upstream))
    assert final.content[0].input == {"a": 1}
    assert final.stop_reason == "tool_use"  # a server that said "stop" after calling a tool


def _error_of(data: bytes) -> dict[str, Any]:
    name, payload = sse_events(data)[-1]
    assert name == "error"
    error: dict[str, Any] = payload["error"]
    return error


@pytest.mark.parametrize(
    "upstream",
    [
        chunk({"role": "assistant"}) + chunk({"content": "Hal"}),  # cut mid-answer
        chunk({"content": "Hal"}) + DONE,  # [DONE] without a finish_reason
        b"",  # nothing at all
        chunk({"content": "Hal"}) + b'data: {"choices": [{"index": 0, "delta": {"con',
    ],
)
def test_chat_stream_ending_early_ends_with_an_error_event(upstream: bytes) -> None:
    """The client gets a well-formed Anthropic error event, not a truncated message."""
    stream = ChatToMessagesStream(model="m")
    out = translate(stream, upstream)
    assert _error_of(out)["type"] == "api_error"
    assert stream.done
    assert stream.outcome.error
    with pytest.raises(anthropic.APIStatusError):
        anthropic_final(out)


def test_chat_stream_that_finished_but_lost_done_ends_normally() -> None:
    """The finish reason and usage arrived; only ``[DONE]`` is missing."""
    upstream = chunk({"content": "ok"}) + chunk({}, "length") + USAGE_CHUNK
    stream = ChatToMessagesStream(model="m")
    out = translate(stream, upstream)
    assert names(out)[-2:] == ["message_delta", "message_stop"]
    assert sse_events(out)[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert stream.outcome.error is None


def test_an_upstream_error_chunk_becomes_an_anthropic_error_event() -> None:
    error = {
        "message": "Rate limit reached",
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
    }
    stream = ChatToMessagesStream(model="m")
    out = translate(
        stream,
        chunk({"content": "a"}) + b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE,
    )
    assert _error_of(out) == {"type": "rate_limit_error", "message": "Rate limit reached"}
    assert stream.outcome.error == "Rate limit reached"


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        (
            chunk(fragment(0, '{"a": ', id="c", name="f")) + chunk({}, "tool_calls") + DONE,
            "not a JSON object",
        ),
        (
            chunk(fragment(0, '{"a":1', id="c0", name="f"))
            + chunk(fragment(0, "}"))
            + chunk(fragment(1, "{}", id="c1", name="g"))
            + chunk(fragment(0, " ")),
            "interleaved",
        ),
        (chunk(fragment(0, "{}", id="c")) + chunk({}, "tool_calls") + DONE, "without a name"),
        (b"data: not json\n\n", "not a JSON object"),
    ],
)
def test_tool_calls_a_client_could_not_run_end_with_an_error(upstream: bytes, message: str) -> None:
    stream = ChatToMessagesStream(model="m")
    out = translate(stream, upstream)
    assert message in _error_of(out)["message"]


def test_nothing_is_sent_after_the_end() -> None:
    stream = ChatToMessagesStream(model="m")
    out = translate(stream, chat_stream(SMALL))
    assert stream.feed(chunk({"content": "late"})) == b""
    assert stream.close() == b""
    assert names(out)[-1] == "message_stop"


def test_keepalive_comments_are_skipped() -> None:
    upstream = (
        b": keep-alive\n\n" + chunk({"content": "ok"}) + b": ping\n\n" + chunk({}, "stop") + DONE
    )
    final = anthropic_final(translate(ChatToMessagesStream(model="m"), upstream))
    assert final.content[0].text == "ok"


def test_corrals_messages_meter_reads_the_translated_stream() -> None:
    """The gateway's own meter, run on the output, sees the usage, finish and the end."""
    out = translate(ChatToMessagesStream(model="m"), chat_stream())
    meter = MESSAGES.meter(strip_usage=False)
    forwarded, terminal = meter.feed(out)
    assert forwarded == out
    assert terminal
    assert meter.outcome.usage == Usage(input=176, cached_input=1024, output=57)
    assert meter.outcome.finish_reason == "tool_use"


# -- Anthropic events → OpenAI Chat chunks --------------------------------------


def test_messages_stream_becomes_chat_chunks() -> None:
    stream = MessagesToChatStream(model="gpt-x", created=1_700_000_000)
    out = translate(stream, messages_stream(reply(thinking="Thinking it over.")))
    events = sse_events(out)
    assert events[-1] == (None, "[DONE]")
    assert events[-2][1]["choices"] == []
    assert events[-2][1]["usage"]["prompt_tokens"] == 1200
    assert events[0][1]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(e[1]["model"] == "gpt-x" and e[1]["created"] == 1_700_000_000 for e in events[:-1])
    assert stream.usage == Usage(input=176, cached_input=1024, output=57)
    assert stream.outcome.finish_reason == "tool_use"


def test_messages_stream_accumulates_to_the_translated_whole_response() -> None:
    """The openai SDK's stream helper builds the non-streamed translation."""
    r = reply(
        calls=(ToolCall("call_1", "Bash", '{"command":"ls"}'), ToolCall("call_2", "Now", "{}"))
    )
    final = openai_final(translate(MessagesToChatStream(model="gpt-x"), messages_stream(r)))
    whole = messages_response_to_chat(messages_body(r), model="gpt-x")
    message = final.choices[0].message
    assert final.id == whole["id"]
    assert message.content == whole["choices"][0]["message"]["content"]
    assert [c.function.arguments for c in message.tool_calls] == ['{"command":"ls"}', "{}"]
    assert [c.id for c in message.tool_calls] == [
        c["id"] for c in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.model_dump(exclude_none=True) == whole["usage"]


def test_messages_stream_cut_at_every_byte_gives_the_same_chunks() -> None:
    upstream = messages_stream(SMALL, words=1)
    expected = translate(MessagesToChatStream(model="m"), upstream)
    for cut in range(1, len(upstream)):
        assert translate(MessagesToChatStream(model="m"), upstream, [cut]) == expected, cut
    assert (
        translate(MessagesToChatStream(model="m"), upstream, list(range(1, len(upstream))))
        == expected
    )


def test_without_include_usage_there_is_no_usage_chunk() -> None:
    stream = MessagesToChatStream(model="m", include_usage=False)
    out = translate(stream, messages_stream(SMALL))
    assert b'"usage"' not in out
    assert sse_events(out)[-1] == (None, "[DONE]")
    assert stream.usage is not None  # still metered


def test_a_tool_with_no_streamed_arguments_gets_empty_object_text() -> None:
    block = {"type": "tool_use", "id": "toolu_n", "name": "Now", "input": {}}
    upstream = (
        messages_stream(reply(calls=())).split(b"event: message_delta")[0]
        + _anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": block},
        )
        + _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 1})
        + b"event: message_delta"
        + messages_stream(reply(calls=())).split(b"event: message_delta")[1]
    )
    chunks = list(openai_chunks(translate(MessagesToChatStream(model="m"), upstream)))
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or ()
    )
    assert arguments == "{}"


def _anthropic_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def test_an_upstream_error_event_becomes_an_openai_error_chunk() -> None:
    """Overloaded mid-stream: the openai SDK raises, and no ``[DONE]`` pretends success."""
    upstream = messages_stream(SMALL).split(b"event: content_block_stop")[0]
    upstream += _anthropic_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    stream = MessagesToChatStream(model="m")
    out = translate(stream, upstream)
    last = sse_events(out)[-1][1]
    assert last == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert b"[DONE]" not in out
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(openai_chunks(out))


@pytest.mark.parametrize("cut", [b"event: message_delta", b"event: content_block_delta"])
def test_messages_stream_ending_early_ends_with_an_error_chunk(cut: bytes) -> None:
    upstream = messages_stream(SMALL).split(cut)[0]
    stream = MessagesToChatStream(model="m")
    out = translate(stream, upstream)
    assert "before the response was complete" in sse_events(out)[-1][1]["error"]["message"]
    assert stream.outcome.error is not None


def test_messages_stream_that_lost_only_message_stop_ends_normally() -> None:
    upstream = messages_stream(SMALL).split(b"event: message_stop")[0]
    out = translate(MessagesToChatStream(model="m"), upstream)
    assert sse_events(out)[-1] == (None, "[DONE]")


def test_server_tool_blocks_end_the_chat_stream_with_an_error() -> None:
    start = messages_stream(SMALL).split(b"event: content_block_start")[0]
    block = {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
    upstream = start + _anthropic_event(
        "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    )
    out = translate(MessagesToChatStream(model="m"), upstream)
    assert "server_tool_use" in sse_events(out)[-1][1]["error"]["message"]


def test_corrals_chat_meter_reads_the_translated_stream() -> None:
    out = translate(MessagesToChatStream(model="m"), messages_stream())
    meter = CHAT.meter(strip_usage=False)
    forwarded, terminal = meter.feed(out)
    assert forwarded == out
    assert terminal
    assert meter.outcome.usage == Usage(input=176, cached_input=1024, output=57)
    assert meter.outcome.finish_reason == "tool_calls"


def test_a_ping_before_message_start_does_not_start_the_message() -> None:
    """Keep-alive pings carry nothing; the id still comes from ``message_start``."""
    upstream = _anthropic_event("ping", {"type": "ping"}) + messages_stream(SMALL)
    with_ping = translate(MessagesToChatStream(model="m"), upstream)
    assert with_ping == translate(MessagesToChatStream(model="m"), messages_stream(SMALL))
