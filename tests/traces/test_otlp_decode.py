"""OTLP/HTTP decoding: content types, compression, malformed bodies, size bounds, answers."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from corral.errors import ClientError, InvalidRequest, PayloadTooLarge
from corral.traces import otlp
from corral.traces.otlp import Batch, Identity, parse_logs, parse_traces

DATA = Path(__file__).parent / "data" / "otlp"
PB = "application/x-protobuf"
JSON = "application/json"
IDENTITY = Identity("org_1", "team_1", "usr_1", "key_1", None, "usr_1")


def traces(body: bytes, content_type: str = PB, encoding: str | None = None, **kw: Any) -> Batch:
    return parse_traces(
        body, content_type=content_type, content_encoding=encoding, identity=IDENTITY, **kw
    )


def logs(body: bytes, content_type: str = PB, encoding: str | None = None) -> Batch:
    return parse_logs(body, content_type=content_type, content_encoding=encoding, identity=IDENTITY)


def span_json(**fields: Any) -> dict[str, Any]:
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat gpt-5",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
        "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}],
    }
    span.update(fields)
    return span


def request_json(*spans: dict[str, Any]) -> bytes:
    body = {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}
    return orjson.dumps(body)


def test_public_surface() -> None:
    """The package exports exactly the ingest API the endpoint uses."""
    assert sorted(otlp.__all__) == [
        "Batch",
        "Identity",
        "parse_logs",
        "parse_traces",
        "rpc_code",
        "status_response",
        "success_response",
    ]


def test_protobuf_and_json_of_one_agent_run_give_the_same_shape() -> None:
    """The protobuf and JSON captures of Claude Code decode to rows of the same kinds."""
    pb = traces((DATA / "claude-code-tool-traces.pb").read_bytes())
    js = traces((DATA / "claude-code-tool-traces.json").read_bytes(), JSON)
    assert [r["name"] for r in pb.rows] == [r["name"] for r in js.rows]
    assert all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16 for r in js.rows)
    assert all(r["trace_id"] == r["trace_id"].lower() for r in pb.rows + js.rows)
    assert pb.rejected == js.rejected == 0


def test_gzip_body_is_decoded() -> None:
    """A real gzip-compressed export (Claude Code, Content-Encoding: gzip) decodes."""
    batch = traces((DATA / "claude-code-api-error-traces.pb.gz").read_bytes(), PB, "gzip")
    assert {r["name"] for r in batch.rows} == {"claude_code.llm_request", "claude_code.interaction"}


def test_deflate_zlib_and_raw_are_decoded() -> None:
    """deflate is accepted zlib-wrapped (RFC 9110) and as a raw stream."""
    body = request_json(span_json())
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_body = raw.compress(body) + raw.flush()
    assert len(traces(zlib.compress(body), JSON, "deflate").rows) == 1
    assert len(traces(raw_body, JSON, "deflate").rows) == 1


def test_json_accepts_snake_case_and_numbers_for_64_bit_ints() -> None:
    """snake_case keys, numeric int64 and enum names decode like the canonical form."""
    span = {
        "trace_id": "5B8EFFF798038103D269B633813FC60C",
        "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "",
        "name": "chat gpt-5",
        "kind": "SPAN_KIND_CLIENT",
        "start_time_unix_nano": 1700000000000000000,
        "end_time_unix_nano": 1700000001000000000,
        "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"string_value": "chat"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"int_value": 12}},
        ],
    }
    body = orjson.dumps({"resource_spans": [{"scope_spans": [{"spans": [span]}]}]})
    (row,) = traces(body, "application/json; charset=utf-8").rows
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert row["parent_span_id"] is None
    assert row["start_ns"] == 1700000000000000000
    assert (row["status"], row["error_message"], row["input_tokens"]) == ("error", "boom", 12)


def test_json_any_value_variants() -> None:
    """Arrays, kvlists, bytes, doubles and booleans become plain JSON values."""
    attributes = [
        {
            "key": "a",
            "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "x"}]}},
        },
        {
            "key": "k",
            "value": {"kvlistValue": {"values": [{"key": "n", "value": {"boolValue": True}}]}},
        },
        {"key": "b", "value": {"bytesValue": "AAE="}},
        {"key": "d", "value": {"doubleValue": 0.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "empty", "value": {}},
    ]
    (row,) = traces(request_json(span_json(attributes=attributes)), JSON).rows
    attrs = row["attributes"]
    assert attrs["a"] == [1, "x"]
    assert attrs["k"] == {"n": True}
    assert (attrs["b"], attrs["d"], attrs["nan"], attrs["empty"]) == ("AAE=", 0.5, "NaN", None)
    orjson.dumps(attrs)  # storable as JSON


def test_base64_ids_in_json_are_tolerated() -> None:
    """Ids written in base64 (the plain protobuf JSON mapping) decode to the same hex."""
    body = request_json(span_json(traceId="W47/95gDgQPSabYzgT/GDA==", spanId="7uGbfsPBsXQ="))
    (row,) = traces(body, JSON).rows
    assert (row["trace_id"], row["span_id"]) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
    )


def test_spans_with_invalid_ids_are_rejected_not_fatal() -> None:
    """A span with a missing, short or all-zero id is counted in rejected; the rest is kept."""
    body = request_json(
        span_json(),
        span_json(traceId="00000000000000000000000000000000"),
        span_json(spanId="abc"),
        span_json(spanId=None),
    )
    batch = traces(body, JSON)
    assert (len(batch.rows), batch.rejected) == (1, 3)
    assert batch.errors
    assert all("id" in error for error in batch.errors)


def test_wrong_content_type_is_415() -> None:
    """Anything but protobuf or JSON is refused with 415 unsupported_media_type."""
    with pytest.raises(ClientError) as caught:
        traces(b"{}", "text/plain")
    assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")


def test_unknown_content_encoding_is_415() -> None:
    """A compression other than gzip or deflate is refused with 415."""
    with pytest.raises(ClientError) as caught:
        traces(b"x", PB, "br")
    assert caught.value.status == 415
    assert "br" in caught.value.message


def test_bad_gzip_is_invalid_request() -> None:
    """A body that is not gzip, or is cut short, is a 400 naming gzip."""
    with pytest.raises(InvalidRequest, match="gzip"):
        traces(b"not gzip at all", PB, "gzip")
    whole = gzip.compress(request_json(span_json()))
    with pytest.raises(InvalidRequest, match="truncated"):
        traces(whole[: len(whole) // 2], JSON, "gzip")


def test_truncated_protobuf_is_invalid_request() -> None:
    """A protobuf body cut in the middle of a message is a 400 naming the message type."""
    body = (DATA / "claude-code-tool-traces.pb").read_bytes()
    with pytest.raises(InvalidRequest, match="ExportTraceServiceRequest"):
        traces(body[:-7])


def test_json_that_is_not_json_or_not_otlp_is_invalid_request() -> None:
    """Broken JSON and JSON of the wrong shape are 400s naming where the shape breaks."""
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        traces(b"{nope", JSON)
    with pytest.raises(InvalidRequest, match="OTLP JSON"):
        traces(b"[1, 2]", JSON)
    with pytest.raises(InvalidRequest, match=r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans"):
        traces(orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": {"a": 1}}]}]}), JSON)
    with pytest.raises(InvalidRequest, match=r"spans\[0\]\.name: expected a string"):
        traces(request_json(span_json(name=5)), JSON)
    with pytest.raises(InvalidRequest, match=r"startTimeUnixNano: expected an integer"):
        traces(request_json(span_json(startTimeUnixNano="soon")), JSON)


def test_gzip_bomb_is_stopped_at_the_bound() -> None:
    """A small gzip body that inflates past max_bytes is refused (413) without inflating it all."""
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros, about 8 KiB compressed
    assert len(bomb) < 64 * 1024
    with pytest.raises(PayloadTooLarge):
        traces(bomb, PB, "gzip", max_bytes=1024 * 1024)


def test_uncompressed_body_over_the_bound_is_413() -> None:
    """An uncompressed body larger than max_bytes is refused with 413."""
    with pytest.raises(PayloadTooLarge) as caught:
        traces(b"\0" * 2048, PB, None, max_bytes=1024)
    assert caught.value.status == 413


def test_empty_export_is_an_empty_batch() -> None:
    """An empty request (protobuf or JSON) is valid and yields nothing."""
    assert traces(b"").rows == []
    assert traces(b"{}", JSON).rows == []
    assert logs(b"{}", JSON).rows == []


def test_success_response_encodings() -> None:
    """The success answer is an empty Export*ServiceResponse in the request's encoding."""
    ok = Batch([], 0, [])
    body, ctype = otlp.success_response("traces", PB, ok)
    assert (body, ctype) == (b"", PB)
    assert otlp.success_response("logs", "application/json; charset=utf-8", ok) == (b"{}", JSON)


