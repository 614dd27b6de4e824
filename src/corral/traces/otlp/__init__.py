"""OTLP/HTTP ingest: decode ``/v1/traces`` and ``/v1/logs`` bodies and map them onto span rows.

A pure layer: bytes and headers in, span rows (``SPAN_DEFAULTS`` plus the
transient ``_request_body``/``_response_body``) and the OTLP answer out. The
HTTP endpoint authenticates the Corral key, calls ``parse_traces`` /
``parse_logs`` and hands the rows to the recorder.

Encodings
    ``application/x-protobuf`` and ``application/json`` (OTLP JSON: camelCase
    or snake_case keys, ids as hex, 64-bit integers as numbers or strings, enum
    values as numbers or names); ``Content-Encoding`` gzip, deflate or none.
    Another content type or encoding is a 415; a body that does not decode, a
    400 naming what is wrong; a body over ``max_bytes`` (64 MiB by default)
    once decompressed, a 413 (decompression stops there: a gzip bomb never
    inflates). A span without a valid trace or span id, or a log record without
    any time, is skipped and counted in ``Batch.rejected`` (OTLP partial
    success).

Every row
    * Identity columns (org, team, user, key, owner) come from the key, never
      the payload. ``run_id`` is the key's run only (the resource
      attribute ``corral.run_id`` that Corral's runs also carry is a claim, kept as an
      attribute).
    * ``source`` is the resource's ``service.name`` (``otlp`` when absent).
    * ``attributes`` holds the item's attributes, strings over 4 KiB cut with a
      ``…[cut N chars]`` marker, plus ``resource``: the resource facts worth
      keeping (service name, version and instance, environment, session and
      conversation ids, host, the scope name and every claimed ``corral.*``).
    * No reported cost: ``cost_nusd`` 0, ``cost_source`` None (Corral prices
      it); a reported cost: ``cost_source`` ``reported``.
    * Values are cut to their column's width.

Spans (``/v1/traces``)
    * Ids as lowercase hex; start and end from the span; status ERROR →
      ``status`` ``error``, ``error_class`` = ``error.type`` (else ``error``),
      ``error_message`` = the status message; otherwise ``ok``.
    * ``kind`` from ``gen_ai.operation.name`` (or the first word of the span
      name): ``chat``, ``text_completion``, ``generate_content``,
      ``embeddings`` → ``llm_request``; ``invoke_agent``, ``create_agent`` →
      ``agent``; ``execute_tool`` → ``tool``; anything else → ``span``.
      ``operation`` = that operation name.
    * ``gen_ai.request.model`` → ``model_requested``, ``gen_ai.response.model``
      → ``model_served``, ``gen_ai.provider.name`` (or ``gen_ai.system``) →
      ``provider``, ``gen_ai.response.id`` → ``response_id``,
      ``gen_ai.response.finish_reasons[0]`` → ``finish_reason``.
    * Usage, on ``llm_request`` rows only (semconv input includes cache reads
      and writes, output includes reasoning): ``input_tokens`` = input −
      ``cache_read.input_tokens`` − ``cache_creation.input_tokens`` (≥ 0),
      ``cached_input_tokens`` = cache reads, ``cache_write_tokens`` = cache
      creation (``cache_write.input_tokens`` as Codex writes it is read too),
      ``reasoning_tokens`` = ``reasoning.output_tokens``, ``output_tokens`` =
      output − reasoning (≥ 0).
    * Tool spans are named ``execute_tool NAME`` from ``gen_ai.tool.name``.
    * Content moves out of ``attributes`` into the bodies:
      ``gen_ai.input.messages`` (with ``gen_ai.system_instructions``: one JSON
      object keyed by attribute name) → ``_request_body``,
      ``gen_ai.output.messages`` → ``_response_body``; on tools
      ``gen_ai.tool.call.arguments`` → request, ``gen_ai.tool.call.result`` →
      response. Strings are kept as sent, structured values as JSON.
    * Span events: the first 16, as ``attributes.events`` (name, time, first 8
      attributes with strings cut at 256 characters).
    * Claude Code's beta trace spans (``claude_code.interaction``,
      ``claude_code.llm_request``, ``claude_code.tool``) carry no
      ``gen_ai.operation.name`` and stay ``span`` rows: the same calls arrive as
      log events, with their reported cost, and each model call must be one
      ``llm_request``. Codex's trace exporter sends its internal tracing (about
      a thousand spans a turn); they are ``span`` rows too.

Log records (``/v1/logs``): coding agents' telemetry events
    * The event name is the ``event.name`` attribute, completed by the body when
      the body is the prefixed name (Claude Code: ``user_prompt`` +
      ``claude_code.user_prompt``), else the record's ``event_name``, else the
      body. The agent is the name's prefix (``claude_code``, ``codex``,
      ``gemini_cli``) or the service name.
    * Time: the record's time, else its observed time, else ``event.timestamp``
      (Codex sends time 0). ``duration_ms``, when given, sets start = time −
      duration.
    * Claude Code: ``user_prompt`` → ``step`` (``prompt`` → ``_request_body``);
      ``api_request`` → ``llm_request`` (``input_tokens`` is already uncached,
      ``cache_read_tokens`` → cached, ``cache_creation_tokens`` → cache write,
      ``output_tokens``; ``cost_usd`` → ``cost_nusd`` = round(usd · 1e9),
      ``reported``; ``response_id`` only from a ``msg_…`` id, the request id
      stays in attributes); ``api_error`` → ``llm_request`` with status
      ``error``, ``error_message`` and ``http_status`` from ``error`` and
      ``status_code``; ``tool_result`` → ``tool`` (``tool_name``, ``success``,
      ``duration_ms``); ``tool_decision``, ``assistant_response`` and the rest →
      ``event``.
    * Codex CLI: ``codex.user_prompt`` → ``step``; ``codex.sse_event`` of kind
      ``response.completed`` carrying token counts → ``llm_request``
      (``input_token_count`` includes ``cached_token_count``,
      ``output_token_count`` includes ``reasoning_token_count``; no cost: Corral
      prices it; start = the preceding ``codex.api_request`` of the session in
      the same export); every other ``codex.sse_event`` (one per streamed delta)
      is dropped, not stored; ``codex.api_request`` → ``event`` (``error`` when
      its HTTP status is ≥ 400); ``codex.tool_result`` → ``tool``; the rest →
      ``event``.
    * Gemini CLI: ``gemini_cli.user_prompt`` → ``step``; ``api_response`` →
      ``llm_request`` (``input_token_count`` includes
      ``cached_content_token_count``; ``thoughts_token_count`` → reasoning,
      beside ``output_token_count``); ``api_error`` → ``llm_request`` error
      (``error_class`` = ``error.type``, ``http_status`` = ``status_code``);
      ``tool_call`` → ``tool``; the rest → ``event``.
    * An agent's content moves into the bodies, where the team's body policy
      and redaction apply: ``prompt``, ``tool_input``, ``tool_parameters``,
      ``arguments``, ``function_args``, ``request_text`` → ``_request_body`` (the
      first present); ``output``, ``response``, ``response_text``,
      ``tool_result`` → ``_response_body``; the GenAI content attributes as on
      spans, for every record.
    * Any other record → ``event`` named after its event name (``log`` when it
      has none), its body in ``attributes.body``.
    * Trace: an agent's events of one session (``session.id``, Codex
      ``conversation.id``) form one trace whose id is derived from the session;
      another record keeps its own trace context (parent = its span id), else
      the session's, else one trace per service instance. The record's own
      trace and span ids are kept as ``attributes["otel.trace_id"]`` and
      ``["otel.span_id"]``.
    * Steps: ``user_prompt`` is a ``step`` whose id is derived from the session
      and the prompt id (``prompt.id``, Gemini ``prompt_id``); events with that
      prompt id have it as ``parent_span_id``. Codex has no prompt id: its turn
      is the trace its user prompt was logged in, and records of that trace (or
      without one, following that prompt in the same export) are its children.
    * Span ids are a hash of the org, the service, the session, the record's
      times, event name, ``event.sequence`` / ``event.kind`` and its occurrence
      among identical records of the payload: the same payload sent twice gives
      the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from corral.traces.otlp.agents import map_logs
from corral.traces.otlp.decode import MAX_BYTES, decode_logs, decode_spans
from corral.traces.otlp.mapping import Identity, context, map_span
from corral.traces.otlp.wire import answer_encoding, export_response, rpc_code, status_body


@dataclass(slots=True)
class Batch:
    """What one OTLP payload yields."""

    rows: list[dict[str, Any]]  # SPAN_DEFAULTS.copy() updated, plus optional body keys
    rejected: int  # items dropped (invalid ids, no time), for OTLP partial_success
    errors: list[str]  # why, short


def parse_traces(
    body: bytes,
    *,
    content_type: str,
    content_encoding: str | None,
    identity: Identity,
    max_bytes: int = MAX_BYTES,
) -> Batch:
    """The span rows of an ``/v1/traces`` body.

    Raises ``InvalidRequest`` (400) for a body that does not decode,
    ``UnsupportedMediaType`` (415) for an unsupported content type or encoding and
    ``PayloadTooLarge`` (413) past ``max_bytes`` decompressed.
    """
    decoded = decode_spans(body, content_type, content_encoding, max_bytes=max_bytes)
    rows: list[dict[str, Any]] = []
    for resource, spans in decoded.groups:
        ctx = context(identity, resource)
        rows.extend(map_span(span, ctx) for span in spans)
    return Batch(rows, decoded.rejected, decoded.errors)


def parse_logs(
    body: bytes,
    *,
    content_type: str,
    content_encoding: str | None,
    identity: Identity,
    max_bytes: int = MAX_BYTES,
) -> Batch:
    """The span rows of an ``/v1/logs`` body (agent telemetry events).

    Raises as ``parse_traces`` does.
    """
    decoded = decode_logs(body, content_type, content_encoding, max_bytes=max_bytes)
    rows = map_logs(decoded, identity)
    return Batch(rows, decoded.rejected, decoded.errors)


def success_response(
    signal: Literal["traces", "logs"], content_type: str, batch: Batch
) -> tuple[bytes, str]:
    """``(body, content type)`` of the 200 answer: Export{Trace,Logs}ServiceResponse in the
    request's encoding, with ``partial_success`` when items were rejected."""
    return export_response(signal, answer_encoding(content_type), batch.rejected, batch.errors)


def status_response(code: int, message: str, content_type: str) -> tuple[bytes, str]:
    """``(body, content type)`` of an error answer: a ``google.rpc.Status`` in the request's
    encoding (protobuf when the request's content type was not OTLP's).

    ``code`` is the answer's HTTP status (400, 413, 415, 429, 503…), written as its
    ``google.rpc.Code`` (``rpc_code``); a value under 100 is taken as a ``google.rpc.Code``.
    """
    rpc = code if code < 100 else rpc_code(code)
    return status_body(rpc, message, answer_encoding(content_type))


__all__ = [
    "Batch",
    "Identity",
    "parse_logs",
    "parse_traces",
    "rpc_code",
    "status_response",
    "success_response",
]
