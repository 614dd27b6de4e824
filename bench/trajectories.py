"""Trajectories: OTLP ingest into the span store, the run tree and a month's spend, beside Phoenix.

Three measurements in one run:

1. **OTLP ingest.** ``corral serve`` (SQLite, default settings, a virtual key)
   free to use both cores (its span writer thread stores while its event loop
   ingests); sender processes on core 1 post protobuf batches of 500
   GenAI spans to ``/v1/traces`` for a fixed time (``bench/otlp_load.py``).
   Reported: spans/s answered 200, spans/s stored while the load ran, 429
   retries, ingest-to-queryable lag of sampled batches, and the time from the
   last 200 to the last span stored. Then Arize Phoenix (its own venv under
   ``.bench-cache/``, SQLite backend, installed on first use) gets the same
   load under the same conditions, after Corral has stopped.
2. **The run tree** of a 5,000-span run in a store of 5,000,000 spans
   (``bench/span_store.py``, generated once through the span writer and cached).
3. **A month of one team's spend by day** in that store.

Both queries are timed as a function call (``corral.traces.query``) in this
process and through the admin API of a ``corral serve`` on the same file.

Run alone: ``.venv/bin/python bench/trajectories.py [--quick] [--seconds N]
[--store-spans N] [--no-phoenix]``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote

from cells import command, facts_table
from harness import (
    GATEWAY_CORE,
    LOAD_CORE,
    VENV_BIN,
    BenchError,
    Options,
    Processes,
    Section,
    Service,
    free_port,
    machine_facts,
    markdown_table,
    wait_until,
)
from otlp_load import (
    IngestResult,
    IngestTarget,
    Load,
    Split,
    build_template,
    drive,
    ingest_split,
    percentile,
)
from span_store import (
    BIG_RUN_SPANS,
    CACHE,
    DAYS,
    StoreInfo,
    Timing,
    ensure_store,
    function_timings,
    time_calls,
)
from targets import corral_cli, listen_problem

NAME = "trajectories"
TITLE = "Trajectories: OTLP ingest, run tree and monthly spend, beside Arize Phoenix"
INGEST_TARGET = 20_000  # spans/s stored, sustained
LAG_TARGET_S = 1.0
TREE_TARGET_MS = 50.0
USAGE_TARGET_MS = 200.0
SPLIT_BATCHES = 40  # batches of 500 timed stage by stage in this process
# The servers under test may use both cores (a writer thread stores while the loop ingests);
# the senders stay on core 1.
SERVER_CORES: int | None = None
PHOENIX_VENV = CACHE / "phoenix-venv"
PHOENIX_INSTALL_LOG = CACHE / "phoenix-install.log"


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how big; ``Options.quick`` shortens everything."""

    quick: bool
    seconds: float = 60.0
    senders: int = 4
    store_spans: int = 5_000_000
    repeat: int = 30
    corral_drain_s: float = 120.0
    phoenix_drain_s: float = 300.0
    phoenix: bool = True
    generate_max_s: float = 2700.0

    @classmethod
    def of(cls, options: Options) -> Plan:
        if options.quick:
            return cls(True, seconds=10, store_spans=200_000, repeat=20, phoenix_drain_s=60)
        return cls(False)


# --- Corral -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorralServer:
    """A ``corral serve`` process, its admin key, and a virtual key of team ``bench``."""

    service: Service
    url: str
    home: Path
    admin_key: str
    key: str

    def get(self, path: str, timeout: float = 60) -> tuple[int, bytes]:
        return _get(self.url + path, self.admin_key, timeout)


