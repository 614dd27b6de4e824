"""OTLP/HTTP bodies → plain records: content type, compression, protobuf or JSON.

Both encodings are decoded into the same small records (``SpanIn``, ``LogIn``,
grouped under a ``Resource``), so the mapping onto Corral's span model is
written once. Protobuf messages are walked directly (no ``json_format``); JSON
is parsed with orjson and accepts the OTLP JSON mapping in camelCase or
snake_case, ids as hex (base64 is tolerated, as some exporters send it), 64-bit
integers as numbers or strings and enum values as numbers or names.

A payload that cannot be decoded raises ``InvalidRequest`` naming what is
wrong; an item inside a decodable payload that is unusable (a span without a
valid id) is counted in ``rejected`` and skipped, as OTLP's partial success
expects.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from corral.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

Encoding = Literal["protobuf", "json"]

MAX_BYTES = 64 * 1024 * 1024
MAX_ERRORS = 8
# Attribute strings longer than this are cut by the mapping; decoding notes whether any is.
LONG_STRING = 4096
# AnyValue nesting deeper than this is kept as a marker: attributes are facts, not documents.
MAX_DEPTH = 16
_CHUNK = 1024 * 1024

_ZERO_TRACE_BYTES = bytes(16)
_ZERO_SPAN_BYTES = bytes(8)
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class Resource:
    """The resource and instrumentation scope a group of spans or log records came with."""

    attributes: dict[str, Any]
    scope_name: str = ""
    scope_version: str = ""


@dataclass(slots=True)
class EventIn:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class SpanIn:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[EventIn]
    status_code: int
    status_message: str
    # True when an attribute may need cutting (a long string or a nested value)
    long_values: bool = True


@dataclass(slots=True)
class LogIn:
    time_ns: int
    observed_ns: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str | None
    span_id: str | None
    event_name: str


@dataclass(slots=True)
class Decoded:
    """Decoded groups, each a resource (with its scope) and its spans or log records."""

    groups: list[tuple[Resource, list[Any]]] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, why: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_ERRORS and why not in self.errors:
            self.errors.append(why)


# --- transport: content type, content encoding, size ---------------------------------------


def encoding_of(content_type: str | None) -> Encoding:
    """``protobuf`` or ``json`` for a Content-Type header; ``UnsupportedMediaType`` else."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf"):
        return "protobuf"
    if media == "application/json":
        return "json"
    raise UnsupportedMediaType(
        f"unsupported content type {media or '(none)'!r}: OTLP/HTTP takes "
        "application/x-protobuf or application/json"
    )


