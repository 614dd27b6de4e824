"""Google's Gemini API through Corral, with the official google-genai SDK, unmodified.

Natively (the simulator speaks Gemini), and crossing: a Gemini client served by a
Chat-only deployment (``openai-compatible``) and by an Anthropic deployment, and the other
protocols' clients served by a ``google`` deployment; an Anthropic SDK client served by a
Responses-only deployment. Usage as the SDK reads it must equal what Corral records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from corral.settings import ModelConfig, ProviderConfig
from corral.sim import SimConfig
from corral.sim.testing import running_sim
from tests.gateway.conftest import Running, gateway_corral

READ_FILE = types.FunctionDeclaration(
    name="read_file",
    description="Read a file of the workspace.",
    parameters_json_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
)
FORCE_CALL = types.ToolConfig(
    function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
)
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


def client(corral: Running, *, api_version: str | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=corral.url, api_version=api_version, timeout=30_000)
    return corral.track(genai.Client(api_key=corral.key, http_options=options))


def assert_usage_recorded(
    usage: types.GenerateContentResponseUsageMetadata | None, row: Any
) -> None:
    """Google's columns overlap (the prompt includes cached tokens); Corral's do not."""
    assert usage is not None
    prompt = usage.prompt_token_count or 0
    assert prompt > 0
    assert row.input_tokens + row.cached_input_tokens == prompt
    assert row.cached_input_tokens == (usage.cached_content_token_count or 0)
    assert row.output_tokens == (usage.candidates_token_count or 0)
    assert row.reasoning_tokens == (usage.thoughts_token_count or 0)


# -- natively -------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", [None, "v1beta"])
def test_generate_and_stream_with_usage_as_recorded(
    corral: Running, api_version: str | None
) -> None:
    """The SDK's default paths (``/v1/models/...``) and ``/v1beta``; thinking counted."""
    gemini = client(corral, api_version=api_version)
    thinking = types.ThinkingConfig(include_thoughts=True, thinking_budget=64)
    answer = gemini.models.generate_content(
        model="sim-standard",
        contents="Say hello.",
        config=types.GenerateContentConfig(thinking_config=thinking, max_output_tokens=200),
    )
    assert answer.text
    [row] = corral.records(wait_for=1)
    assert row.protocol == "gemini"
    assert (row.status, row.http_status, row.stream) == ("ok", 200, False)
    assert row.model_requested == "sim-standard"
    assert row.key_id == corral.key_id
    assert row.user_id == corral.user_id
    assert row.response_id == answer.response_id
    assert_usage_recorded(answer.usage_metadata, row)
    assert row.reasoning_tokens > 0
    assert row.cost_nusd > 0

    chunks = list(
        gemini.models.generate_content_stream(model="sim-standard", contents="Count to five.")
    )
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks)
    rows = corral.records(wait_for=2)
    assert rows[-1].stream is True
    assert rows[-1].status == "ok"
    assert_usage_recorded(chunks[-1].usage_metadata, rows[-1])


def test_function_calling_round_trip(corral: Running) -> None:
    gemini = client(corral)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[READ_FILE])],
        tool_config=FORCE_CALL,
        automatic_function_calling=NO_AFC,
    )
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text="Read README.md")])]
    first = gemini.models.generate_content(model="sim-standard", contents=contents, config=config)
    [call] = first.function_calls or []
    assert call.name == "read_file"
    assert isinstance(call.args, dict)
    contents.append((first.candidates or [])[0].content)
    result = types.Part.from_function_response(name="read_file", response={"output": "# Hi"})
    contents.append(types.Content(role="user", parts=[result]))
    plain = types.GenerateContentConfig(tools=config.tools, automatic_function_calling=NO_AFC)
    second = gemini.models.generate_content(model="sim-standard", contents=contents, config=plain)
    assert second.function_calls is None
    assert second.text
    rows = corral.records(wait_for=2)
    assert [r.finish_reason for r in rows] == ["STOP", "STOP"]
    assert_usage_recorded(second.usage_metadata, rows[-1])


