"""OTLP/HTTP answers: Export*ServiceResponse on success, google.rpc.Status on failure.

Each is encoded as the request was (protobuf or JSON), as OTLP/HTTP requires.
"""

from __future__ import annotations

from typing import Literal

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from corral.errors import ClientError
from corral.traces.otlp.decode import Encoding, encoding_of

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# google.rpc.Code for the HTTP statuses the OTLP endpoint answers with.
_RPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    413: 8,  # RESOURCE_EXHAUSTED
    415: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
}


def rpc_code(http_status: int) -> int:
    """The ``google.rpc.Code`` that goes with an HTTP status in a ``Status`` body."""
    return _RPC_CODES.get(http_status, 2)  # UNKNOWN


def answer_encoding(content_type: str | None) -> Encoding:
    """The request's encoding, or protobuf when the request's content type is not OTLP's."""
    try:
        return encoding_of(content_type)
    except ClientError:
        return "protobuf"


def export_response(
    signal: Literal["traces", "logs"], encoding: Encoding, rejected: int, errors: list[str]
) -> tuple[bytes, str]:
    """An empty Export{Trace,Logs}ServiceResponse, with ``partial_success`` when items were
    rejected, as ``(body, content type)``."""
    message = "; ".join(errors)
    if encoding == "json":
        if not rejected:
            return b"{}", JSON
        count = "rejectedSpans" if signal == "traces" else "rejectedLogRecords"
        # int64 is a decimal string in the OTLP JSON mapping
        body = {"partialSuccess": {count: str(rejected), "errorMessage": message}}
        return orjson.dumps(body), JSON
    if signal == "traces":
        traces = ExportTraceServiceResponse()
        if rejected:
            traces.partial_success.rejected_spans = rejected
            traces.partial_success.error_message = message
        return traces.SerializeToString(), PROTOBUF
    logs = ExportLogsServiceResponse()
    if rejected:
        logs.partial_success.rejected_log_records = rejected
        logs.partial_success.error_message = message
    return logs.SerializeToString(), PROTOBUF


def status_body(code: int, message: str, encoding: Encoding) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` with ``code`` and ``message`` (no details)."""
    if encoding == "json":
        return orjson.dumps({"code": code, "message": message}), JSON
    return _status_protobuf(code, message), PROTOBUF


def _status_protobuf(code: int, message: str) -> bytes:
    # google.rpc.Status is two fields; encoding them here spares a googleapis dependency.
    out = bytearray()
    if code:
        out += b"\x08" + _varint(code & 0xFFFFFFFFFFFFFFFF)  # field 1, varint (int32)
    if message:
        text = message.encode()
        out += b"\x12" + _varint(len(text)) + text  # field 2, length-delimited
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
