"""A large span store for the query benchmarks: generated once, cached, then queried.

The store is a SQLite file made the way production makes one: identities
through ``IdentityService``, spans through the record pipeline's
``SpanWriter.write`` in large batches, so ``span_rollups`` is filled (and
duplicate matching runs) exactly as it is under the gateway. It holds 30
days of work of 10 teams (5 users and a key each, teams of unequal size, 4
models on 2 providers) in time order: agent runs (run → agent → steps →
tools and LLM requests → upstream attempts, some with a second attempt) and
calls made outside any run, plus one run of exactly ``BIG_RUN_SPANS`` spans
three days before the end. It lives under ``.bench-cache/`` in a folder
named by ``STORE_VERSION``, the span count and a digest of the two tables'
columns, so a rerun reuses it and a schema change makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import REPO, BenchError

CACHE = REPO / ".bench-cache"
STORE_VERSION = "trajectories-store-v1"
BIG_RUN_SPANS = 5_000
TEAMS = 10
USERS_PER_TEAM = 5
DAYS = 30
WRITE_BATCH = 20_000
MODELS = {  # model: (provider, $ per 1M input, cached input, cache write, output)
    "sim-frontier": ("anthropic", 3.0, 0.3, 3.75, 15.0),
    "sim-standard": ("openai", 1.25, 0.125, 1.25, 10.0),
    "sim-economy": ("openai", 0.15, 0.015, 0.15, 0.6),
    "sim-reasoning": ("openai", 2.0, 0.5, 2.0, 8.0),
}
TOOLS = ("read_file", "run_tests", "apply_patch", "grep", "list_dir", "bash")
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """The generated store and what the queries need to know about it."""

    home: Path  # CORRAL_HOME: the store is ``home / "corral.db"``
    spans: int
    rollup_rows: int
    run_id: str  # the run of BIG_RUN_SPANS spans
    team_id: str  # the largest team (the run's), whose month is rolled up
    team_rollup_rows: int  # its roll-up rows in the month
    until: float  # epoch seconds: the end of the generated month
    generated_s: float  # how long generation took (when it was made)
    bytes: int  # the database file's size

    @property
    def db(self) -> Path:
        return self.home / "corral.db"

    @property
    def since(self) -> float:
        return self.until - DAYS * 86_400


def cache_key(spans: int) -> str:
    """The cache folder's name: the version, the size, and the columns the rows fill."""
    from corral.store.schema import span_rollups
    from corral.store.schema import spans as spans_table

    columns = ",".join(str(c.name) for t in (spans_table, span_rollups) for c in t.columns)
    digest = hashlib.sha256(columns.encode()).hexdigest()[:10]
    return f"{STORE_VERSION}-{spans}-{digest}"


def ensure_store(spans: int, *, max_seconds: float) -> StoreInfo:
    """The cached store of ``spans`` spans, generated first if missing (within ``max_seconds``)."""
    home = CACHE / cache_key(spans)
    meta = home / "meta.json"
    if meta.exists() and (home / "corral.db").exists():
        info = _load(meta, home)
        print(f"reusing the span store {home} ({info.spans:,} spans)", file=sys.stderr)
        return info
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # keeps the cache out of git without touching ours
    partial = Path(tempfile.mkdtemp(prefix=f"{home.name}.partial-", dir=CACHE))
    try:
        info = _generate(partial, spans, max_seconds)
        (partial / "meta.json").write_text(json.dumps(_as_json(info), indent=2))
        if home.exists():
            shutil.rmtree(home)
        partial.rename(home)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return _load(meta, home)


def _as_json(info: StoreInfo) -> dict[str, Any]:
    data = asdict(info)
    data.pop("home")
    return data


def _load(meta: Path, home: Path) -> StoreInfo:
    data = json.loads(meta.read_text())
    return StoreInfo(home=home, **data)


# --- generation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Who:
    org_id: str
    team_id: str
    user_id: str
    key_id: str


