"""The last turn of a model request (``Adapter.turn``), per protocol, as stuck detectors
compare it: equal digests for a repeated last turn whatever came before, one action per
tool call, one result per tool result, errors marked where the protocol says so, and
never an exception, whatever the body holds."""

from __future__ import annotations

import copy
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from corral.protocols import ADAPTERS, CHAT, GEMINI, MESSAGES, RESPONSES, Adapter, Turn
from corral.protocols.base import TURN_BYTES, TURN_ITEMS
from tests.protocols.corpus import claude_code_request, openai_agent_request

Call = tuple[str, dict[str, Any]]
"""A tool call: its name and arguments."""
Result = tuple[str, bool]
"""A tool result: its text and whether it is an error."""

ACTION = re.compile(r"^[A-Za-z_][\w.-]*:[0-9a-f]{12}$")
LS: Call = ("bash", {"command": "ls -la", "description": "List files"})
READ: Call = ("read_file", {"path": "README.md", "limit": 200})


# -- each protocol's shapes, as its SDKs and CLIs send them ----------------------------


@dataclass(frozen=True)
class Dialect:
    """How one protocol writes a conversation; ``salt`` stands for what changes from call
    to call without changing the turn (call ids, signatures, encrypted reasoning)."""

    adapter: Adapter
    field: str
    """The body's field holding the conversation."""
    wrap: Callable[[list[Any]], dict[str, Any]]
    user: Callable[[str], list[Any]]
    answer: Callable[[str, list[Call], str], list[Any]]
    results: Callable[[list[Call], list[Result], str], list[Any]]
    marks_errors: bool

    def turn(self, *messages: list[Any]) -> Turn:
        found = self.adapter.turn(self.wrap([m for part in messages for m in part]))
        assert found is not None
        return found

    def history(self, rounds: int, salt: str = "h") -> list[Any]:
        """A conversation of ``rounds`` earlier tool round trips, opening with a user ask."""
        out = self.user(f"Fix the failing test ({salt}).")
        for i in range(rounds):
            call: Call = ("read_file", {"path": f"src/m{i}.py"})
            out += self.answer(f"Reading m{i}.", [call], f"{salt}{i}")
            out += self.results([call], [(f"contents of m{i}", False)], f"{salt}{i}")
        return out

    def round(
        self, calls: list[Call], outputs: list[Result], salt: str = "s", text: str = "Checking."
    ) -> list[Any]:
        """The last turn: an answer calling ``calls``, then their ``outputs``."""
        return self.answer(text, calls, salt) + self.results(calls, outputs, salt)


def _chat_answer(text: str, calls: list[Call], salt: str) -> list[Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{salt}{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(calls)
        ]
    return [message]


def _chat_results(calls: list[Call], outputs: list[Result], salt: str) -> list[Any]:
    return [
        {"role": "tool", "tool_call_id": f"call_{salt}{i}", "content": text}
        for i, (text, _) in enumerate(outputs)
    ]


CHAT_DIALECT = Dialect(
    adapter=CHAT,
    field="messages",
    wrap=lambda messages: {
        **openai_agent_request(),
        "messages": [{"role": "system", "content": "You are a coding agent."}, *messages],
    },
    user=lambda text: [{"role": "user", "content": text}],
    answer=_chat_answer,
    results=_chat_results,
    marks_errors=False,
)


def _messages_answer(text: str, calls: list[Call], salt: str) -> list[Any]:
    content: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": f"Let me think ({salt}).", "signature": f"sig{salt}"}
    ]
    if text:
        content.append({"type": "text", "text": text})
    content += [
        {"type": "tool_use", "id": f"toolu_{salt}{i}", "name": name, "input": args}
        for i, (name, args) in enumerate(calls)
    ]
    return [{"role": "assistant", "content": content}]


def _messages_results(calls: list[Call], outputs: list[Result], salt: str) -> list[Any]:
    if not outputs:
        return []
    blocks: list[dict[str, Any]] = []
    for i, (text, error) in enumerate(outputs):
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": f"toolu_{salt}{i}"}
        block["content"] = [{"type": "text", "text": text}] if i % 2 else text
        if error:
            block["is_error"] = True
        blocks.append(block)
    # Claude Code marks the last block of the last message for the prompt cache.
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return [{"role": "user", "content": blocks}]


