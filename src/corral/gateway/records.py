"""Prediction records: the ``llm_request`` span of a call and one ``attempt`` span per try.

The gateway's record path, kept apart from the proxy: a call's final outcome
(or failure) becomes its request row, every upstream attempt its own row
linked to it, and the admission's lease is settled with the call's cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, UpstreamError, UpstreamTimeout
from corral.gateway.hooks import FinishedCall, GatewayHooks
from corral.protocols import Outcome, Usage
from corral.tokens import count_tokens
from corral.traces.spans import SPAN_DEFAULTS, identity_columns
from corral.traces.writer import BODY_MODE

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.quota.gate import QuotaGate
    from corral.routing import Catalog
    from corral.traces import Recorder


class Records:
    """The record methods of ``Gateway``."""

    recorder: Recorder
    quotas: QuotaGate
    hooks: GatewayHooks

    _catalog: Callable[[], Catalog]

    @property
    def catalog(self) -> Catalog:
        """The catalog in force (it is replaced when the configuration is reloaded)."""
        return self._catalog()

    def _fail_attempt(self, call: Call, http: int, error_class: str, message: str) -> None:
        """Keep the record of an attempt that failed before anything reached the client.

        Such an attempt is billed nothing (the provider answered with an error, or
        nothing); the call goes on to its next deployment with a new attempt span.
        """
        key, deployment = call.key, call.deployment
        if key is None or deployment is None:
            return
        now = time.perf_counter()
        row = SPAN_DEFAULTS.copy()
        row.update(identity_columns(key))
        row.update(
            span_id=call.attempt_span_id,
            trace_id=call.trace_id,
            parent_span_id=call.span_id,
            kind="attempt",
            name=f"attempt {deployment.id}",
            request_id=call.request_id,
            attempt=len(call.failed) + 1,
            protocol=call.wire.name,
            operation="chat",
            model_requested=call.model,
            model_served=deployment.upstream_model,
            provider=deployment.provider.name,
            deployment=deployment.id,
            stream=call.stream,
            status="error",
            http_status=http,
            error_class=error_class,
            error_message=message,
            start_ns=call.start_ns + int((call.t_up - call.t0) * 1e9),
            end_ns=call.start_ns + int((now - call.t0) * 1e9),
            upstream_ms=(now - call.t_up) * 1000,
            cost_source=_cost_source(call, False),
            price_version=self.catalog.price_version,
            source="gateway",
        )
        call.failed.append(row)
        call.attempt_span_id = os.urandom(8).hex()
        call.t_up = call.t_up_end = 0.0

    def _record_stream(
        self,
        call: Call,
        outcome: Outcome,
        events: int,
        *,
        complete: bool,
        abandoned: bool = False,
        failure: CorralError | None = None,
    ) -> None:
        if complete and outcome.error is None:
            self._record(call, status="ok", http=200, outcome=outcome)
            return
        # Cut short: the provider's final usage never came. Keep what it did report (the
        # input, on Anthropic streams) and count what was delivered: about a token an event.
        usage = outcome.usage or Usage()
        usage.output = max(usage.output, events)
        if events and not (usage.input or usage.cached_input or usage.cache_write):
            # The provider started answering, so it billed the prompt: estimate it offline.
            usage.input = estimate_input(call)
        adm = call.admission
        if adm is not None and adm.max_output is not None:
            # The estimate counts events, not tokens: never above the cap the provider obeyed.
            usage.output = min(usage.output, max(0, adm.max_output - usage.reasoning))
        outcome.usage = usage
        if abandoned:
            error = ("client_disconnected", "the client closed the stream")
            self._record(
                call, status="cancelled", http=499, outcome=outcome, error=error, estimated=True
            )
            return
        if failure is not None:
            error = (class_of(failure), outcome.error or failure.message)
        else:
            error = ("stream_error", outcome.error or "the stream reported an error")
        self._record(
            call, status="error", http=200, outcome=outcome, error=error, estimated=not complete
        )

    def _record(
        self,
        call: Call,
        *,
        status: str,
        http: int,
        outcome: Outcome | None = None,
        error: tuple[str, str] | None = None,
        estimated: bool = False,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        key, deployment = call.key, call.deployment
        if key is None or deployment is None:
            return
        now = time.perf_counter()
        usage = (outcome.usage if outcome else None) or Usage()
        cost = deployment.prices.cost_nusd(
            usage.input, usage.cached_input, usage.cache_write, usage.output, usage.reasoning
        )
        if call.contract is not None:  # within reserved capacity: the contract's price
            cost = round(cost * call.contract.reserved_price_factor)
        end_ns = call.start_ns + int((now - call.t0) * 1e9)
        upstream_ms = ((call.t_up_end or now) - call.t_up) * 1000 if call.t_up else None
        row = SPAN_DEFAULTS.copy()
        row.update(identity_columns(key))
        row.update(
            span_id=call.span_id,
            trace_id=call.trace_id,
            parent_span_id=call.parent_span_id,
            kind="llm_request",
            name=f"chat {call.model}",
            request_id=call.request_id,
            protocol=call.wire.name,
            operation="chat",
            model_requested=call.model,
            model_served=(outcome.model if outcome else None) or deployment.upstream_model,
            provider=deployment.provider.name,
            deployment=deployment.id,
            stream=call.stream,
            status=status,
            http_status=http,
            error_class=error[0] if error else None,
            error_message=error[1] if error else None,
            finish_reason=outcome.finish_reason if outcome else None,
            response_id=outcome.response_id if outcome else None,
            start_ns=call.start_ns,
            end_ns=end_ns,
            ttft_ms=call.ttft_ms,
            upstream_ms=upstream_ms,
            overhead_ms=call.overhead_ms(now),
            input_tokens=usage.input,
            cached_input_tokens=usage.cached_input,
            cache_write_tokens=usage.cache_write,
            output_tokens=usage.output,
            reasoning_tokens=usage.reasoning,
            cost_nusd=cost,
            cost_source=_cost_source(call, estimated),
            price_version=self.catalog.price_version,
            source="gateway",
        )
        adm = call.admission
        attrs: dict[str, Any] = dict(attributes or {})
        if adm is not None:
            attrs["admission"] = adm.attributes()
        if call.notes:
            attrs["guards"] = call.notes
        if call.failed or call.skipped or call.route_reason:
            attrs["route"] = {
                "attempts": len(call.failed) + (status != "refused"),
                "failed": [(a["deployment"], a["error_class"]) for a in call.failed],
                "skipped": call.skipped,
                "policy": call.route_reason,
            }
        row["attributes"] = attrs or None
        attempt = row.copy()
        attempt.update(
            span_id=call.attempt_span_id,
            parent_span_id=call.span_id,
            kind="attempt",
            name=f"attempt {deployment.id}",
            attempt=len(call.failed) + 1,
            start_ns=call.start_ns + int((call.t_up - call.t0) * 1e9)
            if call.t_up
            else call.start_ns,
            overhead_ms=None,
            attributes=None,
        )
        if call.bodies != "off":
            _attach_bodies(call, row, attempt)
        if status == "refused" or call.t_up == 0.0:  # never went upstream: no attempt of its own
            rows = (row, *call.failed)
        else:
            rows = (row, *call.failed, attempt)
        self.recorder.record(*rows)
        if self.hooks.listeners:
            self.hooks.finished(FinishedCall(key, rows, call.request))
        if adm is not None:
            tokens = (
                usage.input
                + usage.cached_input
                + usage.cache_write
                + usage.output
                + usage.reasoning
            )
            self.quotas.settle(adm, usd=cost, tokens=tokens)


def _attach_bodies(call: Call, row: dict[str, Any], attempt: dict[str, Any]) -> None:
    """Hand the raw bodies to the span writer, which redacts, caps and stores them off the
    request path: the client's request and what it was sent on the call's span, and the
    request as sent upstream on the attempt's when Corral changed it."""
    row[BODY_MODE] = call.bodies
    row["_request_body"] = call.body.decode("utf-8", "replace")
    if call.response_body:
        row["_response_body"] = b"".join(call.response_body).decode("utf-8", "replace")
        if call.response_dropped:  # past the cap: the writer's marker counts them
            row["_response_dropped"] = call.response_dropped
    if call.upstream_body is not None:
        attempt[BODY_MODE] = call.bodies
        attempt["_request_body"] = call.upstream_body.decode("utf-8", "replace")


def _cost_source(call: Call, estimated: bool) -> str:
    """``contract``: served within a provider's reserved capacity (its price, its count)."""
    if call.contract is not None:
        return "contract"
    return "estimated" if estimated else "computed"


def estimate_input(call: Call) -> int:
    """The prompt's tokens, counted offline over the request body (JSON syntax included, so
    rather more than the provider counts); never above what admission reserved for it."""
    estimate = count_tokens(call.body.decode("utf-8", "replace"))
    adm = call.admission
    if adm is not None and adm.grant is not None and adm.input_estimate:
        estimate = min(estimate, adm.input_estimate)
    return estimate


def class_of(exc: CorralError) -> str:
    """The error class a record carries (the vocabulary fallback will act on)."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamError) and exc.code == UpstreamError.code:
        return "connection_error"
    return exc.code
