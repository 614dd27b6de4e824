"""The loop, its spans and its gateway client, against an in-memory gateway (httpx.MockTransport).

The transport answers like a scripted Chat Completions endpoint and keeps the
requests it saw; spans go to the SDK's in-memory exporter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from corral.agent import Agent, GatewayError, ModelClient, Telemetry, Toolbox
from corral.agent.telemetry import exporter_from, resource_from

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


def answer(turn: int, content: str | None, *calls: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A Chat Completions answer with text and/or tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{turn}_{n}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for n, (name, args) in enumerate(calls)
        ]
    finish = "tool_calls" if calls else "stop"
    return {
        "id": f"chatcmpl-{turn}",
        "model": "sim-standard-served",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


class Gateway:
    """A scripted Chat Completions endpoint: the answer for turn N is ``turns[N]``."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        self.turns = turns
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return httpx.Response(200, json=self.turns[turn])

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def make_agent(
    tmp_path: Path,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    parent: str | None = None,
    max_turns: int = 30,
) -> tuple[Agent, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    environ = {"TRACEPARENT": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"} if parent else {}
    telemetry = Telemetry(provider, Telemetry.from_environ(environ, "k").parent)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = ModelClient("http://gateway.test/v1", "sk-test", http, sleep=lambda s: None)
    agent = Agent("sim-standard", client, Toolbox(tmp_path), telemetry, max_turns=max_turns)
    return agent, exported


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def test_loop_runs_tools_and_returns_the_final_text(tmp_path: Path) -> None:
    """Tool calls run in order, each answered by a tool message; a plain answer ends the run."""
    (tmp_path / "a.txt").write_text("alpha\n")
    gateway = Gateway(
        [
            answer(
                0, "Reading.", ("read_file", {"path": "a.txt"}), ("read_file", {"path": "../x"})
            ),
            answer(1, "All done."),
        ]
    )
    agent, _ = make_agent(tmp_path, gateway)
    outcome = agent.run("Read a.txt")
    assert (outcome.status, outcome.summary, outcome.turns, outcome.exit_code) == (
        "completed",
        "All done.",
        2,
        0,
    )
    first, second = gateway.bodies()
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == "Read a.txt"
    assert [t["function"]["name"] for t in first["tools"]] == [
        "list_files",
        "read_file",
        "search",
        "write_file",
        "edit_file",
        "run",
    ]
    tool_messages = second["messages"][3:]
    assert second["messages"][2]["tool_calls"][0]["id"] == "call_0_0"
    assert [(m["role"], m["tool_call_id"]) for m in tool_messages] == [
        ("tool", "call_0_0"),
        ("tool", "call_0_1"),
    ]
    assert tool_messages[0]["content"] == "alpha\n"
    assert tool_messages[1]["content"].startswith("error: '../x' is outside the workdir")
    assert gateway.requests[0].headers["authorization"] == "Bearer sk-test"


def test_turn_limit_stops_a_model_that_keeps_calling_tools(tmp_path: Path) -> None:
    """At the turn limit the run ends with status turn_limit (exit 3) and the last text."""
    gateway = Gateway([answer(n, f"step {n}", ("list_files", {})) for n in range(5)])
    agent, _ = make_agent(tmp_path, gateway, max_turns=3)
    outcome = agent.run("Look around")
    assert (outcome.status, outcome.turns, outcome.summary, outcome.exit_code) == (
        "turn_limit",
        3,
        "step 2",
        3,
    )
    assert len(gateway.requests) == 3


def test_spans_follow_the_genai_conventions_under_traceparent(tmp_path: Path) -> None:
    """invoke_agent is TRACEPARENT's child; chat and execute_tool spans are its children, and
    each model call carries its chat span's traceparent."""
    gateway = Gateway([answer(0, None, ("list_files", {})), answer(1, "Done.")])
    agent, exported = make_agent(tmp_path, gateway, parent=PARENT_SPAN)
    outcome = agent.run("List the files")
    spans = by_name(exported.get_finished_spans())
    (root,) = spans["invoke_agent corral-agent"]
    chats = spans["chat sim-standard"]
    (tool,) = spans["execute_tool list_files"]
    assert format(root.context.trace_id, "032x") == PARENT_TRACE == outcome.trace_id
    assert root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_SPAN
    assert root.attributes is not None
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "corral-agent"
    assert root.attributes["corral.agent.outcome"] == "completed"
    for span in [*chats, tool]:
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
    sent = [r.headers["traceparent"] for r in gateway.requests]
    assert sent == [
        f"00-{PARENT_TRACE}-{format(c.context.span_id, '016x')}-01"
        for c in sorted(chats, key=lambda s: s.start_time or 0)
    ]
    chat = dict(chats[0].attributes or {})
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.request.model"] == "sim-standard"
    assert chat["gen_ai.response.model"] == "sim-standard-served"
    assert chat["gen_ai.usage.input_tokens"] == 120
    assert chat["gen_ai.usage.output_tokens"] == 30
    assert chat["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert chat["server.address"] == "gateway.test"
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.name"] == "list_files"
    assert tool.attributes["gen_ai.tool.call.id"] == "call_0_0"
    assert tool.attributes["gen_ai.tool.call.arguments"] == "{}"
    assert tool.status.status_code == StatusCode.UNSET


def test_a_refused_call_ends_the_run_without_retrying(tmp_path: Path) -> None:
    """A 402 ends the run at once with the gateway's message; the spans say it failed."""
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = {"message": "team payments: daily budget spent", "type": "budget_exceeded"}
        return httpx.Response(402, json={"error": {**error, "code": "budget_exceeded"}})

    agent, exported = make_agent(tmp_path, refuse)
    outcome = agent.run("Anything")
    assert (outcome.status, outcome.exit_code, outcome.turns) == ("error", 1, 0)
    assert outcome.error == "the gateway refused the call: team payments: daily budget spent"
    assert len(calls) == 1
    spans = by_name(exported.get_finished_spans())
    (chat,) = spans["chat sim-standard"]
    (root,) = spans["invoke_agent corral-agent"]
    assert chat.status.status_code == StatusCode.ERROR
    assert chat.attributes is not None
    assert chat.attributes["error.type"] == "budget_exceeded"
    assert root.status.status_code == StatusCode.ERROR


@pytest.mark.parametrize("status", [429, 500, 503])
def test_busy_or_failing_gateway_is_retried(status: int) -> None:
    """429 and 5xx are retried (Retry-After honoured, capped); a later success is returned."""
    answers = [
        httpx.Response(status, headers={"retry-after": "60"}, json={"error": {"message": "x"}}),
        httpx.Response(200, json=answer(0, "ok")),
    ]
    slept: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(lambda r: answers.pop(0)))
    client = ModelClient("http://gateway.test/v1/", "k", http, sleep=slept.append)
    assert client.chat({"model": "m", "messages": []}, {})["id"] == "chatcmpl-0"
    assert slept == [5.0]
    assert client.url == "http://gateway.test/v1/chat/completions"


def test_unreachable_gateway_is_retried_then_reported() -> None:
    """Connection failures are retried twice with backoff, then end in a GatewayError."""
    slept: list[float] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(unreachable))
    client = ModelClient("http://gateway.test/v1", "k", http, sleep=slept.append)
    with pytest.raises(GatewayError) as raised:
        client.chat({"model": "m", "messages": []}, {})
    assert raised.value.message == (
        "could not reach the gateway at http://gateway.test/v1/chat/completions: Connection refused"
    )
    assert slept == [0.5, 1.0]


def test_an_error_body_that_is_not_openai_shaped_is_quoted() -> None:
    """A non-JSON error answer is reported with its text and status."""
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(403, text="nope")))
    client = ModelClient("http://gateway.test/v1", "k", http)
    with pytest.raises(GatewayError) as raised:
        client.chat({}, {})
    assert (raised.value.message, raised.value.status) == (
        "the gateway refused the call: nope",
        403,
    )


def test_resource_and_exporter_come_from_the_environment() -> None:
    """service.name defaults to corral-agent; OTEL_* variables override; no endpoint, no export."""
    assert resource_from({}).attributes["service.name"] == "corral-agent"
    resource = resource_from(
        {"OTEL_RESOURCE_ATTRIBUTES": "corral.run_id=run_1,team=a%2Cb", "OTEL_SERVICE_NAME": "me"}
    )
    assert resource.attributes["service.name"] == "me"
    assert resource.attributes["corral.run_id"] == "run_1"
    assert resource.attributes["team"] == "a,b"
    assert exporter_from({}, "k") is None
    assert exporter_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "k") is not None
