"""A guard's warning reaches the reference agent's model: the ``x-corral-guard-warning``
header on the gateway's answers becomes one user message per incident.

The gateway is the loop tests' scripted Chat Completions endpoint (an injected
``httpx.MockTransport``) that also sets the warning header on chosen turns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.agent.model import GUARD_WARNING_HEADER, GuardWarning, ModelClient, guard_warnings
from tests.agent.test_loop import answer, by_name, make_agent

WARNED = "[Corral guard] {} (incident {}). Change your approach or stop."


class WarningGateway:
    """Answers turn N with ``turns[N]`` and the warning header lines ``warnings[N]``."""

    def __init__(self, turns: list[dict[str, Any]], warnings: dict[int, list[str]]) -> None:
        self.turns = turns
        self.warnings = warnings
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        headers = [(GUARD_WARNING_HEADER, w) for w in self.warnings.get(turn, [])]
        return httpx.Response(200, headers=headers, json=self.turns[turn])


def guard_messages(body: dict[str, Any]) -> list[str]:
    return [
        m["content"]
        for m in body["messages"]
        if m["role"] == "user" and m["content"].startswith("[Corral guard]")
    ]


def test_each_incidents_warning_is_shown_once_after_the_tool_results(tmp_path: Path) -> None:
    """inc_1 warns on turns 0 and 1, inc_2 joins on turn 1: the model is told of inc_1 after
    turn 0's tool result and of inc_2 after turn 1's, never twice; each is logged and is an
    event on the agent span."""
    repeat: tuple[str, dict[str, Any]] = ("list_files", {})
    gateway = WarningGateway(
        [answer(0, None, repeat), answer(1, None, repeat), answer(2, "Stopping.")],
        {
            0: ["inc_1: the same tool call returned the same result 4 times"],
            1: [
                "inc_1: the same tool call returned the same result 4 times",
                "inc_2: tokens rise while the diff has not changed for 5 turns",
            ],
        },
    )
    agent, exported = make_agent(tmp_path, gateway)
    logged: list[str] = []
    agent.log = logged.append
    outcome = agent.run("Fix the bug")

    assert (outcome.status, outcome.turns) == ("completed", 3)
    first = WARNED.format("the same tool call returned the same result 4 times", "inc_1")
    second = WARNED.format("tokens rise while the diff has not changed for 5 turns", "inc_2")
    _, after_turn_0, after_turn_1 = gateway.bodies
    roles = [m["role"] for m in after_turn_0["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert guard_messages(after_turn_0) == [first]
    assert guard_messages(after_turn_1) == [first, second]
    assert after_turn_1["messages"][-2]["role"] == "tool"
    assert [line for line in logged if "Corral guard" in line] == [
        f"[turn 1] {first}",
        f"[turn 2] {second}",
    ]
    (root,) = by_name(exported.get_finished_spans())["invoke_agent corral-agent"]
    events = [(e.name, dict(e.attributes or {})) for e in root.events]
    assert events == [
        (
            "corral.guard.warning",
            {
                "corral.guard.incident": "inc_1",
                "corral.guard.message": "the same tool call returned the same result 4 times",
            },
        ),
        (
            "corral.guard.warning",
            {
                "corral.guard.incident": "inc_2",
                "corral.guard.message": "tokens rise while the diff has not changed for 5 turns",
            },
        ),
    ]


def test_without_a_warning_the_conversation_is_unchanged(tmp_path: Path) -> None:
    """No header: no guard message, no event, and the client's warnings are empty."""
    gateway = WarningGateway([answer(0, None, ("list_files", {})), answer(1, "Done.")], {})
    agent, exported = make_agent(tmp_path, gateway)
    assert agent.run("Look").status == "completed"
    assert [guard_messages(b) for b in gateway.bodies] == [[], []]
    assert agent.client.warnings == ()
    (root,) = by_name(exported.get_finished_spans())["invoke_agent corral-agent"]
    assert list(root.events) == []


def test_a_warning_on_the_final_answer_is_recorded(tmp_path: Path) -> None:
    """A warning on the answer that ends the run has no next turn to reach the model: it is
    still logged and put on the span."""
    gateway = WarningGateway([answer(0, "Done.")], {0: ["inc_9: spend far above the baseline"]})
    agent, exported = make_agent(tmp_path, gateway)
    logged: list[str] = []
    agent.log = logged.append
    assert agent.run("Summarise").status == "completed"
    assert logged == ["[turn 1] " + WARNED.format("spend far above the baseline", "inc_9")]
    (root,) = by_name(exported.get_finished_spans())["invoke_agent corral-agent"]
    assert [e.name for e in root.events] == ["corral.guard.warning"]


def test_the_client_keeps_the_last_answers_warnings() -> None:
    """``chat`` still returns the parsed body; ``warnings`` holds its answer's warnings and is
    emptied by an answer without any."""
    replies = [
        httpx.Response(
            200, headers=[(GUARD_WARNING_HEADER, "inc_3: an error storm")], json=answer(0, "a")
        ),
        httpx.Response(200, json=answer(1, "b")),
    ]
    http = httpx.Client(transport=httpx.MockTransport(lambda r: replies.pop(0)))
    client = ModelClient("http://gateway.test/v1", "k", http)
    assert client.chat({}, {})["id"] == "chatcmpl-0"
    assert client.warnings == (GuardWarning("inc_3", "an error storm"),)
    assert client.chat({}, {})["id"] == "chatcmpl-1"
    assert not client.warnings


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["inc_1: stop looping"], [GuardWarning("inc_1", "stop looping")]),
        (["inc_1: a: b"], [GuardWarning("inc_1", "a: b")]),
        (["no incident named"], [GuardWarning("", "no incident named")]),
        (["the reason: it loops"], [GuardWarning("", "the reason: it loops")]),
        (["inc_1:   "], []),
        (["inc_1: " + "x" * 2000], [GuardWarning("inc_1", "x" * 500)]),
    ],
)
def test_warning_header_values_are_parsed(lines: list[str], expected: list[GuardWarning]) -> None:
    """``<incident>: <message>``; a value without an incident id is all message; blank
    messages are skipped and long ones cut."""
    response = httpx.Response(200, headers=[(GUARD_WARNING_HEADER, v) for v in lines])
    assert list(guard_warnings(response)) == expected
