"""Routes for trajectories: trace and run trees, single spans with their bodies, search.

Every key may call them and sees only what ``Visibility`` grants it: the org
admin the organisation, a team admin its team, any other key the spans it
sent (and its run's). A span or trace outside that is answered 404, exactly as
one that does not exist. Store reads run in a worker thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api import models as m
from corral.api.context import Ctx
from corral.identity.service import parse_since, parse_until
from corral.store import Store
from corral.traces import query as q
from corral.traces import totals as tt

_SPAN_ID = Annotated[str, Path(max_length=64, description="A span id (16 hex digits).")]


# -- models -------------------------------------------------------------------------


class _Tokens(BaseModel):
    input_tokens: int = Field(description="Input tokens that were neither cache reads nor writes.")
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int = Field(description="Output tokens, reasoning excluded.")
    reasoning_tokens: int


class SpanNode(_Tokens):
    """One span of a trajectory, as the tree shows it."""

    span_id: str
    parent_span_id: str | None
    trace_id: str
    kind: str = Field(description="run, agent, step, tool, llm_request, attempt, event or span.")
    name: str
    status: str = Field(description="ok, error, cancelled or refused.")
    error_class: str | None
    error_message: str | None
    start: datetime
    end: datetime
    duration_ms: float
    cost_usd: float
    model: str | None = Field(description="The model asked for.")
    model_served: str | None
    provider: str | None
    deployment: str | None
    source: str | None = Field(description='"gateway", or the reporting agent\'s service name.')
    duplicate_of: str | None = Field(
        description="An agent-reported call the gateway also recorded: that record's span id."
    )
    attempt: int | None
    http_status: int | None
    has_bodies: bool = Field(description="Whether request or response bodies are stored.")
    depth: int = Field(description="0 for a root.")
    children: list[str] = Field(description="Child span ids, by start time.")


class CallTotals(_Tokens):
    """LLM calls, their tokens and their cost."""

    llm_calls: int
    cost_usd: float


class TraceTotals(_Tokens):
    """Every LLM call the tree shows, each once (an agent's report of a call the gateway
    recorded counts as that record, also when the record is in another trace); split into
    what the gateway metered (what spends) and what agents only reported."""

    spans: int
    llm_calls: int
    errors: int
    cost_usd: float
    start: datetime
    end: datetime
    duration_ms: float
    metered: CallTotals = Field(description="Calls the gateway recorded: what spends budgets.")
    reported: CallTotals = Field(
        description="Calls agents reported over OTLP with no gateway record in sight: shown, "
        "never spent."
    )


class Trace(BaseModel):
    """A trace or a run: nodes depth first, each after its parent."""

    ref: str
    kind: Literal["trace", "run"]
    trace_ids: list[str]
    roots: list[str]
    nodes: list[SpanNode]
    totals: TraceTotals


class Body(BaseModel):
    available: bool
    content_type: str
    text: str | None = Field(description="The stored body (secrets redacted), as UTF-8 text.")
    note: str | None = Field(description="Why there is no text, when there is none.")
    meta: dict[str, Any] | None = Field(
        description="Size, sha256, redactions and truncation (or the shape, in metadata mode)."
    )


class Bodies(BaseModel):
    request: Body
    response: Body


class SpanSummary(_Tokens):
    span_id: str
    trace_id: str
    parent_span_id: str | None
    kind: str
    name: str
    status: str
    error_class: str | None
    error_message: str | None
    start: datetime
    end: datetime
    duration_ms: float
    team_id: str | None
    user_id: str | None
    key_id: str | None
    run_id: str | None
    model_requested: str | None
    model_served: str | None
    provider: str | None
    source: str | None
    cost_usd: float
    duplicate_of: str | None


class SpanPage(BaseModel):
    spans: list[SpanSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class SpanDetail(SpanSummary):
    """Every column of a span."""

    request_id: str | None
    attempt: int | None
    org_id: str | None
    owner_id: str | None
    protocol: str | None
    operation: str | None
    deployment: str | None
    stream: bool | None
    http_status: int | None
    finish_reason: str | None
    response_id: str | None
    start_ns: int
    end_ns: int
    ttft_ms: float | None
    upstream_ms: float | None
    overhead_ms: float | None
    cost_nusd: int = Field(description="Cost in nano-dollars (1e-9 USD), exact.")
    cost_source: str | None
    price_version: str | None
    request_blob: str | None
    response_blob: str | None
    attributes: dict[str, Any] | None
    bodies: Bodies | None = Field(description="With `bodies=true` only.")


# -- routes -------------------------------------------------------------------------


async def get_trace(
    ctx: Ctx,
    ref: Annotated[
        str, Path(max_length=64, description="A trace id (32 hex digits) or a run id (run_…).")
    ],
) -> Response:
    """The tree of a trace or a run: agents, steps, tool calls, LLM calls, upstream attempts."""
    visibility = q.Visibility.of(ctx.caller)
    body = await asyncio.to_thread(_trace_json, ctx.host.store, visibility, ref)
    return Response(body, media_type="application/json")


async def get_span(
    ctx: Ctx,
    span_id: _SPAN_ID,
    bodies: Annotated[
        bool, Query(description="Include the stored request and response bodies.")
    ] = False,
) -> SpanDetail:
    """Every column of one span, its attributes and, with `bodies=true`, its bodies."""
    found = await asyncio.to_thread(
        q.span,
        ctx.host.store,
        q.Visibility.of(ctx.caller),
        span_id,
        bodies=bodies,
        blobs=ctx.host.blobs,
    )
    row = found.row
    shown = None
    if found.bodies is not None:
        shown = Bodies(**{part: _body(b) for part, b in found.bodies.items()})
    return SpanDetail(**_times(row), **row, cost_usd=_usd(row["cost_nusd"]), bodies=shown)


async def get_span_body(
    ctx: Ctx,
    span_id: _SPAN_ID,
    part: Annotated[Literal["request", "response"], Path(description="Which body.")],
) -> Response:
    """One stored body as it was kept (secrets redacted): JSON, or text such as an SSE stream."""
    found = await asyncio.to_thread(
        q.body, ctx.host.store, q.Visibility.of(ctx.caller), span_id, part, ctx.host.blobs
    )
    return Response(content=found.text, media_type=found.content_type)


async def search_spans(
    ctx: Ctx,
    team: Annotated[str | None, Query(max_length=200, description="Team id or name.")] = None,
    user: Annotated[str | None, Query(max_length=200, description="User id or name.")] = None,
    key: Annotated[str | None, Query(max_length=200, description="Key id or name.")] = None,
    run: Annotated[str | None, Query(max_length=40, description="Run id.")] = None,
    trace: Annotated[str | None, Query(max_length=32, description="Trace id.")] = None,
    kind: Annotated[str | None, Query(max_length=16, description="Span kind.")] = None,
    status: Annotated[
        str | None,
        Query(
            max_length=16,
            description="ok, error, cancelled or refused; `error` also finds refused calls "
            "(a budget or a limit said no), `refused` only those.",
        ),
    ] = None,
    error_class: Annotated[str | None, Query(max_length=40)] = None,
    model: Annotated[
        str | None, Query(max_length=200, description="The model asked for, or the one served.")
    ] = None,
    provider: Annotated[str | None, Query(max_length=100)] = None,
    source: Annotated[
        str | None, Query(max_length=64, description='"gateway" or an agent\'s service name.')
    ] = None,
    since: Annotated[
        str | None,
        Query(max_length=64, description="Started at or after: `24h`, `7d`, or an ISO time."),
    ] = None,
    until: Annotated[
        str | None,
        Query(max_length=64, description="Started before: `now`, `1h` (ago), or an ISO time."),
    ] = None,
    attr: Annotated[
        list[str] | None,
        Query(
            max_length=20,
            description="`path.to.key=value` on the span's attributes (repeat to narrow). A "
            "dotted path also matches flat keys such as `gen_ai.tool.name`; quote a key to "
            'keep its dots: `"gen_ai.tool.name"=Bash`.',
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=q.MAX_PAGE, description="Spans per page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="From `next_cursor`.")] = None,
) -> SpanPage:
    """Spans matching every filter given, newest first, a page at a time."""
    now = ctx.host.clock.now()
    filters = q.SpanFilter(
        team=team,
        user=user,
        key=key,
        run=run,
        trace=trace.lower() if trace else None,
        kind=kind,
        status=status,
        error_class=error_class,
        model=model,
        provider=provider,
        source=source,
        since=parse_since(since, now) if since is not None else None,
        until=parse_until(until, now) if until is not None else None,
        attributes=tuple(q.AttributeFilter.parse(a) for a in attr or ()),
    )
    page = await asyncio.to_thread(
        q.search,
        ctx.host.store,
        q.Visibility.of(ctx.caller),
        filters,
        limit=limit,
        cursor=cursor,
    )
    return SpanPage(spans=[_summary(r) for r in page.spans], next_cursor=page.next_cursor)


# -- shaping ------------------------------------------------------------------------


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _usd(nusd: int) -> float:
    return round(nusd / 1e9, 9)


def _times(row: dict[str, Any]) -> dict[str, Any]:
    start, end = row["start_ns"], row["end_ns"]
    return {"start": _time(start), "end": _time(end), "duration_ms": max(0, end - start) / 1e6}


def _trace_json(store: Store, visibility: q.Visibility, ref: str) -> bytes:
    """The ``Trace`` of ``ref`` as JSON, built in the worker thread that reads it.

    A run can hold thousands of spans: plain dicts and orjson instead of a model
    per node (the route still declares ``Trace``, which these dicts follow).
    """
    found = q.tree(store, visibility, ref)
    body = {
        "ref": found.ref,
        "kind": found.kind,
        "trace_ids": found.trace_ids,
        "roots": found.roots,
        "nodes": _nodes(found.nodes),
        "totals": _totals(found.totals),
    }
    # OPT_UTC_Z writes times as pydantic does: 2025-01-31T12:00:00.123456Z. A datetime per
    # time, formatted by orjson, costs less than any text made in Python.
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def _nodes(nodes: list[q.TreeNode]) -> list[dict[str, Any]]:
    """``SpanNode``s as data for orjson, in one loop without a call per node or per time:
    a run can hold thousands of spans, and those calls cost milliseconds a tree."""
    out: list[dict[str, Any]] = []
    append, at = out.append, datetime.fromtimestamp
    for span, depth, children in nodes:
        (
            span_id, parent_span_id, trace_id, kind, name, status, error_class, error_message,
            start_ns, end_ns, input_tokens, cached_input_tokens, cache_write_tokens,
            output_tokens, reasoning_tokens, cost_nusd, model_requested, model_served,
            provider, deployment, source, duplicate_of, attempt, http_status, has_bodies,
            _team_id,
        ) = span  # fmt: skip
        append(
            {
                "span_id": span_id,
                "parent_span_id": parent_span_id,
                "trace_id": trace_id,
                "kind": kind,
                "name": name,
                "status": status,
                "error_class": error_class,
                "error_message": error_message,
                "start": at(start_ns / 1e9, UTC),  # as _time()
                "end": at(end_ns / 1e9, UTC),
                "duration_ms": (end_ns - start_ns) / 1e6 if end_ns > start_ns else 0.0,
                "input_tokens": input_tokens,
                "cached_input_tokens": cached_input_tokens,
                "cache_write_tokens": cache_write_tokens,
                "output_tokens": output_tokens,
                "reasoning_tokens": reasoning_tokens,
                "cost_usd": _usd(cost_nusd) if cost_nusd else 0.0,
                "model": model_requested,
                "model_served": model_served,
                "provider": provider,
                "deployment": deployment,
                "source": source,
                "duplicate_of": duplicate_of,
                "attempt": attempt,
                "http_status": http_status,
                "has_bodies": has_bodies == 1,
                "depth": depth,
                "children": children,
            }
        )
    return out


def _totals(t: tt.TreeTotals) -> dict[str, Any]:
    """``TraceTotals`` as data for orjson, keys in the model's field order."""
    return {
        "input_tokens": t.input_tokens,
        "cached_input_tokens": t.cached_input_tokens,
        "cache_write_tokens": t.cache_write_tokens,
        "output_tokens": t.output_tokens,
        "reasoning_tokens": t.reasoning_tokens,
        "spans": t.spans,
        "llm_calls": t.llm_calls,
        "errors": t.errors,
        "cost_usd": _usd(t.cost_nusd),
        "start": _time(t.start_ns),
        "end": _time(t.end_ns),
        "duration_ms": max(0, t.end_ns - t.start_ns) / 1e6,
        "metered": _calls(t.metered),
        "reported": _calls(t.reported),
    }


