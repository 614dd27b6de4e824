"""Gateway overhead of routing: pass-through, a 3-deep fallback chain, protocol translation.

Three ``corral serve`` processes on one simulator, each configured through
``CORRAL_PROVIDERS`` / ``CORRAL_MODELS``, get the same wrk cells, interleaved:
(a) *pass-through*: a model with one healthy deployment, a Chat request;
(b) *chain ×3*: model ``m`` whose own deployment and first fallback answer 429
at once (distinct upstream names, so distinct deployments) and whose second
fallback is healthy, so every request makes three attempts; (c) *translated*:
an Anthropic Messages request to a model on an ``openai-compatible`` provider
(which speaks Chat only) pointed at the same simulator, so the request goes up
as Chat and the answer comes back as Messages. A fourth row, *Messages native*,
sends the same Messages request to the pass-through process, whose ``sim``
provider speaks Messages: the difference between it and (c) is translation's
own cost, without the difference between the two protocols' answers.

Every route is checked before and after the cells (status, ``x-corral-route``,
``x-corral-attempts``, the answer's shape); a wrong one aborts the run. The
section ends with a micro-benchmark of ``corral.protocols.messages.messages_to_chat`` on
a Claude Code-sized request (the corpus of ``tests/protocols/corpus.py``).

Run alone: ``.venv/bin/python bench/routing.py [--quick]``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from cells import (
    ATTEMPTS,
    NOISY,
    NON_STREAM,
    STREAM,
    Bench,
    Cell,
    Mode,
    change,
    command,
    compared_row,
    facts_table,
    failure_line,
    measure,
    noise_line,
)
from corral.protocols.messages import messages_to_chat
from harness import (
    GATEWAY_CORE,
    REPO,
    BenchError,
    Options,
    Processes,
    Section,
    free_port,
    machine_facts,
    markdown_table,
)
from targets import Corral, Target, chat_body, post, start_corral, start_sim
from wrk import Load, Wrk

NAME = "routing"
TITLE = "Gateway overhead of routing: pass-through, a 3-deep fallback chain, protocol translation"
PASS, CHAIN, TRANSLATED, NATIVE = "pass-through", "chain ×3", "translated", "Messages native"
ORDER = (PASS, CHAIN, TRANSLATED, NATIVE)
MODES = (NON_STREAM, STREAM)
CONCURRENCY = (1, 16)
HEALTHY = "sim-economy"
FAILING = "+fault=429+retry_after=0"
"""Simulator options: always answer 429, with no wait asked (so the gateway cools nothing)."""
CORPUS = REPO / "tests" / "translate" / "corpus.py"
TARGET_US = 1000.0


# --- the routes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route(Target):
    """A target whose requests name a model, in Chat or Messages, and where they must go."""

    model: str = HEALTHY
    messages: bool = False
    """Send an Anthropic Messages request (``/v1/messages``) instead of a Chat one."""
    expect_route: str = ""
    """The serving deployment's id, as ``x-corral-route`` must name it."""
    expect_attempts: int = 1

    @classmethod
    def on(cls, corral: Corral, name: str, **fields: Any) -> Route:
        t = corral.target
        return cls(name, t.base_url, t.service, t.core, t.authorization, **fields)

    def load(self, *, stream: bool, capped: bool = True) -> Load:
        body = json.loads(chat_body(stream=stream, capped=capped))
        body["model"] = self.model  # a valid Messages body as it stands: model, messages, cap
        data = json.dumps(body, separators=(",", ":")).encode()
        if not self.messages:
            return Load(self.base_url + "/v1/chat/completions", data, self.authorization)
        key = self.authorization.removeprefix("Bearer ")
        headers = (("x-api-key", key), ("anthropic-version", "2023-06-01"))
        return Load(self.base_url + "/v1/messages", data, headers=headers)


def _provider(name: str, kind: str, url: str) -> dict[str, str]:
    return {"name": name, "kind": kind, "base_url": url}


