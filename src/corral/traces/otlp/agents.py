"""OTLP log records → span rows: the telemetry events of Claude Code, Codex CLI and Gemini CLI.

Coding agents report what they do as log records ("events"), not spans. Each
record becomes at most one row; the kind depends on the agent and the event
(see the package docstring). Ids are derived, not random, so a client that
re-sends a payload produces the same rows, which the store's ``ON CONFLICT DO
NOTHING`` on ``span_id`` then ignores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.traces.otlp.decode import Decoded, LogIn, Resource
from corral.traces.otlp.mapping import (
    CONTENT_KEYS,
    Context,
    Identity,
    as_int,
    body_text,
    cap_values,
    context,
    cut,
    derived_id,
    move_content,
    new_row,
)

AGENTS = ("claude_code", "codex", "gemini_cli")
_SERVICE_AGENTS = {"claude-code": "claude_code", "gemini-cli": "gemini_cli"}
_SESSION_KEYS = ("session.id", "conversation.id", "gen_ai.conversation.id")
_PROMPT_KEYS = ("prompt.id", "prompt_id")


@dataclass(slots=True)
class Event:
    """One log record, resolved: which agent, which event, when, in which session."""

    record: LogIn
    agent: str | None
    name: str  # the full event name, e.g. ``claude_code.api_request``
    short: str  # without the agent prefix, e.g. ``api_request``
    time_ns: int
    session: str | None

    @property
    def attrs(self) -> dict[str, Any]:
        return self.record.attributes


@dataclass(slots=True)
class _Payload:
    """State across the records of one payload; never kept across payloads, so that ids
    depend on the payload alone."""

    identity: Identity
    seen: dict[tuple[Any, ...], int] = field(default_factory=dict)
    # Codex: the turn (a user prompt's trace id) each session is in, and the traces that are turns
    codex_turns: set[str] = field(default_factory=set)
    codex_turn: dict[str | None, str] = field(default_factory=dict)
    # Codex: when the last API request of each session started (its answer has no duration)
    codex_request_start: dict[str | None, int] = field(default_factory=dict)


Handler = Callable[[Event, dict[str, Any], _Payload], bool]


def map_logs(decoded: Decoded, identity: Identity) -> list[dict[str, Any]]:
    """The rows of every record in ``decoded``; records without any time are rejected there."""
    rows: list[dict[str, Any]] = []
    state = _Payload(identity)
    for resource, records in decoded.groups:
        ctx = context(identity, resource)
        events = []
        for record in records:
            event = _resolve(record, ctx, resource)
            if event is None:
                decoded.reject(
                    "a log record has no time (timeUnixNano, observed time or event.timestamp)"
                )
            else:
                events.append(event)
        _index_codex_turns(events, state)
        for event in events:
            row = _map_event(event, ctx, state)
            if row is not None:
                rows.append(row)
    return rows


def _resolve(record: LogIn, ctx: Context, resource: Resource) -> Event | None:
    time_ns = record.time_ns or record.observed_ns or _timestamp(record.attributes)
    if not time_ns:
        return None
    name = event_name(record)
    agent, short = _agent_of(name, ctx.service)
    session = _first_str(record.attributes, _SESSION_KEYS) or _first_str(
        resource.attributes, _SESSION_KEYS
    )
    return Event(record, agent, name, short, time_ns, session)


def event_name(record: LogIn) -> str:
    """The record's event name: ``event.name``, the ``event_name`` field, or the body.

    Claude Code puts the bare name in ``event.name`` (``api_request``) and the
    full one in the body (``claude_code.api_request``): the full one wins. Codex's
    ``event_name`` field holds a source location, so it counts only without spaces.
    """
    body = record.body if isinstance(record.body, str) and _is_name(record.body) else ""
    attr = record.attributes.get("event.name")
    if isinstance(attr, str) and attr:
        if "." not in attr and body.endswith("." + attr):
            return body
        return attr
    if record.event_name and _is_name(record.event_name):
        return record.event_name
    return body


def _is_name(text: str) -> bool:
    return 0 < len(text) <= 200 and " " not in text and "\n" not in text


def _agent_of(name: str, service: str) -> tuple[str | None, str]:
    prefix, _, rest = name.partition(".")
    if prefix in AGENTS and rest:
        return prefix, rest
    agent = _SERVICE_AGENTS.get(service) or ("codex" if service.startswith("codex") else None)
    return agent, name


def _timestamp(attrs: dict[str, Any]) -> int:
    """``event.timestamp`` (ISO 8601, as Claude Code and Codex send it) in ns, or 0."""
    value = attrs.get("event.timestamp")
    if not isinstance(value, str):
        return 0
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        return 0
    return int(moment.timestamp() * 1_000_000) * 1000


def _first_str(attrs: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _index_codex_turns(events: list[Event], state: _Payload) -> None:
    # A Codex turn is the trace its user prompt was logged in; other records of that turn
    # carry the same trace id, or none (SSE events), in which case they follow the last prompt.
    for event in events:
        if event.agent == "codex" and event.short == "user_prompt" and event.record.trace_id:
            state.codex_turns.add(event.record.trace_id)


# --- one record -------------------------------------------------------------------------------


def _map_event(event: Event, ctx: Context, state: _Payload) -> dict[str, Any] | None:
    row = new_row(ctx)
    row.update(
        kind="event",
        name=cut(event.name or "log", "name"),
        start_ns=event.time_ns,
        end_ns=event.time_ns,
        status="ok",
    )
    handler = _HANDLERS.get((event.agent, event.short), _generic)
    if not handler(event, row, state):
        return None
    _place(event, row, state, ctx)
    attrs = dict(event.attrs)
    _move_bodies(event, row, attrs)
    record = event.record
    if record.trace_id:
        attrs["otel.trace_id"] = record.trace_id
        if record.span_id:
            attrs["otel.span_id"] = record.span_id
    if record.body is not None and record.body != event.name:
        attrs["body"] = record.body
    if record.severity_text:
        attrs["severity"] = record.severity_text
    row["attributes"] = _capped(attrs, ctx)
    return row


def _capped(attrs: dict[str, Any], ctx: Context) -> dict[str, Any]:
    capped = cap_values(attrs)
    capped["resource"] = ctx.resource_facts
    return capped


def _place(event: Event, row: dict[str, Any], state: _Payload, ctx: Context) -> None:
    """Trace, parent and span id: derived from the session, the prompt and the record."""
    # Ids derive from the tenant (org and team) as well: another team reusing a session or
    # prompt id gets ids of its own, never a place in this team's trace.
    tenant = (state.identity.org_id, state.identity.team_id)
    record = event.record
    if event.session and (event.agent or not record.trace_id):
        row["trace_id"] = derived_id(
            16, "session", *tenant, event.agent or row["source"], event.session
        )
        turn = _turn_of(event, state)
        step_id = derived_id(8, "step", *tenant, event.session, turn) if turn else None
    elif record.trace_id:
        row["trace_id"] = record.trace_id
        step_id = record.span_id
    else:
        instance = ctx.resource_facts.get("service.instance.id")
        row["trace_id"] = derived_id(16, "service", *tenant, row["source"], instance)
        step_id = None
    if row["kind"] == "step" and step_id and event.agent:
        row["span_id"] = step_id  # the step others point at: the same id from either side
        return
    row["parent_span_id"] = step_id
    key = (
        row["source"],
        event.session,
        event.time_ns,
        record.observed_ns,
        event.name,
        event.attrs.get("event.sequence"),
        event.attrs.get("event.kind"),
    )
    occurrence = state.seen.get(key, 0)
    state.seen[key] = occurrence + 1
    row["span_id"] = derived_id(8, "log", *tenant, *key, occurrence)


def _turn_of(event: Event, state: _Payload) -> str | None:
    prompt = _first_str(event.attrs, _PROMPT_KEYS)
    if prompt or event.agent != "codex":
        return prompt
    trace_id = event.record.trace_id
    if trace_id in state.codex_turns:
        state.codex_turn[event.session] = trace_id
        return trace_id
    if trace_id is None:
        return state.codex_turn.get(event.session)
    return None


# --- per agent and event ----------------------------------------------------------------------

# An agent's content attributes: moved into the bodies (where the team's body policy and
# redaction apply), never left in attributes. The first present of each list fills the body
# when the event's handler has not.
_REQUEST_KEYS = (
    "prompt",
    "tool_input",
    "tool_parameters",
    "arguments",
    "function_args",
    "request_text",
)
_RESPONSE_KEYS = ("output", "response", "response_text", "tool_result")


def _move_bodies(event: Event, row: dict[str, Any], attrs: dict[str, Any]) -> None:
    if not CONTENT_KEYS.isdisjoint(attrs):
        move_content(row, attrs, row["kind"])
    if event.agent is None:
        return
    for keys, body in ((_REQUEST_KEYS, "_request_body"), (_RESPONSE_KEYS, "_response_body")):
        for key in keys:
            value = attrs.pop(key, None)
            if value is not None and body not in row:
                row[body] = body_text(value)


def _generic(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    return True


def _step(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    row["kind"] = "step"
    row["name"] = "user_prompt"
    return True


def _start_from_duration(event: Event, row: dict[str, Any]) -> None:
    duration_ms = as_int(event.attrs.get("duration_ms"))
    row["start_ns"] = max(event.time_ns - duration_ms * 1_000_000, 0)


def _llm(row: dict[str, Any], model: Any, provider: str | None) -> None:
    row["kind"] = "llm_request"
    row["operation"] = "chat"
    row["model_requested"] = cut(model, "model_requested")
    row["model_served"] = row["model_requested"]
    row["provider"] = provider
    row["name"] = cut(f"chat {model}" if model else "chat", "name")


def _tool(event: Event, row: dict[str, Any], name: Any) -> None:
    row["kind"] = "tool"
    row["operation"] = "execute_tool"
    row["name"] = cut(f"execute_tool {name}" if name else "execute_tool", "name")
    _start_from_duration(event, row)
    success = event.attrs.get("success")
    if success is False or (isinstance(success, str) and success.lower() == "false"):
        row["status"] = "error"
        row["error_class"] = cut(event.attrs.get("error_type") or "tool_error", "error_class")
        error = event.attrs.get("error")
        row["error_message"] = error if isinstance(error, str) else None


def _reported_cost(row: dict[str, Any], attrs: dict[str, Any]) -> None:
    usd = attrs.get("cost_usd")
    if isinstance(usd, (int, float)) and not isinstance(usd, bool):
        row["cost_nusd"] = max(round(usd * 1e9), 0)
        row["cost_source"] = "reported"
    elif "cost_usd_micros" in attrs:
        row["cost_nusd"] = as_int(attrs["cost_usd_micros"]) * 1000
        row["cost_source"] = "reported"


def _http_error(row: dict[str, Any], attrs: dict[str, Any], error_class: str) -> None:
    row["status"] = "error"
    kind = attrs.get("error_type") or attrs.get("error.type") or error_class
    row["error_class"] = cut(kind, "error_class")
    error = attrs.get("error") or attrs.get("error.message")
    row["error_message"] = error if isinstance(error, str) else None
    status = as_int(attrs.get("status_code") or attrs.get("http.response.status_code"))
    row["http_status"] = status or None


# Claude Code: https://code.claude.com/docs/en/monitoring-usage (events)


def _claude_api_request(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    attrs = event.attrs
    _llm(row, attrs.get("model"), "anthropic")
    _start_from_duration(event, row)
    # Claude Code reports Anthropic usage: input_tokens already excludes cache reads and writes.
    row["input_tokens"] = as_int(attrs.get("input_tokens"))
    row["cached_input_tokens"] = as_int(attrs.get("cache_read_tokens"))
    row["cache_write_tokens"] = as_int(attrs.get("cache_creation_tokens"))
    row["output_tokens"] = as_int(attrs.get("output_tokens"))
    _reported_cost(row, attrs)
    message_id = attrs.get("message_id") or attrs.get("request_id")
    if isinstance(message_id, str) and message_id.startswith("msg_"):
        row["response_id"] = cut(message_id, "response_id")
    return True


def _claude_api_error(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _llm(row, event.attrs.get("model"), "anthropic")
    _start_from_duration(event, row)
    _http_error(row, event.attrs, "api_error")
    return True


def _claude_tool_result(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _tool(event, row, event.attrs.get("tool_name"))
    return True


# Codex CLI: the codex_otel events (codex.user_prompt, codex.sse_event, codex.tool_result, …)


def _codex_sse_event(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    attrs = event.attrs
    if attrs.get("event.kind") != "response.completed" or "input_token_count" not in attrs:
        return False  # one record per streamed delta: progress, not a fact worth a row
    _llm(row, attrs.get("model"), None)
    row["start_ns"] = min(
        state.codex_request_start.pop(event.session, event.time_ns), event.time_ns
    )
    cached = as_int(attrs.get("cached_token_count"))
    cache_write = as_int(attrs.get("cache_write_token_count"))
    reasoning = as_int(attrs.get("reasoning_token_count"))
    # OpenAI usage: input includes cached tokens, output includes reasoning.
    row["input_tokens"] = max(as_int(attrs.get("input_token_count")) - cached - cache_write, 0)
    row["cached_input_tokens"] = cached
    row["cache_write_tokens"] = cache_write
    row["output_tokens"] = max(as_int(attrs.get("output_token_count")) - reasoning, 0)
    row["reasoning_tokens"] = reasoning
    ttft = attrs.get("ttft_ms")
    if isinstance(ttft, (int, float)) and not isinstance(ttft, bool):
        row["ttft_ms"] = float(ttft)
    return True


def _codex_api_request(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _start_from_duration(event, row)
    state.codex_request_start[event.session] = row["start_ns"]
    attrs = event.attrs
    status = as_int(attrs.get("http.response.status_code"))
    if status >= 400 or attrs.get("error.message"):
        _http_error(row, attrs, "api_error")
    return True


def _codex_tool_result(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _tool(event, row, event.attrs.get("tool_name"))
    return True


# Gemini CLI: gemini_cli.* events (docs/telemetry.md of google-gemini/gemini-cli)


def _gemini_api_response(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    attrs = event.attrs
    _llm(row, attrs.get("model"), "gcp.gemini")
    _start_from_duration(event, row)
    cached = as_int(attrs.get("cached_content_token_count"))
    # Gemini's prompt count includes cached content; thoughts are counted beside the output.
    row["input_tokens"] = max(as_int(attrs.get("input_token_count")) - cached, 0)
    row["cached_input_tokens"] = cached
    row["output_tokens"] = as_int(attrs.get("output_token_count"))
    row["reasoning_tokens"] = as_int(attrs.get("thoughts_token_count"))
    row["http_status"] = as_int(attrs.get("status_code")) or None
    return True


def _gemini_api_error(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _llm(row, event.attrs.get("model"), "gcp.gemini")
    _start_from_duration(event, row)
    _http_error(row, event.attrs, "api_error")
    return True


def _gemini_tool_call(event: Event, row: dict[str, Any], state: _Payload) -> bool:
    _tool(event, row, event.attrs.get("function_name"))
    return True


_HANDLERS: dict[tuple[str | None, str], Handler] = {
    ("claude_code", "user_prompt"): _step,
    ("claude_code", "api_request"): _claude_api_request,
    ("claude_code", "api_error"): _claude_api_error,
    ("claude_code", "tool_result"): _claude_tool_result,
    ("codex", "user_prompt"): _step,
    ("codex", "sse_event"): _codex_sse_event,
    ("codex", "api_request"): _codex_api_request,
    ("codex", "tool_result"): _codex_tool_result,
    ("gemini_cli", "user_prompt"): _step,
    ("gemini_cli", "api_response"): _gemini_api_response,
    ("gemini_cli", "api_error"): _gemini_api_error,
    ("gemini_cli", "tool_call"): _gemini_tool_call,
}
