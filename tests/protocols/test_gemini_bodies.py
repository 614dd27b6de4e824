"""Whole Gemini responses to and from the internal form; usage and finish reasons."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest
from google import genai
from google.genai import types

from corral.errors import RateLimited, UpstreamError
from corral.protocols import CHAT, GEMINI, Crossing
from corral.protocols.base import Usage
from corral.protocols.common import chat_id, tool_call_id

GEMINI_RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Thinking it over.", "thought": True},
                    {"text": "Here you go."},
                    {
                        "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2ln",
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
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

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Here you go.",
                "reasoning_content": "Thinking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 65,
        "total_tokens": 1265,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 25},
    },
}


def sdk_response(body: dict[str, Any]) -> types.GenerateContentResponse:
    """What the google-genai SDK makes of ``body`` as a generateContent answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps(body))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url="http://test", httpx_client=http)
    )
    return client.models.generate_content(
        model="m",
        contents="hi",
        config=types.GenerateContentConfig(
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True)
        ),
    )


def test_gemini_response_to_internal() -> None:
    internal = GEMINI.response_to_internal(GEMINI_RESPONSE, model="client-model")
    assert internal["id"] == chat_id("resp-1")
    assert internal["model"] == "client-model"
    assert internal["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Here you go.",
                "reasoning_content": "Thinking it over.",
                "tool_calls": [
                    {
                        "id": tool_call_id("resp-1", 0),
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ]
    assert internal["usage"] == {
        "prompt_tokens": 1230,
        "completion_tokens": 65,
        "total_tokens": 1295,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 25},
    }


def test_usage_agrees_with_gemini_outcome_after_the_hub() -> None:
    """Corral's columns read from the hub usage equal those read from Gemini's own."""
    internal = GEMINI.response_to_internal(GEMINI_RESPONSE, model="m")
    assert CHAT.outcome(internal).usage == GEMINI.outcome(GEMINI_RESPONSE).usage
    assert GEMINI.outcome(GEMINI_RESPONSE).usage == Usage(
        input=230, cached_input=1000, output=40, reasoning=25
    )


@pytest.mark.parametrize(
    ("reason", "calls", "finish"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
    ],
)
def test_finish_reasons_to_internal(reason: str, calls: bool, finish: str) -> None:
    parts: list[dict[str, Any]] = [{"text": "x"}]
    if calls:
        parts.append({"functionCall": {"name": "f", "args": {}}})
    body = {"candidates": [{"content": {"parts": parts}, "finishReason": reason}]}
    assert GEMINI.response_to_internal(body, model="m")["choices"][0]["finish_reason"] == finish
    assert GEMINI.outcome(body).finish_reason == reason  # the record keeps Google's own


def test_a_blocked_prompt_reads_as_content_filter() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    internal = GEMINI.response_to_internal(body, model="m")
    assert internal["choices"][0]["finish_reason"] == "content_filter"
    assert internal["choices"][0]["message"]["content"] == ""


def test_parts_the_hub_cannot_carry_are_upstream_errors() -> None:
    body = {"candidates": [{"content": {"parts": [{"executableCode": {"code": "print(1)"}}]}}]}
    with pytest.raises(UpstreamError, match="executableCode"):
        GEMINI.response_to_internal(body, model="m")
    bad = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": [1]}}]}}]}
    with pytest.raises(UpstreamError, match="args"):
        GEMINI.response_to_internal(bad, model="m")


def test_internal_response_to_gemini_and_the_sdk_reads_it() -> None:
    body = GEMINI.response_from_internal(CHAT_RESPONSE, model="client-model")
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["usageMetadata"] == {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 25,
        "totalTokenCount": 1265,
    }
    parsed = sdk_response(body)
    assert parsed.text == "Here you go."
    assert parsed.function_calls is not None
    call = parsed.function_calls[0]
    assert (call.id, call.name, call.args) == ("call_1", "weather", {"city": "Paris"})
    assert parsed.model_version == "client-model"
    assert parsed.response_id == "chatcmpl-up"
    usage = parsed.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.cached_content_token_count) == (1200, 1000)
    assert (usage.candidates_token_count, usage.thoughts_token_count) == (40, 25)
    assert usage.total_token_count == 1265
    # Read back by Corral's Gemini meter, the columns are the Chat upstream's own.
    assert GEMINI.outcome(body).usage == CHAT.outcome(CHAT_RESPONSE).usage


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "STOP"),
        ("length", "MAX_TOKENS"),
        ("content_filter", "SAFETY"),
        ("tool_calls", "STOP"),
    ],
)
def test_finish_reasons_to_gemini(finish: str, reason: str) -> None:
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert GEMINI.response_from_internal(body, model="m")["candidates"][0]["finishReason"] == reason


def test_gemini_round_trip_through_the_hub() -> None:
    """Gemini → hub → Gemini keeps the text, thoughts, calls (with their ids), finish and
    usage (tool-use prompt tokens fold into the prompt count)."""
    internal = GEMINI.response_to_internal(GEMINI_RESPONSE, model="m")
    back = GEMINI.response_from_internal(internal, model="gemini-x-001")
    parts = back["candidates"][0]["content"]["parts"]
    assert parts[:2] == [{"text": "Thinking it over.", "thought": True}, {"text": "Here you go."}]
    assert parts[2]["functionCall"]["args"] == {"city": "Paris"}
    assert back["candidates"][0]["finishReason"] == "STOP"
    assert GEMINI.outcome(back).usage == GEMINI.outcome(GEMINI_RESPONSE).usage


def test_crossing_gemini_client_over_chat_upstream() -> None:
    """A Gemini client served by a Chat deployment: request, response and the outcome."""
    crossing = Crossing(GEMINI, CHAT)
    request = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 5},
    }
    upstream = orjson.loads(
        crossing.request(
            request, stream=False, upstream_model="gpt-x", provider_kind="openai", default_max=100
        )
    )
    assert upstream["model"] == "gpt-x"
    assert upstream["max_completion_tokens"] == 5
    body, outcome = crossing.response(CHAT_RESPONSE, "gemini-x")
    assert sdk_response(orjson.loads(body)).text == "Here you go."
    assert outcome.usage == Usage(input=200, cached_input=1000, output=40, reasoning=25)


def test_crossing_errors_render_in_googles_shape() -> None:
    crossing = Crossing(GEMINI, CHAT)
    payload = orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error"}})
    assert orjson.loads(crossing.error(400, payload)) == {
        "error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}
    }
    back = Crossing(CHAT, GEMINI).error(429, GEMINI.error_body(RateLimited("slow")))
    assert orjson.loads(back)["error"]["message"] == "slow"
