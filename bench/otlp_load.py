"""OTLP/HTTP load: GenAI span batches, sender processes, and what a target stored and when.

One batch of GenAI semantic-convention spans (``invoke_agent`` roots with
``chat {model}`` CLIENT spans carrying ``gen_ai.*`` usage, and
``execute_tool`` spans) is built once with the ``opentelemetry-proto``
messages and serialised. Every trace and span id in it holds the same 4-byte
marker, so a sender makes batch *n* by replacing the marker with *n*: unique
ids for each batch at the cost of one ``bytes.replace``, and no protobuf work
while the load runs.

Senders are separate processes (``python bench/otlp_load.py send ...``,
standard library only) pinned to the load core. Each posts its batches on
one keep-alive connection until the deadline; a 429 or 503 is honoured (it
waits Retry-After, bounded by the deadline, and resends the same batch: the
OTLP/HTTP contract, so nothing is lost) and counted. About twice a second a
sender notes the last span id of a batch just answered 200, with the time of
the answer; the parent polls the target's SQLite file for those ids to time
ingest-to-queryable, and for the span count to time what was stored.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from harness import (
    GATEWAY_CORE,
    LOAD_CORE,
    VENV_BIN,
    BenchError,
    Processes,
    Service,
    core_jiffies,
    group_cpu_seconds,
)

SPANS_PER_BATCH = 500
TRACES_PER_BATCH = 5
MARKER = b"\xc7\x5e\xa1\x3b"
"""In every id of the template; a batch number replaces it (checked to occur nowhere else)."""
TEXT_MARKER = "~batch#~"
"""In every response, conversation and tool-call id; the batch number in 8 hex digits replaces
it, so these ids are unique per batch too (as a provider's are) at the same length."""
MODELS = (
    ("sim-frontier", "anthropic"),
    ("sim-standard", "openai"),
    ("sim-economy", "openai"),
    ("sim-reasoning", "openai"),
)
TOOLS = ("read_file", "run_tests", "apply_patch", "grep", "list_dir")
SAMPLE_EVERY_S = 0.5
PROBE_EVERY_S = 0.02
_TEXT_MARKER = TEXT_MARKER.encode()


# --- the batch --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A serialised ExportTraceServiceRequest whose ids all hold ``MARKER``."""

    payload: bytes
    spans: int
    traces: int

    def batch(self, number: int) -> bytes:
        ids = self.payload.replace(MARKER, struct.pack(">I", number))
        return ids.replace(_TEXT_MARKER, b"%08x" % number)

    def probe_span_id(self, number: int) -> str:
        """The id (hex) of batch ``number``'s last span."""
        return probe_span_id(number, self.spans)

    def describe(self) -> str:
        chats = self.spans - self.traces - self.traces * _tools_per_trace(self.spans // self.traces)
        return (
            f"{self.spans} spans in {self.traces} traces, {len(self.payload):,} bytes of "
            f"protobuf: per trace one `invoke_agent` root, {chats // self.traces} "
            f"`chat {{model}}` CLIENT spans with `gen_ai.*` request, response and usage "
            f"attributes, {_tools_per_trace(self.spans // self.traces)} `execute_tool` spans"
        )


def probe_span_id(number: int, spans: int) -> str:
    return (struct.pack(">I", number) + struct.pack(">I", spans)).hex()


def _tools_per_trace(per_trace: int) -> int:
    return (per_trace - 1) * 2 // 5


def build_template(spans: int = SPANS_PER_BATCH, traces: int = TRACES_PER_BATCH) -> Template:
    """The batch every sender posts (with its own ids): ``spans`` spans in ``traces`` traces."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

    per_trace = spans // traces
    if per_trace * traces != spans or per_trace < 3:
        raise BenchError(f"{spans} spans do not split into {traces} traces of 3 or more")
    now_ns = time.time_ns()
    scope = ScopeSpans()
    scope.scope.name = "corral.bench.genai"
    scope.scope.version = "1.0"
    local = 0
    for t in range(traces):
        trace_id = b"\x7e\x11" + MARKER + struct.pack(">H", t) + b"\x5a" * 8
        local = _add_trace(scope, trace_id, t, per_trace, local, now_ns)
    resource = ResourceSpans()
    _attrs(resource.resource.attributes, {
        "service.name": "bench-agent",
        "service.version": "1.0.0",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
    })  # fmt: skip
    resource.scope_spans.append(scope)
    request = ExportTraceServiceRequest()
    request.resource_spans.append(resource)
    payload = request.SerializeToString()
    expected = 3 * spans - traces  # trace id, span id, and a parent id unless root
    if payload.count(MARKER) != expected:
        raise BenchError(f"the id marker occurs {payload.count(MARKER)} times, not {expected}")
    if not payload.count(_TEXT_MARKER):
        raise BenchError("the text marker is missing from the batch")
    return Template(payload, spans, traces)


def _add_trace(scope: object, trace_id: bytes, t: int, size: int, local: int, now_ns: int) -> int:
    """One agent turn: the root, then alternating chat and tool spans under it."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    model, provider = MODELS[t % len(MODELS)]
    conversation = f"conv-{TEXT_MARKER}-{t}"
    start = now_ns - 120 * 10**9
    end = start + 110 * 10**9
    local += 1
    root_id = MARKER + struct.pack(">I", local)
    root = scope.spans.add()  # type: ignore[attr-defined]
    _span(root, trace_id, root_id, b"", "invoke_agent fixer", Span.SPAN_KIND_INTERNAL, start, end)
    _attrs(root.attributes, {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "fixer",
        "gen_ai.agent.id": f"agent-{TEXT_MARKER}-{t}", "gen_ai.conversation.id": conversation,
        "gen_ai.provider.name": provider,
    })  # fmt: skip
    tools = _tools_per_trace(size)
    children = size - 1
    step = (end - start) // children
    for i in range(children):
        local += 1
        span = scope.spans.add()  # type: ignore[attr-defined]
        s, e = start + i * step, start + i * step + step * 9 // 10
        span_id = MARKER + struct.pack(">I", local)
        if (i * tools) // children != ((i + 1) * tools) // children:  # tools spread evenly
            tool = TOOLS[i % len(TOOLS)]
            _span(span, trace_id, span_id, root_id, f"execute_tool {tool}", 1, s, e)
            _attrs(span.attributes, {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": f"call_{TEXT_MARKER}_{t}_{i}",
            })  # fmt: skip
        else:
            _span(span, trace_id, span_id, root_id, f"chat {model}", Span.SPAN_KIND_CLIENT, s, e)
            _attrs(span.attributes, _chat_attributes(model, provider, conversation, t, i))
        span.status.code = Status.STATUS_CODE_OK
    return local


def _chat_attributes(
    model: str, provider: str, conversation: str, t: int, i: int
) -> dict[str, object]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.response.id": f"resp_{TEXT_MARKER}_{t}_{i}",
        "gen_ai.response.finish_reasons": ["tool_calls" if i % 3 else "stop"],
        "gen_ai.request.max_tokens": 8192,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.conversation.id": conversation,
        "gen_ai.usage.input_tokens": 1200 + 37 * i,
        "gen_ai.usage.output_tokens": 150 + 11 * (i % 17),
        "gen_ai.usage.cache_read.input_tokens": 9000 + 400 * i,
        "gen_ai.usage.cache_creation.input_tokens": 300 if i % 5 == 0 else 0,
        "server.address": "api.example.com",
        "server.port": 443,
    }


def _span(span: object, trace_id: bytes, span_id: bytes, parent: bytes, name: str,
          kind: int, start: int, end: int) -> None:  # fmt: skip
    span.trace_id = trace_id  # type: ignore[attr-defined]
    span.span_id = span_id  # type: ignore[attr-defined]
    if parent:
        span.parent_span_id = parent  # type: ignore[attr-defined]
    span.name = name  # type: ignore[attr-defined]
    span.kind = kind  # type: ignore[attr-defined]
    span.start_time_unix_nano = start  # type: ignore[attr-defined]
    span.end_time_unix_nano = end  # type: ignore[attr-defined]


def _attrs(target: object, values: dict[str, object]) -> None:
    for key, value in values.items():
        kv = target.add()  # type: ignore[attr-defined]
        kv.key = key
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        elif isinstance(value, list):
            for item in value:
                kv.value.array_value.values.add().string_value = str(item)
        else:
            kv.value.string_value = str(value)


# --- the sender process -----------------------------------------------------------------------


@dataclass(slots=True)
class SenderResult:
    """What one sender did, written as JSON when it exits."""

    batches: int = 0
    spans: int = 0
    throttled: int = 0  # 429 answers, each followed by a wait and a resend
    unavailable: int = 0  # 503 answers, likewise
    errors: int = 0  # other answers or broken connections (the batch is resent)
    first_send: float = 0.0
    last_200: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


def _send_main(args: argparse.Namespace) -> int:
    template = Template(Path(args.template).read_bytes(), args.spans, 0)
    url = urlsplit(args.url)
    headers = {"Content-Type": "application/x-protobuf"}
    if args.authorization:
        headers["Authorization"] = args.authorization
    result = SenderResult()
    samples = Path(args.samples).open("a", buffering=1)  # noqa: SIM115 - closed below
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=120)
    while time.monotonic() < args.start_at:
        time.sleep(min(0.01, max(0.0, args.start_at - time.monotonic())))
    deadline = args.start_at + args.seconds
    result.first_send = time.monotonic()
    number, next_sample = args.index + 1, 0.0
    try:
        while time.monotonic() < deadline:
            if _deliver(conn, url.path, template.batch(number), headers, deadline, result):
                result.batches += 1
                result.spans += template.spans
                result.last_200 = now = time.monotonic()
                if now >= next_sample:
                    samples.write(f"{template.probe_span_id(number)} {now:.6f}\n")
                    next_sample = now + SAMPLE_EVERY_S
            number += args.senders
    finally:
        conn.close()
        samples.close()
        Path(args.result).write_text(json.dumps(_as_dict(result)))
    return 0