def _model(name: str, provider: str, upstream: str, **extra: object) -> dict[str, object]:
    # sim-economy's own prices, so that metering costs what it does with the default catalog
    prices = {"input_price": 0.25, "output_price": 2.0}
    return {"name": name, "provider": provider, "upstream_model": upstream, **prices, **extra}


def _catalog(providers: list[dict[str, str]], models: list[dict[str, object]]) -> dict[str, str]:
    return {"CORRAL_PROVIDERS": json.dumps(providers), "CORRAL_MODELS": json.dumps(models)}


def _start_routes(procs: Processes, sim: Target, workdir: Path) -> list[Route]:
    """The three processes and the four routes through them, in ``ORDER``.

    Each catalog has a model named ``sim-economy`` answering Chat, which is what
    ``start_corral`` checks before it returns.
    """
    url = sim.base_url
    sim_only = [_provider("sim", "sim", url)]
    plain = _catalog(sim_only, [_model(HEALTHY, "sim", HEALTHY)])
    chain = _catalog(
        sim_only,
        [
            _model("m", "sim", "sim-frontier" + FAILING, fallbacks=["m-standard", HEALTHY]),
            _model("m-standard", "sim", "sim-standard" + FAILING),
            _model(HEALTHY, "sim", HEALTHY),
        ],
    )
    # The failures are the point: a breaker opening would skip the failing deployments.
    chain["CORRAL_BREAKER_MIN_ATTEMPTS"] = "1000000000"
    chat_only = _catalog(
        [_provider("vllm", "openai-compatible", url)], [_model(HEALTHY, "vllm", HEALTHY)]
    )
    a, b, c = (
        start_corral(procs, free_port(), url, workdir / f"home-{n}", name=n, env=env)
        for n, env in (("pass-through", plain), ("chain", chain), ("translated", chat_only))
    )
    served = f"sim/{HEALTHY}"
    return [
        Route.on(a, PASS, expect_route=served),
        Route.on(b, CHAIN, model="m", expect_route=served, expect_attempts=3),
        Route.on(c, TRANSLATED, messages=True, expect_route=f"vllm/{HEALTHY}"),
        Route.on(a, NATIVE, messages=True, expect_route=served),
    ]


def _route_problem(route: Route, stream: bool) -> str | None:
    """Why one request on the route was not served as intended, or None."""
    status, raw_headers, body = post(route.load(stream=stream))
    headers = {k.lower(): v for k, v in raw_headers.items()}
    what = f"{route.name} ({'stream' if stream else 'non-stream'})"
    if status != 200:
        return f"{what}: HTTP {status} {body[:300]!r}"
    served = headers.get("x-corral-route")
    attempts = int(headers.get("x-corral-attempts", "1"))
    if served != route.expect_route or attempts != route.expect_attempts:
        return (
            f"{what}: served by {served!r} in {attempts} attempt(s), expected "
            f"{route.expect_route!r} in {route.expect_attempts} "
            f"(x-corral-fallback-from: {headers.get('x-corral-fallback-from')!r})"
        )
    if stream:
        end = b"event: message_stop" if route.messages else b"data: [DONE]"
        return None if end in body else f"{what}: the stream has no {end!r}: {body[-300:]!r}"
    kind = orjson.loads(body).get("type" if route.messages else "object")
    wanted = "message" if route.messages else "chat.completion"
    return None if kind == wanted else f"{what}: answered a {kind!r}, expected a {wanted!r}"


def _verify(routes: list[Route], when: str) -> None:
    problems = [p for r in routes for s in (False, True) if (p := _route_problem(r, s))]
    if problems:
        raise BenchError(f"a route is not served as intended {when}:\n" + "\n".join(problems))


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """The micro-benchmark: best and median µs per call of each step, and what was translated."""

    sizes: tuple[int, int]
    """Bytes of the Messages request and of the Chat request it became."""
    shape: str
    dict_us: tuple[float, float]
    bytes_us: tuple[float, float]
    repeats: int
    calls: tuple[int, int]
    """Calls per repeat of each step (timeit's autorange: at least 0.2 s a repeat)."""


