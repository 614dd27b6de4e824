"""OTLP spans → Corral span rows (GenAI semantic conventions), and the helpers rows share.

Every row starts from ``SPAN_DEFAULTS``; identity columns come from the
authenticating key (``Identity``), never from the payload. See the package
docstring for the rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from corral.traces.otlp.decode import LONG_STRING, EventIn, Resource, SpanIn
from corral.traces.spans import CORRAL_SOURCES, SPAN_DEFAULTS, SPAN_KINDS

MAX_ATTRIBUTE_CHARS = LONG_STRING
MAX_EVENTS = 16
MAX_EVENT_ATTRIBUTES = 8
MAX_EVENT_VALUE_CHARS = 256

# Column widths of corral.store.schema.spans: values are cut to fit (Postgres enforces them).
_WIDTH = {
    "name": 200,
    "operation": 32,
    "model_requested": 200,
    "model_served": 200,
    "provider": 100,
    "error_class": 40,
    "finish_reason": 40,
    "response_id": 200,
    "source": 64,
    "run_id": 40,
}

# Resource attributes worth keeping on every row (plus every ``corral.*`` key).
_RESOURCE_FACTS = (
    "service.name",
    "service.version",
    "service.instance.id",
    "service.namespace",
    "deployment.environment",
    "deployment.environment.name",
    "session.id",
    "conversation.id",
    "gen_ai.conversation.id",
    "host.name",
)

_OPERATION_KINDS = {
    "chat": "llm_request",
    "text_completion": "llm_request",
    "generate_content": "llm_request",
    "embeddings": "llm_request",
    "invoke_agent": "agent",
    "create_agent": "agent",
    "execute_tool": "tool",
}

# Content attributes: moved out of ``attributes`` into the transient body keys.
_REQUEST_CONTENT = ("gen_ai.system_instructions", "gen_ai.input.messages")
_RESPONSE_CONTENT = ("gen_ai.output.messages",)
_TOOL_REQUEST = "gen_ai.tool.call.arguments"
_TOOL_RESPONSE = "gen_ai.tool.call.result"
CONTENT_KEYS = frozenset((*_REQUEST_CONTENT, *_RESPONSE_CONTENT, _TOOL_REQUEST, _TOOL_RESPONSE))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent the payload, from the authenticating key; NEVER taken from the payload."""

    org_id: str
    team_id: str | None
    user_id: str | None
    key_id: str
    run_id: str | None  # set when the key is a run's key
    owner_id: str | None


@dataclass(slots=True)
class Context:
    """What every row of one resource group shares: identity columns, source, resource facts."""

    columns: dict[str, Any]
    resource_facts: dict[str, Any]
    service: str
    base: dict[str, Any]  # SPAN_DEFAULTS with the columns above filled


def context(identity: Identity, resource: Resource) -> Context:
    """The shared columns of a resource group.

    ``run_id`` is the key's run and nothing else: a resource's ``corral.run_id`` is a claim
    anyone can write (it is kept among the resource attributes), while a run's own key is
    minted for that run alone. ``source`` is the resource's ``service.name`` (``otlp`` when
    absent; ``otlp:gateway`` for one that claims a source only Corral writes).
    """
    attrs = resource.attributes
    service = attrs.get("service.name")
    service = service if isinstance(service, str) and service else "otlp"
    if service in CORRAL_SOURCES:  # an agent calling itself "gateway" reports, never meters
        service = f"otlp:{service}"
    run_id = identity.run_id
    facts = {key: attrs[key] for key in _RESOURCE_FACTS if key in attrs}
    facts.update((key, value) for key, value in attrs.items() if key.startswith("corral."))
    if resource.scope_name:
        facts["otel.scope.name"] = resource.scope_name
    columns = {
        "org_id": identity.org_id,
        "team_id": identity.team_id,
        "user_id": identity.user_id,
        "key_id": identity.key_id,
        "run_id": cut(run_id, "run_id"),
        "owner_id": identity.owner_id,
        "source": cut(service, "source"),
    }
    return Context(columns, cap_values(facts), service, {**SPAN_DEFAULTS, **columns})