def _calls(c: tt.CallTotals) -> dict[str, Any]:
    return {
        "input_tokens": c.input_tokens,
        "cached_input_tokens": c.cached_input_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "output_tokens": c.output_tokens,
        "reasoning_tokens": c.reasoning_tokens,
        "llm_calls": c.llm_calls,
        "cost_usd": _usd(c.cost_nusd),
    }


def _summary(row: dict[str, Any]) -> SpanSummary:
    return SpanSummary(**_times(row), **row, cost_usd=_usd(row["cost_nusd"]))


def _body(b: q.Body) -> Body:
    return Body(
        available=b.available, content_type=b.content_type, text=b.text, note=b.note, meta=b.meta
    )


# -- team trace policy ----------------------------------------------------------------


class TracePolicyIn(BaseModel):
    """Only the fields present change; `null` returns a field to the server's default."""

    model_config = ConfigDict(extra="forbid")

    body_capture: str | None = Field(
        default=None,
        description="`off`, `metadata` (size, digest and shape only) or `full` (redacted, "
        "capped); null: the default (`trace_bodies`).",
        examples=["metadata"],
    )
    retention_days: float | None = Field(
        default=None,
        description="Days spans and bodies are kept; null: the default (`trace_retention_days`).",
        examples=[14],
    )


