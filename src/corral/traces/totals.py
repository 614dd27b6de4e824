"""Totals of a trajectory: every LLM call its tree shows, each once, metered or reported.

A call the gateway recorded is *metered* (what spends budgets); one an agent reported over
OTLP with no gateway record in sight is *reported*. An agent's report of a call the gateway
also recorded (``duplicate_of``) counts as that record, also when the record sits in
another trace: an agent that propagates no ``traceparent`` (Claude Code) has its turn in a
trace of its own, and its calls must still add up there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.traces.spans import GATEWAY


@dataclass(frozen=True, slots=True)
class CallTotals:
    """LLM calls, their tokens and their cost."""

    llm_calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nusd: int = 0


_CALL_FIELDS = CallTotals.__slots__[1:]  # the sums after llm_calls


@dataclass(frozen=True, slots=True)
class TreeTotals:
    """Totals of a trajectory: every LLM call the tree shows, each once, split into what
    the gateway ``metered`` (its records: what spends) and what agents ``reported`` with no
    gateway record to be seen. An agent's call the gateway also recorded (``duplicate_of``)
    counts as that record, also when the record is in another trace (an agent that
    propagates no ``traceparent``); the top-level sums are the two together."""

    spans: int
    llm_calls: int
    errors: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_nusd: int
    start_ns: int
    end_ns: int
    metered: CallTotals = CallTotals()
    reported: CallTotals = CallTotals()


def tree_totals(
    fields: Sequence[str], rows: Sequence[Sequence[Any]], elsewhere: Mapping[str, Sequence[Any]]
) -> TreeTotals:
    """The totals of a tree's ``rows`` (tuples of ``fields``); ``elsewhere``: the gateway
    records, by span id, that agent calls of ``rows`` duplicate from outside the tree."""
    at = {name: i for i, name in enumerate(fields)}
    kind, status, duplicate_of = at["kind"], at["status"], at["duplicate_of"]
    source, team = at["source"], at["team_id"]
    ids = {row[0] for row in rows}
    unclaimed = dict(elsewhere)
    metered: list[Sequence[Any]] = []
    reported: list[Sequence[Any]] = []
    for row in rows:
        if row[kind] != "llm_request":
            continue
        record = row[duplicate_of]
        if row[source] in (None, GATEWAY):
            metered.append(row)
        elif record is None:
            reported.append(row)
        elif record in ids:
            continue  # the gateway's record is in the tree: counted there
        elif record in unclaimed and unclaimed[record][team] == row[team]:
            metered.append(unclaimed.pop(record))  # claimed once
        else:
            reported.append(row)  # its record is out of sight: count what the tree shows
    meter, report = _call_totals(at, metered), _call_totals(at, reported)
    sums = {
        name: getattr(meter, name) + getattr(report, name) for name in ("llm_calls", *_CALL_FIELDS)
    }
    start, end = at["start_ns"], at["end_ns"]
    return TreeTotals(
        spans=len(rows),
        errors=sum(1 for row in rows if row[status] == "error" and not row[duplicate_of]),
        start_ns=min([row[start] for row in rows]),
        end_ns=max([row[end] for row in rows]),
        metered=meter,
        reported=report,
        **sums,
    )


def _call_totals(at: dict[str, int], calls: Sequence[Sequence[Any]]) -> CallTotals:
    sums = {name: sum([row[at[name]] for row in calls]) for name in _CALL_FIELDS}
    return CallTotals(llm_calls=len(calls), **sums)
