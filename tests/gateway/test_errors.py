"""Errors a client can cause get the right 4xx, in the caller's protocol's error shape."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ADMIN_KEY, Running, gateway_corral

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"


def post(
    corral: Running, path: str, body: bytes | dict[str, object], key: str | None = ""
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is None:
        pass
    else:
        headers["authorization"] = f"Bearer {key or corral.key}"
    content = body if isinstance(body, bytes) else None
    return httpx.post(
        corral.url + path,
        content=content,
        json=None if content is not None else body,
        headers=headers,
    )


def assert_openai_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert {"message", "type", "code"} <= error.keys()
    assert words in error["message"]
    assert r.headers["x-corral-request-id"].startswith("req_")


def assert_anthropic_error(r: httpx.Response, status: int, kind: str, words: str) -> None:
    assert r.status_code == status, r.text
    data = r.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == kind
    assert words in data["error"]["message"]


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
def test_openai_shape_errors(corral: Running, path: str) -> None:
    assert_openai_error(post(corral, path, b"{not json"), 400, "not valid JSON")
    assert_openai_error(post(corral, path, b"[1, 2]"), 400, "JSON object")
    assert_openai_error(
        post(corral, path, {"messages": [], "input": "x"}), 400, "'model' is required"
    )
    assert_openai_error(
        post(corral, path, {"model": "gpt-nope", "messages": [], "input": "x"}), 404, "not in this"
    )
    assert_openai_error(
        post(corral, path, {"model": "sim-economy", "messages": [], "input": "x"}, key=None),
        401,
        "no API key",
    )
    assert_openai_error(
        post(
            corral,
            path,
            {"model": "sim-economy", "messages": [], "input": "x"},
            key="sk-corral-bogus",
        ),
        401,
        "invalid API key",
    )
    assert_openai_error(
        post(corral, path, {"model": "sim-economy", "messages": [], "stream": "yes"}),
        400,
        "'stream'",
    )


def test_anthropic_shape_errors(corral: Running) -> None:
    ok = {"model": "sim-economy", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    assert_anthropic_error(
        post(corral, MESSAGES, b"{oops"), 400, "invalid_request_error", "not valid JSON"
    )
    assert_anthropic_error(
        post(corral, MESSAGES, {**ok, "model": "claude-nope"}),
        404,
        "not_found_error",
        "not in this",
    )
    assert_anthropic_error(
        post(corral, MESSAGES, ok, key=None), 401, "authentication_error", "no API key"
    )
    assert_anthropic_error(
        post(corral, MESSAGES, {"model": "sim-economy", "messages": []}),
        400,
        "invalid_request_error",
        "max_tokens",
    )
    r = httpx.post(
        corral.url + MESSAGES,
        json=ok,
        headers={"x-api-key": "sk-corral-wrong", "anthropic-version": "2023-06-01"},
    )
    assert_anthropic_error(r, 401, "authentication_error", "invalid API key")


def test_oversized_body_is_413(tmp_path: Path, store_url: str) -> None:
    with gateway_corral(tmp_path / "home", store_url, max_body_bytes=10_000) as running:
        big = {"model": "sim-economy", "messages": [{"role": "user", "content": "x" * 20_000}]}
        assert_openai_error(post(running, CHAT, big), 413, "max_body_bytes")
        r = post(running, MESSAGES, {**big, "max_tokens": 5})
        assert_anthropic_error(r, 413, "request_too_large", "larger than")


def test_upstream_errors_keep_status_and_shape(corral: Running) -> None:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(
        corral.url + CHAT,
        json=body,
        headers={"authorization": f"Bearer {corral.key}", "x-sim-fault": "429"},
    )
    assert r.status_code == 429
    assert "retry-after" in r.headers
    assert "error" in r.json()
    r = httpx.post(
        corral.url + MESSAGES,
        json={**body, "max_tokens": 5},
        headers={"x-api-key": corral.key, "x-sim-fault": "529"},
    )
    assert r.status_code == 529
    assert r.json()["error"]["type"] == "overloaded_error"
    rows = corral.records(wait_for=2)
    assert [r.error_class for r in rows] == ["rate_limited", "overloaded"]
    assert all(r.status == "error" for r in rows)


def test_revoked_key_is_refused_within_one_second(corral: Running) -> None:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "x"}]}
    assert post(corral, CHAT, body).status_code == 200
    # Revoke through the store directly, as another process would: no local cache eviction.
    corral.identity.revoke_key(corral.key_id)
    revoked_at = time.monotonic()
    while post(corral, CHAT, body).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
        time.sleep(0.02)
    assert_openai_error(post(corral, CHAT, body), 401, "revoked")


def test_unknown_endpoint_and_wrong_method(corral: Running) -> None:
    r = httpx.get(
        corral.url + "/v1/nothing-here", headers={"authorization": f"Bearer {corral.key}"}
    )
    assert_openai_error(r, 404, "no such endpoint")
    r = httpx.get(corral.url + CHAT, headers={"authorization": f"Bearer {corral.key}"})
    assert_openai_error(r, 405, "use POST")


def test_admin_key_cannot_call_models(corral: Running) -> None:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "x"}]}
    assert_openai_error(post(corral, CHAT, body, key=ADMIN_KEY), 403, "admin key")