def test_partial_success_response_names_the_rejected() -> None:
    """With rejected items the answer carries partial_success: count and message."""
    batch = Batch([], 3, ["a span has no valid span_id"])
    body, ctype = otlp.success_response("traces", PB, batch)
    answer = ExportTraceServiceResponse.FromString(body)
    assert ctype == PB
    assert answer.partial_success.rejected_spans == 3
    assert "span_id" in answer.partial_success.error_message
    body, _ = otlp.success_response("logs", PB, batch)
    assert ExportLogsServiceResponse.FromString(body).partial_success.rejected_log_records == 3
    body, ctype = otlp.success_response("logs", JSON, batch)
    assert ctype == JSON
    assert orjson.loads(body)["partialSuccess"]["rejectedLogRecords"] == "3"


def test_status_response_encodings() -> None:
    """Error answers are google.rpc.Status in the request's encoding (protobuf when unknown)."""
    from google.rpc.status_pb2 import Status  # the real message, to check our hand encoding

    body, ctype = otlp.status_response(400, "bad gzip", PB)
    status = Status.FromString(body)
    assert (ctype, status.code, status.message) == (PB, 3, "bad gzip")  # INVALID_ARGUMENT
    body, ctype = otlp.status_response(429, "slow down ✋", JSON)
    assert (ctype, orjson.loads(body)) == (JSON, {"code": 8, "message": "slow down ✋"})
    body, ctype = otlp.status_response(14, "unavailable", "text/plain")  # a google.rpc.Code
    assert (ctype, Status.FromString(body).code) == (PB, 14)


def test_protobuf_request_built_by_the_library_decodes() -> None:
    """A request serialized by opentelemetry-proto itself decodes span for span."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes(range(1, 17))
    span.span_id = bytes(range(1, 9))
    span.name = "execute_tool read_file"
    span.start_time_unix_nano, span.end_time_unix_nano = 10, 20
    (row,) = traces(request.SerializeToString()).rows
    assert (row["trace_id"], row["span_id"]) == (
        bytes(range(1, 17)).hex(),
        bytes(range(1, 9)).hex(),
    )
    assert (row["kind"], row["operation"], row["start_ns"], row["end_ns"]) == (
        "tool",
        "execute_tool",
        10,
        20,
    )
