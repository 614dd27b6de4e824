"""Injected faults, context windows and rate limits, as clients observe them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from simhelp import post, words

from corral.sim import FaultSpec, SimConfig
from corral.sim.testing import RunningSim, running_sim

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HI, **extra}


def message(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": HI, **extra}


def test_429_in_both_shapes_with_retry_after(
    openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    """429 carries Retry-After; OpenAI code rate_limit_exceeded, Anthropic rate_limit_error."""
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(model="sim-standard+fault=429", messages=HI)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as anthropic_caught:
        anthropic_client.messages.create(
            model="sim-standard+fault=429+retry_after=3", max_tokens=10, messages=HI
        )
    assert anthropic_caught.value.response.headers["retry-after"] == "3"
    body = anthropic_caught.value.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("fault", "path", "status", "kind"),
    [
        ("500", CHAT, 500, "server_error"),
        ("503", CHAT, 503, "server_error"),
        ("529", CHAT, 503, "server_error"),
        ("500", "/v1/messages", 500, "api_error"),
        ("529", "/v1/messages", 529, "overloaded_error"),
        ("context", CHAT, 400, "invalid_request_error"),
        ("content_policy", "/v1/messages", 400, "invalid_request_error"),
    ],
)
def test_error_faults_by_header(
    sim: RunningSim, fault: str, path: str, status: int, kind: str
) -> None:
    """``x-sim-fault`` injects the error in the shape of the path's protocol."""
    body = message("sim-standard") if path.startswith("/v1/messages") else chat("sim-standard")
    raw = post(sim.url, path, body, {"x-sim-fault": fault})
    assert raw.status == status
    error = raw.json()["error"]
    assert error["type"] == kind
    assert "simulator" in error["message"]


def test_context_and_policy_codes(
    openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    """OpenAI codes context_length_exceeded / content_policy_violation; Anthropic's wording."""
    with pytest.raises(openai.BadRequestError) as context:
        openai_client.chat.completions.create(model="sim-standard+fault=context", messages=HI)
    assert context.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as policy:
        openai_client.responses.create(model="sim-standard+fault=content_policy", input="x")
    assert policy.value.code == "content_policy_violation"
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        anthropic_client.messages.create(
            model="sim-standard+fault=context", max_tokens=10, messages=HI
        )
    with pytest.raises(anthropic.BadRequestError, match="policy"):
        anthropic_client.messages.create(
            model="sim-standard+fault=content_policy", max_tokens=10, messages=HI
        )


def test_ctx_option_is_a_real_context_window(openai_client: openai.OpenAI) -> None:
    """``ctx=N`` refuses prompts above N tokens and serves those below."""
    openai_client.chat.completions.create(model="sim-local+ctx=100", messages=HI)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 100 tokens"):
        openai_client.chat.completions.create(
            model="sim-local+ctx=100", messages=[{"role": "user", "content": words(200)}]
        )


def test_timeout_hangs_before_headers(sim: RunningSim, openai_client: openai.OpenAI) -> None:
    """A client with a shorter timeout times out; a patient one gets 504 after the hang."""
    with pytest.raises(openai.APITimeoutError):
        openai_client.chat.completions.create(
            model="sim-standard+fault=timeout+timeout=0.4", messages=HI, timeout=0.1
        )
    started = time.perf_counter()
    raw = post(sim.url, CHAT, chat("sim-standard+fault=timeout+timeout=0.3"))
    assert time.perf_counter() - started >= 0.3
    assert raw.status == 504
    assert raw.json()["error"]["code"] == "timeout"


def partial(base: str, path: str, body: dict[str, Any]) -> tuple[int, bytes, BaseException]:
    """POST and read until the transport fails: status, bytes received, the failure."""

    async def run() -> tuple[int, bytes, BaseException]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(base + path, json=body) as response,
        ):
            received = b""
            try:
                async for chunk in response.content.iter_any():
                    received += chunk
            except aiohttp.ClientPayloadError as exc:
                return response.status, received, exc
        raise AssertionError("the body completed")

    return asyncio.run(run())


@pytest.mark.parametrize("path", [CHAT, "/v1/responses", "/v1/messages"])
def test_reset_drops_a_stream_midway(sim: RunningSim, path: str) -> None:
    """200 and a few events, then the connection closes without ending the chunked body."""
    if path == CHAT:
        body = chat("sim-standard+fault=reset", stream=True)
    elif path == "/v1/responses":
        body = {"model": "sim-standard+fault=reset", "input": "hi", "stream": True}
    else:
        body = message("sim-standard+fault=reset", stream=True)
    status, received, error = partial(sim.url, path, body)
    assert status == 200
    assert received.count(b"data: ") >= 2
    assert b"[DONE]" not in received
    assert b"message_stop" not in received
    assert b"response.completed" not in received
    assert "not completed" in str(error)


