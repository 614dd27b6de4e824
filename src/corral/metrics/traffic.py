"""What this process's gateway served: request, token, cost, latency and error counters.

``Traffic.observe`` is on the request path (once per span row the gateway
records), so it only bumps plain dict and list counters in place; the
Prometheus families are built from them at scrape time by ``collect``.
Label values are bounded: ``team`` takes at most ``max_teams`` distinct names
(later teams count as ``other``), ``model`` only the catalog's public model and
tier names (anything else counts as ``other``); providers, deployments and
error classes come from the catalog and the gateway's own error vocabulary.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

OTHER = "other"
NO_TEAM = "none"

# Prometheus interpolates quantiles linearly within a bucket (histogram_quantile), so the
# low end is fine enough that calls of a millisecond or two (a cache, a local model) read
# as such, not as half of a first 0-50 ms bucket. The usage API's percentiles come from the
# roll-ups' own log-spaced histogram (corral.traces.rollup), exact to a few per cent.
DURATION_BOUNDS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5, 4.0,
    6.0, 10.0, 15.0, 30.0, 60.0, 120.0,
)  # fmt: skip
TTFT_BOUNDS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
    60.0,
)  # fmt: skip
OVERHEAD_BOUNDS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

STATUSES = ("ok", "error", "cancelled", "refused")
TOKEN_TYPES = ("input", "cached_input", "cache_write", "output", "reasoning")
_STATUS_SLOT = {status: i for i, status in enumerate(STATUSES)}
_OTHER_SLOT = len(STATUSES)
_TOKEN_SLOT = _OTHER_SLOT + 1
_COST_SLOT = _TOKEN_SLOT + len(TOKEN_TYPES)
# A defence, not a limit anyone should meet: error classes are the gateway's own codes.
MAX_ERROR_CLASSES = 64

_NUSD_PER_USD = 1e9


class _Key(Protocol):
    @property
    def team_name(self) -> str | None: ...


class _Finished(Protocol):
    """What a gateway call listener is given (``corral.gateway.hooks.FinishedCall``)."""

    @property
    def key(self) -> _Key: ...

    @property
    def rows(self) -> tuple[Mapping[str, Any], ...]: ...


class Histogram:
    """Fixed buckets, kept non-cumulative (one slot per bound plus +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs in that bound's bucket (``le``).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs as Prometheus expects, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class _Cell:
    """The counters of one (team, model): requests by status, tokens, cost; and the model's
    histograms, shared by every team's cell of that model, so one lookup finds everything."""

    __slots__ = ("counts", "duration", "ttft")

    def __init__(self, duration: Histogram, ttft: Histogram) -> None:
        # requests by status (STATUSES order, then other), the TOKEN_TYPES, cost in nano-USD
        self.counts = [0] * (len(STATUSES) + 1 + len(TOKEN_TYPES) + 1)
        self.duration = duration
        self.ttft = ttft


class Traffic(Collector):
    """Counters of the gateway's calls and attempts, exported as a Prometheus collector."""

    def __init__(self, max_teams: int, models: Iterable[str] = ()) -> None:
        """``models``: the label values ``model`` may take (see ``set_models``)."""
        self._max_teams = max_teams
        self._models = frozenset(models)
        self._teams: dict[str | None, str] = {None: NO_TEAM}
        # team label -> model label -> cell
        self._cells: dict[str, dict[str, _Cell]] = {}
        self._histograms: dict[str, tuple[Histogram, Histogram]] = {}  # model -> duration, ttft
        self._overhead = Histogram(OVERHEAD_BOUNDS_S)
        # (provider, deployment, outcome) -> attempts
        self._attempts: dict[tuple[str, str, str], int] = {}
        # (kind, error_class) -> errors
        self._errors: dict[tuple[str, str], int] = {}
        self._error_classes: set[str] = set()

    def set_models(self, names: Iterable[str]) -> None:
        """The catalog's public model and tier names; a call for any other counts as ``other``.

        Counters already kept under a name that is no longer listed stay as they are.
        """
        self._models = frozenset(names)

    # -- request path ------------------------------------------------------------------

    def listen(self, call: _Finished) -> None:
        """A gateway call listener: count the finished call's span rows."""
        team = call.key.team_name
        for row in call.rows:
            self.observe(row, team)

    def observe(self, row: Mapping[str, Any], team: str | None) -> None:
        """Count one span row the gateway recorded (``llm_request`` or ``attempt``).

        ``row`` has every span column (built from ``SPAN_DEFAULTS``); ``team`` is the
        team's name (None: ``none``). Rows of other kinds are ignored.
        """
        if row["kind"] != "llm_request":
            if row["kind"] == "attempt":
                self._observe_attempt(row)
            return
        # Inline rather than helpers: this runs for every call the gateway serves.
        label = self._teams.get(team) or self._add_team(team)
        model = row["model_requested"]
        if model not in self._models:
            model = OTHER
        cells = self._cells.get(label)
        cell = cells.get(model) if cells is not None else None
        if cell is None:
            cell = self._add_cell(label, model)
        counts = cell.counts
        status = row["status"]
        counts[_STATUS_SLOT.get(status, _OTHER_SLOT)] += 1
        counts[_TOKEN_SLOT] += row["input_tokens"]
        counts[_TOKEN_SLOT + 1] += row["cached_input_tokens"]
        counts[_TOKEN_SLOT + 2] += row["cache_write_tokens"]
        counts[_TOKEN_SLOT + 3] += row["output_tokens"]
        counts[_TOKEN_SLOT + 4] += row["reasoning_tokens"]
        counts[_COST_SLOT] += row["cost_nusd"]
        if status != "refused":  # refused calls never went upstream: no duration to speak of
            cell.duration.observe((row["end_ns"] - row["start_ns"]) / 1e9)
        ttft = row["ttft_ms"]
        if ttft is not None:
            cell.ttft.observe(ttft / 1000)
        overhead = row["overhead_ms"]
        if overhead is not None:
            self._overhead.observe(overhead / 1000)
        if row["error_class"]:
            self._count_error("llm_request", row["error_class"])

    def _observe_attempt(self, row: Mapping[str, Any]) -> None:
        key = (row["provider"] or OTHER, row["deployment"] or OTHER, row["status"])
        self._attempts[key] = self._attempts.get(key, 0) + 1
        if row["error_class"]:
            self._count_error("attempt", row["error_class"])

    def _add_team(self, team: str | None) -> str:
        """A team seen for the first time: its own label while there is room, else ``other``."""
        if team is None or len(self._teams) > self._max_teams:  # ``None`` holds one entry
            return OTHER  # not kept: the map stays bounded
        self._teams[team] = team
        return team

    def _add_cell(self, team: str, model: str) -> _Cell:
        hists = self._histograms.get(model)
        if hists is None:
            hists = self._histograms[model] = (
                Histogram(DURATION_BOUNDS_S),
                Histogram(TTFT_BOUNDS_S),
            )
        cell = self._cells.setdefault(team, {})[model] = _Cell(*hists)
        return cell

    def _count_error(self, kind: str, error_class: str) -> None:
        if error_class not in self._error_classes:
            if len(self._error_classes) >= MAX_ERROR_CLASSES:
                error_class = OTHER
            else:
                self._error_classes.add(error_class)
        key = (kind, error_class)
        self._errors[key] = self._errors.get(key, 0) + 1

    # -- scrape ------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The families without samples (so registering reads no counters)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """Every family, built from the counters as they are now; safe from any thread.

        Each map and list is copied before it is walked (one C-level copy, atomic under the
        GIL), so the loop may go on counting; a histogram's sum may then be one observation
        ahead of its buckets, which a scrape tolerates.
        """
        req, tok, cost, dur, ttft, over, att, err = self._families()
        for team, cells in list(self._cells.items()):
            for model, cell in list(cells.items()):
                counts = list(cell.counts)
                for status, slot in _STATUS_SLOT.items():
                    req.add_metric([team, model, status], counts[slot])
                if counts[_OTHER_SLOT]:
                    req.add_metric([team, model, OTHER], counts[_OTHER_SLOT])
                for i, kind in enumerate(TOKEN_TYPES):
                    tok.add_metric([team, model, kind], counts[_TOKEN_SLOT + i])
                cost.add_metric([team, model], counts[_COST_SLOT] / _NUSD_PER_USD)
        for model, (duration, first_token) in list(self._histograms.items()):
            if duration.count:
                dur.add_metric([model], duration.buckets(), duration.sum)
            if first_token.count:
                ttft.add_metric([model], first_token.buckets(), first_token.sum)
        over.add_metric([], self._overhead.buckets(), self._overhead.sum)
        for (provider, deployment, outcome), n in list(self._attempts.items()):
            att.add_metric([provider, deployment, outcome], n)
        for (kind, error_class), n in list(self._errors.items()):
            err.add_metric([kind, error_class], n)
        yield from (req, tok, cost, dur, ttft, over, att, err)

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "corral_requests",
                "LLM calls the gateway answered, by team, model requested and status "
                "(ok, error, cancelled, refused).",
                labels=["team", "model", "status"],
            ),
            CounterMetricFamily(
                "corral_tokens",
                "Tokens of the gateway's LLM calls by type; the types do not overlap "
                "(input excludes cached input and cache writes, output excludes reasoning).",
                labels=["team", "model", "type"],
            ),
            CounterMetricFamily(
                "corral_cost_usd",
                "Cost of the gateway's LLM calls in USD, as recorded on their spans.",
                labels=["team", "model"],
            ),
            HistogramMetricFamily(
                "corral_request_duration_seconds",
                "Duration of LLM calls that went upstream, from arrival to the last byte.",
                labels=["model"],
            ),
            HistogramMetricFamily(
                "corral_time_to_first_token_seconds",
                "Time from a streamed call's request going upstream to its first chunk back.",
                labels=["model"],
            ),
            HistogramMetricFamily(
                "corral_gateway_overhead_seconds",
                "Time each LLM call spent in the gateway itself, outside upstream attempts.",
            ),
            CounterMetricFamily(
                "corral_upstream_attempts",
                "Upstream attempts by provider, deployment and outcome (ok, error, cancelled).",
                labels=["provider", "deployment", "outcome"],
            ),
            CounterMetricFamily(
                "corral_errors",
                "Errors by error class, on calls (kind llm_request: what the client saw) and on "
                "upstream attempts (kind attempt, including those a fallback recovered from).",
                labels=["kind", "error_class"],
            ),
        )


__all__ = ["Histogram", "Traffic"]
