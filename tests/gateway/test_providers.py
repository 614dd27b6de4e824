"""Provider kinds: the provider's secret goes upstream, the caller's key never does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from corral.settings import ModelConfig, ProviderConfig
from corral.testing import ServerThread
from tests.gateway.conftest import Running, gateway_corral


class CaptureUpstream:
    """A minimal provider that records what it was sent and answers in the right shape."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.queries: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        data = orjson.loads(body)
        self.seen.append((scope["path"], headers, data))
        self.queries.append(scope["query_string"])
        if scope["path"].endswith(":generateContent"):
            reply = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "captured"}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 4},
                "responseId": "gem_cap",
            }
        elif scope["path"] == "/v1/messages":
            reply = {
                "id": "msg_cap",
                "type": "message",
                "role": "assistant",
                "model": data["model"],
                "content": [{"type": "text", "text": "captured"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 11, "output_tokens": 7},
            }
        else:
            reply = {
                "id": "chatcmpl-cap",
                "object": "chat.completion",
                "created": 0,
                "model": data["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "captured"},
                    }
                ],
                "usage": {
                    "prompt_tokens": 13,
                    "completion_tokens": 5,
                    "total_tokens": 18,
                    "prompt_tokens_details": {"cached_tokens": 3},
                },
            }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(reply)})


@pytest.fixture
def upstream() -> Iterator[tuple[CaptureUpstream, str]]:
    capture = CaptureUpstream()
    with ServerThread(capture, lifespan="off") as server:
        yield capture, server.url


@pytest.fixture
def corral_with_providers(
    tmp_path: Path, upstream: tuple[CaptureUpstream, str]
) -> Iterator[Running]:
    _, url = upstream
    providers = [
        ProviderConfig(name="oai", kind="openai", base_url=url, api_key_env="TEST_OAI_SECRET"),
        ProviderConfig(name="ant", kind="anthropic", base_url=url, api_key_env="TEST_ANT_SECRET"),
        ProviderConfig(name="local", kind="openai-compatible", base_url=url),
        ProviderConfig(name="goog", kind="google", base_url=url, api_key_env="TEST_GOOG_SECRET"),
    ]
    models = [
        ModelConfig(
            name="gpt-x", provider="oai", upstream_model="gpt-x-2026", input_price=2, output_price=8
        ),
        ModelConfig(name="claude-x", provider="ant", input_price=3, output_price=15),
        ModelConfig(name="qwen-local", provider="local", input_price=0, output_price=0),
        ModelConfig(
            name="gem-x", provider="goog", upstream_model="gemini-9", input_price=1, output_price=2
        ),
    ]
    secrets = {
        "TEST_OAI_SECRET": "sk-provider-openai",
        "TEST_ANT_SECRET": "sk-provider-anthropic",
        "TEST_GOOG_SECRET": "goog-provider-secret",
    }
    with gateway_corral(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'c.db'}",
        providers=providers,
        models=models,
        environ=secrets,
    ) as running:
        yield running


def test_openai_provider_gets_its_secret_and_upstream_model(
    corral_with_providers: Running, upstream: tuple[CaptureUpstream, str]
) -> None:
    corral = corral_with_providers
    capture, _ = upstream
    client = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key))
    reply = client.chat.completions.create(
        model="gpt-x", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "captured"
    path, headers, body = capture.seen[-1]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-provider-openai"
    assert corral.key not in str(headers)
    assert body["model"] == "gpt-x-2026"
    (row,) = corral.records()
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (10, 3, 5)
    assert row.model_requested == "gpt-x"
    assert row.deployment == "oai/gpt-x-2026"


def test_anthropic_provider_gets_x_api_key(
    corral_with_providers: Running, upstream: tuple[CaptureUpstream, str]
) -> None:
    corral = corral_with_providers
    capture, _ = upstream
    client = corral.track(anthropic.Anthropic(base_url=corral.url, api_key=corral.key))
    msg = client.messages.create(
        model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].text == "captured"  # type: ignore[union-attr]
    _, headers, _ = capture.seen[-1]
    assert headers["x-api-key"] == "sk-provider-anthropic"
    assert headers["anthropic-version"]
    assert "authorization" not in headers


def test_openai_compatible_without_secret_translation_and_protocol_mismatch(
    corral_with_providers: Running, upstream: tuple[CaptureUpstream, str]
) -> None:
    corral = corral_with_providers
    capture, _ = upstream
    client = corral.track(openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key))
    client.chat.completions.create(model="qwen-local", messages=[{"role": "user", "content": "hi"}])
    _, headers, _ = capture.seen[-1]
    assert "authorization" not in headers
    assert "x-api-key" not in headers
    claude = corral.track(
        anthropic.Anthropic(base_url=corral.url, api_key=corral.key, max_retries=0)
    )
    # An Anthropic client is served by the chat-only server through translation.
    reply = claude.messages.create(
        model="qwen-local", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.type == "message"
    assert reply.content[0].type == "text"
    path, _, sent = capture.seen[-1]
    assert path == "/v1/chat/completions"
    assert sent["max_tokens"] == 5  # the field an openai-compatible server reads
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    # A Responses client reaches an Anthropic-only deployment through the internal form.
    answer = client.responses.create(model="claude-x", input="hi", max_output_tokens=9)
    assert answer.output_text == "captured"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (11, 7)
    path, _, sent = capture.seen[-1]
    assert path == "/v1/messages"
    assert sent["max_tokens"] == 9
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


def test_missing_provider_secret_is_a_clear_502(
    tmp_path: Path, upstream: tuple[CaptureUpstream, str]
) -> None:
    _, url = upstream
    providers = [
        ProviderConfig(name="oai", kind="openai", base_url=url, api_key_env="UNSET_SECRET")
    ]
    models = [ModelConfig(name="gpt-x", provider="oai", input_price=1, output_price=1)]
    with gateway_corral(
        tmp_path / "home",
        f"sqlite:///{tmp_path / 'c.db'}",
        providers=providers,
        models=models,
        environ={},
    ) as corral:
        client = corral.track(
            openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key, max_retries=0)
        )
        with pytest.raises(openai.InternalServerError, match="UNSET_SECRET is not set") as caught:
            client.chat.completions.create(
                model="gpt-x", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 502


def test_google_provider_gets_its_key_and_never_the_callers(
    corral_with_providers: Running, upstream: tuple[CaptureUpstream, str]
) -> None:
    """The caller's Corral key in ``?key=`` must not reach Google: the upstream path and
    query are the adapter's own, the upstream model in the path, the secret in a header."""
    corral = corral_with_providers
    capture, _ = upstream
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    answer = httpx.post(
        corral.url + "/v1beta/models/gem-x:generateContent",
        params={"key": corral.key},
        json=body,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"] == [{"text": "captured"}]
    path, headers, sent = capture.seen[-1]
    assert path == "/v1beta/models/gemini-9:generateContent"
    assert capture.queries[-1] == b""
    assert headers["x-goog-api-key"] == "goog-provider-secret"
    assert corral.key not in str(headers)
    assert "model" not in sent
    (row,) = corral.records()
    assert (row.protocol, row.input_tokens, row.output_tokens) == ("gemini", 12, 4)