def start_corral(
    procs: Processes, home: Path, *, name: str, env: dict[str, str] | None = None
) -> CorralServer:
    """``corral serve`` on ``home`` (SQLite at ``home/corral.db``), alone on the gateway core."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin = "sk-admin-" + secrets.token_urlsafe(24)
    server_env = {**(env or {}), "CORRAL_HOME": str(home), "CORRAL_ADMIN_KEY": admin}
    argv = [str(VENV_BIN / "corral"), "serve", "--port", str(port)]
    service = procs.start(name, argv, core=SERVER_CORES, env=server_env)
    wait_until(lambda: listen_problem(url + "/"), service=service, timeout=120, what=name)
    return CorralServer(service, url, home, admin, "")


def with_key(server: CorralServer) -> CorralServer:
    """Team ``bench``, user ``bench`` and a virtual key of theirs, through the CLI."""
    env = {"CORRAL_URL": server.url, "CORRAL_ADMIN_KEY": server.admin_key}
    corral_cli(["teams", "create", "bench"], env)
    corral_cli(["users", "create", "bench", "--team", "bench"], env)
    created = json.loads(
        corral_cli(["keys", "create", "--team", "bench", "--user", "bench", "--json"], env)
    )
    return replace(server, key=str(created["key"]))


def _get(url: str, bearer: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- Phoenix ------------------------------------------------------------------------------------


def ensure_phoenix() -> str:
    """Install ``arize-phoenix`` into its own venv unless present; return its version."""
    if not _phoenix_version():
        CACHE.mkdir(exist_ok=True)
        (CACHE / ".gitignore").write_text("*\n")
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(PHOENIX_VENV)],
            [str(PHOENIX_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "arize-phoenix"],
        ]
        print(f"installing arize-phoenix into {PHOENIX_VENV} ...", file=sys.stderr, flush=True)
        with PHOENIX_INSTALL_LOG.open("w") as log:
            for argv in steps:
                done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
                if done.returncode != 0:
                    tail = " / ".join(PHOENIX_INSTALL_LOG.read_text().splitlines()[-5:])
                    raise BenchError(f"{' '.join(argv[:4])} failed: {tail}")
    found = _phoenix_version()
    if not found:
        raise BenchError(f"arize-phoenix is not importable; see {PHOENIX_INSTALL_LOG}")
    return found


def _phoenix_version() -> str:
    python = PHOENIX_VENV / "bin" / "python"
    if not python.exists():
        return ""
    code = "import importlib.metadata as m; print(m.version('arize-phoenix'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def start_phoenix(procs: Processes, workdir: Path) -> tuple[Service, str]:
    """``phoenix serve`` on SQLite in ``workdir``, alone on the gateway core; (service, url)."""
    port, grpc = free_port(), free_port()
    env = {
        "PHOENIX_WORKING_DIR": str(workdir),
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    argv = [str(PHOENIX_VENV / "bin" / "phoenix"), "serve"]
    service = procs.start("phoenix", argv, core=SERVER_CORES, env=env)
    url = f"http://127.0.0.1:{port}"

    def problem() -> str | None:
        try:
            phoenix_count(url)
        except (OSError, ValueError, KeyError) as exc:
            return repr(exc)
        return None

    wait_until(problem, service=service, timeout=180, what="Phoenix")
    return service, url


def phoenix_count(url: str) -> int:
    """Spans stored in every project, as Phoenix's GraphQL API counts them."""
    query = {"query": "{ projects { edges { node { name recordCount } } } }"}
    request = urllib.request.Request(  # noqa: S310 - loopback URL built here
        url + "/graphql", json.dumps(query).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        data = json.loads(response.read())
    return sum(int(e["node"]["recordCount"]) for e in data["data"]["projects"]["edges"])


# --- the measurements ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ingest:
    result: IngestResult
    rss_mib: float  # the server's peak resident memory
    note: str = ""


@dataclass(frozen=True, slots=True)
class Queries:
    store: StoreInfo
    function: list[Timing]
    api: list[Timing]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Pinned:
    """Pin this process to one core for a while, then restore its affinity."""

    def __init__(self, core: int) -> None:
        self._core = core

    def __enter__(self) -> None:
        self._before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self._core})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self._before)


def ingest_corral(plan: Plan, workdir: Path) -> Ingest:
    workdir.mkdir(parents=True, exist_ok=True)
    with Processes(workdir) as procs, Pinned(LOAD_CORE):
        server = with_key(start_corral(procs, workdir / "corral-home", name="corral"))
        target = IngestTarget(
            "Corral", server.url + "/v1/traces", server.service,
            server.home / "corral.db", authorization=f"Bearer {server.key}",
        )  # fmt: skip
        result = drive(procs, target, _load(plan, workdir, plan.corral_drain_s))
        rss = peak_rss_mib(server.service.pid)
        return Ingest(result, rss, _api_check(server, result))


