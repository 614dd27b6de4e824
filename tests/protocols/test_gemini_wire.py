"""The Gemini adapter's wire: routes, keys, checks, usage, the meter, errors, models."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from corral.errors import (
    AuthenticationFailed,
    CorralError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamTimeout,
)
from corral.protocols import GEMINI, route
from corral.protocols.base import ModelInfo, Route, Usage
from corral.quota._model import BudgetExceeded

GENERATE = Route(GEMINI, "generate", model="gemini-x", stream=False)


def sdk(handler: Any) -> genai.Client:
    """A google-genai client whose HTTP calls go to ``handler``."""
    http = httpx.Client(transport=httpx.MockTransport(handler))
    options = types.HttpOptions(base_url="http://test", httpx_client=http)
    return genai.Client(api_key="k", http_options=options)


# -- routes and keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "action", "model", "stream"),
    [
        ("POST", "/v1beta/models/gemini-x:generateContent", "generate", "gemini-x", False),
        ("POST", "/v1beta/models/gemini-x:streamGenerateContent", "generate", "gemini-x", True),
        ("POST", "/v1beta/models/gemini-x:countTokens", "count_tokens", "gemini-x", None),
        ("POST", "/v1/models/gemini-x:generateContent", "generate", "gemini-x", False),
        ("POST", "/v1/models/models/gemini-x:generateContent", "generate", "gemini-x", False),
        ("POST", "/v1beta/models/ns:model:v2:generateContent", "generate", "ns:model:v2", False),
        ("GET", "/v1beta/models", "models", None, None),
        ("GET", "/v1beta/models/gemini-x", "models", "gemini-x", None),
    ],
)
def test_routes(
    method: str, path: str, action: str, model: str | None, stream: bool | None
) -> None:
    """Model and stream come from the path; ``models/`` is stripped; the last colon splits."""
    found = route(method, path)
    assert found is not None
    assert found.adapter is GEMINI
    assert (found.action, found.model, found.stream) == (action, model, stream)


@pytest.mark.parametrize(
    "path",
    ["/v1/models/gemini-x:embedContent", "/v1beta/models/x:predict", "/v1beta/tunedModels/x"],
)
def test_unknown_actions_are_not_routes(path: str) -> None:
    assert GEMINI.route("POST", path) is None


def test_openai_model_paths_stay_openai() -> None:
    """``GET /v1/models`` (and one model under it) is OpenAI's list, not Google's."""
    assert GEMINI.route("GET", "/v1/models") is None
    assert GEMINI.route("GET", "/v1/models/gpt-x") is None
    found = route("GET", "/v1/models")
    assert found is None or found.adapter is not GEMINI


def test_key_from_header_query_or_bearer() -> None:
    assert GEMINI.api_key([(b"x-goog-api-key", b" g1 ")], b"key=q1") == "g1"
    assert GEMINI.api_key([(b"authorization", b"Bearer b1")], b"alt=sse&key=q1") == "q1"
    assert GEMINI.api_key([(b"authorization", b"Bearer b1")], b"alt=sse") == "b1"
    assert GEMINI.api_key([(b"x-api-key", b"a1")], b"") == "a1"
    assert GEMINI.api_key([], b"key=") is None


# -- checks and rewrites ----------------------------------------------------------


def test_check_reads_model_and_stream_from_the_route() -> None:
    body = {"contents": [], "generationConfig": {"maxOutputTokens": 5}}
    streamed = Route(GEMINI, "generate", "m", True, query=b"alt=sse&key=k")
    assert GEMINI.check(body, streamed) == ("m", True)
    assert GEMINI.check(body, GENERATE) == ("gemini-x", False)
    with pytest.raises(InvalidRequest, match=r"alt=sse"):
        GEMINI.check(body, Route(GEMINI, "generate", "m", True, query=b"key=k"))


@pytest.mark.parametrize(
    ("body", "route_model", "says"),
    [
        ({"contents": []}, None, "model is missing"),
        ({}, "m", "contents"),
        ({"contents": "hi"}, "m", "contents"),
        ({"contents": [], "generationConfig": {"maxOutputTokens": -1}}, "m", "maxOutputTokens"),
        ({"contents": [], "generationConfig": {"maxOutputTokens": "5"}}, "m", "maxOutputTokens"),
        ({"contents": [], "generation_config": {"max_output_tokens": 1.5}}, "m", "maxOutputTokens"),
    ],
)
def test_check_refuses(body: dict[str, Any], route_model: str | None, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        GEMINI.check(body, Route(GEMINI, "generate", route_model, False))


def test_check_count_takes_contents_or_a_whole_request() -> None:
    count = Route(GEMINI, "count_tokens", "m")
    assert GEMINI.check_count({"contents": []}, count) == "m"
    assert GEMINI.check_count({"generateContentRequest": {"contents": []}}, count) == "m"
    with pytest.raises(InvalidRequest, match="contents"):
        GEMINI.check_count({}, count)


def test_max_tokens_read_and_set_in_either_spelling() -> None:
    body: dict[str, Any] = {"contents": []}
    assert GEMINI.max_tokens(body) is None
    GEMINI.set_max_tokens(body, 100, "google")
    assert body["generationConfig"] == {"maxOutputTokens": 100}
    snake: dict[str, Any] = {"generation_config": {"max_output_tokens": 900, "temperature": 1}}
    assert GEMINI.max_tokens(snake) == 900
    GEMINI.set_max_tokens(snake, 50, "google")
    assert snake == {"generation_config": {"max_output_tokens": 50, "temperature": 1}}


def test_model_lives_in_the_path_and_the_query_never_passes_on() -> None:
    body: dict[str, Any] = {"contents": []}
    assert GEMINI.set_model(body, "up") is False
    assert "model" not in body
    counting: dict[str, Any] = {
        "generateContentRequest": {"model": "models/public", "contents": []}
    }
    assert GEMINI.set_model(counting, "up") is True
    assert counting["generateContentRequest"]["model"] == "models/up"
    assert GEMINI.set_model(counting, "up") is False
    assert GEMINI.upstream_path("up", False, b"key=secret") == "/v1beta/models/up:generateContent"
    streamed = GEMINI.upstream_path("up", True, b"alt=sse&key=secret")
    assert streamed == "/v1beta/models/up:streamGenerateContent?alt=sse"


# -- usage and outcome -------------------------------------------------------------

RESPONSE = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}
    ],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "toolUsePromptTokenCount": 30,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 25,
        "totalTokenCount": 1295,
    },
    "modelVersion": "gemini-x-001",
    "responseId": "resp-1",
}


def test_outcome_usage_in_corral_columns() -> None:
    """input = prompt + tool use - cached; output excludes thoughts (already separate)."""
    outcome = GEMINI.outcome(RESPONSE)
    assert outcome.usage == Usage(input=230, cached_input=1000, output=40, reasoning=25)
    assert (outcome.response_id, outcome.model, outcome.finish_reason) == (
        "resp-1",
        "gemini-x-001",
        "STOP",
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


def _text_event(text: str, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    candidate.update(extra.pop("candidate", {}))
    return {"candidates": [candidate], "modelVersion": "gemini-x-001", "responseId": "r1", **extra}


STREAM = b"".join(
    [
        _event(_text_event("Hel", usageMetadata={"promptTokenCount": 10})),
        _event(_text_event("lo")),
        _event(
            _text_event(
                "!",
                candidate={"finishReason": "STOP"},
                usageMetadata={
                    "promptTokenCount": 10,
                    "cachedContentTokenCount": 4,
                    "candidatesTokenCount": 3,
                    "thoughtsTokenCount": 2,
                },
            )
        ),
    ]
)


def test_meter_reads_usage_and_is_done_at_the_finish_reason() -> None:
    meter = GEMINI.meter(strip_usage=True)
    out, done = meter.feed(STREAM)
    assert out == STREAM
    assert done
    assert meter.outcome.usage == Usage(input=6, cached_input=4, output=3, reasoning=2)
    assert (meter.outcome.response_id, meter.outcome.model) == ("r1", "gemini-x-001")
    assert meter.outcome.finish_reason == "STOP"


def test_meter_cut_at_every_byte_passes_everything_once() -> None:
    for cut in range(1, len(STREAM)):
        meter = GEMINI.meter(strip_usage=False)
        first, _ = meter.feed(STREAM[:cut])
        second, _ = meter.feed(STREAM[cut:])
        assert first + second + meter.tail() == STREAM
        assert meter.done
        assert meter.outcome.usage is not None
        assert meter.outcome.usage.output == 3


def test_meter_sees_an_error_at_the_end_of_the_stream() -> None:
    """The error Corral ends a stream with is a bare JSON object (Google's own way); the
    meter reads it when the stream ends, and a ``data:`` error event at once."""
    meter = GEMINI.meter(strip_usage=False)
    error = GEMINI.sse_error(ServiceUnavailable("boom"), 1)
    out, _ = meter.feed(_event(_text_event("a")) + error)
    assert out + meter.tail() == _event(_text_event("a")) + error
    assert meter.outcome.error == "boom"
    assert not meter.done
    other = GEMINI.meter(strip_usage=False)
    other.feed(b'data: {"error":{"code":500,"message":"late","status":"INTERNAL"}}\r\n\r\n')
    assert other.outcome.error == "late"


def test_the_stream_error_is_one_bare_json_object() -> None:
    """The JavaScript SDK (Gemini CLI) raises with the status only when a read parses
    whole as JSON with an ``error``: no ``data:`` prefix."""
    error = orjson.loads(GEMINI.sse_error(RateLimited("slow"), 3))
    assert error == {"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}}


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidRequest("bad"), "INVALID_ARGUMENT"),
        (AuthenticationFailed("who"), "UNAUTHENTICATED"),
        (
            BudgetExceeded("pay", scope="team", limit_kind="budget", retry_after=None),
            "RESOURCE_EXHAUSTED",
        ),
        (PermissionDenied("no"), "PERMISSION_DENIED"),
        (NotFound("gone"), "NOT_FOUND"),
        (RateLimited("slow"), "RESOURCE_EXHAUSTED"),
        (CorralError("oops"), "INTERNAL"),
        (ServiceUnavailable("down"), "UNAVAILABLE"),
        (UpstreamTimeout("late"), "DEADLINE_EXCEEDED"),
    ],
)
def test_error_body_is_googles_shape(exc: CorralError, status: str) -> None:
    body = orjson.loads(GEMINI.error_body(exc))
    assert body == {"error": {"code": exc.status, "message": exc.message, "status": status}}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InvalidRequest("bad field"), genai_errors.ClientError),
        (ServiceUnavailable("x"), genai_errors.ServerError),
    ],
)
def test_the_sdk_raises_our_error_bodies(exc: CorralError, kind: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(exc.status, content=GEMINI.error_body(exc))

    with pytest.raises(kind) as raised:
        sdk(handler).models.generate_content(model="m", contents="hi")
    assert isinstance(raised.value, genai_errors.APIError)
    assert raised.value.code == exc.status
    assert raised.value.message == exc.message


def test_the_sdk_raises_on_our_stream_error_event() -> None:
    """A 200 stream ending with ``sse_error`` raises in the SDK with the status code."""
    body = _event(_text_event("Hel")) + GEMINI.sse_error(RateLimited("over quota"), 1)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params.get("alt") == "sse"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    chunks = sdk(handler).models.generate_content_stream(model="m", contents="hi")
    assert next(chunks).text == "Hel"
    with pytest.raises(genai_errors.ClientError) as raised:
        next(chunks)
    assert raised.value.code == 429
    assert raised.value.status == "RESOURCE_EXHAUSTED"


# -- counting and models -----------------------------------------------------------


def test_count_text_and_body() -> None:
    body = {
        "contents": [{"parts": [{"text": "hello"}]}],
        "systemInstruction": {"parts": [{"text": "sys"}]},
    }
    text = GEMINI.count_text(body)
    assert "hello" in text
    assert "sys" in text
    assert "hello" in GEMINI.count_text({"generateContentRequest": body})
    assert GEMINI.count_body(7) == {"totalTokens": 7}


def test_the_sdk_reads_our_model_list_and_count() -> None:
    info = lambda name: ModelInfo(owner="google", context_window=1_000_000, max_output=65536)  # noqa: E731

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(":countTokens"):
            return httpx.Response(200, content=orjson.dumps(GEMINI.count_body(12)))
        if request.url.path.endswith("/models"):
            return httpx.Response(200, content=orjson.dumps(GEMINI.models_body(["a", "b"], info)))
        return httpx.Response(200, content=orjson.dumps(GEMINI.model_body("a", info)))

    client = sdk(handler)
    names = [m.name for m in client.models.list()]
    assert names == ["models/a", "models/b"]
    one = client.models.get(model="a")
    assert one.input_token_limit == 1_000_000
    assert one.output_token_limit == 65536
    assert one.supported_actions == ["generateContent", "streamGenerateContent", "countTokens"]
    assert client.models.count_tokens(model="a", contents="hi").total_tokens == 12


def test_meter_reads_running_usage_only_when_asked() -> None:
    """Google puts running totals on every event: an abandoned stream is metered from the
    latest one, read when the outcome is asked for."""
    meter = GEMINI.meter(strip_usage=False)
    running = {"promptTokenCount": 10, "candidatesTokenCount": 2}
    meter.feed(_event(_text_event("Hel", usageMetadata={"promptTokenCount": 10})))
    meter.feed(_event(_text_event("lo", usageMetadata=running)))
    assert not meter.done
    assert meter.outcome.usage == Usage(input=10, output=2)
    meter.feed(STREAM.split(b"\r\n\r\n")[-2] + b"\r\n\r\n")
    assert meter.done
    assert meter.outcome.usage == Usage(input=6, cached_input=4, output=3, reasoning=2)
