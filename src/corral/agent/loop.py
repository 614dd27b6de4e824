"""The agent loop: ask the model, run the tools it asks for, repeat until it answers.

Each turn is one model call with the whole conversation so far. The answer
either asks for tool calls, which are run in order and appended as ``tool``
messages, or has none, and then its text is the final summary. The loop also
ends at the turn limit, or when the gateway refuses a call.

A Corral guard that sees the run going round in circles warns it through the
gateway (``ModelClient.warnings``); each incident's warning is told to the model
once, as a user message after the turn's tool results, logged, and recorded as a
``corral.guard.warning`` event on the agent span.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.trace import Span, Status, StatusCode

from corral.agent.errors import AgentError
from corral.agent.model import GuardWarning, ModelClient
from corral.agent.telemetry import Telemetry, chat_done, tool_done
from corral.agent.tools import Toolbox, tool_specs

SYSTEM_PROMPT = """\
You are a coding agent. You work in the directory {workdir}; every path is relative to it.
You act only through your tools: list_files, read_file, search, write_file, edit_file, and run
(a shell command in that directory). Look before you change anything, make the smallest change
that does the task, and run the tests or commands that show it works. When you are done, answer
without calling a tool: that answer is your final report, so say what you changed and how you
checked it."""

GUARD_NOTICE = "[Corral guard] {message} (incident {incident}). Change your approach or stop."

Ending = Literal["completed", "turn_limit", "error"]
EXIT_CODES: dict[Ending, int] = {"completed": 0, "turn_limit": 3, "error": 1}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: its status, the model's last text, turns used, the error if any."""

    status: Ending
    summary: str
    turns: int
    trace_id: str
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass
class Agent:
    """One conversation: the model, the tools, the spans, and how to log progress."""

    model: str
    client: ModelClient
    toolbox: Toolbox
    telemetry: Telemetry
    max_turns: int = 30
    log: Callable[[str], None] = lambda line: None

    def run(self, task: str, images: Sequence[dict[str, Any]] = ()) -> Outcome:
        """Work on ``task`` until the model answers without tool calls, or the loop must stop.
        ``images``: content parts shown with the task (screenshots handed to a reviewer)."""
        system = SYSTEM_PROMPT.format(workdir=self.toolbox.workdir)
        opening: str | list[dict[str, Any]] = task
        if images:
            opening = [{"type": "text", "text": task}, *images]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": opening},
        ]
        summary, turns = "", 0
        shown: set[str] = set()  # the incidents whose warning the model has seen
        with self.telemetry.agent_span(self.model) as span:
            trace_id = self.telemetry.trace_id(span)
            try:
                while turns < self.max_turns:
                    answer = self.ask(messages)
                    turns += 1  # a turn counts once answered
                    messages.append(answer)
                    summary = text_of(answer) or summary
                    notices = self.heed_warnings(span, shown, turns)
                    if not answer.get("tool_calls"):
                        return finish(span, Outcome("completed", summary, turns, trace_id))
                    for call in answer["tool_calls"]:
                        messages.append(self.use_tool(call, turns))
                    # After the tool results: a tool call must be answered before anything else.
                    messages.extend(notices)
                return finish(span, Outcome("turn_limit", summary, turns, trace_id))
            except KeyboardInterrupt:  # Ctrl-C: stop as on SIGTERM, with a report
                stopped = Outcome("error", summary, turns, trace_id, "interrupted by SIGINT")
                return finish(span, stopped)
            except AgentError as exc:
                return finish(span, Outcome("error", summary, turns, trace_id, exc.message))

    def ask(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One model call under its ``chat`` span; the assistant message to append."""
        body = {"model": self.model, "messages": messages, "tools": tool_specs()}
        with self.telemetry.chat_span(self.model, self.client.url) as (span, headers):
            answer = self.client.chat(body, headers)
            chat_done(span, answer)
        message = answer["choices"][0]["message"]
        kept = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            kept["tool_calls"] = message["tool_calls"]
        return kept

    def heed_warnings(self, span: Span, shown: set[str], turn: int) -> list[dict[str, Any]]:
        """The user messages telling the model of the last answer's guard warnings that it has
        not been told of (one per incident, ever); each is logged and put on ``span``."""
        notices = []
        for warning in self.client.warnings:
            seen = warning.incident or warning.message  # no incident id: once per message
            if seen in shown:
                continue
            shown.add(seen)
            text = notice(warning)
            self.log(f"[turn {turn}] {text}")
            span.add_event(
                "corral.guard.warning",
                {
                    "corral.guard.incident": warning.incident,
                    "corral.guard.message": warning.message,
                },
            )
            notices.append({"role": "user", "content": text})
        return notices

    def use_tool(self, call: dict[str, Any], turn: int) -> dict[str, Any]:
        """Run one tool call under its ``execute_tool`` span; the ``tool`` message to append."""
        function = call.get("function") or {}
        name, arguments = str(function.get("name")), str(function.get("arguments") or "{}")
        call_id = str(call.get("id", ""))
        self.log(f"[turn {turn}] {name}: {preview(arguments)}")
        with self.telemetry.tool_span(name, call_id, arguments) as span:
            result = self.toolbox.call(name, arguments)
            tool_done(span, result.text, result.ok)
        return {"role": "tool", "tool_call_id": call_id, "content": result.text}


def text_of(message: dict[str, Any]) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def notice(warning: GuardWarning) -> str:
    """What the model is told of a guard's warning."""
    if not warning.incident:
        return f"[Corral guard] {warning.message}. Change your approach or stop."
    return GUARD_NOTICE.format(message=warning.message, incident=warning.incident)


def finish(span: Span, outcome: Outcome) -> Outcome:
    """Record the outcome on the agent span and return it."""
    span.set_attribute("corral.agent.outcome", outcome.status)
    span.set_attribute("corral.agent.turns", outcome.turns)
    if outcome.error:
        span.set_status(Status(StatusCode.ERROR, outcome.error))
    return outcome


def preview(arguments: str, limit: int = 100) -> str:
    """The call's first argument (a path, a pattern, a command) as one short line, for the
    progress log."""
    try:
        values = json.loads(arguments)
    except json.JSONDecodeError:
        values = arguments
    if isinstance(values, dict):
        values = next(iter(values.values()), "")
    text = " ".join(str(values).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