def _api_check(server: CorralServer, result: IngestResult) -> str:
    """The last sampled span, read back through the admin API."""
    if not result.last_sampled:
        return "no sampled span to read back"
    status, _body = server.get(f"/api/v1/spans/{result.last_sampled}")
    return f"The last sampled span read back through `GET /api/v1/spans/{{id}}`: HTTP {status}"


def ingest_phoenix(plan: Plan, workdir: Path) -> Ingest:
    workdir.mkdir(parents=True, exist_ok=True)
    with Processes(workdir) as procs, Pinned(LOAD_CORE):
        home = workdir / "phoenix-home"
        home.mkdir()
        service, url = start_phoenix(procs, home)
        target = IngestTarget(
            "Phoenix", url + "/v1/traces", service, home / "phoenix.db",
            api_count=lambda: phoenix_count(url),
        )  # fmt: skip
        result = drive(procs, target, _load(plan, workdir, plan.phoenix_drain_s))
        return Ingest(result, peak_rss_mib(service.pid))


def _load(plan: Plan, workdir: Path, drain: float) -> Load:
    return Load(build_template(), plan.seconds, plan.senders, workdir, drain)


def queries(plan: Plan, workdir: Path) -> Queries:
    info = ensure_store(plan.store_spans, max_seconds=plan.generate_max_s)
    with Pinned(GATEWAY_CORE):
        function = function_timings(info, plan.repeat)
    # Retention would delete the cached month as it ages; the queries only read.
    env = {"CORRAL_TRACE_RETENTION_DAYS": "100000"}
    workdir.mkdir(parents=True, exist_ok=True)
    with Processes(workdir) as procs, Pinned(LOAD_CORE):
        server = start_corral(procs, info.home, name="corral-queries", env=env)
        api = api_timings(server, info, plan.repeat)
    return Queries(info, function, api)