def new_row(ctx: Context) -> dict[str, Any]:
    return ctx.base.copy()


def cut(value: Any, column: str) -> str | None:
    """``value`` as a string that fits ``column``, or None."""
    if value is None:
        return None
    width = _WIDTH[column]
    if type(value) is str and len(value) <= width:
        return value
    text = value if isinstance(value, str) else str(value)
    return text[:width]


def derived_id(size: int, *parts: object) -> str:
    """A deterministic hex id of ``size`` bytes from ``parts`` (never all zero)."""
    key = "\x1f".join("" if part is None else str(part) for part in parts)
    digest = hashlib.blake2b(key.encode(), digest_size=size).hexdigest()
    return digest if digest.strip("0") else "0" * (2 * size - 1) + "1"


def cap_string(value: str, limit: int = MAX_ATTRIBUTE_CHARS) -> str:
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[cut {len(value) - limit} chars]"


def cap_values(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with strings longer than 4 KiB cut (in place: the dict is freshly decoded)."""
    for key, value in attrs.items():
        if isinstance(value, str):
            if len(value) > MAX_ATTRIBUTE_CHARS:
                attrs[key] = cap_string(value)
        elif isinstance(value, (list, dict)):
            attrs[key] = _cap_nested(value)
    return attrs


def _cap_nested(value: Any) -> Any:
    if isinstance(value, str):
        return cap_string(value)
    if isinstance(value, list):
        return [_cap_nested(item) for item in value]
    if isinstance(value, dict):
        return {key: _cap_nested(item) for key, item in value.items()}
    return value


def body_text(value: Any) -> str | None:
    """Body text for the ``_request_body``/``_response_body`` keys: strings as sent, structures
    as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def as_int(value: Any) -> int:
    """A non-negative token count from an attribute value (int, float or numeric string)."""
    if type(value) is int:
        return value if value > 0 else 0
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return max(int(float(value)), 0)
    except (TypeError, ValueError):
        return 0


# --- spans ------------------------------------------------------------------------------------


def operation_of(span: SpanIn) -> str | None:
    """``gen_ai.operation.name``, else the first word of the span name when it is a known one."""
    operation = span.attributes.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation:
        return operation
    head = span.name.split(" ", 1)[0]
    return head if head in _OPERATION_KINDS else None


def map_span(span: SpanIn, ctx: Context) -> dict[str, Any]:
    """One OTLP span as a span row, with ``_request_body``/``_response_body`` when it carries
    content."""
    attrs = span.attributes
    operation = operation_of(span)
    kind = _OPERATION_KINDS.get(operation, "span") if operation else "span"
    exported = attrs.get("corral.kind")  # another Corral's export: its kinds are finer
    if exported in SPAN_KINDS and exported != kind:
        kind = exported
    row = ctx.base.copy()
    start_ns, end_ns = span.start_ns, span.end_ns
    # Assigned one by one: this function runs for every span ingested.
    row["span_id"] = span.span_id
    row["trace_id"] = span.trace_id
    row["parent_span_id"] = span.parent_span_id
    row["kind"] = kind
    row["name"] = cut(span.name or operation or "span", "name")
    row["operation"] = cut(operation, "operation")
    row["start_ns"] = start_ns or end_ns
    row["end_ns"] = end_ns if end_ns > start_ns else start_ns
    row["status"] = "ok"
    if span.status_code == 2:
        row["status"] = "error"
        row["error_class"] = cut(attrs.get("error.type") or "error", "error_class")
        row["error_message"] = span.status_message or None
    if kind == "llm_request":
        _genai_columns(row, attrs)
        _usage_columns(row, attrs)
        duplicate = attrs.get("corral.duplicate_of")
        if isinstance(duplicate, str) and len(duplicate) == 16:
            row["duplicate_of"] = duplicate
    elif "gen_ai.request.model" in attrs:
        _genai_columns(row, attrs)
    if kind == "tool":
        tool = attrs.get("gen_ai.tool.name")
        if isinstance(tool, str) and tool:
            row["name"] = cut(f"execute_tool {tool}", "name")
    if not CONTENT_KEYS.isdisjoint(attrs):
        move_content(row, attrs, kind)
    row["attributes"] = _span_attributes(span, ctx)
    return row


def _genai_columns(row: dict[str, Any], attrs: dict[str, Any]) -> None:
    row["model_requested"] = cut(attrs.get("gen_ai.request.model"), "model_requested")
    row["model_served"] = cut(attrs.get("gen_ai.response.model"), "model_served")
    provider = attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system")
    row["provider"] = cut(provider, "provider")
    row["response_id"] = cut(attrs.get("gen_ai.response.id"), "response_id")
    reasons = attrs.get("gen_ai.response.finish_reasons")
    if reasons:
        reason = reasons[0] if isinstance(reasons, list) else reasons
        row["finish_reason"] = cut(reason, "finish_reason")


def _usage_columns(row: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Semconv usage (input includes cache reads and writes, output includes reasoning) split
    into Corral's non-overlapping columns."""
    cache_read = as_int(attrs.get("gen_ai.usage.cache_read.input_tokens"))
    cache_write = as_int(
        attrs.get("gen_ai.usage.cache_creation.input_tokens")
        or attrs.get("gen_ai.usage.cache_write.input_tokens")
    )
    reasoning = as_int(attrs.get("gen_ai.usage.reasoning.output_tokens"))
    row["input_tokens"] = max(
        as_int(attrs.get("gen_ai.usage.input_tokens")) - cache_read - cache_write, 0
    )
    row["cached_input_tokens"] = cache_read
    row["cache_write_tokens"] = cache_write
    row["reasoning_tokens"] = reasoning
    row["output_tokens"] = max(as_int(attrs.get("gen_ai.usage.output_tokens")) - reasoning, 0)


def move_content(row: dict[str, Any], attrs: dict[str, Any], kind: str) -> None:
    """Move GenAI content attributes out of ``attrs`` (changed in place) into the row's bodies."""
    request = [key for key in _REQUEST_CONTENT if key in attrs]
    if len(request) == 1:
        row["_request_body"] = body_text(attrs.pop(request[0]))
    elif request:  # system instructions and messages: one JSON document keyed by attribute
        row["_request_body"] = body_text({key: _parsed(attrs.pop(key)) for key in request})
    if "gen_ai.output.messages" in attrs:
        row["_response_body"] = body_text(attrs.pop("gen_ai.output.messages"))
    if _TOOL_REQUEST in attrs and (kind == "tool" or "_request_body" not in row):
        row["_request_body"] = body_text(attrs.pop(_TOOL_REQUEST))
    if _TOOL_RESPONSE in attrs and (kind == "tool" or "_response_body" not in row):
        row["_response_body"] = body_text(attrs.pop(_TOOL_RESPONSE))
    for key in CONTENT_KEYS.intersection(attrs):
        del attrs[key]  # content never stays in attributes, even when a body already took a key


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _span_attributes(span: SpanIn, ctx: Context) -> dict[str, Any]:
    attrs = cap_values(span.attributes) if span.long_values else span.attributes
    attrs["resource"] = ctx.resource_facts
    if span.events:
        attrs["events"] = [_event(event) for event in span.events[:MAX_EVENTS]]
        if len(span.events) > MAX_EVENTS:
            attrs["events_dropped"] = len(span.events) - MAX_EVENTS
    return attrs


def _event(event: EventIn) -> dict[str, Any]:
    compact: dict[str, Any] = {"name": event.name, "time_ns": event.time_ns}
    if event.attributes:
        items = list(event.attributes.items())[:MAX_EVENT_ATTRIBUTES]
        compact["attributes"] = {
            key: cap_string(value, MAX_EVENT_VALUE_CHARS) if isinstance(value, str) else value
            for key, value in items
        }
    return compact