class TeamDetail(m.Team):
    """A team with its trajectory policy."""

    body_capture: str | None = Field(description="The team's own setting; null: the default.")
    retention_days: float | None = Field(description="The team's own setting; null: the default.")
    effective_body_capture: str = Field(description="What applies now.")
    effective_retention_days: float = Field(description="What applies now.")


async def get_store(
    ctx: Ctx,
    prune: Annotated[
        bool, Query(description="Run a retention pass first (deletes what is past its window).")
    ] = False,
) -> dict[str, Any]:
    """How big the trajectory store is (rows, bytes on disk, bodies, oldest span); with
    `prune=true`, after a retention pass, whose report is included. Org admin only."""
    ctx.require_org_admin()
    out: dict[str, Any] = {}
    if prune:
        report = await asyncio.to_thread(ctx.host.retention.run_once)
        out["retention"] = {
            "spans_deleted": report.spans_deleted,
            "batches": report.batches,
            "blob_files_deleted": report.blob_files_deleted,
            "blob_bytes_freed": report.blob_bytes_freed,
            "duration_s": report.duration_s,
        }
    out["size"] = await asyncio.to_thread(ctx.host.retention.store_size)
    return out


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["traces"])
    r.add_api_route("/traces/{ref}", get_trace, methods=["GET"], response_model=Trace)
    r.add_api_route("/spans", search_spans, methods=["GET"])
    r.add_api_route("/store", get_store, methods=["GET"], tags=["store"])
    r.add_api_route("/spans/{span_id}", get_span, methods=["GET"])
    r.add_api_route(
        "/spans/{span_id}/bodies/{part}",
        get_span_body,
        methods=["GET"],
        response_class=Response,
        responses={
            200: {
                "description": "The body as stored",
                "content": {"application/json": {}, "text/plain": {}},
            }
        },
    )
    return r