def api_timings(server: CorralServer, info: StoreInfo, repeat: int) -> list[Timing]:
    """The same two queries through the admin API, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=120)
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    since = datetime.fromtimestamp(info.since, tz=UTC).isoformat().replace("+00:00", "Z")
    until = datetime.fromtimestamp(info.until, tz=UTC).isoformat().replace("+00:00", "Z")
    tree_path = f"/api/v1/traces/{info.run_id}"
    usage_path = (
        f"/api/v1/usage?by=day&team={info.team_id}&since={quote(since)}&until={quote(until)}"
    )
    sizes: dict[str, int] = {}

    def call(path: str) -> None:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {path} answered {response.status}: {body[:300]!r}")
        sizes[path] = len(body)

    try:
        call(tree_path)
        nodes = _count_nodes(server, tree_path)
        tree = time_calls("run tree", lambda: call(tree_path), repeat)
        usage = time_calls("spend by day, 30 days, one team", lambda: call(usage_path), repeat)
    finally:
        conn.close()
    return [
        replace(tree, detail=f"{nodes:,} spans, {sizes[tree_path]:,} bytes of JSON"),
        replace(usage, detail=f"{sizes[usage_path]:,} bytes of JSON"),
    ]


def _count_nodes(server: CorralServer, path: str) -> int:
    status, body = server.get(path)
    data = json.loads(body)
    nodes = data.get("spans") or data.get("nodes") or []
    count = len(nodes) if isinstance(nodes, list) else 0
    if status != 200 or count != BIG_RUN_SPANS:
        raise BenchError(f"GET {path}: {status}, {count} spans, not {BIG_RUN_SPANS}")
    return count


def run(options: Options) -> Section:
    return measure(Plan.of(options), options)


def measure(plan: Plan, options: Options) -> Section:
    facts = {**machine_facts(), "Corral": version("corral")}
    facts.pop("wrk", None)
    with tempfile.TemporaryDirectory(prefix="corral-bench-traj-") as tmp:
        work = Path(tmp)
        print("OTLP ingest into Corral ...", file=sys.stderr, flush=True)
        corral = ingest_corral(plan, work / "corral")
        phoenix: Ingest | None = None
        if plan.phoenix:
            facts["Arize Phoenix"] = ensure_phoenix()
            print("OTLP ingest into Phoenix ...", file=sys.stderr, flush=True)
            phoenix = ingest_phoenix(plan, work / "phoenix")
        print("queries in the large store ...", file=sys.stderr, flush=True)
        found = queries(plan, work / "queries")
        with Pinned(GATEWAY_CORE):
            split = ingest_split(build_template(), SPLIT_BATCHES, work / "split")
    return render(plan, options, facts, Results(corral, phoenix, found, split))


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Results:
    corral: Ingest
    phoenix: Ingest | None
    queries: Queries
    split: Split


def render(plan: Plan, options: Options, facts: dict[str, str], results: Results) -> Section:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    corral, phoenix, found = results.corral, results.phoenix, results.queries
    ingest = ingest_table([i for i in (corral, phoenix) if i is not None])
    split = split_table(results.split)
    query = query_table(found)
    verdicts = verdict_table(corral, found)
    reading = "\n".join(f"- {line}" for line in reading_lines(plan, corral, phoenix, found))
    markdown = (
        f"## {TITLE}\n\nCommand: {command(NAME, options)}, run {when}.\n\n"
        f"{facts_table(facts)}\n\n{method(plan, found.store)}\n\n"
        f"### OTLP/HTTP ingest, {plan.senders} senders for {plan.seconds:.0f} s each\n\n"
        f"{ingest}\n\n{SPLIT_INTRO}\n\n{split}\n\n"
        f"### Queries in a store of {found.store.spans:,} spans\n\n{query}\n\n"
        f"{verdicts}\n\nReading (computed from this run):\n\n{reading}\n"
    )
    console = f"{ingest}\n\n{split}\n\n{query}\n\n{verdicts}\n\n{reading}"
    return Section(NAME, TITLE, console, markdown)


SPLIT_INTRO = (
    f"Where Corral's ingest CPU goes: the same batch run through each stage in this process "
    f"(pinned to core 0, after the servers stopped), {SPLIT_BATCHES} batches, on a fresh "
    "store; CPU time per span. The server also parses HTTP, authenticates, prices each "
    "`chat` span and hands batches between its event loop and its writer thread."
)


def split_table(split: Split) -> str:
    total = split.decode_map + split.journal + split.store
    rows = [
        ["decode + map (`corral.traces.otlp.parse_traces`)", _f(split.decode_map, 1)],
        ["journal (`Journal.append`)", _f(split.journal, 1)],
        ["store (`SpanWriter.write`, batches of 1,000)", _f(split.store, 1)],
        ["total", _f(total, 1)],
        ["spans/s one core could take at that cost", _f(1e6 / total if total else 0)],
    ]
    return markdown_table(("stage", "CPU µs/span"), rows)


def method(plan: Plan, store: StoreInfo) -> str:
    from otlp_load import build_template

    return (
        "The machine has 2 cores. Each server under test may use both (not pinned: Corral's "
        "span writer thread stores while its event loop ingests), the senders are pinned to "
        "core 1, so the server shares that core with them: first `corral serve` (SQLite store, "
        "default settings: record batches of 1,000 every 0.2 s, `ingest_queue_max` 50,000, "
        "bodies `full`), then, after it "
        "stopped, Arize Phoenix (`phoenix serve`, its SQLite backend in a fresh working "
        "directory, telemetry off). "
        f"{plan.senders} sender processes share core 1 with this process; loopback only. Each "
        f"sender posts OTLP/HTTP protobuf batches (`application/x-protobuf`, not compressed) "
        f"of {build_template().describe()}; every batch has its own trace, span, response and "
        "tool-call ids; one keep-alive connection per sender, the next batch sent when the "
        "last is answered. A 429 or 503 is honoured as OTLP/HTTP asks (wait Retry-After, "
        "bounded by the end of the load, and resend the same batch) and counted. Corral's "
        "batches carry a virtual key (`Authorization: Bearer`); Phoenix needs none. "
        "*accepted/s*: spans answered 200 per second of load; *stored/s*: spans in the "
        "target's `spans` table at the end of the load (read from its SQLite file), per "
        "second: what it sustains. *lag*: about twice a second each sender notes the last "
        "span of a batch just answered 200; this process polls the target's `spans` table "
        "for it every 20 ms, and the lag is the time from the 200 to the row being there. "
        "*drain*: from the last 200 to every accepted span stored (Phoenix: to its GraphQL "
        "`recordCount` reaching it), waiting at most "
        f"{plan.corral_drain_s:.0f} s for Corral and {plan.phoenix_drain_s:.0f} s for Phoenix. "
        "*CPU µs/span*: the server's CPU time from the start of the load to the end of the "
        "drain, per span stored (decoding, mapping, journaling and writing alike); "
        "*outside c0/c1*: what anything else used of each core during the load.\n\n"
        f"The query store (`bench/span_store.py`, cached under `.bench-cache/`) holds "
        f"{store.spans:,} spans over {DAYS} days of 10 teams (5 users with a key each; "
        "team *n* does *n* + 1 shares of the work) on 4 models: agent runs (run → agent → "
        "steps → tool calls and LLM requests → upstream attempts) and calls outside any run, "
        "written in time order through `SpanWriter.write` in batches of 20,000, so "
        f"`span_rollups` ({store.rollup_rows:,} hourly rows) is kept as in production "
        f"(generated in {store.generated_s:,.0f} s; {store.bytes / 2**30:.2f} GiB on disk). "
        f"The run tree is `GET /api/v1/traces/{{run id}}` of a {BIG_RUN_SPANS:,}-span run "
        "(999 steps of a request, its attempt and two tool calls; three requests with a "
        "second attempt); the spend is `GET /api/v1/usage?by=day&team=…` over the 30 days "
        f"of the largest team ({store.team_rollup_rows:,} roll-up rows in the window; the "
        "partial hours at both ends are read from the raw spans). *function*: "
        "`corral.traces.query.tree` / `usage` called in this process pinned to core 0, "
        "with the admin's visibility; *API*: the same through `corral serve` on the same "
        f"file (not pinned), admin key, one keep-alive connection from core 1. {plan.repeat} "
        "timed repetitions after 3 untimed."
    )


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _lag(r: IngestResult) -> str:
    if not r.lags:
        return f"none of {r.unresolved} sampled batches stored in the wait"
    text = " / ".join(_f(percentile(r.lags, q), 2) for q in (0.5, 0.95, 1.0))
    if r.unresolved:
        text += f" ({r.unresolved} of {r.unresolved + len(r.lags)} not stored in the wait)"
    return text


def _errors(r: IngestResult) -> str:
    if not r.errors:
        return "0"
    kinds = ", ".join(f"{n} {k}" for k, n in r.statuses.items() if k not in ("200", "429", "503"))
    return f"{r.errors} ({kinds})"


def _drain(r: IngestResult) -> str:
    if r.drain_s is None:
        return f"> {r.drain_wait_s:.0f} s ({r.stored:,} of {r.spans:,} stored)"
    return f"{r.drain_s:.2f} s"


def ingest_table(rows: list[Ingest]) -> str:
    headers = (
        "target", "accepted spans/s", "stored spans/s", "stored/s to the drain's end",
        "429 / 503", "errors", "lag p50 / p95 / max s", "drain", "stored / accepted",
        "CPU µs/span", "peak RSS", "outside c0/c1",
    )  # fmt: skip
    body = []
    for i in rows:
        r = i.result
        body.append([
            r.target, _f(r.accepted_rate), _f(r.stored_rate), _f(r.overall_rate),
            f"{r.throttled} / {r.unavailable}",
            _errors(r), _lag(r), _drain(r), f"{r.stored:,} / {r.spans:,}",
            _f(r.cpu_us_per_span), f"{i.rss_mib:,.0f} MiB",
            f"{r.other_core0:.0f} / {r.other_core1:.0f} %",
        ])  # fmt: skip
    return markdown_table(headers, body)


def query_table(found: Queries) -> str:
    headers = ("query", "path", "p50 ms", "p95 ms", "max ms", "repetitions", "answer")
    body = []
    for path, timings in (("function", found.function), ("API", found.api)):
        for t in timings:
            body.append([
                t.what, path, _f(t.pct(0.5), 1), _f(t.pct(0.95), 1), _f(max(t.samples), 1),
                str(len(t.samples)), t.detail or "–",
            ])  # fmt: skip
    return markdown_table(headers, body)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def verdict_table(corral: Ingest, found: Queries) -> str:
    r = corral.result
    p95 = percentile(r.lags, 0.95) if r.lags else float("inf")
    lag_ok = bool(r.lags) and p95 < LAG_TARGET_S and not r.unresolved
    drain = r.drain_s if r.drain_s is not None else float("inf")
    tree = {t.what: t for t in found.api}
    tree_fn = {t.what: t for t in found.function}
    rows = [
        [
            f"OTLP ingest >= {INGEST_TARGET:,} spans/s sustained (stored/s during the load)",
            f"{r.stored_rate:,.0f} spans/s (accepted {r.accepted_rate:,.0f}/s)",
            _verdict(r.stored_rate >= INGEST_TARGET),
        ],
        [
            f"ingest-to-queryable lag < {LAG_TARGET_S:.0f} s (p95 of sampled batches, and the "
            "drain after the last 200)",
            f"p95 {p95:.2f} s, drain {drain:.2f} s",
            _verdict(lag_ok and drain < LAG_TARGET_S),
        ],
    ]
    for what, target in (
        ("run tree", TREE_TARGET_MS),
        ("spend by day, 30 days, one team", USAGE_TARGET_MS),
    ):
        for path, table in (("API", tree), ("function", tree_fn)):
            t = table[what]
            rows.append([
                f"{what} < {target:.0f} ms ({path}, p50; p95 shown)",
                f"p50 {t.pct(0.5):.1f} ms, p95 {t.pct(0.95):.1f} ms",
                _verdict(t.pct(0.5) < target),
            ])  # fmt: skip
    return markdown_table(("target (issue 5)", "measured", "verdict"), rows)


def reading_lines(plan: Plan, corral: Ingest, phoenix: Ingest | None, found: Queries) -> list[str]:
    c = corral.result
    lost = "none lost" if not c.lost else f"{c.lost:,} MISSING"
    lines = [
        f"Corral answered 200 to {c.spans:,} spans in the {c.window_s:.0f} s of load "
        f"({c.accepted_rate:,.0f}/s; the last 200 came {c.seconds:.1f} s after the first "
        f"request) and stored {c.stored_rate:,.0f}/s while the load ran "
        f"({c.overall_rate:,.0f}/s from the start of the load to the end of the drain); "
        f"{c.throttled} answers were 429 and {c.unavailable} 503; {c.stored:,} of "
        f"{c.spans:,} accepted spans were stored at the end ({lost}). {corral.note}.",
    ]
    if phoenix is not None:
        p = phoenix.result
        api = f", its GraphQL API counted {p.api_count:,}" if p.api_count is not None else ""
        lines.append(
            f"Phoenix answered 200 to {p.spans:,} spans in the {p.window_s:.0f} s of load "
            f"({p.accepted_rate:,.0f}/s; the last 200 came {p.seconds:.1f} s after the first "
            "request; "
            f"{p.throttled} answers were 429 and {p.unavailable} 503) and stored "
            f"{p.stored_rate:,.0f}/s while the load ran; by the end of the wait "
            f"{p.stored:,} were stored{api} ({p.overall_rate:,.0f}/s from the start of the "
            f"load); drain {_drain(p)}."
        )
        if p.overall_rate:
            lines.append(
                f"From the start of the load to the end of the drain Corral stored "
                f"{c.overall_rate / p.overall_rate:,.0f}x as many spans per second as Phoenix, "
                f"at {c.cpu_us_per_span:,.0f} against {p.cpu_us_per_span:,.0f} µs of CPU a span."
            )
    s = found.store
    lines.append(
        f"The query store: {s.spans:,} spans, {s.rollup_rows:,} roll-up rows, "
        f"{s.bytes / s.spans:,.0f} bytes per span on disk (indexes included)."
    )
    if plan.quick:
        lines.append("A smoke run (`--quick`): short loads and a small store; not for comparison.")
    return lines


def main(argv: list[str]) -> int:
    """Run alone: print, and write the docs unless quick."""
    import argparse

    from run import DOC, update_doc

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, help="load time per target")
    parser.add_argument("--store-spans", type=int, help="spans in the query store")
    parser.add_argument("--no-phoenix", action="store_true")
    args = parser.parse_args(argv)
    options = Options(quick=args.quick)
    plan = Plan.of(options)
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    if args.store_spans:
        plan = replace(plan, store_spans=args.store_spans)
    if args.no_phoenix:
        plan = replace(plan, phoenix=False)
    try:
        section = measure(plan, options)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(f"\n== {section.title}\n\n{section.console}\n")
    if not options.quick:
        update_doc(DOC, section)
        print(f"wrote {DOC} (section {section.name})")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
