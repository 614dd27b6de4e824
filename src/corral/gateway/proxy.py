"""The gateway: authenticate, resolve, forward, meter, record.

Same-protocol traffic passes through: the request body is forwarded as sent
unless Corral must change it (the upstream model name, asking an OpenAI chat
stream for usage), and responses go back byte for byte, streams event by
event. Each request yields two spans, ``llm_request`` and its ``attempt``;
the record is journaled before the last byte of the response is sent, so a
completed response's record survives a crash of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from corral.asgi import (
    JSON_CT,
    SSE_CT,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    parse_json_object,
    read_body,
    send_bytes,
)
from corral.errors import (
    ClientError,
    CorralError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from corral.gateway import endpoints
from corral.gateway.call import Call, response_headers, upstream_failure
from corral.gateway.client import ClientConnectionError, Response
from corral.gateway.hooks import GatewayHooks, HeaderView, Request
from corral.gateway.records import Records, class_of
from corral.gateway.upstream import (
    Upstream,
    classify,
    error_message,
    upstream_url,
)
from corral.identity import KeyCache
from corral.protocols import CHAT, GEMINI, MESSAGES, Adapter, Outcome, Route, StreamTranslator
from corral.protocols import crossing as crossing_for
from corral.protocols import route as route_of
from corral.quota import LimitExceeded, QuotaUnavailable
from corral.quota.gate import QuotaGate, refusal_attributes
from corral.quota.rules import Chain
from corral.routing import Catalog, Deployment
from corral.routing.breaker import Breakers
from corral.routing.catalog import Prices
from corral.routing.policy import RoutePolicy
from corral.settings import Settings
from corral.traces import Recorder
from corral.traces.policy import TracePolicy
from corral.traces.spans import run_trace

log = logging.getLogger(__name__)

MODELS = "/v1/models"


class Gateway(Records):
    """The ASGI application behind ``/v1/*``."""

    def __init__(
        self,
        *,
        settings: Settings,
        keys: KeyCache,
        quotas: QuotaGate,
        breakers: Breakers,
        recorder: Recorder,
        trace_policy: TracePolicy,
        catalog: Callable[[], Catalog],
        route_policy: Callable[[], RoutePolicy | None],
        upstream: Upstream,
        hooks: GatewayHooks | None = None,
    ) -> None:
        """``catalog`` and ``route_policy`` are read per call: both are replaced on reload."""
        self.settings = settings
        self.keys = keys
        self.quotas = quotas
        self.breakers = breakers
        self.recorder = recorder
        self.trace_policy = trace_policy
        self._catalog = catalog
        self._route_policy = route_policy
        self.upstream = upstream
        self.hooks = hooks or GatewayHooks()
        self.max_body = settings.max_body_bytes
        self.body_cap = settings.trace_body_max_bytes
        self.rng = random.Random()  # weighted choice among a model's deployments

    async def start(self) -> None:
        await self.upstream.start()

    async def stop(self) -> None:
        await self.upstream.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        route = route_of(method, path, scope["query_string"])
        if route is not None:
            wanted = ("GET", "HEAD") if route.action == "models" else ("POST",)
            if method not in wanted:
                wrong = MethodNotAllowed(f"use {wanted[0]} for {path}")
                await self._reject(send, route.adapter, wrong, Call(route.adapter, scope))
            elif route.action == "generate":
                await self._model_call(route, scope, receive, send)
            elif route.action == "count_tokens":
                await endpoints.count_tokens(self, route, scope, receive, send)
            else:
                await endpoints.models(self, route.adapter, scope, send, route.model)
        elif path == MODELS and method in ("GET", "HEAD"):
            await endpoints.models(self, endpoints.list_adapter(scope), scope, send, None)
        elif path.startswith(MODELS + "/") and method in ("GET", "HEAD"):
            adapter = endpoints.list_adapter(scope)
            await endpoints.models(self, adapter, scope, send, path[len(MODELS) + 1 :])
        else:
            wire = (
                MESSAGES
                if path.startswith("/v1/messages")
                else GEMINI
                if path.startswith("/v1beta/")
                else CHAT
            )
            missing = NotFound(f"no such endpoint: {method} {path}")
            await self._reject(send, wire, missing, Call(wire, scope))

    # -- model calls ----------------------------------------------------------

    async def _model_call(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        wire = route.adapter
        call = Call(wire, scope)
        try:
            data, body = await self._admit(call, route, scope, receive)
        except ClientError as exc:
            await self._reject(send, wire, exc, call)
            return
        assert call.key is not None
        if self.hooks.watching and not await self._guard(call, data, scope, send):
            return
        chain = self.quotas.chain(call.key)
        rewrite = False
        if chain:
            try:
                rewrite = await self._admit_quota(call, chain, data, len(body), scope)
            except (LimitExceeded, QuotaUnavailable) as exc:
                error = (exc.code, exc.message)
                audit = {"admission": refusal_attributes(exc)}
                self._record(call, status="refused", http=exc.status, error=error, attributes=audit)
                await self._reject(send, wire, exc, call)
                return
        try:
            await self._forward(call, scope, receive, send, data, body, rewrite)
        finally:
            if call.admission is not None and not call.admission.done:
                # Never reached the record path (a bug, or the task was cancelled).
                self.quotas.release(call.admission)

    async def _guard(self, call: Call, data: dict[str, Any], scope: Scope, send: Send) -> bool:
        """Hand the call to the registered guards; False when one refused it (answered)."""
        assert call.key is not None
        assert call.model is not None
        call.request = Request(
            request_id=call.request_id,
            key=call.key,
            protocol=call.wire.name,
            model=call.model,
            stream=call.stream,
            body=data,
            headers=HeaderView(scope["headers"]),
            path=scope["path"],
        )
        try:
            call.notes = self.hooks.guard(call.request)
        except CorralError as exc:
            audit = {"guard": {"refused": exc.code, "message": exc.message}}
            error = (exc.code, exc.message)
            self._record(call, status="refused", http=exc.status, error=error, attributes=audit)
            await self._reject(send, call.wire, exc, call)
            return False
        return True

    async def _forward(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        data: dict[str, Any],
        body: bytes,
        rewrite: bool,
    ) -> None:
        """Try the call's deployments in order until one answers (see docs/routing.md).

        A deployment is skipped when its context window is smaller than the request or its
        circuit is open. An attempt that fails with a fallback error class (rate limited,
        overloaded, server error, timeout, connection error, context window exceeded,
        content policy) before anything reached the client is recorded and the next
        deployment is tried, within ``route_max_attempts`` and ``route_deadline``; any other
        answer (a success, or an error that is the request's own) goes to the client.
        """
        settings = self.settings
        breakers = self.breakers
        deadline = call.t0 + settings.route_deadline
        needed = math.ceil(len(body) / settings.quota_input_bytes_per_token)
        chain = call.chain
        known_min = 0  # a context-window error proves the request is larger than that window
        last: CorralError | None = None
        for i, deployment in enumerate(chain):
            remaining = deadline - time.perf_counter()
            if len(call.failed) >= settings.route_max_attempts or remaining <= 0:
                break
            # The estimate is an upper bound, so it only keeps fallbacks away from windows the
            # request may not fit; the chain's first deployment decides for itself.
            window = deployment.context_window
            if i > 0 and (window < needed or window <= known_min):
                why = f"context window {window} < ~{needed}"
                if window <= known_min:
                    why = f"context window {window}: a window of {known_min} was already too small"
                call.skipped.append((deployment.id, why))
                continue
            if not breakers.allow(deployment.id):
                call.skipped.append((deployment.id, "circuit open or cooling down"))
                continue
            call.deployment = deployment
            refused = await self._reserve_capacity(call, data, needed, deadline)
            if refused is not None:
                last = refused
                continue
            is_last = i == len(chain) - 1 or len(call.failed) + 1 >= settings.route_max_attempts
            outcome = await self._attempt(call, scope, receive, send, data, body, rewrite, is_last)
            if outcome is None:
                return  # answered
            last = outcome
            if outcome.code == "context_window_exceeded":
                known_min = max(known_min, window)
        if (
            last is None
            and call.skipped
            and all(why.startswith("context window") for _, why in call.skipped)
        ):
            largest = max(d.context_window for d in chain)
            last = InvalidRequest(
                f"the request (~{needed} tokens estimated) is larger than the context window of "
                f"every deployment that could serve {call.model!r} (largest: {largest})",
                code="context_window_exceeded",
            )
        error: CorralError = last or UpstreamError(
            f"no deployment could take the request for {call.model!r}: "
            + "; ".join(f"{d} ({why})" for d, why in call.skipped[-5:])
        )
        if time.perf_counter() >= deadline and last is None:
            error = UpstreamTimeout(
                f"the request's deadline ({settings.route_deadline:g} s) passed"
            )
        call.deployment = call.deployment or chain[0]
        self._record(
            call, status="error", http=error.status, error=(class_of(error), error.message)
        )
        await self._reject(send, call.wire, error, call)

    async def _reserve_capacity(
        self, call: Call, data: dict[str, Any], needed: int, deadline: float
    ) -> CorralError | None:
        """Count the attempt against its provider's reserved capacity, if it has a contract.

        None: go ahead (``call.contract`` says whether within the reservation). Otherwise the
        attempt must not be made: the contract spills, queues past the deadline, or refuses.
        """
        assert call.deployment is not None
        provider = call.deployment.provider
        cap = call.contract = provider.capacity
        if cap is None or (cap.reserved_rpm is None and cap.reserved_tpm is None):
            call.contract = None
            return None
        tokens = needed + (
            call.wire.max_tokens(data) or self.settings.quota_default_max_output_tokens
        )
        take = self.quotas.take_capacity
        wait = await take(provider.name, cap.reserved_rpm, cap.reserved_tpm, tokens)
        queue = wait is not None and cap.overflow == "queue" and wait > 0
        if queue and wait is not None and time.perf_counter() + wait < deadline:
            await asyncio.sleep(wait)  # the next minute's reservation, within the deadline
            wait = await take(provider.name, cap.reserved_rpm, cap.reserved_tpm, tokens)
        if wait is None:
            return None
        call.contract = None
        if cap.overflow == "payg":
            return None
        why = f"reserved capacity of {provider.name} in use; its contract {cap.overflow}s overflow"
        call.skipped.append((call.deployment.id, why))
        return RateLimited(
            f"the reserved capacity of provider {provider.name!r} is in use and its contract "
            + ("refuses overflow" if cap.overflow == "refuse" else "sends overflow elsewhere")
            + ", and no other deployment could take the request",
            retry_after=max(wait, 1.0),
        )

    async def _attempt(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        data: dict[str, Any],
        body: bytes,
        rewrite: bool,
        is_last: bool,
    ) -> CorralError | None:
        """One upstream try. None: the client got its answer. An error: try the next one."""
        wire, deployment, breakers = call.wire, call.deployment, self.breakers
        assert deployment is not None
        cross = call.crossing = crossing_for(wire, deployment.provider.protocols)
        model = deployment.upstream_model
        if cross is None:
            upstream_body, strip_usage = self._prepare(call, data, body, rewrite)
            path = wire.upstream_path(model, call.stream, scope["query_string"])
        else:
            default_max = (
                deployment.max_output_tokens or self.settings.quota_default_max_output_tokens
            )
            try:
                upstream_body = cross.request(
                    data,
                    stream=call.stream,
                    upstream_model=model,
                    provider_kind=deployment.provider.kind,
                    default_max=default_max,
                )
            except InvalidRequest as exc:  # this deployment cannot take it; another may
                call.skipped.append((deployment.id, f"cannot translate: {exc.message}"))
                return exc
            strip_usage = call.strip_usage
            path = cross.upstream.upstream_path(model, call.stream, b"")
        if call.bodies != "off" and upstream_body is not body:
            call.upstream_body = upstream_body  # the attempt's own request body
        url = upstream_url(deployment, path)
        extra = {"traceparent": f"00-{call.trace_id}-{call.attempt_span_id}-01"}
        remaining = call.t0 + self.settings.route_deadline - time.perf_counter()
        first_byte = min(self.settings.upstream_first_byte_timeout, remaining)
        call.t_up = time.perf_counter()
        try:
            headers = self.upstream.headers(deployment, scope["headers"], extra)
            try:
                response = await asyncio.wait_for(
                    self.upstream.post(url, upstream_body, headers), first_byte
                )
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{deployment.id} did not start answering within {first_byte:.3g} s"
                ) from None
        except CorralError as exc:
            return self._attempt_failed(call, exc.status, class_of(exc), exc.message, exc)
        try:
            if not 200 <= response.status < 300:
                payload = await response.read()
                error_class = classify(response.status, payload)
                breakers.record(deployment.id, error_class)
                if is_last or error_class not in FALLBACK_CLASSES:
                    call.t_up_end = time.perf_counter()
                    await self._complete(call, response, send, payload)
                    return None
                retry_after = _retry_after(response)
                if retry_after:
                    breakers.cool(deployment.id, retry_after)
                message = error_message(payload) or f"HTTP {response.status}"
                error = UpstreamError(
                    f"{deployment.id}: {message}", upstream_status=response.status, code=error_class
                )
                self._fail_attempt(call, response.status, error_class, message)
                return error
            if call.stream and _is_sse(response):
                first = await self._first_chunk(call, response, first_byte)
                if isinstance(first, CorralError):
                    return self._attempt_failed(call, 502, class_of(first), first.message, first)
                breakers.record(deployment.id, None)
                transform = cross.stream(call.model or "") if cross is not None else None
                await self._relay(call, response, receive, send, strip_usage, first, transform)
            else:
                try:
                    payload = await asyncio.wait_for(response.read(), remaining)
                except (ClientConnectionError, TimeoutError) as exc:
                    if is_last:
                        raise
                    failure = upstream_failure(exc, "reading the response")
                    return self._attempt_failed(
                        call, 502, class_of(failure), failure.message, failure
                    )
                breakers.record(deployment.id, None)
                await self._complete(call, response, send, payload)
            return None
        except (ClientConnectionError, TimeoutError) as exc:
            error = upstream_failure(exc, "reading the response")
            breakers.record(deployment.id, class_of(error))
            call.t_up_end = time.perf_counter()
            self._record(
                call, status="error", http=error.status, error=(class_of(error), error.message)
            )
            await self._reject(send, wire, error, call)
            return None
        finally:
            response.release()

    def _attempt_failed(
        self, call: Call, http: int, error_class: str, message: str, error: CorralError
    ) -> CorralError:
        assert call.deployment is not None
        self.breakers.record(call.deployment.id, error_class)
        self._fail_attempt(call, http, error_class, message)
        return error

    async def _first_chunk(
        self, call: Call, response: Response, limit: float
    ) -> bytes | CorralError:
        """A stream's first bytes, before anything is sent to the client (so it can still
        fall back); an error when the stream fails or stays silent first."""
        try:
            return await asyncio.wait_for(anext(response.content.iter_any()), limit)
        except StopAsyncIteration:
            return UpstreamError("the provider ended the stream before sending anything")
        except TimeoutError:
            return UpstreamTimeout(f"no first token within {limit:.3g} s")
        except ClientConnectionError as exc:
            return upstream_failure(exc, "starting the stream")

    async def _admit(
        self, call: Call, route: Route, scope: Scope, receive: Receive, *, counting: bool = False
    ) -> tuple[dict[str, Any], bytes]:
        key = await self.keys.authenticate(
            call.wire.api_key(scope["headers"], scope["query_string"])
        )
        if not key.may_call_models():
            raise PermissionDenied(
                "this key cannot call models (it is an admin key); create a key for a user "
                "with 'corral keys create --team T --user U'"
            )
        call.key = key
        if call.parent_span_id is None and key.run_id is not None:
            call.trace_id, call.parent_span_id = run_trace(key.run_id)  # attach to its run
        call.bodies = self.trace_policy.bodies(key.team_id)
        body = await read_body(scope, receive, self.max_body)
        data = parse_json_object(body)
        if counting:
            call.model = call.wire.check_count(data, route)
        else:
            call.model, call.stream = call.wire.check(data, route)
        key.check_model(call.model)
        catalog = self.catalog
        primary = catalog.resolve(call.model)
        routed = call.model
        policy = self._route_policy()
        if policy is not None and not counting:
            decision = policy.decide(
                call.model,
                team=key.team_name,
                task_class=header(scope, b"x-corral-task-class"),
                priority=header(scope, b"x-corral-priority"),
            )
            routed, call.route_reason = decision.model, decision.reason
        chain = []
        for d in catalog.chain(routed, self.rng):
            if key.allowed_models is not None and d.name not in key.allowed_models:
                call.skipped.append((d.id, "model not allowed for this key"))
            else:
                chain.append(d)
        if not chain:
            raise PermissionDenied(
                f"no deployment of model {primary.name!r} is allowed for this key",
                code="model_not_allowed",
            )
        call.chain = chain
        call.deployment = chain[0]
        call.body = body
        if call.stream and call.wire is CHAT:
            options = data.get("stream_options")
            call.strip_usage = not (isinstance(options, dict) and options.get("include_usage"))
        return data, body

    async def _admit_quota(
        self, call: Call, chain: Chain, data: dict[str, Any], body_bytes: int, scope: Scope
    ) -> bool:
        """Reserve the call's worst case; cap its output to the grant; maybe degrade it.

        Returns whether ``data`` was changed (the output cap was set or lowered).
        """
        deployment = call.deployment
        assert deployment is not None
        requested = call.wire.max_tokens(data)
        default = deployment.max_output_tokens or self.settings.quota_default_max_output_tokens
        adm = await self.quotas.admit(
            chain,
            prices=Prices.dearest(d.prices for d in call.chain),  # any of them may serve it
            body_bytes=body_bytes,
            requested_max=requested,
            default_max=default,
        )
        call.admission = adm
        if adm.soft_reason is not None:
            target = self._degrade_target(call, scope)
            if target is not None:
                adm.decision = "degraded"
                adm.degraded_from = deployment.name
                call.deployment = deployment = target
                call.chain = [target, *(d for d in call.chain if d.name != deployment.name)]
        if adm.max_output is not None and adm.max_output != requested:
            # In the field the deployment that will serve it reads (after any degrade).
            call.wire.set_max_tokens(data, adm.max_output, deployment.provider.kind)
            return True
        return False

    def _degrade_target(self, call: Call, scope: Scope) -> Deployment | None:
        """The next cheaper model, if the request allows it and it is no dearer."""
        deployment, key = call.deployment, call.key
        assert deployment is not None
        assert key is not None
        name = deployment.degrade_to
        if name is None:
            return None
        if (header(scope, b"x-corral-degrade") or "").strip().lower() in ("never", "false", "no"):
            return None
        target = self.catalog.models.get(name)
        if target is None or not target.speaks(call.wire.name):
            return None
        if key.allowed_models is not None and name not in key.allowed_models:
            return None
        old, new = deployment.prices, target.prices
        if new.worst_input > old.worst_input or new.worst_output > old.worst_output:
            return None  # the reservation was priced for the first model
        return target

    def _prepare(
        self, call: Call, data: dict[str, Any], body: bytes, rewrite: bool = False
    ) -> tuple[bytes, bool]:
        """The body to send upstream; rewritten only when Corral has to change it."""
        deployment = call.deployment
        assert deployment is not None
        # Idempotent across attempts: an earlier attempt may have changed ``data`` already.
        changed = call.wire.set_model(data, deployment.upstream_model) or rewrite
        if call.strip_usage:  # asked for here, hidden from the client
            options = data.get("stream_options") or {}
            data["stream_options"] = {**options, "include_usage": True}
            changed = True
        return (orjson.dumps(data) if changed else body), call.strip_usage

    async def _complete(
        self, call: Call, response: Response, send: Send, payload: bytes | None = None
    ) -> None:
        """A whole (non-streamed, or refused) upstream response, passed through."""
        wire = call.wire
        try:
            if payload is None:
                payload = await response.read()
        except (ClientConnectionError, TimeoutError) as exc:
            call.t_up_end = time.perf_counter()
            error = upstream_failure(exc, "reading the response")
            self._record(
                call, status="error", http=error.status, error=(class_of(error), error.message)
            )
            await self._reject(send, wire, error, call)
            return
        call.t_up_end = time.perf_counter()
        status = response.status
        cross = call.crossing
        if 200 <= status < 300:
            try:
                if cross is None:
                    outcome = wire.outcome(orjson.loads(payload))
                else:
                    payload, outcome = cross.response(orjson.loads(payload), call.model or "")
            except (orjson.JSONDecodeError, AttributeError, TypeError, UpstreamError):
                error = UpstreamError("the provider returned a malformed response body")
                self._record(
                    call, status="error", http=502, error=("malformed_response", error.message)
                )
                await self._reject(send, wire, error, call)
                return
            call.keep_response(payload, self.body_cap)
            if call.request is not None and self.hooks.observers:
                elapsed = time.perf_counter() - call.t0
                self.hooks.observe(call.request, payload, outcome, elapsed)
            self._record(call, status="ok", http=status, outcome=outcome)
        else:
            message = error_message(payload) or f"HTTP {status}"
            error_class = classify(status, payload)
            if cross is not None:
                payload = cross.error(status, payload)
            call.keep_response(payload, self.body_cap)
            self._record(call, status="error", http=status, error=(error_class, message))
        headers = response_headers(response, JSON_CT if cross is not None else None)
        headers.extend(call.corral_headers(time.perf_counter()))
        await send_bytes(send, status, headers, payload)

    async def _relay(
        self,
        call: Call,
        response: Response,
        receive: Receive,
        send: Send,
        strip_usage: bool,
        first: bytes,
        transform: StreamTranslator | None = None,
    ) -> None:
        """Relay an SSE stream event by event, metering as it passes (``first``: its first
        bytes, already read)."""
        meter = call.wire.meter(strip_usage)
        cap = self.body_cap

        def upstream() -> Outcome:  # usage as the provider reported it
            return transform.outcome if transform is not None else meter.outcome

        headers = response_headers(response, SSE_CT)
        headers.extend(call.corral_headers(time.perf_counter()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        abandoned = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, abandoned, response))
        recorded = False
        failure: CorralError | None = None
        try:
            async for raw in _prepend(first, response.content.iter_any()):
                if call.ttft_ms is None:
                    call.ttft_ms = (time.perf_counter() - call.t_up) * 1000
                chunk = transform.feed(raw) if transform is not None else raw
                out, terminal = meter.feed(chunk)
                call.keep_response(out, cap)
                if call.request is not None and self.hooks.observers:
                    elapsed = time.perf_counter() - call.t0
                    self.hooks.observe(call.request, out, upstream(), elapsed)
                if terminal and not abandoned.is_set():
                    call.t_up_end = time.perf_counter()
                    self._record_stream(call, upstream(), meter.events, complete=True)
                    recorded = True
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if transform is not None and not abandoned.is_set():
                out, terminal = meter.feed(transform.close())  # ends the client's stream well
                call.keep_response(out, cap)
                if terminal and not recorded and transform.outcome.error is None:
                    call.t_up_end = time.perf_counter()
                    self._record_stream(call, upstream(), meter.events, complete=True)
                    recorded = True
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            rest = meter.tail()
            if rest:
                await send({"type": "http.response.body", "body": rest, "more_body": True})
        except (ClientConnectionError, TimeoutError) as exc:
            if not abandoned.is_set():
                failure = upstream_failure(exc, "streaming the response")
        finally:
            watcher.cancel()
        call.t_up_end = call.t_up_end or time.perf_counter()
        if abandoned.is_set() and not recorded:
            self._record_stream(call, upstream(), meter.events, complete=False, abandoned=True)
            return
        if not recorded:
            # A translator that saw the whole upstream body has ended the client's stream with
            # its own error event; a broken connection has not.
            ended = transform is not None and failure is None
            failure = failure or UpstreamError(
                "the provider ended the stream before it was complete"
            )
            self._record_stream(call, upstream(), meter.events, complete=False, failure=failure)
            if not ended:
                await send(
                    {
                        "type": "http.response.body",
                        "body": call.wire.sse_error(failure, meter.events),
                        "more_body": True,
                    }
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _reject(self, send: Send, wire: Adapter, exc: CorralError, call: Call) -> None:
        headers: Headers = [JSON_CT, *call.corral_headers(time.perf_counter())]
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        await send_bytes(send, exc.status, headers, wire.error_body(exc))


FALLBACK_CLASSES = frozenset(
    {
        "rate_limited",
        "overloaded",
        "server_error",
        "timeout",
        "connection_error",
        "context_window_exceeded",
        "content_policy",
    }
)
"""Upstream error classes that send a request on to its next deployment."""

_MAX_COOL = 300.0


def _retry_after(response: Response) -> float | None:
    """The provider's ``Retry-After`` in seconds (a number or an HTTP date), at most 5 min."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), _MAX_COOL) or None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _is_sse(response: Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


async def _watch_disconnect(receive: Receive, abandoned: asyncio.Event, response: Response) -> None:
    """Wait for the client to go away; then stop reading from (and cancel) the upstream."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            abandoned.set()
            with contextlib.suppress(Exception):
                response.close()
            return
