"""Latency percentiles are real: within 5 % of the true (nearest-rank) ones, from 0.1 ms to
10 minutes, merged across roll-up rows and raw spans as the usage query merges them.

Before, any set of ~1 ms calls reported p50 25 ms / p95 47.5 / p99 49.5: interpolation
inside a 0–50 ms bucket.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.store import Store
from corral.traces.query import Visibility
from corral.traces.rollup import HOUR_NS, LATENCY_ERROR, bucket_of, percentile
from corral.traces.spans import SPAN_DEFAULTS, new_span_id, new_trace_id
from corral.traces.usage import usage
from corral.traces.writer import SpanWriter

QUANTILES = ("0.5", "0.95", "0.99")
LOW_NS, HIGH_NS = 100_000, 600 * 10**9  # 0.1 ms … 10 min


def true_percentile(durations_ns: list[int], q: str) -> float:
    """Nearest rank, in ms: the ceil(q·n)-th smallest duration."""
    ordered = sorted(durations_ns)
    rank = max(1, math.ceil(Fraction(q) * len(ordered)))
    return ordered[rank - 1] / 1e6


def close(got: float | None, want: float, tolerance: float = 0.05) -> bool:
    return got is not None and abs(got - want) <= tolerance * want


log_durations = st.floats(math.log(LOW_NS), math.log(HIGH_NS)).map(lambda x: round(math.exp(x)))


@settings(max_examples=300, deadline=None)
@given(st.lists(log_durations, min_size=1, max_size=400))
def test_histogram_percentiles_are_within_five_percent(durations: list[int]) -> None:
    """Any durations from 0.1 ms to 10 min: p50, p95 and p99 within 5 % (3.85 % by design)."""
    histogram = Counter(bucket_of(d) for d in durations)
    for q in QUANTILES:
        want = true_percentile(durations, q)
        got = percentile(histogram, float(q))
        assert close(got, want, LATENCY_ERROR + 1e-6), (q, got, want)


def _row(start_ns: int, took_ns: int, team: str) -> dict[str, object]:
    row = SPAN_DEFAULTS.copy()
    row.update(
        span_id=new_span_id(),
        trace_id=new_trace_id(),
        kind="llm_request",
        name="chat sim-economy",
        status="ok",
        org_id="org_1",
        team_id=team,
        user_id="user_1",
        key_id="key_1",
        model_requested="sim-economy",
        provider="sim",
        source="gateway",
        start_ns=start_ns,
        end_ns=start_ns + took_ns,
    )
    return row


def test_usage_reports_true_percentiles_over_rollups_and_raw_edges(store: Store) -> None:
    """Seeded random durations over three hours, read through a window that starts and ends
    mid-hour (roll-ups for the whole hour, raw spans at the edges): each figure is within
    5 % of the true percentile of exactly the calls in the window; ~1 ms calls read ~1 ms."""
    rng = random.Random(12)
    writer = SpanWriter(store, blobs=None, max_body_bytes=1_000)
    hour = (time.time_ns() // HOUR_NS - 5) * HOUR_NS
    spread = []
    for _ in range(600):
        start = hour + rng.randrange(3 * HOUR_NS)
        took = round(math.exp(rng.uniform(math.log(LOW_NS), math.log(HIGH_NS))))
        spread.append((start, took))
    fast = [
        (hour + rng.randrange(3 * HOUR_NS), rng.randrange(900_000, 1_100_000)) for _ in range(300)
    ]
    writer.write([_row(s, t, "team_spread") for s, t in spread])
    writer.write([_row(s, t, "team_fast") for s, t in fast])
    since, until = hour + HOUR_NS // 3, hour + 3 * HOUR_NS - HOUR_NS // 4
    rows = {r.group[0][1]: r for r in usage(store, Visibility(), "team", since / 1e9, until / 1e9)}
    for team, calls in (("team_spread", spread), ("team_fast", fast)):
        inside = [took for start, took in calls if since <= start < until]
        assert rows[team].requests == len(inside)
        for q in QUANTILES:
            want = true_percentile(inside, q)
            got = rows[team].latency_ms(float(q))
            assert close(got, want), (team, q, got, want)
    assert rows["team_fast"].latency_ms(0.99) < 1.2  # not 49.5 ms