def _generate(home: Path, total: int, max_seconds: float) -> StoreInfo:
    from corral.clock import SystemClock
    from corral.identity.service import IdentityService
    from corral.store import Store
    from corral.traces import Recorder

    started = time.monotonic()
    store = Store(f"sqlite:///{home / 'corral.db'}")
    try:
        store.migrate()
        people = _identities(IdentityService(store, SystemClock()))
        writer = Recorder(store, journal_dir=home / "journal").writer
        until = float(int(time.time()) // 3600 * 3600)
        gen = _Generator(people, until, total, seed=5)
        print(
            f"generating {total:,} spans into {home} (once; cached for later runs) ...",
            file=sys.stderr,
            flush=True,
        )
        written = 0
        for batch in gen.batches(WRITE_BATCH):
            writer.write(batch)
            before, written = written, written + len(batch)
            _progress(before, written, total, started, max_seconds)
        info = _describe(store, home, gen, until, time.monotonic() - started)
    finally:
        store.close()
    shutil.rmtree(home / "journal", ignore_errors=True)
    return info


def _progress(before: int, written: int, total: int, started: float, max_seconds: float) -> None:
    """Print a line at every 500,000 spans; fail once generation has taken too long."""
    elapsed = time.monotonic() - started
    if before // 500_000 != written // 500_000 or written >= total:
        rate = written / elapsed if elapsed else 0.0
        print(
            f"  {written:,} of {total:,} spans written in {elapsed:.0f} s ({rate:,.0f}/s)",
            file=sys.stderr,
            flush=True,
        )
    if elapsed > max_seconds:
        raise BenchError(
            f"generating the span store took over {max_seconds:.0f} s ({written:,} of "
            f"{total:,} spans written); rerun with fewer spans (--store-spans) or more time"
        )


def _identities(identity: Any) -> list[list[_Who]]:
    """10 teams of 5 users, each user with one virtual key; ``[team][user]``."""
    identity.ensure_default_org()
    people: list[list[_Who]] = []
    for t in range(TEAMS):
        team = identity.create_team(f"team-{t:02d}")
        members = []
        for u in range(USERS_PER_TEAM):
            user = identity.create_user(f"user-{u}", team.id)
            key, _raw = identity.create_key(team.id, user.id, name=f"key-{u}")
            members.append(_Who(team.org_id, team.id, user.id, key.id))
        people.append(members)
    return people


def _describe(store: Any, home: Path, gen: _Generator, until: float, took: float) -> StoreInfo:
    from sqlalchemy import func, select

    from corral.store.schema import span_rollups, spans

    since_hour = int(until - DAYS * 86_400)
    with store.connect() as conn:
        count = conn.execute(select(func.count()).select_from(spans)).scalar_one()
        rollups = conn.execute(select(func.count()).select_from(span_rollups)).scalar_one()
        team_rows = conn.execute(
            select(func.count())
            .select_from(span_rollups)
            .where(span_rollups.c.team_id == gen.big_team, span_rollups.c.hour >= since_hour)
        ).scalar_one()
        run = conn.execute(
            select(func.count()).select_from(spans).where(spans.c.run_id == gen.big_run)
        ).scalar_one()
    if run != BIG_RUN_SPANS:
        raise BenchError(f"the big run has {run} spans, not {BIG_RUN_SPANS}")
    return StoreInfo(
        home=home,
        spans=int(count),
        rollup_rows=int(rollups),
        run_id=gen.big_run,
        team_id=gen.big_team,
        team_rollup_rows=int(team_rows),
        until=until,
        generated_s=round(took, 1),
        bytes=(home / "corral.db").stat().st_size,
    )


class _Generator:
    """Rows in time order: runs and lone calls spread over the month, one big run in it."""

    def __init__(self, people: list[list[_Who]], until: float, total: int, seed: int) -> None:
        self._people = people
        self._rng = random.Random(seed)
        self._until_ns = int(until) * _NS
        self._since_ns = self._until_ns - DAYS * 86_400 * _NS
        self._total = total
        # Team t does (t + 1) shares of the work: the last team is the largest.
        self._weights = [t + 1 for t in range(len(people))]
        self.big_team = people[-1][0].team_id
        self.big_run = "run_bench_big_" + format(self._rng.getrandbits(48), "012x")
        self._big_at = self._until_ns - 3 * 86_400 * _NS

    def batches(self, size: int) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        for rows in self._work():
            batch.extend(rows)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _work(self) -> Iterator[list[dict[str, Any]]]:
        """Units of work (a run, or a lone call) until the total is reached."""
        average_unit = 71  # spans per unit of work, on average: sets the pace through the month
        units = max(1, (self._total - BIG_RUN_SPANS) // average_unit)
        step_ns = (self._until_ns - self._since_ns) // units
        emitted, at, big_done = 0, self._since_ns, False
        while emitted < self._total - (0 if big_done else BIG_RUN_SPANS):
            if not big_done and at >= self._big_at:
                rows = self._big_run(at)
                big_done = True
            else:
                rows = self._unit(at)
                room = self._total - emitted - (0 if big_done else BIG_RUN_SPANS)
                rows = rows[:room]  # the last unit is cut to land on the total exactly
            emitted += len(rows)
            yield rows
            at = min(self._until_ns - 3600 * _NS, at + step_ns)
        if not big_done:
            yield self._big_run(at)

    def _who(self) -> _Who:
        team = self._rng.choices(self._people, weights=self._weights)[0]
        return self._rng.choice(team)

    def _unit(self, at: int) -> list[dict[str, Any]]:
        jitter = self._rng.randrange(0, 600) * _NS
        who = self._who()
        if self._rng.random() < 0.25:  # a call made outside any run: request + attempt
            return self._call(who, None, self._trace(), None, at + jitter)[0]
        steps = self._rng.randint(10, 36)
        return self._run(who, f"run_{self._rng.getrandbits(64):016x}", at + jitter, steps, 0)

    def _big_run(self, at: int) -> list[dict[str, Any]]:
        who = self._people[-1][0]
        # run + agent + 999 steps of 5 (step, request, attempt, two tools) = 4,997; three
        # requests make a second attempt: 5,000.
        return self._run(who, self.big_run, at, 999, 3)

    def _run(
        self, who: _Who, run_id: str, at: int, steps: int, retries: int
    ) -> list[dict[str, Any]]:
        trace = self._trace()
        run = self._row(who, run_id, trace, None, "run", f"run {run_id}", at, at)
        agent = self._row(who, run_id, trace, run["span_id"], "agent", "invoke_agent fixer", at, at)
        agent["source"] = run["source"] = "bench-agent"
        rows = [run, agent]
        t = at
        for i in range(steps):
            step = self._row(who, run_id, trace, agent["span_id"], "step", f"step {i}", t, t)
            step["source"] = "bench-agent"
            calls, t_end = self._call(who, run_id, trace, step["span_id"], t, retry=i < retries)
            tools = 2 if run_id == self.big_run else self._rng.randint(0, 2)
            tool_rows = []
            for _ in range(tools):
                name = self._rng.choice(TOOLS)
                end = t_end + self._rng.randrange(50, 4000) * 1_000_000
                tool = self._row(who, run_id, trace, step["span_id"], "tool", name, t_end, end)
                tool.update(source="bench-agent", attributes={"gen_ai.tool.name": name})
                tool_rows.append(tool)
                t_end = end
            step["end_ns"] = t_end
            rows += [step, *calls, *tool_rows]
            t = t_end + self._rng.randrange(1, 200) * 1_000_000
        run["end_ns"] = agent["end_ns"] = t
        return rows

    def _call(
        self, who: _Who, run_id: str | None, trace: str, parent: str | None, at: int,
        retry: bool = False,
    ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """An LLM request and its attempts; the rows and when it ended."""
        rng = self._rng
        model = rng.choice(list(MODELS))
        provider, *prices = MODELS[model]
        tokens = (
            rng.randint(200, 4000), rng.randint(0, 60_000), rng.choice((0, 0, 0, 2_000)),
            rng.randint(20, 1500), rng.randint(0, 800) if model == "sim-reasoning" else 0,
        )  # fmt: skip
        cost = round(sum(n * p for n, p in zip(tokens, (*prices, prices[3]), strict=True)) * 1000)
        latency = rng.randrange(300, 20_000) * 1_000_000
        request = self._row(who, run_id, trace, parent, "llm_request", f"chat {model}", at, at)
        request.update(
            request_id=f"req_{rng.getrandbits(64):016x}", protocol="chat", operation="chat",
            model_requested=model, model_served=model, provider=provider,
            deployment=f"{provider}/{model}", stream=True, http_status=200,
            finish_reason="tool_calls", response_id=f"resp_{rng.getrandbits(64):016x}",
            end_ns=at + latency, ttft_ms=latency / 4e6, upstream_ms=latency / 1e6 - 0.5,
            overhead_ms=0.5, input_tokens=tokens[0], cached_input_tokens=tokens[1],
            cache_write_tokens=tokens[2], output_tokens=tokens[3], reasoning_tokens=tokens[4],
            cost_nusd=cost, cost_source="computed", price_version="bench",
            request_blob=f"bench/{request['span_id']}.request",
            response_blob=f"bench/{request['span_id']}.response",
        )  # fmt: skip
        rows = [request]
        if retry:  # the first try failed fast, the second served
            failed = self._attempt(request, 1, at, at + 80_000_000)
            failed.update(status="error", http_status=429, error_class="rate_limited",
                          input_tokens=0, cached_input_tokens=0, cache_write_tokens=0,
                          output_tokens=0, reasoning_tokens=0, cost_nusd=0)  # fmt: skip
            rows.append(failed)
        rows.append(self._attempt(request, len(rows), at, at + latency))
        return rows, at + latency

    def _attempt(self, request: dict[str, Any], n: int, start: int, end: int) -> dict[str, Any]:
        attempt = request.copy()
        attempt.update(
            span_id=self._span(), parent_span_id=request["span_id"], kind="attempt",
            name=f"attempt {request['deployment']}", attempt=n, start_ns=start, end_ns=end,
            overhead_ms=None, request_blob=None, response_blob=None,
        )  # fmt: skip
        return attempt

    def _row(
        self, who: _Who, run_id: str | None, trace: str, parent: str | None, kind: str,
        name: str, start: int, end: int,
    ) -> dict[str, Any]:  # fmt: skip
        from corral.traces.spans import SPAN_DEFAULTS

        row = SPAN_DEFAULTS.copy()
        row.update(
            span_id=self._span(), trace_id=trace, parent_span_id=parent, kind=kind, name=name,
            org_id=who.org_id, team_id=who.team_id, user_id=who.user_id, key_id=who.key_id,
            run_id=run_id, owner_id=who.user_id, status="ok", start_ns=start, end_ns=end,
            source="gateway",
        )  # fmt: skip
        return row

    def _span(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _trace(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"


# --- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """Repeated timings of one query, in milliseconds."""

    what: str
    samples: list[float]
    detail: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(what: str, call: Any, repeat: int, warmup: int = 3, detail: str = "") -> Timing:
    """``call()`` ``warmup`` times untimed, then ``repeat`` times timed."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return Timing(what, samples, detail)


def function_timings(info: StoreInfo, repeat: int) -> list[Timing]:
    """The run tree and the month's roll-up through ``corral.traces.query``, in this process."""
    from corral.identity.service import DEFAULT_ORG_ID
    from corral.store import Store
    from corral.traces.query import Visibility, tree
    from corral.traces.usage import usage

    store = Store(f"sqlite:///{info.db}")
    admin = Visibility(org_id=DEFAULT_ORG_ID)
    try:
        got = tree(store, admin, info.run_id)
        if len(got.nodes) != BIG_RUN_SPANS:
            raise BenchError(f"tree() returned {len(got.nodes)} nodes, not {BIG_RUN_SPANS}")
        days = usage(store, admin, "day", info.since, info.until, team_id=info.team_id)
        detail = f"{len(days)} day rows"
        return [
            time_calls("run tree", lambda: tree(store, admin, info.run_id), repeat),
            time_calls(
                "spend by day, 30 days, one team",
                lambda: usage(store, admin, "day", info.since, info.until, team_id=info.team_id),
                repeat,
                detail=detail,
            ),
        ]
    finally:
        store.close()
