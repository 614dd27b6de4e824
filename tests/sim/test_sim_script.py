"""Scripted conversations: loading, validation, and turn-by-turn play on all three protocols."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from simhelp import post

from corral.errors import ConfigError
from corral.sim import load_script, parse_script
from corral.sim.testing import RunningSim

TASK = "Please fix the README."
TOOLS_CHAT = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("read_file", "write_file", "run")
]


def test_chat_plays_turn_by_turn(openai_client: openai.OpenAI) -> None:
    """Each request plays the turn matching the assistant turns already in its history."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": TASK},
    ]
    played = []
    for _ in range(4):
        reply = openai_client.chat.completions.create(
            model="sim-scripted", messages=messages, tools=TOOLS_CHAT
        )
        message = reply.choices[0].message
        calls = message.tool_calls or []
        played.append((message.content, [c.function.name for c in calls]))
        messages.append(message.model_dump(exclude_none=True))
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    assert played[0] == ("I will read the README first.", ["read_file"])
    assert played[1] == (None, ["write_file", "run"])
    assert played[2] == ("The README is fixed and the tests pass.", [])
    assert played[3][0] is not None
    assert "exhausted after 3 turns" in played[3][0]
    assert played[3][1] == []


def test_scripted_arguments_are_exact(openai_client: openai.OpenAI) -> None:
    """Arguments come from the script, as JSON text."""
    history: list[dict[str, Any]] = [
        {"role": "user", "content": TASK},
        {"role": "assistant", "content": "I will read the README first."},
    ]
    reply = openai_client.chat.completions.create(model="sim-scripted", messages=history)
    calls = reply.choices[0].message.tool_calls or []
    assert json.loads(calls[0].function.arguments) == {"path": "README.md", "content": "# Corral\n"}
    assert json.loads(calls[1].function.arguments) == {"command": "make test"}
    assert calls[0].id != calls[1].id


def test_responses_streams_scripted_calls(openai_client: openai.OpenAI) -> None:
    """The Responses API plays the same script as function_call items, streamed."""
    with openai_client.responses.stream(model="sim-scripted", input=TASK) as stream:
        first = stream.get_final_response()
    assert first.output_text == "I will read the README first."
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["read_file"]
    history: list[Any] = [
        {"role": "user", "content": TASK},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "text"},
    ]
    second = openai_client.responses.create(model="sim-scripted", input=history)
    assert [item.name for item in second.output if item.type == "function_call"] == [
        "write_file",
        "run",
    ]


def test_messages_plays_script_with_thinking(anthropic_client: anthropic.Anthropic) -> None:
    """Anthropic gets tool_use blocks, and the scripted thinking when thinking is on."""
    with anthropic_client.messages.stream(
        model="sim-scripted",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": TASK}],
    ) as stream:
        message = stream.get_final_message()
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "The README should be read before it is edited."  # type: ignore[union-attr]
    assert message.content[2].input == {"path": "README.md"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_unmatched_requests_get_the_default_answer(openai_client: openai.OpenAI) -> None:
    """A model outside the script's glob, or a task its regex misses, is not scripted."""
    other_task = openai_client.chat.completions.create(
        model="sim-scripted", messages=[{"role": "user", "content": "Something else"}]
    )
    assert "Corral's simulator" in (other_task.choices[0].message.content or "")
    reviewer = openai_client.chat.completions.create(
        model="sim-reviewer", messages=[{"role": "user", "content": "Review this diff"}]
    )
    assert reviewer.choices[0].message.content == "APPROVE: the change is small and tested."


def test_script_usage_is_consistent_across_stream_modes(sim: RunningSim) -> None:
    """Scripted output is counted the same streamed and not."""
    body = {
        "model": "sim-scripted",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": TASK}],
    }
    whole = post(sim.url, "/v1/messages", body).json()["usage"]
    events = post(sim.url, "/v1/messages", {**body, "stream": True}).events()
    delta = next(json.loads(data) for name, data in events if name == "message_delta")
    assert delta["usage"]["output_tokens"] == whole["output_tokens"]


def test_per_request_script_header(sim: RunningSim) -> None:
    """``x-sim-script`` carries a one-conversation script (JSON) for this request only."""
    script = {"turns": [{"text": "header turn one"}, {"text": "header turn two"}]}
    header = {"x-sim-script": orjson.dumps(script).decode()}
    body = {"model": "any-model", "input": "hi"}
    first = post(sim.url, "/v1/responses", body, header).json()
    assert first["output"][0]["content"][0]["text"] == "header turn one"
    body["input"] = [{"role": "user", "content": "hi"}, first["output"][0]]
    second = post(sim.url, "/v1/responses", body, header).json()
    assert second["output"][0]["content"][0]["text"] == "header turn two"
    broken = post(sim.url, "/v1/responses", body, {"x-sim-script": '{"turns": []}'})
    assert broken.status == 400
    assert "x-sim-script header" in broken.json()["error"]["message"]


def test_custom_tool_call_on_responses(sim: RunningSim) -> None:
    """A scripted call to a request's ``custom`` tool becomes a custom_tool_call item."""
    script = {"turns": [{"tool_calls": [{"name": "apply_patch", "arguments": "*** Begin Patch"}]}]}
    body = {
        "model": "sim-standard",
        "input": "patch",
        "stream": True,
        "tools": [{"type": "custom", "name": "apply_patch", "format": {"type": "text"}}],
    }
    events = post(sim.url, "/v1/responses", body, {"x-sim-script": orjson.dumps(script).decode()})
    done = [json.loads(d) for n, d in events.events() if n == "response.output_item.done"]
    assert done[0]["item"]["type"] == "custom_tool_call"
    assert done[0]["item"]["input"] == "*** Begin Patch"


def test_load_script_json_equals_toml(tmp_path: Path) -> None:
    """JSON and TOML scripts load to the same thing."""
    toml_file = Path(__file__).parent / "data" / "agent_script.toml"
    from_toml = load_script(toml_file)
    json_file = tmp_path / "script.json"
    json_file.write_text(
        json.dumps(
            {
                "conversations": [
                    {
                        "name": "reviewer",
                        "model": "sim-reviewer",
                        "turns": [{"text": "APPROVE: the change is small and tested."}],
                    }
                ]
            }
        )
    )
    assert load_script(json_file).conversations[0] == from_toml.conversations[1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "'conversations' must be a non-empty list"),
        ({"conversations": [{"turns": []}]}, r"conversations\[0\]: 'turns' must be a non-empty"),
        ({"conversations": [{"turns": [{}]}]}, r"turns\[0\]: a turn needs 'text' or 'tool_calls'"),
        ({"conversations": [{"turns": [{"txt": "a"}]}]}, "unknown key 'txt'"),
        ({"conversations": [{"match": "(", "turns": [{"text": "a"}]}]}, "not a valid regular"),
        (
            {"conversations": [{"turns": [{"tool_calls": [{"arguments": {}}]}]}]},
            r"tool_calls\[0\]: 'name' must be a non-empty string",
        ),
        (
            {"conversations": [{"turns": [{"tool_calls": [{"name": "x", "arguments": 3}]}]}]},
            "'arguments' must be a table",
        ),
    ],
)
def test_invalid_scripts_are_refused(data: dict[str, Any], message: str) -> None:
    """Validation names the source and the offending entry."""
    with pytest.raises(ConfigError, match=message) as caught:
        parse_script(data, source="my.toml")
    assert caught.value.message.startswith("my.toml")


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    """A missing file or bad TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read simulator script"):
        load_script(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[conversations]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid"):
        load_script(bad)