def test_reset_seen_through_the_sdks(
    openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    """Both SDKs report a dropped body as a connection error, streamed or not."""
    with pytest.raises(openai.APIConnectionError):
        openai_client.chat.completions.create(model="sim-standard+fault=reset", messages=HI)
    with pytest.raises(openai.APIConnectionError):
        for _ in openai_client.chat.completions.create(
            model="sim-standard+fault=reset", messages=HI, stream=True
        ):
            pass
    with pytest.raises(anthropic.APIConnectionError):
        anthropic_client.messages.create(
            model="sim-standard+fault=reset", max_tokens=100, messages=HI
        )


def test_stall_goes_quiet_then_drops(sim: RunningSim, openai_client: openai.OpenAI) -> None:
    """A stalled stream sends its first events, then nothing for ``timeout`` seconds."""
    started = time.perf_counter()
    status, received, _ = partial(
        sim.url, CHAT, chat("sim-standard+fault=stall+timeout=0.3", stream=True)
    )
    assert status == 200
    assert received.startswith(b"data: ")
    assert time.perf_counter() - started >= 0.3
    with pytest.raises(openai.APITimeoutError):
        for _ in openai_client.chat.completions.create(
            model="sim-standard+fault=stall+timeout=5", messages=HI, stream=True, timeout=0.2
        ):
            pass


def test_malformed_body_and_event(sim: RunningSim, openai_client: openai.OpenAI) -> None:
    """A 200 whose body is not JSON; in streams one event is not JSON, the rest are."""
    raw = post(sim.url, CHAT, chat("sim-standard+fault=malformed"))
    assert raw.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        raw.json()
    events = post(sim.url, CHAT, chat("sim-standard+fault=malformed", stream=True)).events()
    bad = []
    for _, data in events:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            bad.append(data)
    assert len(bad) == 2
    assert bad[-1] == "[DONE]"
    with pytest.raises(ValueError, match="Expecting"):
        openai_client.chat.completions.create(model="sim-standard+fault=malformed", messages=HI)


def test_probability_and_seed(sim: RunningSim) -> None:
    """``fault=500@0.5`` fails about half the requests."""
    statuses = [post(sim.url, CHAT, chat("sim-economy+fault=500@0.5")).status for _ in range(40)]
    assert 5 < statuses.count(500) < 35
    assert statuses.count(200) + statuses.count(500) == 40


def test_default_faults_are_seeded() -> None:
    """Two simulators with the same seed and default faults fail the same requests."""

    def run() -> list[int]:
        config = SimConfig(seed=3, default_faults=(FaultSpec("503", 0.3),))
        with running_sim(config) as sim:
            return [post(sim.url, CHAT, chat("sim-standard")).status for _ in range(20)]

    first = run()
    assert first == run()
    assert 503 in first
    assert 200 in first


def test_model_name_faults_replace_defaults() -> None:
    """A fault named by the request wins over the configured defaults; headers win over both."""
    config = SimConfig(default_faults=(FaultSpec("500"),))
    with running_sim(config) as sim:
        assert post(sim.url, CHAT, chat("sim-standard")).status == 500
        assert post(sim.url, CHAT, chat("sim-standard+fault=429")).status == 429
        raw = post(sim.url, CHAT, chat("sim-standard+fault=429"), {"x-sim-fault": "503"})
        assert raw.status == 503


def test_rpm_limit_refuses_with_headers(sim: RunningSim) -> None:
    """``rpm=2``: two requests pass with rate-limit headers, the third gets 429."""
    model = "sim-rpm-test+rpm=2"
    first = post(sim.url, CHAT, chat(model))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert post(sim.url, CHAT, chat(model)).status == 200
    third = post(sim.url, CHAT, chat(model))
    assert third.status == 429
    assert int(third.headers["Retry-After"]) >= 1
    anthropic_raw = post(sim.url, "/v1/messages", message("sim-rpm-test2+rpm=1+tpm=100000"))
    assert anthropic_raw.headers["anthropic-ratelimit-requests-remaining"] == "0"


@pytest.mark.parametrize("path", [CHAT, "/v1/responses", "/v1/messages"])
def test_bad_json_and_missing_fields(sim: RunningSim, path: str) -> None:
    """Malformed requests get 400 in the protocol's own error shape."""
    raw = post(sim.url, path, b"{not json")
    assert raw.status == 400
    missing = post(sim.url, path, {"messages": HI})
    assert missing.status == 400
    for answer in (raw, missing):
        payload = answer.json()
        if path == "/v1/messages":
            assert payload["type"] == "error"
            assert payload["error"]["type"] == "invalid_request_error"
        else:
            assert payload["error"]["type"] == "invalid_request_error"
            assert set(payload["error"]) == {"message", "type", "param", "code"}


def test_unknown_option_is_a_400(sim: RunningSim) -> None:
    """A typo in a model option is reported, not ignored."""
    raw = post(sim.url, CHAT, chat("sim-standard+fualt=429"))
    assert raw.status == 400
    assert "unknown simulator option" in raw.json()["error"]["message"]
