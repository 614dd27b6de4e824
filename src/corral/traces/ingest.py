"""OTLP/HTTP ingest: ``POST /v1/traces`` and ``/v1/logs`` (protobuf or JSON, gzip).

Authenticated by a Corral key (``Authorization: Bearer``, ``x-api-key``, or
the same in ``OTEL_EXPORTER_OTLP_HEADERS``): the key, never the payload, says
which organisation, team, user and run the spans belong to. A payload is
decoded and mapped onto the span model (``corral.traces.otlp``), priced
where the agent reported no cost, journaled (durable before the 200 goes
out), and stored by the record pipeline off the request path.

Backpressure follows the OTLP/HTTP specification: when the queue is full
the answer is 429, while the store is failing 503, both with Retry-After,
so the exporter keeps the batch and retries; nothing answered 200 is lost.
``/v1/metrics`` is accepted and not stored: Corral derives its figures from
spans, and an agent that exports metrics too should not log errors for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from corral.asgi import Receive, Scope, Send, api_key, header, read_body, send_bytes
from corral.errors import CorralError, MethodNotAllowed, PayloadTooLarge, StoreError
from corral.traces.dedupe import FINGERPRINT
from corral.traces.otlp import Batch, Identity, parse_logs, parse_traces, status_response
from corral.traces.otlp import success_response as otlp_success
from corral.traces.spans import identity_columns
from corral.traces.writer import BODY_MODE

if TYPE_CHECKING:
    from corral.identity.keys import KeyCache
    from corral.routing import Catalog
    from corral.traces.policy import TracePolicy
    from corral.traces.recorder import Recorder

log = logging.getLogger(__name__)

PATHS = ("/v1/traces", "/v1/logs", "/v1/metrics")
_EMPTY_METRICS_JSON = b"{}"
_OFFLOAD_BYTES = 256 * 1024  # decode bigger payloads in a worker thread, off the event loop


class OtlpIngest:
    """The ASGI endpoint for the three OTLP signal paths.

    ``keys`` authenticates the caller, ``recorder`` journals the rows, ``trace_policy`` says
    what each team keeps of bodies, ``catalog`` (called per payload: it is built at start-up)
    prices calls the agent reported no cost for; bodies past ``max_body_bytes`` are 413.
    """

    def __init__(
        self,
        keys: KeyCache,
        recorder: Recorder,
        trace_policy: TracePolicy,
        catalog: Callable[[], Catalog],
        *,
        max_body_bytes: int,
        listeners: Sequence[Callable[[Sequence[dict[str, Any]]], None]] = (),
    ) -> None:
        """``listeners`` are told of each accepted batch before it is recorded, its rows
        with their bodies still attached (guards read tool spans); they must be cheap and
        must not change the rows."""
        self.keys = keys
        self.recorder = recorder
        self.trace_policy = trace_policy
        self.catalog = catalog
        self.max_body_bytes = max_body_bytes
        self.listeners = list(listeners)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = (header(scope, b"content-type") or "application/x-protobuf").lower()
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['path']} takes POST (OTLP/HTTP)")
            body, status_ct = await self._handle(scope, receive, content_type)
            await send_bytes(send, 200, [(b"content-type", status_ct.encode())], body)
        except CorralError as exc:
            await self._reject(send, exc, content_type)

    async def _handle(self, scope: Scope, receive: Receive, content_type: str) -> tuple[bytes, str]:
        key = await self.keys.authenticate(api_key(scope))
        recorder = self.recorder
        recorder.check_capacity(0)  # full already: refuse before reading and decoding
        body = await read_body(scope, receive, self.max_body_bytes)
        path = scope["path"]
        if path == "/v1/metrics":
            if "json" in content_type:
                return _EMPTY_METRICS_JSON, "application/json"
            return b"", "application/x-protobuf"
        identity = Identity(**identity_columns(key))
        parse = parse_traces if path == "/v1/traces" else parse_logs
        encoding = header(scope, b"content-encoding")
        kwargs: dict[str, Any] = {
            "content_type": content_type,
            "content_encoding": encoding,
            "identity": identity,
        }
        if len(body) > _OFFLOAD_BYTES:
            batch = await asyncio.to_thread(parse, body, **kwargs)
        else:
            batch = parse(body, **kwargs)
        if batch.rows:
            recorder.check_capacity(len(batch.rows))
            for listener in self.listeners:  # before the team's body policy drops bodies
                try:
                    listener(batch.rows)
                except Exception:  # a listener's fault never loses the batch
                    log.exception("an OTLP ingest listener failed (ignored)")
            self._prepare(batch, key.team_id, events=path == "/v1/logs")
            try:
                recorder.record(*batch.rows)
            except OSError as exc:  # the journal's disk: nothing was accepted, say retry
                raise StoreError(
                    f"spans cannot be journaled ({exc.strerror}); retry later", retry_after=5.0
                ) from exc
        return otlp_success("traces" if path == "/v1/traces" else "logs", content_type, batch)

    def _prepare(self, batch: Batch, team_id: str | None, *, events: bool) -> None:
        """Price calls the agent reported no cost for; apply the team's body policy; let the
        writer match calls reported as log events (no ids) to gateway records by fingerprint."""
        catalog = self.catalog()
        mode = self.trace_policy.bodies(team_id)
        for row in batch.rows:
            if row["kind"] == "llm_request":
                if row.get("cost_source") is None:
                    _price(row, catalog)
                if events:
                    row[FINGERPRINT] = True
            if "_request_body" in row or "_response_body" in row:
                if mode == "off":
                    row.pop("_request_body", None)
                    row.pop("_response_body", None)
                else:
                    row[BODY_MODE] = mode

    async def _reject(self, send: Send, exc: CorralError, content_type: str) -> None:
        body, ct = status_response(exc.status, exc.message, content_type)
        headers = [(b"content-type", ct.encode())]
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
        if isinstance(exc, PayloadTooLarge) or exc.status >= 500:
            log.warning("OTLP ingest answered %d: %s", exc.status, exc.message)
        await send_bytes(send, exc.status, headers, body)


def _price(row: dict[str, Any], catalog: Catalog) -> None:
    """Cost from Corral's price table when the model is one it knows; left unpriced else."""
    model = row.get("model_requested") or row.get("model_served")
    prices = catalog.prices_for(model) if model else None
    if prices is None:
        return
    row["cost_nusd"] = prices.cost_nusd(
        row["input_tokens"],
        row["cached_input_tokens"],
        row["cache_write_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    )
    row["cost_source"] = "computed"
    row["price_version"] = catalog.price_version