def _deliver(
    conn: http.client.HTTPConnection,
    path: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    result: SenderResult,
) -> bool:
    """Post ``body`` until it is answered 200 (True) or the deadline passes (False)."""
    while time.monotonic() < deadline:
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            result.errors += 1
            kind = type(exc).__name__
            result.statuses[kind] = result.statuses.get(kind, 0) + 1
            conn.close()  # reconnects on the next request
            time.sleep(0.1)
            continue
        status = response.status
        result.statuses[str(status)] = result.statuses.get(str(status), 0) + 1
        if status == 200:
            return True
        if status in (429, 503):
            if status == 429:
                result.throttled += 1
            else:
                result.unavailable += 1
            wait = _retry_after(response.getheader("retry-after"))
        else:
            result.errors += 1
            wait = 1.0
        pause = max(0.0, min(wait, deadline - time.monotonic()))
        if pause > 1.0:  # the server may drop an idle keep-alive connection meanwhile
            conn.close()
        time.sleep(pause)
    return False


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _as_dict(result: SenderResult) -> dict[str, object]:
    return {name: getattr(result, name) for name in SenderResult.__slots__}


# --- the parent side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestTarget:
    """Where the load goes and how to see what it stored.

    ``db`` is the target's SQLite file, read (never written) to count spans
    and to find sampled span ids in ``spans.span_id``. ``api_count``, when
    given, is the span count as the target's own API reports it: the drain
    is over once it reaches what was accepted.
    """

    name: str
    url: str
    service: Service
    db: Path
    authorization: str = ""
    api_count: Callable[[], int] | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """One load run against one target."""

    target: str
    senders: int
    seconds: float  # from the first send to the last 200
    spans: int  # accepted (answered 200)
    batches: int
    throttled: int
    unavailable: int
    errors: int
    statuses: dict[str, int]  # every answer by status, and connection errors by kind
    stored_in_window: int  # stored while the load ran
    stored: int  # stored by the end of the drain
    api_count: int | None  # the target's API, at the end of the drain
    drain_s: float | None  # last 200 → every accepted span stored (None: not within the wait)
    drain_wait_s: float
    until_drained_s: float  # from the start of the load to the end of the drain (or the wait)
    lags: list[float]  # 200 → queryable, sampled batches
    unresolved: int  # sampled batches not queryable by the end of the drain
    last_sampled: str  # the id of the last sampled span found stored ("" if none)
    window_s: float  # the load window, from the senders' start to their deadline
    server_cpu_s: float  # the target's CPU time during the load window
    server_cpu_total_s: float  # ... from the start of the load to the end of the drain
    other_core0: float  # % of core 0 used by anything but the target, during the load
    other_core1: float  # % of core 1 used by anything but the senders and this process

    @property
    def accepted_rate(self) -> float:
        return self.spans / self.window_s if self.window_s else 0.0

    @property
    def stored_rate(self) -> float:
        return self.stored_in_window / self.window_s if self.window_s else 0.0

    @property
    def overall_rate(self) -> float:
        """Spans stored per second from the start of the load to the end of the drain."""
        return self.stored / self.until_drained_s if self.until_drained_s else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.spans - self.stored)

    @property
    def cpu_us_per_span(self) -> float:
        """The target's CPU time per span, over the load and the drain (ingest and storage)."""
        return 1e6 * self.server_cpu_total_s / self.stored if self.stored else 0.0


