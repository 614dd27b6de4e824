"""Reading trajectories back: trace trees, single spans with their bodies, search.

Every function here is synchronous and takes the ``Store`` (the admin API runs
them with ``asyncio.to_thread``) and a ``Visibility``: what the caller may read.
A span the caller may not see is answered exactly like one that does not exist
(``NotFound``), so the ids of other teams cannot be probed.

Usage roll-ups live in ``corral.traces.usage``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import product
from operator import itemgetter
from typing import Any, Literal, Protocol

import orjson
from sqlalchemy import (
    Connection,
    Numeric,
    Table,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import ColumnElement

from corral.errors import CorralError, InvalidRequest, NotFound, StoreError
from corral.identity.keys import KeyInfo
from corral.store import Store
from corral.store.schema import keys as keys_table
from corral.store.schema import span_rollups, spans, teams, users
from corral.traces.rollup import (
    TOKEN_COLUMNS,
)
from corral.traces.spans import GATEWAY, SPAN_KINDS
from corral.traces.totals import TreeTotals, tree_totals

BodyPart = Literal["request", "response"]
MAX_PAGE = 1000

_MAX_NS = 2**62  # keeps time bounds inside a signed 64-bit column on every backend
_DAY_S = 86_400
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_RUN_ID = re.compile(r"^run_[A-Za-z0-9_.-]{1,36}$")
# A JSON number of bounded size (anything longer is compared as text only).
_NUMBER = re.compile(r"^-?(?:0|[1-9]\d{0,39})(?:\.\d{1,40})?(?:[eE][+-]?\d{1,3})?$")
_JSON_START = re.compile(rb"\s*[\[{]")
_MAX_JOINS = 5  # dotted attribute paths: at most 2**5 ways of reading one


class BlobReader(Protocol):
    """What reading bodies needs from the blob store (``corral.traces.blobs.BlobStore``)."""

    def get(self, key: str) -> bytes | None: ...


# -- who sees what ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Visibility:
    """The spans a caller may read; every field set narrows them (``Visibility()``: all).

    ``key_id``, ``run_id`` and ``owner_id`` together mean *any of*: a run's key sees
    the spans it sent and every span of its run; a person's key sees the spans it sent
    and those of the runs that person owns.
    """

    org_id: str | None = None
    team_id: str | None = None
    key_id: str | None = None
    run_id: str | None = None
    owner_id: str | None = None
    nothing: bool = False

    @classmethod
    def of(cls, caller: KeyInfo) -> Visibility:
        """The organisation for the org admin, the team for a team admin, itself for a key."""
        if caller.role == "admin":
            return cls(org_id=caller.org_id)
        if caller.role == "team_admin" and caller.team_id is not None:
            return cls(team_id=caller.team_id)
        if caller.role == "virtual" and caller.team_id is not None:
            owner = caller.user_id if caller.run_id is None else None
            return cls(
                team_id=caller.team_id, key_id=caller.key_id, run_id=caller.run_id, owner_id=owner
            )
        return cls(nothing=True)  # an unknown role reads nothing

    def spans_clause(self, c: Any = spans.c) -> ColumnElement[bool]:
        """The rule over ``spans`` (or ``c``, columns of the same names)."""
        if self.nothing:
            return false()
        parts: list[ColumnElement[bool]] = []
        if self.org_id is not None:
            # Spans recorded without an identity chain belong to no team: only the org sees them.
            parts.append(or_(c.org_id == self.org_id, c.org_id.is_(None)))
        if self.team_id is not None:
            parts.append(c.team_id == self.team_id)
        either = [
            column == value
            for column, value in (
                (c.key_id, self.key_id),
                (c.run_id, self.run_id),
                (c.owner_id, self.owner_id),
            )
            if value is not None
        ]
        if either:
            parts.append(or_(*either))
        return and_(true(), *parts)

    def rollups_clause(self, table: Table = span_rollups) -> ColumnElement[bool]:
        """The same rule over ``span_rollups`` or ``span_latency`` (which hold "" where a
        span held NULL)."""
        if self.nothing or self.run_id is not None:  # roll-ups know no runs
            return false()
        parts: list[ColumnElement[bool]] = []
        if self.org_id is not None:
            parts.append(table.c.org_id.in_([self.org_id, ""]))
        if self.team_id is not None:
            parts.append(table.c.team_id == self.team_id)
        if self.key_id is not None:
            parts.append(table.c.key_id == self.key_id)
        return and_(true(), *parts)


# -- trees ------------------------------------------------------------------------

# What a tree reads of each span, in the order of ``SpanValues``.
_SPAN_COLUMNS = (
    spans.c.span_id,
    spans.c.parent_span_id,
    spans.c.trace_id,
    spans.c.kind,
    spans.c.name,
    spans.c.status,
    spans.c.error_class,
    spans.c.error_message,
    spans.c.start_ns,
    spans.c.end_ns,
    *(spans.c[name] for name in TOKEN_COLUMNS),
    spans.c.cost_nusd,
    spans.c.model_requested,
    spans.c.model_served,
    spans.c.provider,
    spans.c.deployment,
    spans.c.source,
    spans.c.duplicate_of,
    spans.c.attempt,
    spans.c.http_status,
    # An int, not a bool: a Boolean column would convert every row in Python on SQLite.
    case(
        (or_(spans.c.request_blob.is_not(None), spans.c.response_blob.is_not(None)), 1),
        else_=0,
    ).label("has_bodies"),
    spans.c.team_id,
)
SPAN_FIELDS = tuple(str(c.name) for c in _SPAN_COLUMNS)
_BY_START = itemgetter(SPAN_FIELDS.index("start_ns"), SPAN_FIELDS.index("span_id"))

SpanValues = tuple[
    str,  # span_id
    str | None,  # parent_span_id
    str,  # trace_id
    str,  # kind
    str,  # name
    str,  # status
    str | None,  # error_class
    str | None,  # error_message
    int,  # start_ns
    int,  # end_ns
    int,  # input_tokens (neither cache reads nor writes)
    int,  # cached_input_tokens
    int,  # cache_write_tokens
    int,  # output_tokens (reasoning excluded)
    int,  # reasoning_tokens
    int,  # cost_nusd
    str | None,  # model_requested
    str | None,  # model_served
    str | None,  # provider
    str | None,  # deployment
    str | None,  # source
    str | None,  # duplicate_of
    int | None,  # attempt
    int | None,  # http_status
    int,  # has_bodies: 1 when a request or response body is stored, else 0
    str | None,  # team_id
]
"""One span of a tree: the values of ``SPAN_FIELDS``, in that order."""

TreeNode = tuple[SpanValues, int, tuple[str, ...]]
"""One span as a trajectory shows it: ``(span, depth, children)``; depth 0 for a root,
``children`` the span ids of its children, ordered by start.

