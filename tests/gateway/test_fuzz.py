"""Schema-driven fuzz of the gateway bodies: no client input produces a 5xx."""

from __future__ import annotations

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import Running
from tests.gateway.test_gemini import crossing

__all__ = ["crossing"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
models = st.sampled_from(["sim-economy", "sim-standard", "", "nope"]) | json_values
content = st.text(max_size=50) | json_values
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"])
        | json_values
    },
    optional={"content": content, "tool_calls": json_values, "tool_call_id": json_values},
)
common = {
    "stream": st.booleans() | json_values,
    "max_tokens": st.integers(-5, 100_000) | json_values,
    "tools": json_values,
    "tool_choice": json_values,
    "temperature": json_values,
    "stream_options": json_values,
}
chat_bodies = st.fixed_dictionaries(
    {"model": models, "messages": st.lists(message, max_size=3) | json_values}, optional=common
)
responses_bodies = st.fixed_dictionaries(
    {"model": models},
    optional={
        "input": content | st.lists(message, max_size=3),
        "max_output_tokens": json_values,
        **common,
    },
)
messages_bodies = st.fixed_dictionaries(
    {"model": models, "max_tokens": st.integers(0, 100_000) | json_values},
    optional={
        "messages": st.lists(message, max_size=3) | json_values,
        "system": content,
        **{k: v for k, v in common.items() if k != "max_tokens"},
    },
)

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check(corral: Running, path: str, body: object) -> None:
    with httpx.Client(base_url=corral.url, timeout=30) as c:
        r = c.post(path, json=body, headers={"authorization": f"Bearer {corral.key}"})
    assert r.status_code < 500, (path, body, r.status_code, r.text[:500])


@FUZZ
@given(body=chat_bodies)
def test_chat_bodies(corral: Running, body: object) -> None:
    check(corral, "/v1/chat/completions", body)


@FUZZ
@given(body=responses_bodies)
def test_responses_bodies(corral: Running, body: object) -> None:
    check(corral, "/v1/responses", body)


@FUZZ
@given(body=messages_bodies)
def test_messages_bodies(corral: Running, body: object) -> None:
    check(corral, "/v1/messages", body)
    check(corral, "/v1/messages/count_tokens", body)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=200),
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
)
def test_raw_bytes(corral: Running, raw: bytes, path: str) -> None:
    with httpx.Client(base_url=corral.url, timeout=30) as c:
        r = c.post(path, content=raw, headers={"x-api-key": corral.key})
    assert r.status_code < 500, (raw, r.text[:300])


part = st.fixed_dictionaries(
    {},
    optional={
        "text": content,
        "thought": json_values,
        "functionCall": st.fixed_dictionaries(
            {"name": st.text(max_size=8) | json_values}, optional={"args": json_values}
        )
        | json_values,
        "functionResponse": st.fixed_dictionaries(
            {"name": st.text(max_size=8) | json_values}, optional={"response": json_values}
        )
        | json_values,
        "inlineData": json_values,
        "fileData": json_values,
    },
)
gemini_content = st.fixed_dictionaries(
    {"parts": st.lists(part, max_size=3) | json_values},
    optional={"role": st.sampled_from(["user", "model", "function", "x"]) | json_values},
)
gemini_bodies = st.fixed_dictionaries(
    {"contents": st.lists(gemini_content, max_size=3) | json_values},
    optional={
        "systemInstruction": gemini_content | json_values,
        "tools": json_values,
        "toolConfig": json_values,
        "generationConfig": st.fixed_dictionaries(
            {},
            optional={
                "maxOutputTokens": st.integers(-5, 100_000) | json_values,
                "thinkingConfig": json_values,
                "responseMimeType": st.sampled_from(["application/json", "text/plain"])
                | json_values,
                "responseSchema": json_values,
                "stopSequences": json_values,
                "topK": json_values,
            },
        )
        | json_values,
        "safetySettings": json_values,
        "generation_config": json_values,
    },
)
gemini_paths = st.sampled_from(
    [
        "/v1beta/models/{m}:generateContent",
        "/v1beta/models/{m}:streamGenerateContent?alt=sse",
        "/v1/models/{m}:countTokens",
        "/v1beta/models/{m}:nope",
    ]
)


@FUZZ
@given(body=gemini_bodies, path=gemini_paths, model=st.sampled_from(["sim-standard", "nope", ""]))
def test_gemini_bodies(corral: Running, body: object, path: str, model: str) -> None:
    check(corral, path.format(m=model), body)


@FUZZ
@given(body=gemini_bodies, path=gemini_paths, model=st.sampled_from(["chat-only", "claude-x"]))
def test_gemini_bodies_crossing_protocols(
    crossing: Running, body: object, path: str, model: str
) -> None:
    """Through the internal form: a Chat-only and an Anthropic deployment."""
    check(crossing, path.format(m=model), body)


@FUZZ
@given(body=st.one_of(chat_bodies, messages_bodies, responses_bodies))
def test_other_clients_crossing_to_a_google_deployment(crossing: Running, body: object) -> None:
    if isinstance(body, dict):
        body = {**body, "model": "gemini-x"}
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        check(crossing, path, body)
