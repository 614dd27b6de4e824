"""OTLP export: every stored span also sent to an OpenTelemetry backend.

``OtlpExporter.offer`` is called by the span writer's worker thread right after a
batch is committed; it only appends references to a bounded queue (beyond
``queue_max`` the oldest are dropped and counted), so export never slows the
gateway or the writer. A background task takes up to ``batch_size`` spans at a
time, encodes them in a worker thread as an ``ExportTraceServiceRequest``
(protobuf, gzip) and POSTs it to the OTLP/HTTP endpoint. 429/502/503/504 and
connection errors are retried with exponential backoff and jitter, honouring
``Retry-After``, for at most ``max_retry_s`` per batch; any other status drops the
batch (OTLP/HTTP says only those four are retryable).

Each row becomes one OTLP ``Span`` under one resource (``service.name`` "corral")
and one scope ("corral"), with attributes of the OpenTelemetry GenAI semantic
conventions so other backends understand them, and Corral's own under ``corral.*``:

* kind: CLIENT for ``llm_request`` and ``attempt``, INTERNAL otherwise.
* status: ``error`` and ``refused`` (the operation did not complete) are ERROR with
  the error message; ``ok`` is OK when Corral saw the outcome itself (source
  "gateway") and UNSET when relayed from an agent (whose UNSET and OK ingest does
  not tell apart); ``cancelled`` (the client went away, which is not a failure of
  the call) and anything else are UNSET. ``corral.status`` always carries the row's
  status, ``error.type`` its error class.
* usage: ``gen_ai.usage.input_tokens`` counts every input token (uncached, cache
  reads and writes), ``gen_ai.usage.output_tokens`` every output token (reasoning
  included), as the conventions ask. Only spans that count as spend (``llm_request``
  rows that are not ``duplicate_of`` another) carry ``gen_ai.usage.*`` and
  ``corral.cost_usd``; others (attempts, whose tokens are their request's,
  duplicates, aggregates) carry the same figures as ``corral.usage.*``, so summing
  ``gen_ai.usage.*`` or ``corral.cost_usd`` over exported spans counts spend once.
* zero, empty and None values are left out; the row's own ``attributes`` follow
  (keys without a namespace under ``corral.``), never overriding the above.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from corral import __version__
from corral.errors import ConfigError

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 10.0
_HTTP_TIMEOUT = 10.0
_GZIP_LEVEL = 6
_INT64 = 1 << 63

_CLIENT_KINDS = frozenset({"llm_request", "attempt"})
_OPERATIONS = {
    "llm_request": "chat",
    "attempt": "chat",
    "agent": "invoke_agent",
    "tool": "execute_tool",
}
_ERROR_STATUSES = frozenset({"error", "refused"})

# (attribute, column) for string and number columns copied as they are.
_GENAI_COLUMNS = (
    ("gen_ai.request.model", "model_requested"),
    ("gen_ai.response.model", "model_served"),
    ("gen_ai.provider.name", "provider"),
    ("gen_ai.response.id", "response_id"),
    ("error.type", "error_class"),
)
_CORRAL_COLUMNS = (
    ("corral.kind", "kind"),
    ("corral.status", "status"),
    ("corral.source", "source"),
    ("corral.org_id", "org_id"),
    ("corral.team_id", "team_id"),
    ("corral.user_id", "user_id"),
    ("corral.key_id", "key_id"),
    ("corral.run_id", "run_id"),
    ("corral.owner_id", "owner_id"),
    ("corral.protocol", "protocol"),
    ("corral.deployment", "deployment"),
    ("corral.request_id", "request_id"),
    ("corral.attempt", "attempt"),
    ("corral.http_status", "http_status"),
    ("corral.ttft_ms", "ttft_ms"),
    ("corral.upstream_ms", "upstream_ms"),
    ("corral.overhead_ms", "overhead_ms"),
    ("corral.cost_source", "cost_source"),
    ("corral.price_version", "price_version"),
    ("corral.duplicate_of", "duplicate_of"),
)


# -- rows to protobuf ---------------------------------------------------------


def export_request(
    rows: Sequence[Mapping[str, Any]], *, service_version: str = __version__
) -> tuple[ExportTraceServiceRequest, int]:
    """The OTLP request carrying ``rows``, and how many rows were skipped (bad ids)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _put_all(
        resource_spans.resource.attributes,
        [("service.name", "corral"), ("service.version", service_version)],
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "corral"
    scope_spans.scope.version = service_version
    skipped = 0
    for row in rows:
        ids = _ids(row)
        if ids is None:
            skipped += 1
            continue
        trace_id, span_id, parent = ids
        _fill_span(scope_spans.spans.add(trace_id=trace_id, span_id=span_id), row, parent)
    return request, skipped


def _ids(row: Mapping[str, Any]) -> tuple[bytes, bytes, bytes] | None:
    """(trace, span, parent) ids as bytes; None if one is not hex of the right length."""
    try:
        trace_id = bytes.fromhex(row["trace_id"])
        span_id = bytes.fromhex(row["span_id"])
        parent = bytes.fromhex(row.get("parent_span_id") or "")
    except (TypeError, ValueError, KeyError):
        return None
    if len(trace_id) != 16 or len(span_id) != 8 or len(parent) not in (0, 8):
        return None
    return trace_id, span_id, parent


def _fill_span(span: Span, row: Mapping[str, Any], parent: bytes) -> None:
    kind = row.get("kind") or "span"
    span.parent_span_id = parent
    span.name = row.get("name") or kind
    span.kind = Span.SPAN_KIND_CLIENT if kind in _CLIENT_KINDS else Span.SPAN_KIND_INTERNAL
    start = int(row.get("start_ns") or 0)
    span.start_time_unix_nano = start
    span.end_time_unix_nano = max(start, int(row.get("end_ns") or 0))
    status = row.get("status")
    if status in _ERROR_STATUSES:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = row.get("error_message") or row.get("error_class") or status
    elif status == "ok" and row.get("source") == "gateway":
        span.status.code = Status.STATUS_CODE_OK
    _put_all(span.attributes, _attributes(row, kind))


def _attributes(row: Mapping[str, Any], kind: str) -> Iterator[tuple[str, Any]]:
    """Every attribute of a row, mapped ones first; ``_put_all`` skips empty values."""
    yield "gen_ai.operation.name", row.get("operation") or _OPERATIONS.get(kind)
    for attribute, column in _GENAI_COLUMNS:
        yield attribute, row.get(column)
    finish = row.get("finish_reason")
    if finish:
        yield "gen_ai.response.finish_reasons", [finish]
    yield "gen_ai.request.stream", row.get("stream")
    ttft = row.get("ttft_ms")
    if ttft:
        yield "gen_ai.response.time_to_first_chunk", ttft / 1000.0
    yield from _usage(row, kind)
    for attribute, column in _CORRAL_COLUMNS:
        yield attribute, row.get(column)
    extra = row.get("attributes")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            key = str(key)
            # Usage comes from the token columns only, so spend is never counted twice.
            if not key.startswith("gen_ai.usage."):
                yield (key if "." in key else f"corral.{key}"), value


def _usage(row: Mapping[str, Any], kind: str) -> Iterator[tuple[str, Any]]:
    counts = kind == "llm_request" and not row.get("duplicate_of")
    prefix = "gen_ai.usage." if counts else "corral.usage."
    cached = row.get("cached_input_tokens") or 0
    written = row.get("cache_write_tokens") or 0
    reasoning = row.get("reasoning_tokens") or 0
    yield prefix + "input_tokens", (row.get("input_tokens") or 0) + cached + written
    yield prefix + "output_tokens", (row.get("output_tokens") or 0) + reasoning
    yield prefix + "cache_read.input_tokens", cached
    yield prefix + "cache_creation.input_tokens", written
    yield prefix + "reasoning.output_tokens", reasoning
    cost = (row.get("cost_nusd") or 0) / 1e9
    yield ("corral.cost_usd" if counts else "corral.usage.cost_usd"), cost


def _put_all(target: Any, pairs: Iterator[tuple[str, Any]] | list[tuple[str, Any]]) -> None:
    """Append ``pairs`` to a repeated ``KeyValue`` field, leaving out None, "", 0 and [];
    the first value of a key wins. ``False`` is kept: it is a fact, not an absence."""
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen or value is None:
            continue
        kind = type(value)
        # Strings and numbers are nearly all of it: set them without the general path.
        if kind is str or kind is float or (kind is int and -_INT64 <= value < _INT64):
            if not value:
                continue
            seen.add(key)
            out = target.add(key=key).value
            if kind is str:
                out.string_value = value
            elif kind is int:
                out.int_value = value
            else:
                out.double_value = value
        elif value != []:
            seen.add(key)
            _set_value(target.add(key=key).value, value)


def _set_value(out: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if -_INT64 <= value < _INT64:
            out.int_value = value
        else:
            out.string_value = str(value)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Mapping):
        out.kvlist_value.SetInParent()
        for key, item in value.items():
            if item is not None:
                _set_value(out.kvlist_value.values.add(key=str(key)).value, item)
    elif isinstance(value, list | tuple):
        out.array_value.SetInParent()
        for item in value:
            _set_value(out.array_value.values.add(), item)
    elif value is not None:
        out.string_value = str(value)


# -- the HTTP side ------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def rejected_spans(body: bytes) -> tuple[int, str]:
    """``(rejected_spans, error_message)`` from an OTLP success response (0 if none)."""
    if not body:
        return 0, ""
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except DecodeError:
        return 0, ""  # not protobuf (a proxy's page, say): the 2xx is all we know
    partial = response.partial_success
    return int(partial.rejected_spans), partial.error_message


class OtlpExporter:
    """Sends spans to an OTLP/HTTP traces endpoint from a bounded queue.

    Counters, read by /metrics: ``sent`` (accepted by the collector), ``failed``
    (refused by it, rejected in a partial success, unencodable, or retries ran
    out), ``dropped`` (never attempted: queue overflow, or left over at stop) and
    ``queued`` (waiting now).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        queue_max: int = 100_000,
        batch_size: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
        service_version: str = __version__,
        max_retry_s: float = 30.0,
    ) -> None:
        self._endpoint = endpoint
        self._where = _safe_url(endpoint)
        if queue_max < 1 or batch_size < 1:
            raise ConfigError("the OTLP export queue and batch sizes must be positive")
        self._headers = {
            **(headers or {}),
            "content-type": "application/x-protobuf",
            "content-encoding": "gzip",
            "user-agent": f"corral/{service_version}",
        }
        self._queue_max = queue_max
        self._batch_size = batch_size
        self._transport = transport
        self._service_version = service_version
        self._max_retry_s = max_retry_s
        self._queue: deque[Mapping[str, Any]] = deque()
        self._lock = threading.Lock()  # offer runs in the writer's thread, the sender on the loop
        self._signalled = False
        self._closed = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._logged: set[object] = set()
        self._random = random.Random()  # jitter only
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the writer's side ------------------------------------------------------

    def offer(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue stored rows for export (thread-safe, never blocks); rows must not change after.

        Beyond ``queue_max`` queued spans the oldest are dropped and counted.
        """
        if not rows:
            return
        with self._lock:
            if self._closed:
                self.dropped += len(rows)
                return
            self._queue.extend(rows)
            excess = len(self._queue) - self._queue_max
            if excess > 0:
                self.dropped += excess
                for _ in range(excess):
                    self._queue.popleft()
            wake = self._loop is not None and not self._signalled
            self._signalled = self._signalled or wake
        if wake:
            self._signal()

    def _signal(self) -> None:
        loop, event = self._loop, self._wake
        if loop is None or event is None:
            return
        # The loop may close between the check and the call, at shutdown: nothing to wake then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)

    def _take(self) -> list[Mapping[str, Any]]:
        with self._lock:
            self._signalled = False
            count = min(self._batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender (spans offered before are sent too)."""
        if self._task is not None:
            return
        self._client = httpx.AsyncClient(transport=self._transport, timeout=_HTTP_TIMEOUT)
        self._wake = asyncio.Event()
        self._stopping = False
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._closed = False
        self._task = asyncio.create_task(self._run(), name="corral-otlp-export")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a drain deadline)
        """Send what can be sent within ``timeout``, then stop; the rest counts as dropped."""
        task = self._task
        if task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
        with self._lock:
            self._closed = True
            self._loop = None
            left = len(self._queue) + self._in_flight
            self._queue.clear()
            self.dropped += left
            self._in_flight = 0
        if left:
            log.warning("OTLP export stopped with %d spans unsent", left)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the sender ---------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            batch = self._take()
            if batch:
                self._in_flight = len(batch)
                try:
                    await self._deliver(batch)
                except Exception:
                    # The sender must outlive any surprise, or the queue would fill unseen.
                    self.failed += len(batch)
                    log.exception("exporting %d spans failed", len(batch))
                self._in_flight = 0
                continue
            if self._stopping:
                return
            await self._wake.wait()
            self._wake.clear()

    async def _deliver(self, rows: list[Mapping[str, Any]]) -> None:
        payload, count, skipped = await asyncio.to_thread(self._encode, rows)
        self._in_flight = count  # what ``stop`` counts as dropped if it cancels us now
        if skipped:
            self.failed += skipped
            self._warn_once("ids", "skipped %d spans whose ids are not hex", skipped)
        if not count:
            return
        deadline = time.monotonic() + self._max_retry_s
        attempt = 0
        while True:
            delay, reason = await self._post(payload, count, attempt)
            if delay is None:
                return
            if time.monotonic() + delay > deadline:
                self.failed += count
                self._warn_once(
                    ("gave_up", reason),
                    "OTLP export to %s failed (%s) for %.0fs; dropped a batch of %d spans",
                    self._where,
                    reason,
                    self._max_retry_s,
                    count,
                )
                return
            await asyncio.sleep(delay)
            attempt += 1

    def _encode(self, rows: list[Mapping[str, Any]]) -> tuple[bytes, int, int]:
        """Gzipped protobuf of ``rows`` (run in a worker thread), spans in it, rows skipped."""
        request, skipped = export_request(rows, service_version=self._service_version)
        payload = gzip.compress(request.SerializeToString(), compresslevel=_GZIP_LEVEL)
        return payload, len(rows) - skipped, skipped

    async def _post(self, payload: bytes, count: int, attempt: int) -> tuple[float | None, str]:
        """Send one batch; ``(seconds to wait before retrying or None when done, reason)``."""
        assert self._client is not None
        try:
            response = await self._client.post(
                self._endpoint, content=payload, headers=self._headers
            )
        except httpx.TransportError as exc:
            return self._backoff(attempt), type(exc).__name__
        status = response.status_code
        if 200 <= status < 300:
            rejected, message = rejected_spans(response.content)
            rejected = min(rejected, count)
            self.sent += count - rejected
            self.failed += rejected
            if rejected:
                self._warn_once(
                    "partial", "collector rejected %d of %d spans: %s", rejected, count, message
                )
            return None, ""
        if status in RETRYABLE_STATUSES:
            wait = parse_retry_after(response.headers.get("retry-after"))
            return (self._backoff(attempt) if wait is None else wait), f"HTTP {status}"
        self.failed += count
        # Never the headers: they may carry the collector's credentials.
        self._warn_once(
            status, "collector at %s answered %d; dropped %d spans", self._where, status, count
        )
        return None, ""

    def _backoff(self, attempt: int) -> float:
        """Exponential, with half of it random so many Corral processes do not retry together."""
        ceiling = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2.0**attempt)
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _warn_once(self, what: object, message: str, *args: object) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.warning(message, *args)


def _safe_url(endpoint: str) -> str:
    """The endpoint without credentials or query, fit for a log line; ConfigError if invalid."""
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:  # its message may quote the URL, credentials and all
        raise ConfigError("the OTLP export endpoint is not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("the OTLP export endpoint must be an http(s) URL")
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"
