"""One model call as the gateway sees it, and the response pieces every endpoint shares."""

from __future__ import annotations

import os
import time
from typing import Any

from corral.asgi import Headers, Scope, header
from corral.errors import UpstreamError, UpstreamTimeout
from corral.gateway.client import Response
from corral.gateway.hooks import Request
from corral.gateway.upstream import FORWARD_RESPONSE
from corral.identity import KeyInfo
from corral.protocols import Adapter, Crossing
from corral.quota.gate import Admission
from corral.routing import Deployment
from corral.settings import CapacityConfig
from corral.traces.spans import parse_traceparent


class Call:
    """Everything known about one model call, filled in as it proceeds."""

    __slots__ = (
        "admission",
        "attempt_span_id",
        "bodies",
        "body",
        "chain",
        "contract",
        "crossing",
        "deployment",
        "failed",
        "key",
        "model",
        "notes",
        "parent_span_id",
        "request",
        "request_id",
        "response_body",
        "response_dropped",
        "response_kept",
        "route_reason",
        "skipped",
        "span_id",
        "start_ns",
        "stream",
        "strip_usage",
        "t0",
        "t_up",
        "t_up_end",
        "trace_id",
        "ttft_ms",
        "upstream_body",
        "wire",
    )

    def __init__(self, wire: Adapter, scope: Scope) -> None:
        self.t0 = time.perf_counter()
        self.start_ns = time.time_ns()
        self.wire = wire
        # One system call for every id this call needs: request, two spans, maybe the trace.
        raw = os.urandom(44).hex()
        self.request_id = "req_" + raw[:24]
        self.key: KeyInfo | None = None
        self.model: str | None = None
        self.deployment: Deployment | None = None
        self.stream = False
        parent = parse_traceparent(header(scope, b"traceparent"))
        self.trace_id: str = parent[0] if parent else raw[56:88]
        self.parent_span_id: str | None = parent[1] if parent else None
        self.span_id = raw[24:40]
        self.attempt_span_id = raw[40:56]
        self.t_up = 0.0
        self.t_up_end = 0.0
        self.ttft_ms: float | None = None
        self.request: Request | None = None  # built only when a guard or observer is registered
        self.notes: dict[str, Any] | None = None  # what the guards annotated
        self.admission: Admission | None = None
        self.body = b""
        self.chain: list[Deployment] = []  # the deployments this call may try, in order
        self.failed: list[dict[str, Any]] = []  # attempt rows of tries that failed
        self.skipped: list[tuple[str, str]] = []  # (deployment id, why) passed over
        self.strip_usage = False  # a chat stream's usage chunk: asked for upstream, not shown
        self.route_reason: str | None = None  # why the route policy moved the request
        self.contract: CapacityConfig | None = None  # set when served within reserved capacity
        self.crossing: Crossing | None = None  # set when the attempt crosses protocols
        # Raw bodies for the trajectory (the team's policy: "off", "metadata" or "full"): the
        # response as the client got it, and the request as sent upstream when that differs.
        self.bodies = "off"
        self.response_body: list[bytes] = []
        self.response_kept = 0  # bytes in response_body
        self.response_dropped = 0  # stream bytes past the cap, counted but not kept
        self.upstream_body: bytes | None = None

    def keep_response(self, chunk: bytes, cap: int) -> None:
        """Keep what the client was sent, up to ``cap`` bytes (the writer cuts bodies there
        anyway; a stream is not held in memory past it)."""
        if self.bodies == "off" or not chunk:
            return
        room = cap - self.response_kept
        if room >= len(chunk):
            self.response_body.append(chunk)
            self.response_kept += len(chunk)
            return
        if room > 0:
            self.response_body.append(chunk[:room])
            self.response_kept = cap
        self.response_dropped += len(chunk) - max(room, 0)

    def overhead_ms(self, now: float) -> float:
        upstream = (self.t_up_end or now) - self.t_up if self.t_up else 0.0
        return max(0.0, (now - self.t0 - upstream) * 1000)

    def corral_headers(self, now: float) -> Headers:
        headers = [
            (b"x-corral-request-id", self.request_id.encode()),
            (b"x-corral-overhead-ms", f"{self.overhead_ms(now):.3f}".encode()),
        ]
        if self.deployment is not None and self.t_up:
            headers.append((b"x-corral-route", self.deployment.id.encode()))
            if self.route_reason is not None:
                reason = self.route_reason.encode("ascii", "replace")
                headers.append((b"x-corral-route-reason", reason))
            if self.failed:
                tried = ", ".join(f"{a['deployment']} ({a['error_class']})" for a in self.failed)
                headers.append((b"x-corral-attempts", str(len(self.failed) + 1).encode()))
                headers.append((b"x-corral-fallback-from", tried.encode("ascii", "replace")))
        adm = self.admission
        if adm is not None and adm.soft_reason is not None:
            if adm.degraded_from is not None and self.deployment is not None:
                headers.append((b"x-corral-degraded-to", self.deployment.name.encode()))
            headers.append((b"x-corral-soft-limit", adm.soft_reason.encode("ascii", "replace")))
        if self.notes:
            warning = self.notes.get("warning")
            if isinstance(warning, str):  # a guard warns the caller (corral.guards)
                text = warning.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
                headers.append((b"x-corral-guard-warning", text[:1000]))
        return headers


def response_headers(
    response: Response, content_type: tuple[bytes, bytes] | None = None
) -> Headers:
    out: Headers = [
        content_type
        or (
            b"content-type",
            response.headers.get("content-type", "application/json").encode("latin-1"),
        )
    ]
    for name, value in response.headers.items():
        lowered = name.lower()
        if lowered in FORWARD_RESPONSE or lowered.startswith(
            ("anthropic-ratelimit-", "x-ratelimit-")
        ):
            out.append((lowered.encode("latin-1"), value.encode("latin-1")))
    return out


def upstream_failure(exc: BaseException, doing: str) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"the provider timed out {doing}")
    return UpstreamError(f"the provider failed while {doing}: {exc.__class__.__name__}: {exc}")