MESSAGES_DIALECT = Dialect(
    adapter=MESSAGES,
    field="messages",
    wrap=lambda messages: {**claude_code_request(turns=0, tools=2), "messages": messages},
    user=lambda text: [{"role": "user", "content": [{"type": "text", "text": text}]}],
    answer=_messages_answer,
    results=_messages_results,
    marks_errors=True,
)


def _responses_answer(text: str, calls: list[Call], salt: str) -> list[Any]:
    items: list[dict[str, Any]] = [
        {"type": "reasoning", "id": f"rs_{salt}", "summary": [], "encrypted_content": salt}
    ]
    if text:
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{salt}",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    items += [
        {
            "type": "function_call",
            "id": f"fc_{salt}{i}",
            "call_id": f"call_{salt}{i}",
            "name": name,
            "arguments": json.dumps(args),
        }
        for i, (name, args) in enumerate(calls)
    ]
    return items


def _responses_results(calls: list[Call], outputs: list[Result], salt: str) -> list[Any]:
    return [
        {"type": "function_call_output", "call_id": f"call_{salt}{i}", "output": text}
        for i, (text, _) in enumerate(outputs)
    ]


RESPONSES_DIALECT = Dialect(
    adapter=RESPONSES,
    field="input",
    wrap=lambda items: {
        "model": "gpt-5-codex",
        "instructions": "You are Codex.",
        "input": items,
        "tools": [{"type": "function", "name": "bash", "parameters": {"type": "object"}}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
    },
    user=lambda text: [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    ],
    answer=_responses_answer,
    results=_responses_results,
    marks_errors=False,
)


def _gemini_answer(text: str, calls: list[Call], salt: str) -> list[Any]:
    parts: list[dict[str, Any]] = [{"text": f"Thinking ({salt}).", "thought": True}]
    if text:
        parts.append({"text": text})
    parts += [
        {"functionCall": {"id": f"fc-{salt}{i}", "name": name, "args": args}}
        for i, (name, args) in enumerate(calls)
    ]
    parts[1]["thoughtSignature"] = f"c2ln{salt}"  # Gemini 3 signs the first part after thought
    return [{"role": "model", "parts": parts}]


def _gemini_results(calls: list[Call], outputs: list[Result], salt: str) -> list[Any]:
    if not outputs:
        return []
    parts = [
        {
            "functionResponse": {
                "id": f"fc-{salt}{i}",
                "name": calls[i][0] if i < len(calls) else "tool",
                "response": {"error": text} if error else {"output": text},
            }
        }
        for i, (text, error) in enumerate(outputs)
    ]
    return [{"role": "user", "parts": parts}]


GEMINI_DIALECT = Dialect(
    adapter=GEMINI,
    field="contents",
    wrap=lambda contents: {
        "contents": contents,
        "systemInstruction": {"parts": [{"text": "You are Gemini CLI."}]},
        "tools": [{"functionDeclarations": [{"name": "bash", "parametersJsonSchema": {}}]}],
        "generationConfig": {"temperature": 0, "thinkingConfig": {"includeThoughts": True}},
    },
    user=lambda text: [{"role": "user", "parts": [{"text": text}]}],
    answer=_gemini_answer,
    results=_gemini_results,
    marks_errors=True,
)

DIALECTS = [CHAT_DIALECT, MESSAGES_DIALECT, RESPONSES_DIALECT, GEMINI_DIALECT]


@pytest.fixture(params=DIALECTS, ids=lambda d: d.adapter.name)
def dialect(request: pytest.FixtureRequest) -> Dialect:
    found: Dialect = request.param
    return found


# -- what every protocol's turn says ----------------------------------------------------


def test_the_same_last_turn_after_a_different_history_has_the_same_digest(
    dialect: Dialect,
) -> None:
    last = dialect.round([LS, READ], [("a.txt\nb.txt", False), ("# Title", False)])
    short = dialect.turn(dialect.history(1, "x"), last)
    long = dialect.turn(dialect.history(7, "y"), last)
    assert short.digest == long.digest
    assert re.fullmatch(r"[0-9a-f]{16}", short.digest)
    assert short.actions == long.actions
    assert [a.split(":")[0] for a in short.actions] == ["bash", "read_file"]
    assert all(ACTION.match(a) for a in short.actions)
    assert short.results == long.results
    assert all(re.fullmatch(r"[0-9a-f]{12}", r) for r in short.results)
    assert short.messages < long.messages


def test_what_changes_between_calls_without_changing_the_turn_is_not_read(
    dialect: Dialect,
) -> None:
    """Fresh call ids, reasoning and its signatures: a looping agent's same turn."""
    outputs = [("a.txt", False)]
    first = dialect.turn(dialect.history(2), dialect.round([LS], outputs, salt="one"))
    again = dialect.turn(dialect.history(2), dialect.round([LS], outputs, salt="two"))
    assert first == again


def test_one_changed_argument_changes_that_action_and_the_digest(dialect: Dialect) -> None:
    outputs = [("a.txt", False), ("# Title", False)]
    base = dialect.turn(dialect.history(2), dialect.round([LS, READ], outputs))
    other_read = ("read_file", {**READ[1], "limit": 201})
    changed = dialect.turn(dialect.history(2), dialect.round([LS, other_read], outputs))
    assert changed.actions[0] == base.actions[0]
    assert changed.actions[1] != base.actions[1]
    assert changed.actions[1].startswith("read_file:")
    assert changed.digest != base.digest


def test_the_same_call_with_another_result_keeps_the_action(dialect: Dialect) -> None:
    base = dialect.turn(dialect.history(2), dialect.round([LS], [("a.txt", False)]))
    other = dialect.turn(dialect.history(2), dialect.round([LS], [("b.txt", False)]))
    assert other.actions == base.actions
    assert other.results != base.results
    assert other.digest != base.digest


def test_argument_order_does_not_matter(dialect: Dialect) -> None:
    reordered: Call = ("bash", dict(reversed(list(LS[1].items()))))
    base = dialect.turn(dialect.history(1), dialect.round([LS], [("a.txt", False)]))
    same = dialect.turn(dialect.history(1), dialect.round([reordered], [("a.txt", False)]))
    assert same == base


def test_errors_are_marked_where_the_protocol_says_so(dialect: Dialect) -> None:
    turn = dialect.turn(
        dialect.history(1), dialect.round([LS, READ], [("a.txt", False), ("no such file", True)])
    )
    assert turn.failed == (False, dialect.marks_errors)
    assert len(turn.results) == 2


def test_acted_true_false_or_none(dialect: Dialect) -> None:
    called = dialect.turn(dialect.history(1), dialect.round([LS], [("a.txt", False)]))
    assert called.acted is True
    said = dialect.turn(dialect.history(1), dialect.answer("All done.", [], "s"))
    assert said.acted is False
    assert said.actions == said.results == ()
    assert said.failed == ()
    nudged = dialect.turn(
        dialect.history(1), dialect.answer("All done.", [], "s"), dialect.user("Go on.")
    )
    assert nudged.acted is False
    assert nudged.digest != said.digest
    opening = dialect.turn(dialect.user("Fix the failing test."))
    assert opening.acted is None
    assert opening.messages == 1 + (dialect is CHAT_DIALECT)  # Chat's system message


def test_no_assistant_message_yet_digests_the_whole_conversation(dialect: Dialect) -> None:
    one = dialect.turn(dialect.user("Fix it."), dialect.user("Please."))
    other = dialect.turn(dialect.user("Fix that."), dialect.user("Please."))
    assert one.digest != other.digest
    assert one.acted is None


def test_messages_are_counted(dialect: Dialect) -> None:
    body = dialect.wrap(dialect.history(3) + dialect.round([LS], [("a.txt", False)]))
    turn = dialect.adapter.turn(body)
    assert turn is not None
    assert turn.messages == len(body[dialect.field])


def test_a_turn_beyond_the_walk_limit_is_its_last_items(dialect: Dialect) -> None:
    """A hostile run of user messages: only the last ``TURN_ITEMS`` are read."""
    many = [m for i in range(TURN_ITEMS + 10) for m in dialect.user(f"line {i}")]
    head_changed = [*dialect.user("another first line"), *many[1:]]
    first, second = dialect.turn(many), dialect.turn(head_changed)
    assert first.digest == second.digest
    assert first.messages == len(many) + (dialect is CHAT_DIALECT)


def test_a_giant_result_costs_a_bounded_amount(dialect: Dialect) -> None:
    """Past the budget only a result's ends and length count: its middle is not read."""
    size = 32 * 1024 * 1024
    middle = "x" * size
    half = size // 2
    changed = middle[:half] + "y" + middle[half + 1 :]
    one = dialect.round([LS], [("head" + middle + "tail", False)])
    same_ends = dialect.turn(dialect.round([LS], [("head" + changed + "tail", False)]))
    other_end = dialect.turn(dialect.round([LS], [("head" + middle + "tails", False)]))
    assert dialect.turn(one).results == same_ends.results
    assert dialect.turn(one).results != other_end.results
    started = time.perf_counter()
    for _ in range(5):
        dialect.turn(one)
    # Encoding and hashing 32 MiB five times takes over 100 ms; 64 KiB well under 1 ms.
    assert time.perf_counter() - started < 0.05


def test_the_same_call_reads_the_same_in_every_protocol() -> None:
    turns = [d.turn(d.round([LS, READ], [("a", False), ("b", False)])) for d in DIALECTS]
    assert len({t.actions for t in turns}) == 1
    assert len({t.results for t in turns}) == 1


def test_not_a_request_of_the_protocol_is_none() -> None:
    assert CHAT.turn({"model": "m", "contents": []}) is None
    assert CHAT.turn({"messages": "hi"}) is None
    assert MESSAGES.turn({"model": "m", "input": "hi"}) is None
    assert RESPONSES.turn({"model": "m", "messages": []}) is None
    assert RESPONSES.turn({"input": {"role": "user"}}) is None
    assert GEMINI.turn({"messages": []}) is None
    for adapter in ADAPTERS.values():
        assert adapter.turn({}) is None
        assert adapter.turn([1, 2]) is None  # type: ignore[arg-type]


def test_a_deep_body_is_read_to_a_bounded_depth(dialect: Dialect) -> None:
    """Python objects deeper than any parser makes: the walk stops at a fixed depth (and
    is not limited by the interpreter's recursion)."""

    def deep(bottom: str) -> dict[str, Any]:
        conversation: list[Any] = _swap(dialect.user("x"), "x", _nested(100_000, bottom))
        return dialect.wrap(conversation)

    bodies = deep("one"), deep("other")
    started = time.perf_counter()
    one, other = (dialect.adapter.turn(body) for body in bodies)
    assert time.perf_counter() - started < 0.1
    assert one is not None
    assert other is not None
    assert one.acted is None
    assert one.digest == other.digest  # they differ 100,000 levels down
    assert one.digest != dialect.turn(dialect.user("x")).digest


def _swap(value: Any, old: str, new: Any) -> Any:
    """``value`` with every string ``old`` in it replaced by ``new``."""
    if value == old:
        return new
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value


def test_turn_is_exported() -> None:
    import corral.protocols

    assert corral.protocols.Turn is Turn
    assert "Turn" in corral.protocols.__all__


# -- what one protocol says and the others do not ---------------------------------------


def test_chat_legacy_function_call_and_function_result() -> None:
    def body(result: str) -> dict[str, Any]:
        return {
            "model": "gpt-3.5-turbo",
            "messages": [
                {"role": "user", "content": "What is the weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
                {"role": "function", "name": "weather", "content": result},
            ],
            "functions": [{"name": "weather", "parameters": {"type": "object"}}],
        }

    turn = CHAT.turn(body("12 C"))
    assert turn is not None
    assert turn.acted is True
    assert (
        turn.actions
        == CHAT_DIALECT.turn(CHAT_DIALECT.answer("", [("weather", {"city": "Oslo"})], "x")).actions
    )
    assert turn.failed == (False,)
    other = CHAT.turn(body("13 C"))
    assert other is not None
    assert other.results != turn.results
    assert other.actions == turn.actions


def test_chat_content_parts_read_as_their_text() -> None:
    as_text = CHAT_DIALECT.turn(CHAT_DIALECT.round([LS], [("a.txt", False)]))
    parts = CHAT_DIALECT.round([LS], [("a.txt", False)])
    parts[-1]["content"] = [{"type": "text", "text": "a."}, {"type": "text", "text": "txt"}]
    assert CHAT_DIALECT.turn(parts) == as_text


def test_claude_code_session() -> None:
    """A long Claude Code body: the last turn is the last tool round trip; every fifth
    result is an error there."""
    body = claude_code_request(turns=100)
    turn = MESSAGES.turn(body)
    assert turn is not None
    assert turn.messages == 101
    assert turn.acted is True
    assert turn.actions[0].startswith("Tool9:")
    assert turn.failed == (True,)
    shorter = claude_code_request(turns=40)
    shorter["messages"][-2:] = copy.deepcopy(body["messages"][-2:])
    same = MESSAGES.turn(shorter)
    assert same is not None
    assert same.digest == turn.digest
    assert same.messages == 41


def test_messages_server_tool_results_and_their_errors() -> None:
    answer = {
        "role": "assistant",
        "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
             "input": {"query": "corral"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
             "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}},
            {"type": "text", "text": "The search failed."},
        ],
    }  # fmt: skip
    turn = MESSAGES.turn({"messages": [{"role": "user", "content": "Search."}, answer]})
    assert turn is not None
    assert turn.actions[0].startswith("web_search:")
    assert turn.failed == (True,)


def test_responses_string_input() -> None:
    turn = RESPONSES.turn({"model": "gpt-5", "input": "Weather in Oslo?"})
    assert turn is not None
    assert (turn.messages, turn.acted, turn.actions) == (1, None, ())
    other = RESPONSES.turn({"model": "gpt-5", "input": "Weather in Bergen?"})
    assert other is not None
    assert other.digest != turn.digest


def test_responses_previous_response_id_carries_only_the_new_items() -> None:
    def body(output: str) -> dict[str, Any]:
        return {
            "model": "gpt-5",
            "previous_response_id": "resp_1",
            "input": [{"type": "function_call_output", "call_id": "call_1", "output": output}],
        }

    one, two = RESPONSES.turn(body("12 C")), RESPONSES.turn(body("13 C"))
    assert one is not None
    assert two is not None
    assert (one.acted, one.actions, one.messages, len(one.results)) == (None, (), 1, 1)
    assert one.results != two.results


def test_responses_codex_custom_and_built_in_tools() -> None:
    patch = "*** Begin Patch\n*** Update File: a.py\n@@\n-x = 1\n+x = 2\n*** End Patch\n"
    items = [
        *RESPONSES_DIALECT.user("Bump x."),
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": patch},
        {"type": "local_shell_call", "id": "ls_1", "call_id": "c2", "status": "completed",
         "action": {"type": "exec", "command": ["pytest", "-q"], "env": {}}},
        {"type": "shell_call", "call_id": "c3", "action": {"commands": ["make"]}},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
        {"type": "local_shell_call_output", "id": "ls_1", "output": "1 failed"},
        {"type": "shell_call_output", "call_id": "c3",
         "output": [{"stdout": "", "stderr": "boom", "outcome": {"type": "exit", "exit_code": 2}}]},
    ]  # fmt: skip
    turn = RESPONSES_DIALECT.turn(items)
    assert [a.split(":")[0] for a in turn.actions] == ["apply_patch", "local_shell", "shell"]
    assert turn.failed == (False, False, True)
    assert turn.acted is True
    other = copy.deepcopy(items)
    other[3]["action"]["command"] = ["pytest", "-x"]
    other[3]["id"] = "ls_2"
    changed = RESPONSES_DIALECT.turn(other)
    assert changed.actions[0] == turn.actions[0]
    assert changed.actions[1] != turn.actions[1]


def test_responses_failed_patch_and_mcp_error() -> None:
    items = [
        *RESPONSES_DIALECT.user("Go."),
        {"type": "apply_patch_call", "call_id": "p1", "status": "completed",
         "operation": {"type": "update_file", "path": "a.py", "diff": "@@\n-a\n+b\n"}},
        {"type": "mcp_call", "id": "mcp_1", "server_label": "gh", "name": "create_issue",
         "arguments": '{"title": "x"}', "output": None, "error": "forbidden"},
        {"type": "apply_patch_call_output", "call_id": "p1", "status": "failed",
         "output": "context not found"},
    ]  # fmt: skip
    turn = RESPONSES_DIALECT.turn(items)
    assert [a.split(":")[0] for a in turn.actions] == ["apply_patch", "create_issue"]
    assert turn.failed == (True, True)


def test_gemini_snake_case_and_code_execution() -> None:
    camel = GEMINI_DIALECT.turn(GEMINI_DIALECT.round([LS], [("a.txt", False)]))
    snake = GEMINI_DIALECT.round([LS], [("a.txt", False)])
    for content in snake:
        for part in content["parts"]:
            for old, new in (
                ("functionCall", "function_call"),
                ("functionResponse", "function_response"),
            ):
                if old in part:
                    part[new] = part.pop(old)
    assert GEMINI_DIALECT.turn(snake) == camel
    code = [
        {"role": "model", "parts": [{"executableCode": {"language": "PYTHON", "code": "1/0"}}]},
        {"role": "user", "parts": [{"codeExecutionResult": {"outcome": "OUTCOME_FAILED",
                                                            "output": "ZeroDivisionError"}}]},
    ]  # fmt: skip
    turn = GEMINI_DIALECT.turn(code)
    assert turn.actions[0].startswith("code_execution:")
    assert turn.failed == (True,)


# -- the official SDKs' own bodies ---------------------------------------------------------


def sent(send: Callable[[httpx.Client], object], error: type[Exception]) -> dict[str, Any]:
    """The body an SDK sends through ``send`` (the fake server refuses it: no answer needed)."""
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(400, json={"error": {"message": "captured", "type": "x"}})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http, pytest.raises(error):
        send(http)
    body: dict[str, Any] = orjson.loads(bodies[0])
    return body


def test_bodies_the_official_sdks_send() -> None:
    """Each SDK's own serialisation of a conversation reads as the body written by hand."""
    outputs = [("a.txt", False), ("no such file", True)]
    expected = {
        d.adapter.name: d.turn(d.history(1), d.round([LS, READ], outputs)) for d in DIALECTS
    }

    def conversation(d: Dialect) -> Any:
        return d.wrap(d.history(1) + d.round([LS, READ], outputs))[d.field]

    chat = sent(
        lambda http: _openai(http).chat.completions.create(
            model="gpt-4.1", messages=conversation(CHAT_DIALECT)
        ),
        openai.BadRequestError,
    )
    responses = sent(
        lambda http: _openai(http).responses.create(
            model="gpt-5", input=conversation(RESPONSES_DIALECT)
        ),
        openai.BadRequestError,
    )
    messages = sent(
        lambda http: anthropic.Anthropic(
            api_key="k", base_url="http://t", http_client=http, max_retries=0
        ).messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=conversation(MESSAGES_DIALECT)
        ),
        anthropic.BadRequestError,
    )
    gemini = sent(
        lambda http: genai.Client(
            api_key="k", http_options=types.HttpOptions(base_url="http://t", httpx_client=http)
        ).models.generate_content(model="gemini-2.5-pro", contents=_gemini_contents()),
        genai_errors.ClientError,
    )
    for body, adapter in ((chat, CHAT), (responses, RESPONSES), (messages, MESSAGES)):
        assert adapter.turn(body) == expected[adapter.name]
    turn = GEMINI.turn(gemini)
    assert turn is not None
    assert (turn.actions, turn.results, turn.failed) == (
        expected["gemini"].actions,
        expected["gemini"].results,
        expected["gemini"].failed,
    )


def _openai(http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://t/v1", http_client=http, max_retries=0)


def _gemini_contents() -> list[types.Content]:
    """The last round trip written with the SDK's own types (it sends its own spelling)."""
    return [
        types.Content(role="user", parts=[types.Part.from_text(text="Fix the failing test.")]),
        types.Content(
            role="model",
            parts=[
                types.Part.from_text(text="Checking."),
                types.Part.from_function_call(name=LS[0], args=LS[1]),
                types.Part.from_function_call(name=READ[0], args=READ[1]),
            ],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name=LS[0], response={"output": "a.txt"}),
                types.Part.from_function_response(name=READ[0], response={"error": "no such file"}),
            ],
        ),
    ]