@dataclass(frozen=True, slots=True)
class Run:
    """Everything one run produced, for the report."""

    started: datetime
    options: Options
    facts: dict[str, str]
    cells: list[Cell]
    timing: Timing

    def find(self, route: str, mode: Mode, connections: int) -> Cell | None:
        key = (route, mode, connections)
        return next((c for c in self.cells if (c.target, c.mode, c.connections) == key), None)


def run(options: Options) -> Section:
    started = datetime.now(UTC)
    facts = {**machine_facts(), "Corral": version("corral"), "orjson": version("orjson")}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corral-bench-")))
        procs = stack.enter_context(Processes(workdir))
        sim = start_sim(procs, free_port())
        routes = _start_routes(procs, sim, workdir)
        _verify(routes, "before the cells")
        bench = Bench(Wrk(workdir), options, list(routes), helpers=(sim.service,))
        cells = [measure(bench, r, m, c) for m, c, r in _schedule(routes)]
        _verify(routes, "after the cells")
    # After the servers stopped, so that the gateway core is quiet.
    timing = _time_translation(options)
    return _section(Run(started, options, facts, cells, timing))


def _schedule(routes: list[Route]) -> Iterator[tuple[Mode, int, Route]]:
    """Every route for each mode and concurrency, the order rotated from one group to the next.

    Rotating keeps any route from always being the first to meet a new shape of load.
    """
    turn = 0
    for mode in MODES:
        for connections in CONCURRENCY:
            first = turn % len(routes)
            for route in routes[first:] + routes[:first]:
                yield mode, connections, route
            turn += 1


def _claude_code_request() -> dict[str, Any]:
    """The translation tests' Claude Code-sized request (loaded by path: tests is no package
    on the benchmarks' import path)."""
    spec = importlib.util.spec_from_file_location("translate_corpus", CORPUS)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load the request corpus from {CORPUS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body: dict[str, Any] = module.claude_code_request()
    return body


def _best_median(step: Callable[[], object], repeats: int) -> tuple[tuple[float, float], int]:
    """(best, median) µs per call over ``repeats`` timeit repeats, and calls per repeat.

    The garbage collector stays on (timeit turns it off by default), as in the server.
    """
    timer = timeit.Timer(step, setup=gc.enable)
    number, _ = timer.autorange()
    per_call = [1e6 * t / number for t in timer.repeat(repeats, number)]
    return (min(per_call), statistics.median(per_call)), number


def _time_translation(options: Options) -> Timing:
    """Time the request's translation as the gateway does it for an openai-compatible provider.

    Pinned to the gateway core for the duration, as the server would be.
    """
    data = _claude_code_request()
    raw = orjson.dumps(data)

    def translate() -> dict[str, Any]:
        return messages_to_chat(data, max_tokens_field="max_tokens")

    def parse_translate_serialise() -> bytes:
        out = messages_to_chat(orjson.loads(raw), max_tokens_field="max_tokens")
        out["model"] = HEALTHY
        return orjson.dumps(out)

    translate()
    if orjson.loads(raw) != data:  # a repeat would then time a different input
        raise BenchError("messages_to_chat changed its input; the timing would be wrong")
    chat = parse_translate_serialise()
    repeats = 5 if options.quick else 30
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {GATEWAY_CORE})
    try:
        dict_us, dict_calls = _best_median(translate, repeats)
        bytes_us, bytes_calls = _best_median(parse_translate_serialise, repeats)
    finally:
        os.sched_setaffinity(0, affinity)
    shape = (
        f"a system prompt of {sum(len(b['text']) for b in data['system']):,} characters, "
        f"{len(data['tools'])} tools with JSON schemas, {len(data['messages'])} messages "
        "(assistant text + tool_use, user tool_result)"
    )
    return Timing(
        (len(raw), len(chat)), shape, dict_us, bytes_us, repeats, (dict_calls, bytes_calls)
    )


