"""The agent's OpenTelemetry spans, after the GenAI semantic conventions.

One ``invoke_agent corral-agent`` span per run; under it one ``chat {model}``
span per model call and one ``execute_tool {name}`` span per tool call. Each
model call carries the ``traceparent`` of its ``chat`` span, so the gateway
files its own record of the call under it (and Corral marks the agent's span
as the duplicate). When ``TRACEPARENT`` is set (a run sets it), the agent span
is its child.

Spans are exported over OTLP/HTTP (protobuf) only when
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, with ``Authorization: Bearer <the agent's key>`` unless
``OTEL_EXPORTER_OTLP_HEADERS`` already names one. Without an endpoint they are
still made, for the ``traceparent``. The tracer provider is the agent's own,
never the global one, so several agents can run in one process.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from corral.agent.errors import GatewayError

AGENT_NAME = "corral-agent"
RESULT_ATTRIBUTE_CHARS = 8_000  # tool results in spans; the full text went to the model


class Telemetry:
    """Makes the agent's spans with a tracer provider of its own; call :meth:`shutdown` last."""

    def __init__(self, provider: TracerProvider, parent: Context | None = None) -> None:
        self.provider = provider
        self.parent = parent
        self.tracer = provider.get_tracer("corral.agent")
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], api_key: str) -> Telemetry:
        """Resource, parent and exporter as the standard OTel variables in ``environ`` say."""
        provider = TracerProvider(resource=resource_from(environ))
        exporter = exporter_from(environ, api_key)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        parent = None
        if environ.get("TRACEPARENT"):
            carrier = {"traceparent": environ["TRACEPARENT"]}
            if environ.get("TRACESTATE"):
                carrier["tracestate"] = environ["TRACESTATE"]
            parent = TraceContextTextMapPropagator().extract(carrier)
        return cls(provider, parent)

    @contextlib.contextmanager
    def agent_span(self, model: str) -> Iterator[Span]:
        """The run's root span (a child of ``TRACEPARENT`` when set)."""
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT_NAME,
            "gen_ai.request.model": model,
        }
        with self.tracer.start_as_current_span(
            f"invoke_agent {AGENT_NAME}", context=self.parent, attributes=attributes
        ) as span:
            yield span

    @contextlib.contextmanager
    def chat_span(self, model: str, server: str) -> Iterator[tuple[Span, dict[str, str]]]:
        """A model call's span and the headers (``traceparent``) that make it the gateway's
        parent."""
        url = urllib.parse.urlsplit(server)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "server.address": url.hostname or "",
        }
        if url.port:
            attributes["server.port"] = url.port
        with self.tracer.start_as_current_span(
            f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            headers: dict[str, str] = {}
            self.propagator.inject(headers)
            try:
                yield span, headers
            except GatewayError as exc:
                span.set_attribute("error.type", exc.code or str(exc.status or "connection"))
                raise

    @contextlib.contextmanager
    def tool_span(self, name: str, call_id: str, arguments: str) -> Iterator[Span]:
        """A tool call's span, with its arguments (the result is set by :func:`tool_done`)."""
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.arguments": arguments,
        }
        with self.tracer.start_as_current_span(f"execute_tool {name}", attributes=attributes) as s:
            yield s

    def trace_id(self, span: Span) -> str:
        return format(span.get_span_context().trace_id, "032x")

    def shutdown(self) -> None:
        """Export what is left (bounded by the exporter's timeout) and stop."""
        self.provider.shutdown()


def chat_done(span: Span, answer: Mapping[str, Any]) -> None:
    """Record a Chat Completions answer's id, model, finish reason and usage on its span."""
    usage = answer.get("usage") or {}
    values = {
        "gen_ai.response.id": answer.get("id"),
        "gen_ai.response.model": answer.get("model"),
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "gen_ai.usage.cache_read.input_tokens": (usage.get("prompt_tokens_details") or {}).get(
            "cached_tokens"
        ),
        "gen_ai.usage.reasoning.output_tokens": (usage.get("completion_tokens_details") or {}).get(
            "reasoning_tokens"
        ),
    }
    span.set_attributes({key: value for key, value in values.items() if value is not None})
    reasons = [c.get("finish_reason") for c in answer.get("choices") or []]
    if all(isinstance(reason, str) for reason in reasons) and reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)


def tool_done(span: Span, result: str, ok: bool) -> None:
    """Record a tool's result (cut) and mark the span failed when the tool failed."""
    span.set_attribute("gen_ai.tool.call.result", cut_result(result))
    if not ok:
        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR, result[:200]))


def cut_result(result: str) -> str:
    """A tool result for its span: whole, or its head and (mostly) its tail, where a command's
    exit code and test summary are, which the review's evidence check reads."""
    if len(result) <= RESULT_ATTRIBUTE_CHARS:
        return result
    head = RESULT_ATTRIBUTE_CHARS // 4
    tail = RESULT_ATTRIBUTE_CHARS - head
    cut = len(result) - head - tail
    return f"{result[:head]}\n[... {cut} characters cut ...]\n{result[-tail:]}"


def resource_from(environ: Mapping[str, str]) -> Resource:
    """SDK defaults, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` from ``environ``;
    ``service.name`` defaults to ``corral-agent``."""
    attributes: dict[str, Any] = {"service.name": AGENT_NAME}
    attributes.update(parse_pairs(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = environ["OTEL_SERVICE_NAME"]
    return Resource.create(attributes)


def exporter_from(environ: Mapping[str, str], api_key: str) -> SpanExporter | None:
    """The OTLP/HTTP span exporter the environment asks for, or None."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    if not endpoint:
        return None
    # Imported here: the exporter pulls in requests and protobuf, needed only when exporting.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers = parse_pairs(environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    headers.update(parse_pairs(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "")))
    if not any(name.lower() == "authorization" for name in headers):
        headers["authorization"] = f"Bearer {api_key}"
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


def parse_pairs(text: str) -> dict[str, str]:
    """``key=value,key=value`` with percent-encoded values (the OTel environment format)."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = urllib.parse.unquote(value.strip())
    return pairs