def test_count_tokens_and_model_list(corral: Running) -> None:
    gemini = client(corral)
    counted = gemini.models.count_tokens(model="sim-standard", contents="How many tokens?")
    assert counted.total_tokens is not None
    assert counted.total_tokens > 0
    answer = gemini.models.generate_content(model="sim-standard", contents="How many tokens?")
    assert answer.usage_metadata is not None
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count
    names = [m.name for m in client(corral, api_version="v1beta").models.list()]
    assert "models/sim-standard" in names
    model = client(corral, api_version="v1beta").models.get(model="sim-standard")
    assert model.input_token_limit
    # GET /v1/models stays OpenAI's list.
    listed = httpx.get(
        corral.url + "/v1/models", headers={"authorization": f"Bearer {corral.key}"}
    ).json()
    assert listed["object"] == "list"


@pytest.mark.parametrize("where", ["x-goog-api-key", "query", "bearer"])
def test_the_key_from_each_place_google_clients_put_it(corral: Running, where: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = corral.url + "/v1beta/models/sim-standard:generateContent"
    headers = {"x-goog-api-key": corral.key} if where == "x-goog-api-key" else {}
    if where == "bearer":
        headers = {"authorization": f"Bearer {corral.key}"}
    params = {"key": corral.key} if where == "query" else {}
    answer = httpx.post(path, json=body, headers=headers, params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"]


def test_errors_in_googles_shape(corral: Running) -> None:
    bad = genai.Client(
        api_key="sk-corral-not-a-key", http_options=types.HttpOptions(base_url=corral.url)
    )
    with pytest.raises(genai_errors.ClientError) as refused:
        bad.models.generate_content(model="sim-standard", contents="hi")
    assert refused.value.code == 401
    assert refused.value.status == "UNAUTHENTICATED"
    with pytest.raises(genai_errors.ClientError) as unknown:
        client(corral).models.generate_content(model="no-such-model", contents="hi")
    assert unknown.value.code == 404
    body = {"contents": "not a list"}
    answer = httpx.post(
        corral.url + "/v1beta/models/sim-standard:generateContent",
        json=body,
        headers={"x-goog-api-key": corral.key},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "contents" in answer.json()["error"]["message"]


def test_a_stream_asked_without_alt_sse_is_refused_saying_so(corral: Running) -> None:
    """Without ``?alt=sse`` Google answers one JSON array; Corral streams SSE only, and says
    so rather than sending a stream the client would not parse."""
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    url = corral.url + "/v1beta/models/sim-standard:streamGenerateContent"
    headers = {"x-goog-api-key": corral.key}
    refused = httpx.post(url, json=body, headers=headers)
    assert refused.status_code == 400
    assert "alt=sse" in refused.json()["error"]["message"]
    streamed = httpx.post(url, params={"alt": "sse"}, json=body, headers=headers, timeout=30)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.startswith("data: ")


# -- crossing protocols --------------------------------------------------------------


@pytest.fixture
def crossing(tmp_path: Path) -> Iterator[Running]:
    """One simulator behind four providers, each speaking one protocol."""
    with running_sim(SimConfig(seed=5)) as sim:
        providers = [
            ProviderConfig(name="vllm", kind="openai-compatible", base_url=sim.url),
            ProviderConfig(name="ant", kind="anthropic", base_url=sim.url),
            ProviderConfig(name="oai", kind="openai", base_url=sim.url, protocols=["responses"]),
            ProviderConfig(
                name="goog", kind="google", base_url=sim.url, api_key_env="TEST_GOOGLE_KEY"
            ),
        ]
        models = [
            ModelConfig(name="chat-only", provider="vllm", upstream_model="sim-standard",
                        input_price=1, output_price=2),
            ModelConfig(name="claude-x", provider="ant", upstream_model="sim-standard",
                        input_price=3, output_price=15),
            ModelConfig(name="responses-only", provider="oai", upstream_model="sim-standard",
                        input_price=2, output_price=8),
            ModelConfig(name="gemini-x", provider="goog", upstream_model="sim-standard",
                        input_price=1, output_price=4),
        ]  # fmt: skip
        with gateway_corral(
            tmp_path / "home",
            f"sqlite:///{tmp_path / 'c.db'}",
            providers=providers,
            models=models,
            environ={"TEST_GOOGLE_KEY": "goog-secret"},
        ) as running:
            yield running


@pytest.mark.parametrize("model", ["chat-only", "claude-x", "responses-only"])
def test_a_gemini_client_served_by_another_protocol(crossing: Running, model: str) -> None:
    """Whole and streamed, with a forced function call, then text; usage from the upstream."""
    gemini = client(crossing)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[READ_FILE])],
        tool_config=FORCE_CALL,
        automatic_function_calling=NO_AFC,
        max_output_tokens=300,
    )
    first = gemini.models.generate_content(model=model, contents="Read README.md", config=config)
    [call] = first.function_calls or []
    assert call.name == "read_file"
    [row] = crossing.records(wait_for=1)
    assert row.protocol == "gemini"
    assert row.provider == {"chat-only": "vllm", "claude-x": "ant", "responses-only": "oai"}[model]
    assert_usage_recorded(first.usage_metadata, row)

    contents: list[Any] = [
        types.Content(role="user", parts=[types.Part(text="Read README.md")]),
        (first.candidates or [])[0].content,
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="read_file", response={"out": "# Hi"})],
        ),
    ]
    plain = types.GenerateContentConfig(tools=config.tools, automatic_function_calling=NO_AFC)
    chunks = list(
        gemini.models.generate_content_stream(model=model, contents=contents, config=plain)
    )
    assert "".join(c.text or "" for c in chunks)
    assert (chunks[-1].candidates or [])[0].finish_reason == types.FinishReason.STOP
    rows = crossing.records(wait_for=2)
    assert rows[-1].stream is True
    assert rows[-1].status == "ok"
    assert_usage_recorded(chunks[-1].usage_metadata, rows[-1])