# --- reporting ------------------------------------------------------------------------------

HEADERS = (
    "mode", "conc", "route", "req/s", "Δ req/s", "P50 ms", "P99 ms", "+P50 ms", "+P99 ms",
    "CPU µs/req", "+CPU µs/req", "others c0/c1", "failed",
)  # fmt: skip


def _baseline(run: Run, cell: Cell) -> Cell | None:
    """The pass-through cell of the same shape (None for the pass-through itself)."""
    return None if cell.target == PASS else run.find(PASS, cell.mode, cell.connections)


def _row(run: Run, cell: Cell) -> list[str]:
    return compared_row(cell, _baseline(run, cell))


def _figures(run: Run) -> str:
    cells = sorted(
        run.cells, key=lambda c: (MODES.index(c.mode), c.connections, ORDER.index(c.target))
    )
    return markdown_table(HEADERS, [_row(run, cell) for cell in cells])


def _timing_table(t: Timing) -> str:
    rows = [
        ["`messages_to_chat` (dict → dict)", *(f"{v:.0f}" for v in t.dict_us)],
        ["`orjson.loads` + `messages_to_chat` + `orjson.dumps`", *(f"{v:.0f}" for v in t.bytes_us)],
    ]
    return markdown_table(("translation of the request", "best µs", "median µs"), rows)


def _added(run: Run, name: str, base: str, mode: Mode, connections: int) -> str:
    cell, ref = run.find(name, mode, connections), run.find(base, mode, connections)
    if cell is None or ref is None:
        return ""
    return (
        f"{mode.name} c={connections} {cell.cpu_us_per_request - ref.cpu_us_per_request:+.0f} µs "
        f"CPU, {cell.result.p50_ms - ref.result.p50_ms:+.2f} ms P50"
    )


def _cost_line(run: Run, name: str, base: str, text: str) -> str:
    parts = [_added(run, name, base, m, c) for m in MODES for c in CONCURRENCY]
    return f"{text}: " + "; ".join(p for p in parts if p) + "."


def _capacity_line(run: Run, mode: Mode) -> str:
    top = CONCURRENCY[-1]
    base = run.find(PASS, mode, top)
    if base is None:
        return ""
    parts = []
    for name in ORDER[1:]:
        cell = run.find(name, mode, top)
        if cell is not None:
            parts.append(
                f"{name} {cell.result.rps:,.0f} ({change(cell.result.rps, base.result.rps)}, "
                f"{cell.cpu_us_per_request:.0f} µs)"
            )
    return (
        f"{mode.name}, concurrency {top}: pass-through {base.result.rps:,.0f} req/s at "
        f"{base.cpu_us_per_request:.0f} µs of Corral CPU per request; " + "; ".join(parts) + "."
    )


def _timing_line(t: Timing) -> str:
    worst = max(t.bytes_us[1], t.dict_us[1])
    verdict = "under" if worst < TARGET_US else "NOT under"
    return (
        f"Translating the {t.sizes[0] / 1000:.0f} KB Claude Code request: best "
        f"{t.dict_us[0]:.0f} µs, median {t.dict_us[1]:.0f} µs as dicts; best {t.bytes_us[0]:.0f} "
        f"µs, median {t.bytes_us[1]:.0f} µs from bytes to bytes ({verdict} the "
        f"{TARGET_US / 1000:.0f} ms target)."
    )


def _reading(run: Run) -> list[str]:
    lines = [_capacity_line(run, mode) for mode in MODES]
    lines += [
        _cost_line(run, CHAIN, PASS, "Two failed attempts before the answer, against pass-through"),
        _cost_line(run, TRANSLATED, PASS, "Translation against a Chat pass-through"),
        _cost_line(
            run, TRANSLATED, NATIVE, "Translation against the same Messages request served natively"
        ),
        _timing_line(run.timing),
        "Before and after the cells every route answered 200, in stream and not, from the "
        "deployment it should (x-corral-route), the chain in 3 attempts (x-corral-attempts) "
        "and the others in 1.",
        noise_line(run.cells),
        failure_line(run.cells),
    ]
    return [line for line in lines if line]