def decompress(body: bytes, content_encoding: str | None, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The body with its Content-Encoding (gzip, deflate, identity) undone, at most ``max_bytes``.

    Decompression stops as soon as the output would pass ``max_bytes``
    (``PayloadTooLarge``), so a small compressed bomb never inflates in memory.
    """
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the OTLP body is larger than {max_bytes} bytes")
        return body
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, "gzip", max_bytes)
    if coding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS, "deflate", max_bytes)
        except InvalidRequest:
            # RFC 9110 deflate is zlib-wrapped, but some clients send a raw deflate stream.
            return _inflate(body, -zlib.MAX_WBITS, "deflate", max_bytes)
    raise UnsupportedMediaType(
        f"unsupported content encoding {coding!r}: use gzip, deflate or none"
    )


def _inflate(data: bytes, wbits: int, name: str, max_bytes: int) -> bytes:
    out = bytearray()
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            pending = data
            while True:  # at most _CHUNK bytes of output at a time, checked before the next
                chunk = inflater.decompress(pending, _CHUNK)
                out += chunk
                if len(out) > max_bytes:
                    raise PayloadTooLarge(
                        f"the {name}-decoded OTLP body is larger than {max_bytes} bytes"
                    )
                pending = inflater.unconsumed_tail
                if inflater.eof or (not pending and len(chunk) < _CHUNK):
                    break
            if not inflater.eof:
                raise InvalidRequest(f"the {name} body is truncated")
            data = inflater.unused_data
            if not data or wbits != 16 + zlib.MAX_WBITS:
                break  # a gzip body may hold several members; a deflate stream is one
    except zlib.error as exc:
        raise InvalidRequest(f"the {name} body does not decompress: {exc}") from exc
    return bytes(out)


# --- protobuf ---------------------------------------------------------------------------------


def _pb_value(value: AnyValue, depth: int = 0) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return _finite(value.double_value)
    if depth >= MAX_DEPTH:
        return "[nested too deep]"
    if kind == "array_value":
        return [_pb_value(item, depth + 1) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value, depth + 1) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def _pb_attributes(attributes: Any) -> dict[str, Any]:
    return _pb_span_attributes(attributes)[0]


def _pb_span_attributes(attributes: Any) -> tuple[dict[str, Any], bool]:
    """The attributes as a dict, and whether any value is a long string or a nested value."""
    out: dict[str, Any] = {}
    long_values = False
    limit = LONG_STRING
    for kv in attributes:
        value: AnyValue = kv.value
        # The common cases first: this loop is the hot path of trace ingest.
        text = value.string_value
        if text:
            out[kv.key] = text
            if len(text) > limit:
                long_values = True
            continue
        kind = value.WhichOneof("value")
        if kind == "int_value":
            out[kv.key] = value.int_value
        elif kind == "string_value":
            out[kv.key] = text
        else:
            item = out[kv.key] = _pb_value(value)
            if not long_values and isinstance(item, (list, dict)):
                long_values = _has_long(item)
    return out, long_values


def _has_long(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, str):
            if len(item) > LONG_STRING:
                return True
        elif isinstance(item, (list, dict)) and _has_long(item):
            return True
    return False


def _pb_resource(resource: Any, scope: Any) -> Resource:
    return Resource(_pb_attributes(resource.attributes), scope.name, scope.version)


def _pb_parse(message: Any, body: bytes, what: str) -> Any:
    try:
        message.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidRequest(f"the body is not a valid {what} protobuf: {exc}") from exc
    return message


def _pb_spans(body: bytes) -> Decoded:
    request = _pb_parse(ExportTraceServiceRequest(), body, "ExportTraceServiceRequest")
    decoded = Decoded()
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            resource = _pb_resource(resource_spans.resource, scope_spans.scope)
            spans: list[SpanIn] = []
            for span in scope_spans.spans:
                item = _pb_span(span, decoded)
                if item is not None:
                    spans.append(item)
            decoded.groups.append((resource, spans))
    return decoded


def _pb_span(span: Any, decoded: Decoded) -> SpanIn | None:
    trace_id = span.trace_id
    span_id = span.span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_BYTES:
        decoded.reject("a span has no valid trace_id (16 bytes, not all zero)")
        return None
    if len(span_id) != 8 or span_id == _ZERO_SPAN_BYTES:
        decoded.reject("a span has no valid span_id (8 bytes, not all zero)")
        return None
    parent = span.parent_span_id
    parent_id = parent.hex() if len(parent) == 8 and parent != _ZERO_SPAN_BYTES else None
    events = [
        EventIn(event.name, event.time_unix_nano, _pb_attributes(event.attributes))
        for event in span.events
    ]
    status = span.status
    attributes, long_values = _pb_span_attributes(span.attributes)
    return SpanIn(
        trace_id.hex(),
        span_id.hex(),
        parent_id,
        span.name,
        span.kind,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        attributes,
        events,
        status.code,
        status.message,
        long_values,
    )


def _pb_logs(body: bytes) -> Decoded:
    request = _pb_parse(ExportLogsServiceRequest(), body, "ExportLogsServiceRequest")
    decoded = Decoded()
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            resource = _pb_resource(resource_logs.resource, scope_logs.scope)
            records = [_pb_log(record) for record in scope_logs.log_records]
            decoded.groups.append((resource, records))
    return decoded


def _pb_log(record: Any) -> LogIn:
    trace_id = record.trace_id
    span_id = record.span_id
    valid_trace = len(trace_id) == 16 and any(trace_id)
    return LogIn(
        record.time_unix_nano,
        record.observed_time_unix_nano,
        record.severity_number,
        record.severity_text,
        _pb_value(record.body) if record.HasField("body") else None,
        _pb_attributes(record.attributes),
        trace_id.hex() if valid_trace else None,
        span_id.hex() if valid_trace and len(span_id) == 8 and any(span_id) else None,
        record.event_name,
    )


# --- JSON -------------------------------------------------------------------------------------


class _Shape(Exception):
    """A JSON value of the wrong type at ``path``; becomes ``InvalidRequest``."""

    def __init__(self, path: str, expected: str) -> None:
        super().__init__(f"{path}: expected {expected}")


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _list(obj: dict[str, Any], camel: str, snake: str, path: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Shape(f"{path}.{camel}", "a list")
    return value


def _obj(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Shape(path, "an object")
    return value


def _str(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Shape(path, "a string")
    return value


def _int(value: Any, path: str) -> int:
    """A 64-bit integer: JSON number or decimal string (the OTLP JSON mapping allows both)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Shape(path, "an integer")


def _enum(value: Any, names: dict[str, int], path: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _int(value, path)


_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}


def _json_id(value: Any, size: int, path: str) -> str | None:
    """Lowercase hex of a trace (16 bytes) or span (8 bytes) id; None when absent or invalid.

    OTLP JSON carries ids as hex; base64 (the plain protobuf JSON mapping) is accepted too.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Shape(path, "a hex id string")
    if len(value) == 2 * size and _HEX.issuperset(value):
        hex_id = value.lower()
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != size:
            return None
        hex_id = raw.hex()
    return None if hex_id.strip("0") == "" else hex_id


def _json_value(value: Any, path: str, depth: int = 0) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Shape(path, "an AnyValue object")
    for key, convert in _JSON_SCALARS:
        if key in value:
            return convert(value[key], path)
    if depth >= MAX_DEPTH:
        return "[nested too deep]"
    array = _get(value, "arrayValue", "array_value")
    if array is not None:
        items = _list(_obj(array, path), "values", "values", path)
        return [_json_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items)]
    kvlist = _get(value, "kvlistValue", "kvlist_value")
    if kvlist is not None:
        return _json_attributes(
            _list(_obj(kvlist, path), "values", "values", path), path, depth + 1
        )
    raw = _get(value, "bytesValue", "bytes_value")
    if raw is not None:
        return _str(raw, path)  # already base64, as Corral keeps bytes
    return None


def _json_double(value: Any, path: str) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value))
    if isinstance(value, str):  # the JSON mapping writes NaN and the infinities as strings
        return value
    raise _Shape(path, "a number")


def _json_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Shape(path, "a boolean")
    return value


_JSON_SCALARS: tuple[tuple[str, Callable[[Any, str], Any]], ...] = (
    ("stringValue", _str),
    ("intValue", _int),
    ("boolValue", _json_bool),
    ("doubleValue", _json_double),
    ("string_value", _str),
    ("int_value", _int),
    ("bool_value", _json_bool),
    ("double_value", _json_double),
)


def _json_attributes(items: Any, path: str, depth: int = 0) -> dict[str, Any]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _Shape(path, "a list of key/value pairs")
    out: dict[str, Any] = {}
    for i, kv in enumerate(items):
        if not isinstance(kv, dict):
            raise _Shape(f"{path}[{i}]", "a key/value object")
        key = kv.get("key")
        if not isinstance(key, str):
            raise _Shape(f"{path}[{i}].key", "a string")
        value = kv.get("value")
        if isinstance(value, dict) and "stringValue" in value:
            out[key] = _str(value["stringValue"], f"{path}[{i}]")
        else:
            out[key] = _json_value(value, f"{path}[{i}].value", depth)
    return out


def _json_load(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"the body is not an OTLP JSON {what} object")
    return data


def _json_resource(group: dict[str, Any], scoped: dict[str, Any], path: str) -> Resource:
    resource = _obj(group.get("resource"), f"{path}.resource")
    scope = _obj(scoped.get("scope"), f"{path}.scope")
    return Resource(
        _json_attributes(resource.get("attributes"), f"{path}.resource.attributes"),
        _str(scope.get("name"), f"{path}.scope.name"),
        _str(scope.get("version"), f"{path}.scope.version"),
    )


def _json_groups(
    data: dict[str, Any], names: tuple[str, str, str, str, str, str], item: Callable[..., Any]
) -> Decoded:
    """Walk ``resource*`` → ``scope*`` → items, calling ``item(obj, path, decoded)``."""
    outer, outer_snake, inner, inner_snake, leaf, leaf_snake = names
    decoded = Decoded()
    for g, group in enumerate(_list(data, outer, outer_snake, "$")):
        gpath = f"{outer}[{g}]"
        group = _obj(group, gpath)
        for s, scoped in enumerate(_list(group, inner, inner_snake, gpath)):
            spath = f"{gpath}.{inner}[{s}]"
            scoped = _obj(scoped, spath)
            resource = _json_resource(group, scoped, spath)
            items = []
            for i, obj in enumerate(_list(scoped, leaf, leaf_snake, spath)):
                made = item(_obj(obj, f"{spath}.{leaf}[{i}]"), f"{spath}.{leaf}[{i}]", decoded)
                if made is not None:
                    items.append(made)
            decoded.groups.append((resource, items))
    return decoded


def _json_span(span: dict[str, Any], path: str, decoded: Decoded) -> SpanIn | None:
    trace_id = _json_id(_get(span, "traceId", "trace_id"), 16, f"{path}.traceId")
    span_id = _json_id(_get(span, "spanId", "span_id"), 8, f"{path}.spanId")
    if trace_id is None:
        decoded.reject("a span has no valid traceId (32 hex digits, not all zero)")
        return None
    if span_id is None:
        decoded.reject("a span has no valid spanId (16 hex digits, not all zero)")
        return None
    status = _obj(span.get("status"), f"{path}.status")
    events = []
    for i, event in enumerate(_list(span, "events", "events", path)):
        epath = f"{path}.events[{i}]"
        event = _obj(event, epath)
        events.append(
            EventIn(
                _str(event.get("name"), f"{epath}.name"),
                _int(_get(event, "timeUnixNano", "time_unix_nano"), f"{epath}.timeUnixNano"),
                _json_attributes(event.get("attributes"), f"{epath}.attributes"),
            )
        )
    return SpanIn(
        trace_id,
        span_id,
        _json_id(_get(span, "parentSpanId", "parent_span_id"), 8, f"{path}.parentSpanId"),
        _str(span.get("name"), f"{path}.name"),
        _enum(span.get("kind"), _SPAN_KINDS, f"{path}.kind"),
        _int(_get(span, "startTimeUnixNano", "start_time_unix_nano"), f"{path}.startTimeUnixNano"),
        _int(_get(span, "endTimeUnixNano", "end_time_unix_nano"), f"{path}.endTimeUnixNano"),
        _json_attributes(span.get("attributes"), f"{path}.attributes"),
        events,
        _enum(status.get("code"), _STATUS_CODES, f"{path}.status.code"),
        _str(status.get("message"), f"{path}.status.message"),
    )


def _json_log(record: dict[str, Any], path: str, decoded: Decoded) -> LogIn:
    trace_id = _json_id(_get(record, "traceId", "trace_id"), 16, f"{path}.traceId")
    span_id = _json_id(_get(record, "spanId", "span_id"), 8, f"{path}.spanId")
    return LogIn(
        _int(_get(record, "timeUnixNano", "time_unix_nano"), f"{path}.timeUnixNano"),
        _int(
            _get(record, "observedTimeUnixNano", "observed_time_unix_nano"),
            f"{path}.observedTimeUnixNano",
        ),
        _int(_get(record, "severityNumber", "severity_number"), f"{path}.severityNumber"),
        _str(_get(record, "severityText", "severity_text"), f"{path}.severityText"),
        _json_value(record.get("body"), f"{path}.body"),
        _json_attributes(record.get("attributes"), f"{path}.attributes"),
        trace_id,
        span_id if trace_id is not None else None,
        _str(_get(record, "eventName", "event_name"), f"{path}.eventName"),
    )


_SPAN_NAMES = ("resourceSpans", "resource_spans", "scopeSpans", "scope_spans", "spans", "spans")
_LOG_NAMES = (
    "resourceLogs",
    "resource_logs",
    "scopeLogs",
    "scope_logs",
    "logRecords",
    "log_records",
)


def _json_spans(body: bytes) -> Decoded:
    try:
        return _json_groups(_json_load(body, "traces"), _SPAN_NAMES, _json_span)
    except _Shape as exc:
        raise InvalidRequest(f"the body is not an OTLP JSON traces request: {exc}") from exc


def _json_logs(body: bytes) -> Decoded:
    try:
        return _json_groups(_json_load(body, "logs"), _LOG_NAMES, _json_log)
    except _Shape as exc:
        raise InvalidRequest(f"the body is not an OTLP JSON logs request: {exc}") from exc


# --- entry points -----------------------------------------------------------------------------


def decode_spans(
    body: bytes, content_type: str, content_encoding: str | None, *, max_bytes: int = MAX_BYTES
) -> Decoded:
    """An ``/v1/traces`` body as groups of ``SpanIn``."""
    encoding = encoding_of(content_type)
    raw = decompress(body, content_encoding, max_bytes=max_bytes)
    return _pb_spans(raw) if encoding == "protobuf" else _json_spans(raw)


def decode_logs(
    body: bytes, content_type: str, content_encoding: str | None, *, max_bytes: int = MAX_BYTES
) -> Decoded:
    """An ``/v1/logs`` body as groups of ``LogIn``."""
    encoding = encoding_of(content_type)
    raw = decompress(body, content_encoding, max_bytes=max_bytes)
    return _pb_logs(raw) if encoding == "protobuf" else _json_logs(raw)


def _finite(value: float) -> float | str:
    # NaN and the infinities are not JSON: keep them as the strings the OTLP JSON mapping uses.
    return value if math.isfinite(value) else str(value)
