"""Usage roll-ups: spend, tokens, requests, errors and latency, grouped any way.

Reads the hourly ``span_rollups`` (and ``span_latency``) for the whole hours
inside the window and the raw ``llm_request`` spans (duplicates left out) for
the partial hours at its edges, so sums are exact for any window. The sums
are what the gateway metered; what agents reported over OTLP comes beside
them as ``reported`` and is never added in. Latency percentiles come from the
roll-ups' log-spaced histogram, within 4 % of the true ones
(``corral.traces.rollup``). Filtered by the caller's ``Visibility`` like every
trajectory query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    case,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from corral.errors import InvalidRequest
from corral.store import Store
from corral.store.schema import keys as keys_table
from corral.store.schema import span_latency, span_rollups, spans, teams, users
from corral.traces.query import _DAY_S, _MAX_NS, Visibility, _ns, _show, _time
from corral.traces.rollup import (
    HOUR_NS,
    LATENCY_BOUNDS_NS,
    REPORTED_COLUMNS,
    SUM_COLUMNS,
    TOKEN_COLUMNS,
    percentile,
)
from corral.traces.spans import GATEWAY

Dimension = Literal["team", "user", "key", "model", "provider", "day", "hour"]
DIMENSIONS: tuple[Dimension, ...] = ("team", "user", "key", "model", "provider", "day", "hour")


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals of LLM calls for one combination of the grouping dimensions.

    ``group`` holds ``(dimension, label, id)`` in the order asked: the label is
    what people read (team, user or key name, model, provider, day, hour), the
    id the value behind it (``None`` for models, providers and times, and for
    spans recorded without that part of the identity chain). ``requests``
    leaves out calls refused at admission, which are counted in ``refused``.
    Every figure is what the gateway metered; ``reported`` holds what agents
    reported over OTLP for calls the gateway has no record of (requests,
    tokens, ``cost_nusd``): shown beside the spend, never part of it.
    ``latency_buckets`` maps a bucket of ``corral.traces.rollup`` to its count.
    """

    group: tuple[tuple[str, str, str | None], ...]
    requests: int
    errors: int
    cancelled: int
    refused: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_nusd: int
    latency_ms_sum: float
    latency_buckets: dict[int, int]
    reported: dict[str, int]

    @property
    def cost_usd(self) -> float:
        """Cost in USD, rounded to the nano-dollar the store counts in."""
        return round(self.cost_nusd / 1e9, 9)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_ms(self, q: float) -> float | None:
        """The ``q`` quantile of latency by nearest rank, to four significant digits."""
        value = percentile(self.latency_buckets, q)
        return None if value is None else float(f"{value:.4g}")

    def to_dict(self) -> dict[str, Any]:
        """The row as the API and ``corral usage --json`` show it."""
        out: dict[str, Any] = {}
        for dimension, label, group_id in self.group:
            out[dimension] = label
            if dimension in ("team", "user", "key"):
                out[f"{dimension}_id"] = group_id
        out.update(
            requests=self.requests,
            errors=self.errors,
            error_rate=round(self.error_rate, 4),
            cancelled=self.cancelled,
            refused=self.refused,
            input_tokens=self.input_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens,
            output_tokens=self.output_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost_usd=self.cost_usd,
            latency_p50_ms=self.latency_ms(0.5),
            latency_p95_ms=self.latency_ms(0.95),
            latency_p99_ms=self.latency_ms(0.99),
            reported=self.reported_dict(),
        )
        return out

    def reported_dict(self) -> dict[str, Any]:
        """``reported`` as the API shows it: counts, and the cost in USD."""
        out: dict[str, Any] = {k: v for k, v in self.reported.items() if k != "cost_nusd"}
        out["cost_usd"] = round(self.reported.get("cost_nusd", 0) / 1e9, 9)
        return out


_COUNT_COLUMNS = ("requests", "errors", "cancelled", "refused", *TOKEN_COLUMNS, "cost_nusd")