def test_openai_and_anthropic_clients_served_by_a_google_deployment(crossing: Running) -> None:
    chat = crossing.track(openai.OpenAI(base_url=crossing.url + "/v1", api_key=crossing.key))
    answer = chat.chat.completions.create(
        model="gemini-x", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    assert answer.choices[0].message.content
    assert answer.usage is not None
    claude = crossing.track(
        anthropic.Anthropic(base_url=crossing.url, api_key=crossing.key, max_retries=0)
    )
    with claude.messages.stream(
        model="gemini-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    rows = crossing.records(wait_for=2)
    assert [(r.protocol, r.provider) for r in rows] == [("chat", "goog"), ("messages", "goog")]
    assert rows[0].input_tokens == answer.usage.prompt_tokens
    assert rows[1].output_tokens == final.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_client_served_by_a_responses_only_deployment(
    crossing: Running, stream: bool
) -> None:
    claude = crossing.track(
        anthropic.Anthropic(base_url=crossing.url, api_key=crossing.key, max_retries=0)
    )
    tools: list[Any] = [
        {
            "name": "read_file",
            "description": "Read a file.",
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        }
    ]
    request: dict[str, Any] = {
        "model": "responses-only",
        "max_tokens": 300,
        "tools": tools,
        "tool_choice": {"type": "tool", "name": "read_file"},
        "messages": [{"role": "user", "content": "Read README.md"}],
    }
    if stream:
        with claude.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**request)
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "read_file"
    [row] = crossing.records(wait_for=1)
    assert (row.protocol, row.provider, row.stream) == ("messages", "oai", stream)
    assert row.input_tokens + row.cached_input_tokens == (
        message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    )
    assert row.output_tokens + row.reasoning_tokens == message.usage.output_tokens
