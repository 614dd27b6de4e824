"""One LLM call is one call in every roll-up, however many saw it.

An agent that reports its own telemetry (OTLP ingest) and calls models
through the gateway describes each call twice: its own ``chat`` span (or a
Claude Code ``api_request`` event) and the gateway's ``llm_request`` record.
The gateway's record is authoritative (it saw the bytes, priced them and
knows the attempts); the agent's row stays in the tree, pointing at it
through ``duplicate_of``, and is left out of roll-ups. They are matched by,
in order of certainty:

1. **trace link**: the agent propagated ``traceparent``, so the gateway's
   record is a child of the agent's span (``parent_span_id``);
2. **response id**: both carry the provider's response id;
3. **fingerprint**, for log events, which carry neither (Claude Code's):
   same team (and run, when both have one), same model, the same input and
   output token totals, ending within ``FINGERPRINT_WINDOW_S`` of each other;
   the closest unclaimed gateway record wins.

Matching runs in the span writer, in the transaction that stores the batch,
from whichever side arrives second. An agent row whose gateway record has not
arrived yet is remembered (in this process, for ``PENDING_S``) so a later
gateway batch can claim it by fingerprint too.

Every match is within one tenant: the agent's row and the gateway's record
carry the same organisation and team (from the keys that sent them). A
``traceparent`` or a response id is a claim anyone can copy; another team's
call naming this team's span must not mark it a duplicate (and so hide it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from corral.store.schema import spans
from corral.traces.spans import GATEWAY

FINGERPRINT = "_fingerprint"  # transient row key: an event without ids, match it by fingerprint
FINGERPRINT_WINDOW_S = 120.0
PENDING_S = 180.0
PENDING_MAX = 50_000  # events waiting for their record, at most (the oldest go first)
_WINDOW_NS = int(FINGERPRINT_WINDOW_S * 1e9)

Row = dict[str, Any]
Marked = dict[str, tuple[Row, str]]  # agent span id -> (its stored row, gateway span id)

_is_gateway = or_(spans.c.source.is_(None), spans.c.source == GATEWAY)
_is_agent = and_(spans.c.source.is_not(None), spans.c.source != GATEWAY)
_llm = spans.c.kind == "llm_request"
_ROW_COLUMNS = [
    spans.c[name]
    for name in (
        "span_id",
        "trace_id",
        "kind",
        "source",
        "status",
        "org_id",
        "team_id",
        "user_id",
        "key_id",
        "run_id",
        "model_requested",
        "model_served",
        "provider",
        "start_ns",
        "end_ns",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_nusd",
    )
]


def is_gateway(row: Row) -> bool:
    return row["kind"] == "llm_request" and row.get("source") in (None, GATEWAY)


def is_agent_call(row: Row) -> bool:
    source = row.get("source")
    return row["kind"] == "llm_request" and source is not None and source != GATEWAY


def totals(row: Row) -> tuple[int, int]:
    """Input and output tokens, all kinds together: what both sides agree on."""
    tokens_in = row["input_tokens"] + row["cached_input_tokens"] + row["cache_write_tokens"]
    return tokens_in, row["output_tokens"] + row["reasoning_tokens"]


def tenant(row: Row) -> tuple[str | None, str | None]:
    return row.get("org_id"), row.get("team_id")


def _models(row: Row) -> set[str]:
    return {m for m in (row.get("model_requested"), row.get("model_served")) if m}


def _fits(agent: Row, gateway: Row) -> bool:
    """Whether two rows can be one call by fingerprint (ids aside)."""
    if tenant(agent) != tenant(gateway) or totals(agent) != totals(gateway):
        return False
    if agent.get("run_id") and gateway.get("run_id") and agent["run_id"] != gateway["run_id"]:
        return False
    models = _models(agent)
    return not models or bool(models & _models(gateway))


class Matcher:
    """Finds the duplicates in a batch; holds the fingerprints still waiting for a match."""

    def __init__(self) -> None:
        self._pending: deque[tuple[float, Row]] = deque()

    def match(self, conn: Connection, rows: Sequence[Row]) -> Marked:
        """Set ``duplicate_of`` on agent rows of ``rows`` that a gateway record covers;
        return the stored agent rows that gateway rows of ``rows`` cover (to be marked)."""
        self._expire()
        agents = [r for r in rows if is_agent_call(r) and not r.get("duplicate_of")]
        gateways = [r for r in rows if is_gateway(r)]
        if agents:
            self._claim_for_agents(conn, agents, gateways)
        if not gateways:
            return {}
        return self._claim_stored(conn, gateways)

    # -- agent rows arriving: find their gateway record ------------------------

    def _claim_for_agents(self, conn: Connection, agents: list[Row], batch: list[Row]) -> None:
        by_parent: dict[tuple[str | None, ...], str] = {
            (*tenant(g), g["trace_id"], g["parent_span_id"]): g["span_id"] for g in batch
        }
        by_response: dict[tuple[str | None, ...], str] = {
            (*tenant(g), g["response_id"]): g["span_id"] for g in batch if g.get("response_id")
        }
        _stored_links(conn, agents, by_parent, by_response)
        claimed: set[str] = set()
        loose: list[Row] = []
        for a in agents:
            gid = by_parent.get((*tenant(a), a["trace_id"], a["span_id"]))
            if gid is None and a.get("response_id"):
                gid = by_response.get((*tenant(a), a["response_id"]))
            if gid is not None and gid not in claimed:
                a["duplicate_of"] = gid
                claimed.add(gid)
            elif a.get(FINGERPRINT) and a.get("team_id") and any(totals(a)):
                loose.append(a)
        if loose:
            self._fingerprint(conn, loose, batch, claimed)

    def _fingerprint(
        self, conn: Connection, agents: list[Row], batch: list[Row], claimed: set[str]
    ) -> None:
        for team_id in {a["team_id"] for a in agents}:
            mine = [a for a in agents if a["team_id"] == team_id]
            low = min(a["end_ns"] for a in mine) - _WINDOW_NS
            high = max(a["end_ns"] for a in mine) + _WINDOW_NS
            candidates = [g for g in batch if g.get("team_id") == team_id]
            candidates += _window(conn, team_id, low, high, claimed)
            for a in sorted(mine, key=lambda r: r["end_ns"]):
                best = _closest(a, candidates, claimed)
                if best is None:
                    self._pending.append((time.monotonic(), a))
                else:
                    a["duplicate_of"] = best["span_id"]
                    claimed.add(best["span_id"])

    # -- gateway rows arriving: find agent rows stored before them --------------

    def _claim_stored(self, conn: Connection, gateways: list[Row]) -> Marked:
        marked: Marked = {}
        parents = {g["parent_span_id"]: g for g in gateways if g.get("parent_span_id")}
        for chunk in _chunks(list(parents)):
            where = and_(spans.c.span_id.in_(chunk), _llm, _is_agent)
            for row in _rows(conn, and_(where, spans.c.duplicate_of.is_(None))):
                g = parents[row["span_id"]]
                if row["trace_id"] == g["trace_id"] and tenant(row) == tenant(g):
                    marked[row["span_id"]] = (row, g["span_id"])
        responses = {g["response_id"]: g for g in gateways if g.get("response_id")}
        for chunk in _chunks(list(responses)):
            query = select(*_ROW_COLUMNS, spans.c.response_id).where(
                spans.c.response_id.in_(chunk), _llm, _is_agent, spans.c.duplicate_of.is_(None)
            )
            for r in conn.execute(query):
                row = dict(r._mapping)
                g = responses[row.pop("response_id")]
                if row["span_id"] not in marked and tenant(row) == tenant(g):
                    marked[row["span_id"]] = (row, g["span_id"])
        self._claim_pending(gateways, marked)
        return marked

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending and (
            now - self._pending[0][0] > PENDING_S or len(self._pending) > PENDING_MAX
        ):
            self._pending.popleft()

    def _claim_pending(self, gateways: list[Row], marked: Marked) -> None:
        if not self._pending:
            return
        taken = {gid for _, gid in marked.values()}
        keep: deque[tuple[float, Row]] = deque()
        for seen, a in self._pending:
            if a["span_id"] in marked:
                continue
            best = _closest(a, gateways, taken)
            if best is None:
                keep.append((seen, a))
            else:
                taken.add(best["span_id"])
                marked[a["span_id"]] = (a, best["span_id"])
        self._pending = keep


def _stored_links(
    conn: Connection,
    agents: list[Row],
    by_parent: dict[tuple[str | None, ...], str],
    by_response: dict[tuple[str | None, ...], str],
) -> None:
    """Add the stored gateway records that link to ``agents`` to the two lookups."""
    ids = [a["span_id"] for a in agents]
    org, team = spans.c.org_id, spans.c.team_id
    for chunk in _chunks(ids):
        # Exactly the predicate of the partial index ix_spans_gateway_parent.
        query = select(spans.c.span_id, org, team, spans.c.trace_id, spans.c.parent_span_id)
        query = query.where(spans.c.parent_span_id.in_(chunk), _llm, spans.c.source == GATEWAY)
        for span_id, *link in conn.execute(query):
            by_parent.setdefault(tuple(link), span_id)
    wanted = [a["response_id"] for a in agents if a.get("response_id")]
    for chunk in _chunks(wanted):
        query = select(spans.c.span_id, org, team, spans.c.response_id).where(
            spans.c.response_id.in_(chunk), _llm, _is_gateway
        )
        for span_id, *link in conn.execute(query):
            by_response.setdefault(tuple(link), span_id)


def _window(conn: Connection, team_id: str, low: int, high: int, claimed: set[str]) -> list[Row]:
    """Gateway records of a team ending in [low, high] that no agent row claims yet."""
    in_range = and_(spans.c.team_id == team_id, spans.c.start_ns >= low - _WINDOW_NS)
    in_range = and_(in_range, spans.c.start_ns <= high, _llm)
    query = select(spans.c.duplicate_of).where(
        in_range, _is_agent, spans.c.duplicate_of.is_not(None)
    )
    claimed.update(conn.scalars(query))
    rows = _rows(conn, and_(in_range, _is_gateway))
    return [r for r in rows if low <= r["end_ns"] <= high and r["span_id"] not in claimed]


def _closest(agent: Row, candidates: Iterable[Row], claimed: set[str]) -> Row | None:
    best: Row | None = None
    best_gap = _WINDOW_NS + 1
    for g in candidates:
        gap = abs(g["end_ns"] - agent["end_ns"])
        if gap < best_gap and g["span_id"] not in claimed and _fits(agent, g):
            best, best_gap = g, gap
    return best


def _rows(conn: Connection, where: Any) -> list[Row]:
    return [dict(r._mapping) for r in conn.execute(select(*_ROW_COLUMNS).where(where))]


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
