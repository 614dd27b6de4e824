"""One batch of spans into the store: bodies out to the blob store, duplicates marked,
roll-ups kept, all in one transaction; then handed to the exporter.

Runs in the recorder's worker thread, never on the request path. The order
matters: bodies are written (idempotently, by span id) before the rows that
point at them commit, so a stored span never refers to a body that was never
written; a batch that fails is retried whole.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, bindparam, delete, select, update

from corral.errors import CorralError
from corral.store import Store
from corral.store.schema import spans
from corral.traces import dedupe, rollup
from corral.traces.blobs import BlobBackend, Part
from corral.traces.redact import body_metadata, prepare_body
from corral.traces.spans import BODY_KEYS, CORRAL_SOURCES, written_by_corral

log = logging.getLogger(__name__)

BODY_MODE = "_body_mode"  # transient row key: "full" or "metadata", set by whoever attached bodies
_PARTS: tuple[tuple[str, Part, str], ...] = (
    ("_request_body", "request", "request_blob"),
    ("_response_body", "response", "response_blob"),
)


class Sink(Protocol):
    """Something that receives every batch once it is stored (the OTLP exporter)."""

    def offer(self, rows: Sequence[Mapping[str, Any]]) -> None: ...


class SpanWriter:
    """Stores batches of span rows; called from one worker thread at a time."""

    def __init__(
        self,
        store: Store,
        *,
        blobs: BlobBackend | None,
        max_body_bytes: int,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._max_body = max_body_bytes
        self._insert = _insert_sqlite if store.is_sqlite else _insert_postgres
        self._matcher = dedupe.Matcher()
        self.sinks: list[Sink] = []

    def write(self, rows: list[dict[str, Any]], *, check_existing: bool = False) -> int:
        """Store ``rows``; returns how many were new. ``check_existing``: some of them may
        already be stored (a replayed journal, a retried batch) and must not count twice."""
        if not rows:
            return 0
        for row in rows:
            if any(k in row for k in BODY_KEYS):
                self._store_bodies(row)
        with self._store.begin() as conn:
            rows, evicted = _claim_ids(conn, rows, check_all=check_existing)
            if not rows:
                return 0
            marked = self._matcher.match(conn, rows)
            if evicted:
                _evict(conn, evicted)
            self._insert(conn, rows)
            deltas = rollup.contributions(rows).add(evicted, sign=-1)
            if marked:
                deltas.add(_mark(conn, marked), sign=-1)
            rollup.apply(conn, self._store.is_sqlite, deltas)
        for sink in self.sinks:
            try:
                sink.offer(rows)
            except Exception:  # an exporter must never fail the store
                log.exception("a span sink refused a batch")
        return len(rows)

    def _store_bodies(self, row: dict[str, Any]) -> None:
        """Redact, cap and write the row's bodies (or keep only their shape), in place.

        A body that cannot be kept (a full disk, or a fault of ours in handling it) is
        logged and marked ``lost`` on the span: a bad body must never hold spans back.
        """
        mode = row.pop(BODY_MODE, "full")
        dropped = row.pop("_response_dropped", 0)
        meta: dict[str, Any] = {}
        for key, part, column in _PARTS:
            text = row.pop(key, None)
            if not text:
                continue
            try:
                if mode == "metadata" or self._blobs is None:
                    meta[part] = body_metadata(text)
                    continue
                cut = dropped if part == "response" else 0
                prepared = prepare_body(text, max_bytes=self._max_body, dropped=cut)
                blob_key = self._blobs.key_for(
                    row.get("team_id"), row["start_ns"], row["span_id"], part
                )
                self._blobs.put(blob_key, prepared.data)
            except CorralError as exc:  # a full disk
                log.error("span %s: %s body not stored: %s", row["span_id"], part, exc.message)
                meta[part] = {"lost": exc.message}
                continue
            except Exception as exc:  # never retry a batch for ever over one body
                log.exception("span %s: %s body not stored", row["span_id"], part)
                meta[part] = {"lost": f"{exc.__class__.__name__}: {exc}"}
                continue
            row[column] = blob_key
            meta[part] = prepared.meta
        if meta:
            attrs = dict(row.get("attributes") or {})
            attrs["bodies"] = meta
            row["attributes"] = attrs


# What deciding who owns a stored span id needs, and what taking its row out of the
# roll-ups needs (``rollup.contributions``).
_CLAIM_COLUMNS = [
    spans.c[name]
    for name in (
        "span_id", "source", "kind", "status", "duplicate_of", "start_ns", "end_ns", "org_id",
        "team_id", "user_id", "key_id", "model_requested", "model_served", "provider",
        *rollup.TOKEN_COLUMNS, "cost_nusd",
    )
]  # fmt: skip


def _claim_ids(
    conn: Connection, rows: list[dict[str, Any]], *, check_all: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the batch to insert, and the stored agent rows they take the ids of.

    A span id belongs to whoever stored it first, except that a row Corral writes itself
    (the gateway's records, a run's root span) always owns its id: an agent's row holding
    it, stored earlier, is evicted (deleted, its roll-up share taken back), and an agent's
    row arriving later is dropped. So an agent can neither overwrite Corral's span nor
    pre-empt it by sending the id first (a run's root span id is derived from the run id).
    Rows already stored (a resent OTLP payload, a replayed journal) are dropped rather than
    left to the insert to ignore, so the roll-ups count each row once. ``check_all``: look
    up every row (a replay); otherwise only those that count in roll-ups or are Corral's.
    """
    batch: dict[str, dict[str, Any]] = {}
    for row in rows:  # within the batch: one row an id, Corral's first
        held = batch.get(row["span_id"])
        if held is None or (written_by_corral(row) and not written_by_corral(held)):
            batch[row["span_id"]] = row
    ids = [
        span_id
        for span_id, row in batch.items()
        if check_all or row["kind"] == "llm_request" or written_by_corral(row)
    ]
    evicted: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        query = select(*_CLAIM_COLUMNS).where(spans.c.span_id.in_(ids[start : start + 500]))
        for found in conn.execute(query).mappings():
            stored = dict(found)
            span_id = stored["span_id"]
            if written_by_corral(batch[span_id]) and not written_by_corral(stored):
                evicted.append(stored)
            else:
                del batch[span_id]
    if len(batch) == len(rows):
        return rows, evicted
    return list(batch.values()), evicted