Plain tuples of plain values, on purpose: a run can hold thousands of spans and each
read of its tree makes a node of each. Such tuples cost little to make, and the garbage
collector stops tracking them at its first pass; named tuples or objects stay tracked,
and a few thousand of them kept through every request made full collections frequent.
"""


@dataclass(frozen=True, slots=True)
class Tree:
    """A trace or a run: its nodes depth first (each after its parent, siblings by start)."""

    ref: str
    kind: Literal["trace", "run"]
    trace_ids: list[str]
    roots: list[str]
    nodes: list[TreeNode]
    totals: TreeTotals


def tree(store: Store, visibility: Visibility, ref: str) -> Tree:
    """The trajectory of a trace id (32 hex digits) or a run id (``run_…``).

    Roots are the spans whose parent is not in the set. Raises ``NotFound`` when
    no span of it is visible to the caller.
    """
    ref = ref.strip()
    kind: Literal["trace", "run"]
    if _TRACE_ID.fullmatch(ref.lower()):
        ref, kind, where = ref.lower(), "trace", spans.c.trace_id == ref.lower()
    elif _RUN_ID.fullmatch(ref):
        kind, where = "run", spans.c.run_id == ref
    else:
        raise InvalidRequest(
            f"{_show(ref)} is neither a trace id (32 hex digits) nor a run id (run_…)"
        )
    rows = _span_values(store, and_(where, visibility.spans_clause(_Unindexed())))
    if not rows:
        raise NotFound(f"{kind} {ref} not found")
    # Sorted here rather than by ORDER BY: the index gives rows about in time order
    # already, which Python's sort finishes sooner than SQLite's sorter.
    rows.sort(key=_BY_START)
    roots, nodes = _arrange(rows)
    return Tree(
        ref=ref,
        kind=kind,
        trace_ids=sorted({row[2] for row in rows}),
        roots=roots,
        nodes=nodes,
        totals=tree_totals(SPAN_FIELDS, rows, _records_elsewhere(store, visibility, rows)),
    )


def _records_elsewhere(
    store: Store, visibility: Visibility, rows: list[SpanValues]
) -> dict[str, SpanValues]:
    """The gateway records that agent calls of ``rows`` duplicate but that are not among
    them (in another trace), as far as the caller may see them."""
    kind, duplicate_of = SPAN_FIELDS.index("kind"), SPAN_FIELDS.index("duplicate_of")
    ids = {row[0] for row in rows}
    wanted = sorted(
        {
            str(record)
            for row in rows
            if row[kind] == "llm_request"
            and (record := row[duplicate_of]) is not None
            and record not in ids
        }
    )
    if not wanted:
        return {}
    metered = or_(spans.c.source.is_(None), spans.c.source == GATEWAY)
    found: dict[str, SpanValues] = {}
    for start in range(0, len(wanted), 500):
        where = and_(
            spans.c.span_id.in_(wanted[start : start + 500]),
            spans.c.kind == "llm_request",
            metered,
            visibility.spans_clause(),
        )
        found.update((row[0], row) for row in _span_values(store, where))
    return found


def _span_values(store: Store, where: ColumnElement[bool]) -> list[SpanValues]:
    """The ``SpanValues`` of the spans ``where`` selects, unordered; each a plain tuple
    as soon as it is read (see ``TreeNode``): no ``Row`` is kept."""
    with store.connect() as conn:
        if store.is_sqlite:
            # SQLite writes each row as a JSON array and orjson reads it: faster by a fifth
            # than the driver handing over 25 columns one call at a time.
            query = select(func.json_array(*_SPAN_COLUMNS)).where(where)
            return [tuple(orjson.loads(text)) for text in conn.execute(query).scalars().all()]
        return [tuple(row) for row in conn.execute(select(*_SPAN_COLUMNS).where(where))]


class _Unindexed:
    """The columns of ``spans`` as expressions of the same value (``team_id || ''``).

    ``tree`` applies visibility to these so that no index can serve it: without
    statistics SQLite would read a team's ``ix_spans_team_start`` (every span of the
    team) rather than the few thousand rows of ``ix_spans_run`` or ``ix_spans_trace``.
    The rule and its result are unchanged: ``NULL || ''`` is NULL on SQLite and on
    PostgreSQL. (A materialized CTE did the same at a third of the query's time.)
    """

    def __getattr__(self, name: str) -> ColumnElement[Any]:
        return spans.c[name].concat("")


def _arrange(rows: list[SpanValues]) -> tuple[list[str], list[TreeNode]]:
    """The roots, and the nodes depth first; ``rows`` come by start.

    Iterative, so a deep chain cannot overflow the stack; a parent cycle (bad
    agent data) is broken at its earliest span, which becomes a root.
    """
    by_id = {row[0]: row for row in rows}
    roots, children = _link(rows, by_id)
    nodes: list[TreeNode] = []
    placed: set[str] = set()

    def walk(first: Iterable[str]) -> None:
        # A stack of sibling iterators: its height is the depth, and a parent's iterator
        # resumes where it left off once its last child's subtree is done.
        stack = [iter(first)]
        while stack:
            for span_id in stack[-1]:
                if span_id in placed:
                    continue
                placed.add(span_id)
                kids = children.get(span_id, ())
                nodes.append((by_id[span_id], len(stack) - 1, kids))
                if kids:
                    stack.append(iter(kids))
                    break
            else:
                stack.pop()

    walk(roots)
    if len(nodes) < len(rows):  # only a parent cycle leaves spans unplaced
        for row in rows:
            if row[0] not in placed:
                roots.append(row[0])
                walk((row[0],))
    return roots, nodes


def _link(
    rows: list[SpanValues], by_id: dict[str, SpanValues]
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The roots (spans whose parent is not in ``by_id``) and each parent's children."""
    roots: list[str] = []
    grouped: dict[str, list[str]] = {}
    for row in rows:
        span_id, parent = row[0], row[1]
        # A parent of another team is no parent: a traceparent is a claim anyone can copy,
        # and another tenant's call must not join this team's tree.
        if (
            parent is None
            or parent == span_id
            or parent not in by_id
            or by_id[parent][-1] != row[-1]
        ):
            roots.append(span_id)
        else:
            grouped.setdefault(parent, []).append(span_id)
    # Tuples, and the lists dropped before the walk (see ``TreeNode``).
    return roots, {parent: tuple(ids) for parent, ids in grouped.items()}


# -- one span and its bodies --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Body:
    """A span's request or response body as stored: redacted text, or why there is none."""

    part: BodyPart
    text: str | None
    content_type: str
    meta: dict[str, Any] | None
    note: str | None

    @property
    def available(self) -> bool:
        return self.text is not None


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """Every column of one span; ``bodies`` when they were asked for."""

    row: dict[str, Any]
    bodies: dict[BodyPart, Body] | None


def span(
    store: Store,
    visibility: Visibility,
    span_id: str,
    *,
    bodies: bool = False,
    blobs: BlobReader | None = None,
) -> SpanRecord:
    """One span the caller may see (else ``NotFound``), with its bodies when asked."""
    row = _span_row(store, visibility, span_id)
    if not bodies:
        return SpanRecord(row, None)
    return SpanRecord(row, {part: _body(row, part, blobs) for part in ("request", "response")})


def body(
    store: Store, visibility: Visibility, span_id: str, part: BodyPart, blobs: BlobReader | None
) -> Body:
    """One body of a span; ``NotFound`` (with the reason) when there is no text to give."""
    found = _body(_span_row(store, visibility, span_id), part, blobs)
    if found.text is None:
        raise NotFound(f"span {span_id}: {found.note}")
    return found


def _span_row(store: Store, visibility: Visibility, span_id: str) -> dict[str, Any]:
    span_id = span_id.strip().lower()
    if _SPAN_ID.fullmatch(span_id):
        query = select(spans).where(spans.c.span_id == span_id, visibility.spans_clause())
        with store.connect() as conn:
            found = conn.execute(query).mappings().first()
        if found is not None:
            return dict(found)
    raise NotFound(f"span {_show(span_id)} not found")


def _body(row: dict[str, Any], part: BodyPart, blobs: BlobReader | None) -> Body:
    attributes = row.get("attributes")
    described = attributes.get("bodies") if isinstance(attributes, dict) else None
    meta = described.get(part) if isinstance(described, dict) else None
    meta = meta if isinstance(meta, dict) else None  # what the writer said of the body
    key = row.get(f"{part}_blob")
    if key is None:
        if meta is not None:
            note = f"only metadata of the {part} body was kept (the team's body capture)"
        else:
            note = (
                f"no {part} body was stored: body capture was off for the team, "
                "or the span carried none"
            )
        return Body(part, None, "text/plain", meta, note)
    if blobs is None:
        return Body(part, None, "text/plain", meta, "this server has no blob store configured")
    try:
        data = blobs.get(key)
    except CorralError:
        data = None  # a key the blob store refuses holds nothing readable
    except OSError as exc:
        raise StoreError(f"cannot read the {part} body of span {row['span_id']}: {exc}") from exc
    if data is None:
        note = f"the {part} body is no longer in the blob store (removed by retention?)"
        return Body(part, None, "text/plain", meta, note)
    return Body(part, data.decode("utf-8", "replace"), _content_type(data), meta, None)


def _content_type(data: bytes) -> str:
    """``application/json`` for a body that parses as JSON, else plain text (SSE, cut JSON)."""
    if _JSON_START.match(data):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            return "text/plain; charset=utf-8"
        return "application/json"
    return "text/plain; charset=utf-8"


# -- search -----------------------------------------------------------------------

_SUMMARY_COLUMNS = (
    spans.c.span_id,
    spans.c.trace_id,
    spans.c.parent_span_id,
    spans.c.kind,
    spans.c.name,
    spans.c.status,
    spans.c.error_class,
    spans.c.error_message,
    spans.c.start_ns,
    spans.c.end_ns,
    spans.c.team_id,
    spans.c.user_id,
    spans.c.key_id,
    spans.c.run_id,
    spans.c.model_requested,
    spans.c.model_served,
    spans.c.provider,
    spans.c.source,
    *(spans.c[name] for name in TOKEN_COLUMNS),
    spans.c.cost_nusd,
    spans.c.duplicate_of,
)


@dataclass(frozen=True, slots=True)
class AttributeFilter:
    """``attributes.<path> = value``; a dotted path also matches flat dotted keys."""

    path: str
    value: str

    @classmethod
    def parse(cls, text: str) -> AttributeFilter:
        """``path.to.key=value`` (an ``attributes.`` prefix is optional)."""
        path, sep, value = text.partition("=")
        path = path.strip().removeprefix("attributes.")
        if not sep or not path:
            raise InvalidRequest(
                f"invalid attribute filter {_show(text)}: use path.to.key=value, "
                'e.g. gen_ai.tool.name=Bash or admission.decision="degraded"'
            )
        _segments(path)  # validates
        return cls(path, value.strip())


@dataclass(frozen=True, slots=True)
class SpanFilter:
    """What ``search`` narrows spans by; ``None`` leaves a field open.

    ``team``, ``user`` and ``key`` are ids or names; ``status`` ``error`` also
    matches ``refused`` (the call failed either way); ``model`` matches the model
    asked for or the one that served; ``since``/``until`` bound the start time
    (epoch seconds, ``until`` excluded).
    """

    team: str | None = None
    user: str | None = None
    key: str | None = None
    run: str | None = None
    trace: str | None = None
    kind: str | None = None
    status: str | None = None
    error_class: str | None = None
    model: str | None = None
    provider: str | None = None
    source: str | None = None
    since: float | None = None
    until: float | None = None
    attributes: tuple[AttributeFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class SpanPage:
    """One page of spans, newest first; ``next_cursor`` fetches the next (None: the last)."""

    spans: list[dict[str, Any]]
    next_cursor: str | None


def search(
    store: Store,
    visibility: Visibility,
    filters: SpanFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
) -> SpanPage:
    """Spans the caller may see that match ``filters``, newest first, ``limit`` at a time."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    if filters.kind is not None and filters.kind not in SPAN_KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(SPAN_KINDS)}, not {filters.kind!r}")
    texts = [v for v in astuple(filters) if isinstance(v, str)]
    texts += [t for a in filters.attributes for t in (a.path, a.value)]
    if any("\x00" in t for t in texts):  # no stored value holds one; PostgreSQL refuses them
        raise InvalidRequest("search filters may not contain NUL characters")
    query = select(*_SUMMARY_COLUMNS).where(visibility.spans_clause())
    if cursor is not None:
        start_ns, span_id = _decode_cursor(cursor)
        query = query.where(
            or_(
                spans.c.start_ns < start_ns,
                and_(spans.c.start_ns == start_ns, spans.c.span_id < span_id),
            )
        )
    with store.connect() as conn:
        query = query.where(*_conditions(conn, filters, store.is_sqlite))
        query = query.order_by(spans.c.start_ns.desc(), spans.c.span_id.desc()).limit(limit + 1)
        rows = [dict(row) for row in conn.execute(query).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return SpanPage(rows, _encode_cursor(last["start_ns"], last["span_id"]) if last else None)


def _conditions(conn: Connection, f: SpanFilter, sqlite: bool) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for value, column, table in (
        (f.team, spans.c.team_id, teams),
        (f.user, spans.c.user_id, users),
        (f.key, spans.c.key_id, keys_table),
    ):
        if value is not None:
            out.append(column.in_(_ids(conn, table, value)))
    if f.status == "error":  # a refused call failed too: the caller got an error back
        out.append(spans.c.status.in_(("error", "refused")))
    elif f.status is not None:
        out.append(spans.c.status == f.status)
    for value, column in (
        (f.run, spans.c.run_id),
        (f.trace, spans.c.trace_id),
        (f.kind, spans.c.kind),
        (f.error_class, spans.c.error_class),
        (f.provider, spans.c.provider),
        (f.source, spans.c.source),
    ):
        if value is not None:
            out.append(column == value)
    if f.model is not None:
        out.append(or_(spans.c.model_requested == f.model, spans.c.model_served == f.model))
    if f.since is not None:
        out.append(spans.c.start_ns >= _ns(f.since))
    if f.until is not None:
        out.append(spans.c.start_ns < _ns(f.until))
    out.extend(_attribute_clause(a, sqlite) for a in f.attributes)
    return out


def _ids(conn: Connection, table: Any, ref: str) -> list[str]:
    """The ids ``ref`` names: itself (an id) and whatever carries it as a name."""
    query = select(table.c.id).where(or_(table.c.id == ref, table.c.name == ref))
    return sorted({ref, *conn.execute(query).scalars()})


def _segments(path: str) -> list[tuple[str, bool]]:
    """A path split on dots outside double quotes: ``[(segment, quoted), ...]``."""
    out: list[tuple[str, bool]] = []
    for match in re.finditer(r'"([^"]*)"|([^."]+)', path):
        quoted, plain = match.groups()
        out.append((quoted, True) if quoted is not None else (plain, False))
    rebuilt = ".".join(f'"{s}"' if q else s for s, q in out)
    if not out or rebuilt != path or any(not s for s, _ in out) or len(path) > 500:
        raise InvalidRequest(
            f"invalid attribute path {_show(path)}: dot-separated keys; quote a key that "
            'holds dots ("gen_ai.tool.name")'
        )
    return out


def _readings(path: str) -> list[tuple[str, ...]]:
    """The key paths a dotted path may mean: nested keys, or flat keys holding dots
    (OpenTelemetry attributes are flat: ``gen_ai.tool.name``)."""
    segments = _segments(path)
    joinable = [i for i in range(len(segments) - 1) if not (segments[i][1] or segments[i + 1][1])]
    choices: Iterable[tuple[bool, ...]]
    if len(joinable) <= _MAX_JOINS:
        choices = product((False, True), repeat=len(joinable))
    else:  # too many to try all: the nested reading and the flat one
        choices = [(False,) * len(joinable), (True,) * len(joinable)]
    readings = []
    for choice in choices:
        joined = {i for i, join in zip(joinable, choice, strict=True) if join}
        keys = [segments[0][0]]
        for i in range(1, len(segments)):
            if i - 1 in joined:
                keys[-1] += "." + segments[i][0]
            else:
                keys.append(segments[i][0])
        readings.append(tuple(keys))
    return readings


def _attribute_clause(f: AttributeFilter, sqlite: bool) -> ColumnElement[bool]:
    """The attribute equals the value as text, or as the JSON number or boolean it spells."""
    return or_(*(_path_equals(keys, f.value, sqlite) for keys in _readings(f.path)))


def _path_equals(keys: tuple[str, ...], value: str, sqlite: bool) -> ColumnElement[bool]:
    element = spans.c.attributes[keys]
    options: list[ColumnElement[bool]] = [element.as_string() == value]
    number = _NUMBER.fullmatch(value) is not None
    if sqlite:
        # JSON_EXTRACT gives SQL values: numbers compare as numbers, true/false as 1/0.
        json_path = "$" + "".join(f'."{k}"' for k in keys)
        if number:
            decimal = Decimal(value)
            whole = decimal == decimal.to_integral_value() and abs(decimal) < 2**63
            as_number = int(decimal) if whole else float(value)
            options.append(func.json_extract(spans.c.attributes, json_path) == as_number)
        elif value in ("true", "false"):
            options.append(func.json_type(spans.c.attributes, json_path) == value)
    elif number:
        # PostgreSQL's JSON (not JSONB): compare numbers as numbers (5 matches 5.0).
        options.append(
            case(
                (
                    func.json_typeof(element) == "number",
                    cast(element.as_string(), Numeric) == literal(Decimal(value), Numeric),
                ),
                else_=false(),
            )
        )
    return or_(*options)


def _encode_cursor(start_ns: int, span_id: str) -> str:
    return base64.urlsafe_b64encode(f"{start_ns}:{span_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        start, span_id = raw.split(":")
        if not _SPAN_ID.fullmatch(span_id):
            raise ValueError(span_id)
        return int(start), span_id
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidRequest(
            "invalid cursor: pass the next_cursor of the previous page unchanged"
        ) from exc


# -- helpers ------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return min(max(int(seconds * 1e9), 0), _MAX_NS)


def _time(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def _show(value: str) -> str:
    """A caller's value quoted for an error message, cut short and made printable."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


def run_spans(store: Store, run_id: str, kinds: Iterable[str], limit: int) -> list[dict[str, Any]]:
    """A run's spans of ``kinds`` in start order, the first ``limit`` of them, as the store
    holds them (columns by name). For services that have already decided the caller may see
    the run (a review's evidence check); agent-reported spans are hostile data."""
    query = (
        select(spans)
        .where(spans.c.run_id == run_id, spans.c.kind.in_(list(kinds)))
        .order_by(spans.c.start_ns, spans.c.span_id)
        .limit(limit)
    )
    with store.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