def _setup(run: Run) -> str:
    o = run.options
    body = chat_body(stream=False).decode()
    return (
        "Three `corral serve` processes, started alike (SQLite store, metering on, a virtual key "
        "of user `bench` in team `bench`) but each with its own catalog in `CORRAL_PROVIDERS` / "
        "`CORRAL_MODELS`, run on core 0 (`taskset -c 0`), one under load at a time; `corral sim` "
        "(defaults) and `wrk` (one thread) share core 1; loopback only. *pass-through*: "
        f"`{HEALTHY}` on a `sim` provider. *chain ×3*: model `m` on `sim-frontier{FAILING}`, "
        f'`"fallbacks": ["m-standard", "{HEALTHY}"]`, `m-standard` on `sim-standard{FAILING}` '
        "(the simulator answers both with an immediate 429, `retry_after=0` so nothing is "
        f"cooled; `CORRAL_BREAKER_MIN_ATTEMPTS` 10⁹ so no breaker opens), `{HEALTHY}` healthy: "
        "every request makes three attempts. *translated*: an Anthropic Messages request "
        "(`POST /v1/messages`, `x-api-key`, `anthropic-version: 2023-06-01`) for "
        f"`{HEALTHY}` on an `openai-compatible` provider pointed at the same simulator, so "
        "Messages → Chat → Messages. *Messages native*: the same Messages request to the "
        "pass-through process, whose `sim` provider speaks Messages. Request: "
        f"`{body}` (the model name changed per route; a valid Messages body as it stands); "
        '*stream* adds `"stream":true` (latency to the last byte). Each cell is '
        f"{o.cell_seconds} s of `wrk` after a {o.warmup_seconds} s warm-up; cells are "
        "interleaved (the four routes for each mode and concurrency, their order rotated from "
        "one group to the next). Δ req/s, +P50, +P99 and +CPU µs/req are against "
        "*pass-through* at the same mode and concurrency. *CPU µs/req* is the Corral process's "
        "CPU time per completed request (the simulator's three answers per chained request run "
        "on core 1 and are not in it); *others c0/c1* is what anything outside the benchmark "
        "used of each core: a cell with more than "
        f"{NOISY:.0f} % is redone, up to {ATTEMPTS} attempts, keeping the quietest."
    )


def _timing_setup(t: Timing) -> str:
    return (
        f"Micro-benchmark, in the benchmark's own process pinned to core 0 after the servers "
        f"stopped: `corral.protocols.messages.messages_to_chat` (as the gateway calls it for an "
        f'`openai-compatible` provider, `max_tokens_field="max_tokens"`) on the Claude '
        f"Code-sized request of `tests/protocols/corpus.py` ({t.sizes[0]:,} bytes of JSON: "
        f"{t.shape}; {t.sizes[1]:,} bytes as Chat). `timeit`, garbage collector on, "
        f"{t.repeats} repeats of {t.calls[0]:,} and {t.calls[1]:,} calls; µs per call."
    )


def _markdown(run: Run) -> str:
    reading = "\n".join(f"- {line}" for line in _reading(run))
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {TITLE}\n\nCommand: {command(NAME, run.options)}, run {when}.\n\n"
        f"{facts_table(run.facts)}\n\n{_setup(run)}\n\n{_figures(run)}\n\n"
        f"{_timing_setup(run.timing)}\n\n{_timing_table(run.timing)}\n\n"
        f"Reading (computed from this run):\n\n{reading}\n"
    )


def _section(run: Run) -> Section:
    console = f"{_figures(run)}\n\n{_timing_table(run.timing)}\n\n" + "\n".join(_reading(run))
    return Section(NAME, TITLE, console, _markdown(run))


if __name__ == "__main__":
    from run import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