class _Reader:
    """A read-only view of a target's SQLite file (WAL: reads never block its writer)."""

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)

    def count(self) -> int:
        row = self._conn.execute("SELECT max(rowid) FROM spans").fetchone()
        return int(row[0] or 0)

    def found(self, ids: Sequence[str]) -> set[str]:
        marks = ",".join("?" for _ in ids)
        sql = f"SELECT span_id FROM spans WHERE span_id IN ({marks})"  # noqa: S608 - placeholders
        return {str(r[0]) for r in self._conn.execute(sql, list(ids))}

    def close(self) -> None:
        self._conn.close()


class _Prober(threading.Thread):
    """Tails the senders' sample files and times each sampled span until it is queryable."""

    def __init__(self, db: Path, sample_files: Sequence[Path]) -> None:
        super().__init__(name="lag-prober", daemon=True)
        self._db = db
        self._files = list(sample_files)
        self._offsets = [0] * len(self._files)
        self._pending: dict[str, float] = {}
        self.lags: list[float] = []
        self.last_found = ""
        self._done = threading.Event()

    def run(self) -> None:
        reader = _Reader(self._db)
        try:
            while not self._done.is_set():
                self._read_samples()
                if self._pending:
                    ids = list(self._pending)[:500]
                    now = time.monotonic()
                    for span_id in reader.found(ids):
                        self.lags.append(now - self._pending.pop(span_id))
                        self.last_found = span_id
                time.sleep(PROBE_EVERY_S)
        finally:
            reader.close()

    def _read_samples(self) -> None:
        for i, path in enumerate(self._files):
            if not path.exists():
                continue
            with path.open() as f:
                f.seek(self._offsets[i])
                text = f.read()
            complete = text[: text.rfind("\n") + 1]
            self._offsets[i] += len(complete)
            for line in complete.splitlines():
                span_id, at = line.split()
                self._pending[span_id] = float(at)

    def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every sample written so far has been found."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(PROBE_EVERY_S)

    def finish(self) -> int:
        """Stop; returns how many samples were never found."""
        self._done.set()
        self.join(timeout=10)
        self._read_samples()
        return len(self._pending)