def _evict(conn: Connection, evicted: list[dict[str, Any]]) -> None:
    ids = [row["span_id"] for row in evicted]
    log.warning("span ids written by Corral were held by agent spans: %s", ", ".join(ids[:10]))
    for start in range(0, len(ids), 500):
        conn.execute(delete(spans).where(spans.c.span_id.in_(ids[start : start + 500])))


_MARK = (
    update(spans)
    .where(
        spans.c.span_id == bindparam("agent_span"),
        spans.c.duplicate_of.is_(None),
        # an agent's row only: the id may have gone to Corral's own row since (``_claim_ids``)
        spans.c.source.is_not(None),
        spans.c.source.not_in(sorted(CORRAL_SOURCES)),
    )
    .values(duplicate_of=bindparam("gateway_span"))
)


def _mark(conn: Connection, marked: dedupe.Marked) -> list[dict[str, Any]]:
    """Point already-stored agent rows at the gateway record they duplicate; return those
    this statement changed (another writer may have marked one first: count it once)."""
    changed = []
    for span_id, (row, gateway_span) in marked.items():
        result = conn.execute(_MARK, {"agent_span": span_id, "gateway_span": gateway_span})
        if result.rowcount:
            changed.append(row)
    return changed


_COLUMNS = tuple(str(column.name) for column in spans.columns)
_JSON_COLUMNS = frozenset(str(c.name) for c in spans.columns if c.type.__class__.__name__ == "JSON")


_NAMES = ", ".join(_COLUMNS)
_CORRAL = ", ".join(f"'{source}'" for source in sorted(CORRAL_SOURCES))
# ``_claim_ids`` evicted agent rows holding Corral's ids; another process may have stored
# one since, so a row of Corral's still replaces an agent's here (never the other way).
_PG_INSERT = (
    f"INSERT INTO spans ({_NAMES}) VALUES ({', '.join('%s' for _ in _COLUMNS)}) "  # noqa: S608
    "ON CONFLICT (span_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in _COLUMNS if name != "span_id")
    + f" WHERE spans.source NOT IN ({_CORRAL}) AND EXCLUDED.source IN ({_CORRAL})"
)
# SQLite: many rows a statement. ``executemany`` steps once a row and releases the GIL around
# each step; under load the event loop holds it and every re-acquisition waits up to the
# switch interval (5 ms), starving the writer. One statement of 500 rows steps once.
_SQLITE_ROWS = 500  # 500 x 44 columns stays under SQLite's 32,766 variables


@functools.cache
def _sqlite_insert(rows: int) -> str:
    group = "(" + ", ".join("?" for _ in _COLUMNS) + ")"
    values = ", ".join(group for _ in range(rows))
    return f"INSERT OR IGNORE INTO spans ({_NAMES}) VALUES {values}"  # noqa: S608 - fixed names


def _insert_sqlite(conn: Connection, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), _SQLITE_ROWS):
        chunk = rows[start : start + _SQLITE_ROWS]
        params = [value for row in chunk for value in _as_tuple(row)]
        conn.exec_driver_sql(_sqlite_insert(len(chunk)), tuple(params))


def _insert_postgres(conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.exec_driver_sql(_PG_INSERT, [_as_tuple(row) for row in rows])


_ALL_COLUMNS = operator.itemgetter(*_COLUMNS)
_JSON_AT = tuple(i for i, name in enumerate(_COLUMNS) if name in _JSON_COLUMNS)


def _as_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row as the plain tuple ``executemany`` takes: the driver's fast path. Rows are built
    from ``SPAN_DEFAULTS`` so every column is there; a row journaled by an older version may
    lack newer columns, and takes the slow path."""
    try:
        values: tuple[Any, ...] = _ALL_COLUMNS(row)
    except KeyError:
        values = tuple(row.get(name) for name in _COLUMNS)
    if any(values[i] is not None for i in _JSON_AT):
        out = list(values)
        for i in _JSON_AT:
            if out[i] is not None:
                out[i] = orjson.dumps(out[i]).decode()
        return tuple(out)
    return values
