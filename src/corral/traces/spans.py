"""The one span model: runs, steps, tool calls, LLM requests and upstream attempts.

A span row is a plain dict with exactly the columns of ``corral.store.schema.spans``
(built from ``SPAN_DEFAULTS`` so every row of a batch has the same keys), plus
optionally the transient keys in ``BODY_KEYS``: raw bodies the writer redacts,
caps and moves to the blob store before the row is inserted.

Kinds: ``run`` → ``agent`` → ``step`` → ``tool`` / ``llm_request`` → ``attempt``;
``event`` is a point in time an agent reported (a permission decision, a
retry), ``span`` any other span an agent sent. Roll-ups of spend read
``llm_request`` rows, whose tokens and cost are the sum of their attempts;
``attempt`` rows keep what each upstream try cost. An ``llm_request`` an agent
reported that the gateway also recorded has ``duplicate_of`` set and is left
out of every roll-up.

Who wrote a row (``source``) decides what it may move: only the gateway's own
records (``metered``) spend budgets and count as usage; what an agent reports
over OTLP is shown as *reported*, beside them, and never spends. Rows Corral
writes itself (the gateway's, a run's root span) own their span ids: an
agent's row can neither replace one nor take its id first (``SpanWriter``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from corral.store.schema import spans

if TYPE_CHECKING:
    from corral.identity.keys import KeyInfo

SPAN_KINDS = ("run", "agent", "step", "tool", "llm_request", "attempt", "event", "span")

GATEWAY = "gateway"
CORRAL = "corral"  # the source of spans Corral writes about runs
CORRAL_SOURCES = frozenset((GATEWAY, CORRAL))
"""``source`` values only Corral writes; an OTLP ``service.name`` never becomes one."""

# Transient row keys (never columns): the raw request/response body of the span, as text.
BODY_KEYS = ("_request_body", "_response_body")

SPAN_DEFAULTS: dict[str, Any] = {str(column.name): None for column in spans.columns}
SPAN_DEFAULTS.update(
    input_tokens=0,
    cached_input_tokens=0,
    cache_write_tokens=0,
    output_tokens=0,
    reasoning_tokens=0,
    cost_nusd=0,
)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def written_by_corral(row: Mapping[str, Any]) -> bool:
    """Whether Corral wrote ``row`` itself (rows stored before ``source`` existed, NULL,
    were all the gateway's)."""
    source = row.get("source")
    return source is None or source in CORRAL_SOURCES


def metered(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` is a call the gateway metered: the only rows that spend."""
    return row["kind"] == "llm_request" and row.get("source") in (None, GATEWAY)


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` from a W3C ``traceparent`` header, or None if invalid."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    trace_id, span_id = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def run_trace(run_id: str) -> tuple[str, str]:
    """The trace id and root span id of a run, derived from its id.

    Everything a run does lands in one trace even when the agent propagates no
    context: the gateway parents a run key's requests under this root span.
    """
    digest = hashlib.sha256(b"corral-run:" + run_id.encode()).hexdigest()
    return digest[:32], digest[32:48]


class IdentityColumns(TypedDict):
    org_id: str
    team_id: str | None
    user_id: str | None
    key_id: str
    run_id: str | None
    owner_id: str | None


def identity_columns(key: KeyInfo) -> IdentityColumns:
    """The identity chain a span sent with ``key`` carries, written once at ingest. The owner
    is the key's user until runs have owners of their own."""
    return {
        "org_id": key.org_id,
        "team_id": key.team_id,
        "user_id": key.user_id,
        "key_id": key.key_id,
        "run_id": key.run_id,
        "owner_id": key.user_id,
    }


class SpanRow(TypedDict):
    """A span row as stored: exactly the columns of ``corral.store.schema.spans``, ``None``
    where the column is nullable (``tests/traces/test_span_row.py`` holds the two equal).
    Rows on their way to the writer may carry the transient ``BODY_KEYS`` besides."""

    span_id: str
    trace_id: str
    parent_span_id: str | None
    kind: str
    name: str
    request_id: str | None
    attempt: int | None
    org_id: str | None
    team_id: str | None
    user_id: str | None
    key_id: str | None
    run_id: str | None
    owner_id: str | None
    protocol: str | None
    operation: str | None
    model_requested: str | None
    model_served: str | None
    provider: str | None
    deployment: str | None
    stream: bool | None
    status: str
    http_status: int | None
    error_class: str | None
    error_message: str | None
    finish_reason: str | None
    response_id: str | None
    start_ns: int
    end_ns: int
    ttft_ms: float | None
    upstream_ms: float | None
    overhead_ms: float | None
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_nusd: int
    cost_source: str | None
    price_version: str | None
    source: str | None
    duplicate_of: str | None
    request_blob: str | None
    response_blob: str | None
    attributes: dict[str, Any] | None