@dataclass(frozen=True, slots=True)
class Load:
    """How to load a target: the batch, for how long, from how many senders."""

    template: Template
    seconds: float
    senders: int
    workdir: Path
    drain_wait_s: float


def drive(procs: Processes, target: IngestTarget, load: Load) -> IngestResult:
    """Post ``load`` at ``target`` from sender processes; wait for the drain; measure it all."""
    work = load.workdir / _slug(target.name)
    work.mkdir(parents=True, exist_ok=True)
    template_file = work / "batch.pb"
    template_file.write_bytes(load.template.payload)
    reader = _Reader(target.db)
    base = reader.count()
    start_at = time.monotonic() + 2.0  # every sender is up and waiting by then
    senders = [
        _start_sender(procs, target, load, work, template_file, i, start_at)
        for i in range(load.senders)
    ]
    prober = _Prober(target.db, [work / f"samples-{i}.txt" for i in range(load.senders)])
    prober.start()
    try:
        window = _watch_load(target, senders, reader, start_at, load.seconds)
        results = [_sender_result(work, i, s) for i, s in enumerate(senders)]
        accepted = sum(r["spans"] for r in results)  # type: ignore[misc]
        last_200 = max([float(r["last_200"]) for r in results] + [start_at])  # type: ignore[arg-type]
        drain = _drain(target, reader, base, accepted, last_200, load.drain_wait_s)
        cpu_total = group_cpu_seconds([target.service.pid]) - window.cpu_start
        prober.settle(timeout=5.0 if drain.seconds is not None else 0.0)
    finally:
        unresolved = prober.finish()
        reader.close()
    first = min(float(r["first_send"]) for r in results)  # type: ignore[arg-type]
    return IngestResult(
        target=target.name,
        senders=load.senders,
        seconds=max(last_200 - first, 1e-9),
        spans=accepted,
        batches=sum(int(r["batches"]) for r in results),  # type: ignore[call-overload]
        throttled=sum(int(r["throttled"]) for r in results),  # type: ignore[call-overload]
        unavailable=sum(int(r["unavailable"]) for r in results),  # type: ignore[call-overload]
        errors=sum(int(r["errors"]) for r in results),  # type: ignore[call-overload]
        statuses=_merged([r["statuses"] for r in results]),  # type: ignore[misc]
        stored_in_window=window.stored - base,
        stored=drain.stored - base,
        api_count=drain.api,
        drain_s=drain.seconds,
        until_drained_s=drain.ended - start_at,
        drain_wait_s=load.drain_wait_s,
        lags=sorted(prober.lags),
        unresolved=unresolved,
        last_sampled=prober.last_found,
        window_s=window.seconds,
        server_cpu_s=window.server_cpu_s,
        server_cpu_total_s=cpu_total,
        other_core0=window.other_core0,
        other_core1=window.other_core1,
    )