def parse_dimensions(by: str | Sequence[str]) -> tuple[Dimension, ...]:
    """``"team,model,day"`` (or a list) as dimensions, in order, each once."""
    names = [p.strip() for p in (by.split(",") if isinstance(by, str) else by)]
    out: list[Dimension] = []
    for name in names:
        if name not in DIMENSIONS:
            raise InvalidRequest(
                f"cannot group usage by {_show(name)}: use one or more of "
                f"{', '.join(DIMENSIONS)}, separated by commas"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise InvalidRequest(f"group usage by at least one of {', '.join(DIMENSIONS)}")
    return tuple(out)


def usage(
    store: Store,
    visibility: Visibility,
    by: str | Sequence[str],
    since: float,
    until: float | None = None,
    *,
    team_id: str | None = None,
) -> list[UsageRow]:
    """LLM-call totals in ``[since, until)`` (epoch seconds; no end by default) grouped
    by ``by``.

    Whole hours come from the roll-ups, the partial hours at either edge from
    the raw spans, so sums are exact for any window. Rows with a time dimension
    come in time order, the rest most expensive first.
    """
    dims = parse_dimensions(by)
    lo, hi = _ns(since), _MAX_NS if until is None else _ns(until)
    if hi < lo:
        raise InvalidRequest("until must not be before since")
    base = _base_dimensions(dims)
    totals: dict[tuple[Any, ...], list[float]] = {}
    latency: dict[tuple[Any, ...], dict[int, int]] = {}
    first_hour = -(-lo // HOUR_NS) * HOUR_NS
    last_hour = hi // HOUR_NS * HOUR_NS
    with store.connect() as conn:
        if visibility.run_id is not None or first_hour >= last_hour:
            ranges = [(lo, hi)]  # a run's spans are few, and roll-ups know no runs
        else:
            ranges = [(lo, first_hour), (last_hour, hi)]
            whole = (visibility, first_hour, last_hour, team_id, _by_day(dims))
            _merge(totals, dims, base, conn.execute(_rollup_query(base, *whole)))
            _merge_latency(latency, dims, base, conn.execute(_rollup_latency(base, *whole)))
        for start, end in ranges:
            if start < end:
                window = (visibility, start, end, team_id)
                _merge(totals, dims, base, conn.execute(_raw_query(base, *window)))
                _merge_latency(latency, dims, base, conn.execute(_raw_latency(base, *window)))
        labels = _labels(conn, dims)
    rows = [
        _usage_row(dims, key, sums, latency.get(key, {}), labels) for key, sums in totals.items()
    ]
    timed = [i for i, d in enumerate(dims) if d in ("day", "hour")]
    rows.sort(
        key=lambda r: (
            [r.group[i][1] for i in timed],
            -r.cost_nusd,
            -r.requests,
            [g[1] for g in r.group],
        )
    )
    return rows


def run_calls(store: Store, run_id: str) -> tuple[int, int]:
    """The LLM calls the gateway metered for run ``run_id``, and their cost in nano-USD.

    Only the gateway's records count: what the run's agent reported over OTLP is a claim.
    """
    query = select(func.count(), func.coalesce(func.sum(spans.c.cost_nusd), 0)).where(
        spans.c.run_id == run_id,
        spans.c.kind == "llm_request",
        spans.c.source == GATEWAY,
    )
    with store.connect() as conn:
        calls, cost = conn.execute(query).one()
    return int(calls), int(cost)


@dataclass(frozen=True, slots=True)
class ProviderHour:
    """The upstream attempts the gateway made to one provider in one hour (``hour``: epoch
    seconds // 3600), on its reserved capacity (``reserved``) or past it, and their tokens."""

    provider: str
    hour: int
    reserved: bool
    attempts: int
    tokens: int


def provider_attempts(store: Store, providers: Iterable[str], since: float) -> list[ProviderHour]:
    """Attempts to each of ``providers`` started at or after ``since`` (epoch seconds), by
    hour and by whether the contract's reserved capacity priced them (``cost_source``)."""
    wanted = sorted(set(providers))
    if not wanted:
        return []
    tokens = sum((spans.c[name] for name in TOKEN_COLUMNS[1:]), spans.c[TOKEN_COLUMNS[0]])
    hour = spans.c.start_ns // HOUR_NS
    reserved = spans.c.cost_source == "contract"
    query = (
        select(spans.c.provider, hour, reserved, func.count(), func.coalesce(func.sum(tokens), 0))
        .where(
            spans.c.kind == "attempt",
            spans.c.source == GATEWAY,  # attempts the gateway made, not what agents report
            spans.c.provider.in_(wanted),
            spans.c.start_ns >= int(since * 1e9),
        )
        .group_by(spans.c.provider, hour, reserved)
    )
    with store.connect() as conn:
        rows = conn.execute(query).fetchall()
    return [
        ProviderHour(provider, int(h), bool(flag), int(attempts), int(total))
        for provider, h, flag, attempts, total in rows
    ]


def _base_dimensions(dims: Sequence[Dimension]) -> tuple[str, ...]:
    """The columns to group by in SQL: the identity ones asked for, and the hour for times."""
    out = [d for d in dims if d not in ("day", "hour")]
    if "day" in dims or "hour" in dims:
        out.append("hour")
    return tuple(out)


def _by_day(dims: Sequence[Dimension]) -> bool:
    """Whether whole days are the finest time asked for: the roll-ups are then summed by day
    in SQL (UTC days, as ``_key`` makes them), 24 times fewer rows than by hour."""
    return "day" in dims and "hour" not in dims


def _rollup_groups(table: Table, base: Sequence[str], by_day: bool) -> list[ColumnElement[Any]]:
    hour = table.c.hour
    columns = {
        "team": table.c.team_id,
        "user": table.c.user_id,
        "key": table.c.key_id,
        "model": table.c.model,
        "provider": table.c.provider,
        "hour": (hour - hour % _DAY_S) if by_day else hour,
    }
    return [columns[d] for d in base]


def _rollup_where(
    table: Table, vis: Visibility, first_ns: int, last_ns: int, team_id: str | None
) -> list[ColumnElement[bool]]:
    where = [
        table.c.hour >= first_ns // 1_000_000_000,
        table.c.hour < last_ns // 1_000_000_000,
        vis.rollups_clause(table),
    ]
    if team_id is not None:
        where.append(table.c.team_id == team_id)
    return where


def _rollup_query(
    base: Sequence[str],
    vis: Visibility,
    first_ns: int,
    last_ns: int,
    team_id: str | None,
    by_day: bool,
) -> Select[Any]:
    groups = _rollup_groups(span_rollups, base, by_day)
    sums = [func.coalesce(func.sum(span_rollups.c[name]), 0) for name in SUM_COLUMNS]
    query = select(*groups, *sums).where(
        *_rollup_where(span_rollups, vis, first_ns, last_ns, team_id)
    )
    return query.group_by(*groups) if groups else query


def _rollup_latency(
    base: Sequence[str],
    vis: Visibility,
    first_ns: int,
    last_ns: int,
    team_id: str | None,
    by_day: bool,
) -> Select[Any]:
    groups = [*_rollup_groups(span_latency, base, by_day), span_latency.c.bucket]
    query = select(*groups, func.sum(span_latency.c.count))
    query = query.where(*_rollup_where(span_latency, vis, first_ns, last_ns, team_id))
    return query.group_by(*groups)


def _raw_groups(base: Sequence[str]) -> list[ColumnElement[Any]]:
    columns = {
        "team": func.coalesce(spans.c.team_id, ""),
        "user": func.coalesce(spans.c.user_id, ""),
        "key": func.coalesce(spans.c.key_id, ""),
        "model": func.coalesce(
            func.nullif(spans.c.model_requested, ""), func.nullif(spans.c.model_served, ""), ""
        ),
        "provider": func.coalesce(spans.c.provider, ""),
        "hour": (spans.c.start_ns // HOUR_NS) * 3600,
    }
    return [columns[d] for d in base]


def _raw_where(
    vis: Visibility, start_ns: int, end_ns: int, team_id: str | None
) -> list[ColumnElement[bool]]:
    where = [
        spans.c.kind == "llm_request",
        spans.c.duplicate_of.is_(None),
        spans.c.start_ns >= start_ns,
        spans.c.start_ns < end_ns,
        vis.spans_clause(),
    ]
    if team_id is not None:
        where.append(spans.c.team_id == team_id)
    return where


def _raw_query(
    base: Sequence[str], vis: Visibility, start_ns: int, end_ns: int, team_id: str | None
) -> Select[Any]:
    """The roll-up sums computed from the ``llm_request`` spans themselves, as the writer
    computes them (``corral.traces.rollup.Deltas``)."""
    groups = _raw_groups(base)
    query = select(*groups, *_raw_sums()).where(*_raw_where(vis, start_ns, end_ns, team_id))
    return query.group_by(*groups) if groups else query


def _raw_latency(
    base: Sequence[str], vis: Visibility, start_ns: int, end_ns: int, team_id: str | None
) -> Select[Any]:
    """The latency histogram of the metered calls, bucketed in SQL as ``rollup.bucket_of``."""
    bucket = _bucket_case(spans.c.end_ns - spans.c.start_ns, 0, len(LATENCY_BOUNDS_NS))
    groups = [*_raw_groups(base), bucket]
    query = select(*groups, func.count()).where(
        *_raw_where(vis, start_ns, end_ns, team_id), _METERED, spans.c.status != "refused"
    )
    return query.group_by(*groups)


def _bucket_case(took: ColumnElement[Any], low: int, high: int) -> ColumnElement[Any]:
    """The bucket in ``[low, high]`` holding ``took`` ns: a binary search as nested CASEs
    (SQLite has no logarithm), about nine comparisons a row. Literal numbers, not bound
    parameters, so the same text can be grouped by on PostgreSQL."""
    if low == high:
        return literal_column(str(low))
    middle = (low + high) // 2
    bound: ColumnElement[Any] = literal_column(str(LATENCY_BOUNDS_NS[middle]))
    return case(
        (took <= bound, _bucket_case(took, low, middle)),
        else_=_bucket_case(took, middle + 1, high),
    )


_METERED = or_(spans.c.source.is_(None), spans.c.source == GATEWAY)


def _raw_sums() -> list[ColumnElement[Any]]:
    """SUM_COLUMNS over raw spans; latency is summed in ns (scaled to ms when merged)."""
    served = and_(_METERED, spans.c.status != "refused")
    took = spans.c.end_ns - spans.c.start_ns

    def total(condition: ColumnElement[bool], value: Any = 1) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((condition, value), else_=0)), 0)

    reported = ~_METERED
    return [
        total(served),
        total(and_(served, spans.c.status == "error")),
        total(and_(served, spans.c.status == "cancelled")),
        total(and_(_METERED, spans.c.status == "refused")),
        *(total(served, spans.c[name]) for name in TOKEN_COLUMNS),
        total(served, spans.c.cost_nusd),
        total(and_(served, took > 0), took * 1e-6),
        total(reported),
        *(total(reported, spans.c[name]) for name in (*TOKEN_COLUMNS, "cost_nusd")),
    ]


def _key(dims: Sequence[Dimension], base: Sequence[str], row: Any) -> tuple[Any, ...]:
    values = dict(zip(base, row[: len(base)], strict=True))
    hour = int(values.get("hour") or 0)
    return tuple(
        hour // _DAY_S * _DAY_S if d == "day" else hour if d == "hour" else values[d] or ""
        for d in dims
    )


def _merge(
    totals: dict[tuple[Any, ...], list[float]],
    dims: Sequence[Dimension],
    base: Sequence[str],
    rows: Iterable[Any],
) -> None:
    width = len(base)
    for row in rows:
        key = _key(dims, base, row)
        acc = totals.get(key)
        if acc is None:
            acc = totals[key] = [0] * len(SUM_COLUMNS)
        for i, value in enumerate(row[width:]):
            acc[i] += value or 0


def _merge_latency(
    latency: dict[tuple[Any, ...], dict[int, int]],
    dims: Sequence[Dimension],
    base: Sequence[str],
    rows: Iterable[Any],
) -> None:
    width = len(base)
    for row in rows:
        histogram = latency.setdefault(_key(dims, base, row), {})
        bucket, count = int(row[width]), int(row[width + 1] or 0)
        histogram[bucket] = histogram.get(bucket, 0) + count


def _labels(conn: Connection, dims: Sequence[Dimension]) -> dict[str, dict[str, str]]:
    """Readable names for grouping ids; identity tables are small enough to read whole."""
    out: dict[str, dict[str, str]] = {}
    if "team" in dims:
        out["team"] = {r.id: r.name for r in conn.execute(select(teams.c.id, teams.c.name))}
    if "user" in dims:
        out["user"] = {r.id: r.name for r in conn.execute(select(users.c.id, users.c.name))}
    if "key" in dims:
        rows = conn.execute(select(keys_table.c.id, keys_table.c.name, keys_table.c.prefix))
        out["key"] = {r.id: r.name or f"{r.prefix}…" for r in rows}
    return out


def _usage_row(
    dims: Sequence[Dimension],
    key: tuple[Any, ...],
    sums: list[float],
    latency: dict[int, int],
    labels: dict[str, dict[str, str]],
) -> UsageRow:
    group: list[tuple[str, str, str | None]] = []
    for dimension, value in zip(dims, key, strict=True):
        if dimension == "day":
            group.append((dimension, _time(value).strftime("%Y-%m-%d"), None))
        elif dimension == "hour":
            group.append((dimension, _time(value).strftime("%Y-%m-%dT%H:00:00Z"), None))
        elif dimension in ("model", "provider"):
            group.append((dimension, value or "(none)", None))
        elif value:
            group.append((dimension, labels[dimension].get(value, value), value))
        else:
            group.append((dimension, "(none)", None))
    named = dict(zip(SUM_COLUMNS, sums, strict=True))
    return UsageRow(
        group=tuple(group),
        **{name: int(named[name]) for name in _COUNT_COLUMNS},
        latency_ms_sum=float(named["latency_ms_sum"]),
        latency_buckets={bucket: n for bucket, n in sorted(latency.items()) if n > 0},
        reported={name.removeprefix("reported_"): int(named[name]) for name in REPORTED_COLUMNS},
    )