# -- hostile bodies --------------------------------------------------------------------

HOSTILE: list[Callable[[], Any]] = [
    lambda: None,
    lambda: True,
    lambda: -1,
    lambda: 2**200,
    lambda: 1.5e308,
    lambda: float("nan"),
    lambda: "",
    lambda: "\ud800 lone surrogate",
    lambda: "x" * (TURN_BYTES + 7),
    lambda: [],
    lambda: {},
    lambda: {"type": 5, "role": ["assistant"], "content": {"x": 1}},
    lambda: {"role": "assistant", "tool_calls": "nope", "content": [None, 3]},
    lambda: {"type": "function_call", "name": {"n": 1}, "arguments": "{not json"},
    lambda: {"functionCall": "x", "functionResponse": [1]},
    lambda: {"type": "tool_result", "content": {"type": 7}, "is_error": "yes"},
    lambda: {1: "int key", "a": {2.5: "float key"}},
    lambda: [[]] * 100_000,
    lambda: _nested(10_000),
    lambda: {"role": "model", "parts": [{"thought": True}] * 5_000},
    lambda: b"bytes",
    lambda: object(),
]


def _nested(depth: int, bottom: str = "bottom") -> Any:
    value: Any = bottom
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _slots(value: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """The (container, key) pairs of a JSON value, to replace or delete one (the first
    few of each container, a few levels deep: hostile values are huge)."""
    if depth > 12:
        return
    if isinstance(value, dict):
        for key in list(value)[:30]:
            yield value, key
            yield from _slots(value[key], depth + 1)
    elif isinstance(value, list):
        for index in range(min(len(value), 30)):
            yield value, index
            yield from _slots(value[index], depth + 1)


def mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``body`` with one to three slots replaced by hostile values, deleted or retyped."""
    out = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        slots = list(_slots(out))
        if not slots:
            break
        container, key = rng.choice(slots)
        choice = rng.random()
        if choice < 0.15:
            del container[key]
        elif choice < 0.3 and isinstance(container[key], list | dict):
            container[key] = list(
                container[key].values() if isinstance(container[key], dict) else []
            )
        else:
            container[key] = rng.choice(HOSTILE)()
    return out


def realistic(dialect: Dialect) -> list[dict[str, Any]]:
    d = dialect
    outputs = [("a.txt", False), ("no such file", True)]
    return [
        d.wrap(d.history(2) + d.round([LS, READ], outputs)),
        d.wrap(d.history(1) + d.answer("Done.", [], "z") + d.user("Thanks.")),
        d.wrap(d.user("Start.")),
    ]


@pytest.mark.parametrize("seed", range(4))
def test_hostile_bodies_never_raise(dialect: Dialect, seed: int) -> None:
    rng = random.Random(seed)
    bodies = realistic(dialect)
    for _ in range(100):
        body = mutate(rng.choice(bodies), rng)
        for adapter in ADAPTERS.values():  # other protocols' bodies are hostile too
            turn = adapter.turn(body)
            assert turn is None or isinstance(turn, Turn)
        assert dialect.adapter.turn(body) is not None or not _shaped(dialect, body)


def _shaped(dialect: Dialect, body: dict[str, Any]) -> bool:
    """The body still holds this protocol's conversation field in its shape."""
    return isinstance(body.get(dialect.field), list)


def test_a_huge_or_deep_body_costs_a_bounded_amount(dialect: Dialect) -> None:
    wide = dialect.round([("bash", {"items": list(range(1_000_000))})], [("ok", False)])
    deep = dialect.round([("bash", {"tree": _nested(400)})], [("ok", False)])
    many = dialect.round([LS] * 100_000, [("ok", False)])
    for body in [dialect.wrap(items) for items in (wide, deep, many)]:
        started = time.perf_counter()
        turn = dialect.adapter.turn(body)
        assert time.perf_counter() - started < 0.1
        assert turn is not None
        assert turn.acted is True