def _start_sender(
    procs: Processes,
    target: IngestTarget,
    load: Load,
    work: Path,
    template_file: Path,
    index: int,
    start_at: float,
) -> Service:
    argv = [
        str(VENV_BIN / "python"), str(Path(__file__).resolve()), "send",
        "--url", target.url, "--authorization", target.authorization,
        "--template", str(template_file), "--spans", str(load.template.spans),
        "--index", str(index), "--senders", str(load.senders),
        "--start-at", f"{start_at:.6f}", "--seconds", str(load.seconds),
        "--samples", str(work / f"samples-{index}.txt"),
        "--result", str(work / f"result-{index}.json"),
    ]  # fmt: skip
    return procs.start(f"{_slug(target.name)}-sender-{index}", argv, core=LOAD_CORE)


@dataclass(frozen=True, slots=True)
class _Window:
    """The load window: stored count and CPU at its end, and the CPU counters at its start."""

    stored: int
    seconds: float
    cpu_start: float  # the target's CPU time when the load began
    server_cpu_s: float  # ... used during the window
    other_core0: float
    other_core1: float


def _watch_load(
    target: IngestTarget, senders: list[Service], reader: _Reader, start_at: float, seconds: float
) -> _Window:
    """Wait for the senders (bounded); the count, CPU and outside load over the window.

    Outside load on core 1 is what neither the senders nor this process used.
    """
    while time.monotonic() < start_at:
        time.sleep(0.01)
    pids = [s.pid for s in senders]
    cpu0, cores0, ours0 = group_cpu_seconds([target.service.pid]), core_jiffies(), _own_cpu()
    senders0 = group_cpu_seconds(pids)
    end: tuple[float, int, float, dict[int, tuple[int, int]], float, float] | None = None
    deadline = start_at + seconds + 180  # a sender's last request may wait on a slow answer
    while any(s.proc.poll() is None for s in senders) or end is None:
        target.service.check_alive()
        now = time.monotonic()
        if now > deadline:
            raise BenchError(f"senders to {target.name} still running {seconds + 180:.0f} s on")
        if end is None and (
            now >= start_at + seconds or all(s.proc.poll() is not None for s in senders)
        ):
            end = (
                now, reader.count(), group_cpu_seconds([target.service.pid]), core_jiffies(),
                group_cpu_seconds(pids), _own_cpu(),
            )  # fmt: skip
        time.sleep(0.05)
    at, stored, cpu1, cores1, senders1, ours1 = end
    elapsed = max(at - start_at, 1e-9)
    server = cpu1 - cpu0
    ours = (senders1 - senders0) + (ours1 - ours0)
    return _Window(
        stored=stored,
        seconds=elapsed,
        cpu_start=cpu0,
        server_cpu_s=server,
        other_core0=max(0.0, _busy(cores0, cores1, GATEWAY_CORE) - 100 * server / elapsed),
        other_core1=max(0.0, _busy(cores0, cores1, LOAD_CORE) - 100 * ours / elapsed),
    )


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _busy(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float:
    (b0, t0), (b1, t1) = before[core], after[core]
    return 100.0 * (b1 - b0) / max(t1 - t0, 1)


def _sender_result(work: Path, index: int, sender: Service) -> dict[str, object]:
    path = work / f"result-{index}.json"
    if not path.exists():
        raise BenchError(f"sender {index} left no result:\n{sender.log_tail()}")
    data: dict[str, object] = json.loads(path.read_text())
    return data


@dataclass(frozen=True, slots=True)
class _Drain:
    seconds: float | None  # last 200 → everything stored (None: not within the wait)
    ended: float  # time.monotonic() when it was seen stored, or when the wait ran out
    stored: int
    api: int | None


def _drain(
    target: IngestTarget, reader: _Reader, base: int, accepted: int, last_200: float, wait: float
) -> _Drain:
    """Poll until every accepted span is stored (and, with an API count, reported by the API),
    waiting at most ``wait`` seconds after the last 200."""
    deadline = last_200 + wait
    stored_at: float | None = None
    while True:
        now = time.monotonic()
        stored = reader.count()
        if stored_at is None and stored - base >= accepted:
            stored_at = now
        if stored_at is not None:
            if target.api_count is None:
                return _Drain(stored_at - last_200, stored_at, stored, None)
            api = _api_count(target)
            if api is not None and api >= accepted:
                return _Drain(now - last_200, now, stored, api)
        if now > deadline:
            return _Drain(None, now, stored, _api_count(target))
        time.sleep(0.05 if stored_at is None else 0.5)


def _api_count(target: IngestTarget) -> int | None:
    if target.api_count is None:
        return None
    try:
        return target.api_count()
    except (OSError, ValueError, KeyError):
        return None


def _merged(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            out[key] = out.get(key, 0) + int(n)
    return dict(sorted(out.items()))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0–1) of sorted ``values``, nearest rank."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# --- where Corral's ingest CPU goes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    """Corral's ingest stages timed in this process, in µs of CPU per span."""

    decode_map: float  # corral.traces.otlp.parse_traces: protobuf to span rows
    journal: float  # Journal.append: one JSON line per row, one os.write per batch
    store: float  # SpanWriter.write in batches of 1,000 (roll-ups and duplicate matching)
    spans: int


def ingest_split(template: Template, batches: int, workdir: Path) -> Split:
    """Run ``batches`` batches through the stages one by one, on a fresh SQLite store."""
    from corral.store import Store
    from corral.traces import Recorder
    from corral.traces.journal import Journal
    from corral.traces.otlp import Identity, parse_traces

    identity = Identity("org_default", "team_bench", "user_bench", "key_bench", None, "user_bench")
    workdir.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{workdir / 'split.db'}")
    try:
        store.migrate()
        writer = Recorder(store, journal_dir=workdir / "journal").writer
        journal = Journal(workdir / "journal-split")
        payloads = [template.batch(10**6 + n) for n in range(batches)]
        cpu = time.process_time
        t0 = cpu()
        parsed = [
            parse_traces(
                body,
                content_type="application/x-protobuf",
                content_encoding=None,
                identity=identity,
            ).rows
            for body in payloads
        ]
        t1 = cpu()
        for rows in parsed:
            journal.append(*rows)
        t2 = cpu()
        flat = [row for rows in parsed for row in rows]
        for start in range(0, len(flat), 1000):
            writer.write(flat[start : start + 1000])
        t3 = cpu()
        journal.current.close(delete=True)
    finally:
        store.close()
    n = len(flat)
    return Split(1e6 * (t1 - t0) / n, 1e6 * (t2 - t1) / n, 1e6 * (t3 - t2) / n, n)


# --- command line (the sender) ----------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="An OTLP/HTTP sender of the trajectory benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send", help="post batches until the deadline (run by the benchmark)")
    send.add_argument("--url", required=True)
    send.add_argument("--authorization", default="")
    send.add_argument("--template", required=True)
    send.add_argument("--spans", type=int, required=True)
    send.add_argument("--index", type=int, required=True)
    send.add_argument("--senders", type=int, required=True)
    send.add_argument("--start-at", type=float, required=True, help="time.monotonic() to start")
    send.add_argument("--seconds", type=float, required=True)
    send.add_argument("--samples", required=True)
    send.add_argument("--result", required=True)
    return _send_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
