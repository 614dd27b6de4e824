"""The Gemini adapter reading what Corral's simulator renders as Google (two independent
implementations of the same wire must agree on text, calls and usage)."""

from __future__ import annotations

import orjson
import pytest

from corral.protocols import GEMINI
from corral.protocols.base import Usage
from corral.sim.gemini import gemini_frames, gemini_json
from corral.sim.generate import Reply, ToolCall
from corral.sim.wire import Meta
from corral.sim.wire import Usage as SimUsage

META = Meta(response_id="resp-sim", created=1_700_000_000, model="gemini-sim", request_id="r1")
SIM_USAGE = SimUsage(prompt=1200, cache_read=1000, cache_write=0, output=90, reasoning=30)
EXPECTED = Usage(input=200, cached_input=1000, output=60, reasoning=30)
CALL = ToolCall("call_sim01", "read_file", '{"path":"README.md"}')
REPLY = Reply("Here is the file you asked for.", (CALL,), "First I look.", "tool_calls")


def sim_stream(words: int) -> bytes:
    frames = gemini_frames(REPLY, SIM_USAGE, META, chunk_words=words, thoughts=True)
    return b"".join(frame.data for frame in frames)


def test_whole_response_outcome_and_hub_form() -> None:
    body = orjson.loads(gemini_json(REPLY, SIM_USAGE, META, thoughts=True))
    assert GEMINI.outcome(body).usage == EXPECTED
    internal = GEMINI.response_to_internal(body, model="m")
    message = internal["choices"][0]["message"]
    assert message["content"] == REPLY.text
    assert message["reasoning_content"] == REPLY.thinking
    assert message["tool_calls"][0]["id"] == "call_sim01"
    assert internal["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("words", [1, 3])
def test_stream_meter_and_translator(words: int) -> None:
    data = sim_stream(words)
    meter = GEMINI.meter(strip_usage=False)
    out, terminal = meter.feed(data)
    assert out == data
    assert terminal
    assert meter.outcome.usage == EXPECTED
    stream = GEMINI.stream_to_internal("m")
    assert stream is not None
    chunks = stream.feed(data) + stream.close()
    assert stream.done
    assert stream.outcome.usage == EXPECTED
    assert chunks.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"tool_calls"' in chunks
