"""Upstream fixtures from the simulator's own renderers, and SDK clients over canned bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson

from corral.sim.chat import chat_frames, chat_json
from corral.sim.generate import Reply, ToolCall
from corral.sim.messages import messages_frames, messages_json
from corral.sim.wire import Meta, Usage

META = Meta(
    response_id="chatcmpl-sim0001", created=1_700_000_000, model="up-model", request_id="r1"
)
MSG_META = Meta(response_id="msg_sim0001", created=1_700_000_000, model="up-model", request_id="r1")
USAGE = Usage(prompt=1200, cache_read=1024, cache_write=0, output=57, reasoning=0)
CALL = ToolCall("call_sim01", "Bash", '{"command":"ls -la","description":"List files"}')


def reply(
    text: str = "Here is the listing you asked for.",
    calls: tuple[ToolCall, ...] = (CALL,),
    thinking: str = "",
) -> Reply:
    return Reply(text, calls, thinking, "tool_calls" if calls else "stop")


def chat_stream(
    r: Reply | None = None, *, usage: Usage = USAGE, include_usage: bool = True, words: int = 2
) -> bytes:
    """What an OpenAI Chat upstream streams for ``r`` (the simulator's rendering)."""
    frames = chat_frames(r or reply(), usage, META, include_usage=include_usage, chunk_words=words)
    return b"".join(frame.data for frame in frames)


def chat_body(r: Reply | None = None, *, usage: Usage = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(chat_json(r or reply(), usage, META))
    return body


def messages_stream(r: Reply | None = None, *, usage: Usage = USAGE, words: int = 2) -> bytes:
    """What an Anthropic upstream streams for ``r`` (the simulator's rendering)."""
    frames = messages_frames(r or reply(), usage, MSG_META, chunk_words=words)
    return b"".join(frame.data for frame in frames)


def messages_body(r: Reply | None = None, *, usage: Usage = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(messages_json(r or reply(), usage, MSG_META))
    return body


def sse_events(data: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) for each event; ``[DONE]`` stays a string."""
    events: list[tuple[str | None, Any]] = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        name = None
        payload = ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                payload = line.removeprefix("data: ")
        events.append((name, payload if payload == "[DONE]" else orjson.loads(payload)))
    return events


def translate(stream: Any, data: bytes, cuts: list[int] | None = None) -> bytes:
    """Feed ``data`` cut at ``cuts`` (or whole), then close."""
    pieces = (
        [data]
        if not cuts
        else [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    )
    out: bytes = b"".join(stream.feed(piece) for piece in pieces) + stream.close()
    return out


def _transport(body: bytes) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def anthropic_final(body: bytes) -> Any:
    """The message the anthropic SDK accumulates from a streamed ``body``."""
    with (
        httpx.Client(transport=_transport(body)) as http,
        anthropic.Anthropic(
            api_key="x", base_url="http://test", http_client=http, max_retries=0
        ) as client,
        client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        return stream.get_final_message()


def openai_chunks(body: bytes) -> Iterator[Any]:
    """The chunks the openai SDK parses from a streamed ``body``."""
    with (
        httpx.Client(transport=_transport(body)) as http,
        openai.OpenAI(
            api_key="x", base_url="http://test/v1", http_client=http, max_retries=0
        ) as client,
    ):
        yield from client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def openai_final(body: bytes) -> Any:
    """The completion the openai SDK's stream helper accumulates from ``body``."""
    with (
        httpx.Client(transport=_transport(body)) as http,
        openai.OpenAI(
            api_key="x", base_url="http://test/v1", http_client=http, max_retries=0
        ) as client,
        client.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass
        return stream.get_final_completion()
