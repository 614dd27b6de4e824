"""Google's Gemini API (what Gemini CLI and google-genai speak) against the simulator.

Raw HTTP checks the wire shapes; the official google-genai SDK checks that a
real client parses them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types
from simhelp import Raw, post, request, words

from corral.sim.testing import RunningSim

GENERATE = "/v1beta/models/{}:generateContent"
STREAM = "/v1beta/models/{}:streamGenerateContent?alt=sse"
HI = [{"role": "user", "parts": [{"text": "hi"}]}]
READ_FILE = {
    "name": "read_file",
    "description": "Read a file.",
    "parameters": {
        "type": "OBJECT",
        "properties": {"path": {"type": "STRING"}},
        "required": ["path"],
    },
}
WRITE_FILE = {
    "name": "write_file",
    "description": "Write a file.",
    "parametersJsonSchema": {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["file_path", "content"],
    },
}
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


def generate(sim: RunningSim, model: str, body: dict[str, Any], **headers: str) -> Raw:
    return post(sim.url, GENERATE.format(model), body, headers)


def sse_chunks(raw: Raw) -> list[dict[str, Any]]:
    """The chunks of an ``alt=sse`` stream, checking Google's ``\\r\\n\\r\\n`` framing."""
    text = raw.body.decode()
    assert text.endswith("\r\n\r\n")
    blocks = [block for block in text.split("\r\n\r\n") if block]
    assert all(block.startswith("data: ") for block in blocks)
    return [orjson.loads(block.removeprefix("data: ")) for block in blocks]


def header(raw: Raw, name: str) -> str | None:
    """A response header, whatever case the client library gave it."""
    return {key.lower(): value for key, value in raw.headers.items()}.get(name)


def sdk_parts(response: types.GenerateContentResponse) -> list[types.Part]:
    """The first candidate's parts as the SDK parsed them."""
    content = (response.candidates or [])[0].content
    return list(content.parts or []) if content is not None else []


def parts(response: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = response["candidates"][0]["content"].get("parts", [])
    return found


def test_generate_says_it_is_a_simulator(genai_client: genai.Client) -> None:
    """Text, STOP, usage that adds up, and the model echoed in modelVersion."""
    response = genai_client.models.generate_content(
        model="sim-frontier",
        contents="Who are you?",
        config=types.GenerateContentConfig(system_instruction="You are helpful."),
    )
    assert response.text is not None
    assert "Corral's simulator" in response.text
    candidate = (response.candidates or [])[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count is not None
    assert usage.candidates_token_count is not None
    assert usage.candidates_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.thoughts_token_count is None
    assert usage.cached_content_token_count is None
    assert response.model_version == "sim-frontier"
    assert response.response_id


def test_v1_and_v1beta_answer_alike(sim: RunningSim) -> None:
    """The SDK's default ``/v1`` paths and Gemini CLI's ``/v1beta`` give the same answer."""
    answers = []
    for version in ("v1", "v1beta"):
        options = types.HttpOptions(base_url=sim.url, api_version=version, timeout=10_000)
        with genai.Client(api_key="k", http_options=options) as client:
            response = client.models.generate_content(model="models/sim-standard", contents="hi")
        assert response.usage_metadata is not None
        answers.append((response.text, response.usage_metadata.total_token_count))
    assert answers[0] == answers[1]


def test_stream_matches_non_stream(genai_client: genai.Client) -> None:
    """Deltas join to the whole text; running usage on every chunk, the final on the last."""
    config = types.GenerateContentConfig(system_instruction="Stream please.")
    whole = genai_client.models.generate_content(
        model="sim-standard", contents="Tell me more.", config=config
    )
    chunks = list(
        genai_client.models.generate_content_stream(
            model="sim-standard", contents="Tell me more.", config=config
        )
    )
    assert len(chunks) > 3
    assert "".join(chunk.text or "" for chunk in chunks) == whole.text
    finishes = [(chunk.candidates or [])[0].finish_reason for chunk in chunks]
    assert finishes[:-1] == [None] * (len(chunks) - 1)
    assert finishes[-1] == types.FinishReason.STOP
    running = [
        (chunk.usage_metadata and chunk.usage_metadata.candidates_token_count) or 0
        for chunk in chunks
    ]
    assert running == sorted(running)
    assert chunks[-1].usage_metadata == whole.usage_metadata
    assert {chunk.response_id for chunk in chunks} == {chunks[0].response_id}


def test_sse_framing_and_json_array(sim: RunningSim) -> None:
    """``alt=sse`` sends ``data:`` events; without it the same chunks come as one JSON array."""
    body = {"contents": HI}
    sse = post(sim.url, STREAM.format("sim-standard"), body)
    assert (header(sse, "content-type") or "").startswith("text/event-stream")
    events = sse_chunks(sse)
    array = post(sim.url, "/v1beta/models/sim-standard:streamGenerateContent", body)
    assert header(array, "content-type") == "application/json"
    chunks = array.json()
    assert isinstance(chunks, list)
    assert [parts(chunk) for chunk in chunks] == [parts(event) for event in events]
    assert chunks[-1]["usageMetadata"] == events[-1]["usageMetadata"]


def test_function_call_round_trip(genai_client: genai.Client) -> None:
    """A ``tool`` model calls the declared function (Google Schema types understood); after
    the function response it answers in text."""
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(**READ_FILE)])],
        automatic_function_calling=NO_AFC,
    )
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text="Read it")])]
    first = genai_client.models.generate_content(model="sim-tool", contents=contents, config=config)
    calls = first.function_calls or []
    assert [(call.name, call.args) for call in calls] == [("read_file", {"path": "README.md"})]
    assert calls[0].id
    assert (first.candidates or [])[0].finish_reason == types.FinishReason.STOP
    contents.append((first.candidates or [])[0].content)
    result = types.Part.from_function_response(name="read_file", response={"output": "# Hi"})
    contents.append(types.Content(role="user", parts=[result]))
    second = genai_client.models.generate_content(
        model="sim-tool", contents=contents, config=config
    )
    assert second.function_calls is None
    assert second.text is not None
    assert "result of read_file" in second.text


def test_streamed_function_call_is_whole_in_one_chunk(sim: RunningSim) -> None:
    """A function call never arrives in pieces: one chunk holds its name, args and id."""
    body = {"contents": HI, "tools": [{"functionDeclarations": [WRITE_FILE]}]}
    chunks = sse_chunks(post(sim.url, STREAM.format("sim-tool"), body))
    calls = [
        part["functionCall"] for chunk in chunks for part in parts(chunk) if "functionCall" in part
    ]
    assert calls == [
        {
            "name": "write_file",
            "args": {"file_path": "README.md", "content": "Written by Corral's simulator."},
            "id": calls[0]["id"],
        }
    ]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_tool_config_forces_and_forbids(sim: RunningSim) -> None:
    """``ANY`` with allowed names calls the first allowed; ``NONE`` never calls."""
    tools = [{"functionDeclarations": [READ_FILE, WRITE_FILE]}]
    forced = {
        "contents": HI,
        "tools": tools,
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["write_file"]}
        },
    }
    called = parts(generate(sim, "sim-standard", forced).json())
    assert [part["functionCall"]["name"] for part in called] == ["write_file"]
    forbidden = {**forced, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    answered = parts(generate(sim, "sim-tool", forbidden).json())
    assert [set(part) for part in answered] == [{"text"}]


def test_thoughts_shown_counted_and_budgeted(genai_client: genai.Client) -> None:
    """``includeThoughts`` shows thought parts; thoughts are counted apart from candidates,
    within the budget, and a zero budget turns thinking off."""
    thinking = types.ThinkingConfig(include_thoughts=True, thinking_budget=30)
    shown = genai_client.models.generate_content(
        model="sim-standard",
        contents="Think first.",
        config=types.GenerateContentConfig(thinking_config=thinking),
    )
    pieces = sdk_parts(shown)
    assert [bool(part.thought) for part in pieces] == [True, False]
    usage = shown.usage_metadata
    assert usage is not None
    assert usage.thoughts_token_count is not None
    assert 0 < usage.thoughts_token_count <= 30
    assert usage.total_token_count == (
        (usage.prompt_token_count or 0)
        + (usage.candidates_token_count or 0)
        + usage.thoughts_token_count
    )
    hidden = genai_client.models.generate_content(model="sim-reasoning", contents="Think first.")
    assert hidden.usage_metadata is not None
    assert hidden.usage_metadata.thoughts_token_count
    assert not any(part.thought for part in sdk_parts(hidden))
    off = genai_client.models.generate_content(
        model="sim-reasoning",
        contents="Think first.",
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
    )
    assert off.usage_metadata is not None
    assert off.usage_metadata.thoughts_token_count is None


def test_max_output_tokens_ends_with_max_tokens(sim: RunningSim) -> None:
    """A reply longer than ``maxOutputTokens`` is cut and says MAX_TOKENS."""
    body = {"contents": HI, "generationConfig": {"maxOutputTokens": 5}}
    response = generate(sim, "sim-standard", body).json()
    assert response["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert 0 < response["usageMetadata"]["candidatesTokenCount"] <= 5


def test_snake_case_fields_are_read(sim: RunningSim) -> None:
    """Proto field names (snake_case) mean what the camelCase names mean."""
    camel = {
        "contents": HI,
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 40,
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 10},
        },
    }
    snake = {
        "contents": HI,
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "generation_config": {
            "max_output_tokens": 40,
            "thinking_config": {"include_thoughts": True, "thinking_budget": 10},
        },
    }
    first = generate(sim, "sim-standard", camel).json()
    second = generate(sim, "sim-standard", snake).json()
    assert parts(first)[0]["thought"] is True
    assert parts(first) == parts(second)
    assert first["usageMetadata"] == second["usageMetadata"]


def test_count_tokens_equals_prompt_token_count(
    genai_client: genai.Client, sim: RunningSim
) -> None:
    """``countTokens`` reports what generation bills as ``promptTokenCount``, also for a
    whole ``generateContentRequest``."""
    counted = genai_client.models.count_tokens(model="sim-standard", contents="How many?")
    generated = genai_client.models.generate_content(model="sim-standard", contents="How many?")
    assert generated.usage_metadata is not None
    assert counted.total_tokens == generated.usage_metadata.prompt_token_count
    inner = {
        "model": "models/sim-standard",
        "contents": HI,
        "systemInstruction": {"parts": [{"text": words(50, "count")}]},
        "tools": [{"functionDeclarations": [READ_FILE]}],
    }
    raw = post(
        sim.url, "/v1beta/models/sim-standard:countTokens", {"generateContentRequest": inner}
    )
    prompt = generate(sim, "sim-standard", inner).json()["usageMetadata"]["promptTokenCount"]
    assert raw.json()["totalTokens"] == prompt


def test_implicit_cache_reports_cached_content(sim: RunningSim) -> None:
    """A repeated long prefix comes back as ``cachedContentTokenCount``, inside the prompt count."""
    system = {"parts": [{"text": words(1500, "gemini-cache")}]}
    first = generate(sim, "sim-standard", {"systemInstruction": system, "contents": HI}).json()
    assert "cachedContentTokenCount" not in first["usageMetadata"]
    again = [{"role": "user", "parts": [{"text": "another question"}]}]
    second = generate(sim, "sim-standard", {"systemInstruction": system, "contents": again})
    usage = second.json()["usageMetadata"]
    assert 1500 <= usage["cachedContentTokenCount"] < usage["promptTokenCount"]
    assert usage["cacheTokensDetails"] == [
        {"modality": "TEXT", "tokenCount": usage["cachedContentTokenCount"]}
    ]


def test_structured_output_follows_the_schema(sim: RunningSim) -> None:
    """JSON mode answers an example of the schema (JSON schema or Google's), never a script."""
    schema = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "next_speaker": {"type": "string", "enum": ["user", "model"]},
        },
        "required": ["reasoning", "next_speaker"],
    }
    contents = [{"role": "user", "parts": [{"text": "Please fix the README."}]}]
    config = {"responseMimeType": "application/json", "responseJsonSchema": schema}
    body = {"contents": contents, "generationConfig": config}
    answer = orjson.loads(parts(generate(sim, "sim-scripted", body).json())[0]["text"])
    assert answer["next_speaker"] == "user"
    assert isinstance(answer["reasoning"], str)
    # Google's upper-case type names, in either field (Gemini CLI's router uses the second).
    google = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]}
    for field in ("responseSchema", "responseJsonSchema"):
        config = {"responseMimeType": "application/json", field: google}
        body = {"contents": HI, "generationConfig": config}
        text = parts(generate(sim, "sim-standard", body).json())[0]["text"]
        assert orjson.loads(text) == {"n": 1}


def test_scripted_agent_turns(genai_client: genai.Client, sim: RunningSim) -> None:
    """A script plays Gemini CLI's tools turn by turn: calls with exact args, then text."""
    script = {
        "turns": [
            {
                "thinking": "Read before writing.",
                "tool_calls": [{"name": "read_file", "arguments": {"file_path": "/w/a.txt"}}],
            },
            {
                "tool_calls": [
                    {"name": "write_file", "arguments": {"file_path": "/w/b.txt", "content": "x"}},
                    {"name": "run_shell_command", "arguments": {"command": "ls"}},
                ]
            },
            {"text": "Done: b.txt written."},
        ]
    }
    options = types.HttpOptions(
        base_url=sim.url, timeout=10_000, headers={"x-sim-script": orjson.dumps(script).decode()}
    )
    names = ("read_file", "write_file", "run_shell_command")
    declarations = [types.FunctionDeclaration(name=name) for name in names]
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=declarations)],
        automatic_function_calling=NO_AFC,
        thinking_config=types.ThinkingConfig(include_thoughts=True),
    )
    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text="Copy a to b.")])]
    played = []
    with genai.Client(api_key="k", http_options=options) as client:
        for _ in range(3):
            chunks = list(
                client.models.generate_content_stream(
                    model="gemini-2.5-pro", contents=contents, config=config
                )
            )
            turn = [part for chunk in chunks for part in sdk_parts(chunk)]
            calls = [part.function_call for part in turn if part.function_call]
            text = "".join(part.text or "" for part in turn if not part.thought)
            played.append((text, [(call.name, call.args) for call in calls]))
            contents.append(types.Content(role="model", parts=turn))
            responses = [
                types.Part.from_function_response(name=call.name or "", response={"output": "ok"})
                for call in calls
            ]
            if responses:
                contents.append(types.Content(role="user", parts=responses))
    assert played == [
        ("", [("read_file", {"file_path": "/w/a.txt"})]),
        (
            "",
            [
                ("write_file", {"file_path": "/w/b.txt", "content": "x"}),
                ("run_shell_command", {"command": "ls"}),
            ],
        ),
        ("Done: b.txt written.", []),
    ]


def test_models_list_and_get(genai_client: genai.Client, sim: RunningSim) -> None:
    """``GET /v1beta/models`` is Google's list; ``GET /v1/models`` stays OpenAI's."""
    options = types.HttpOptions(base_url=sim.url, api_version="v1beta", timeout=10_000)
    with genai.Client(api_key="k", http_options=options) as client:
        names = [model.name for model in client.models.list()]
        model = client.models.get(model="sim-economy")
    assert "models/sim-standard" in names
    assert model.name == "models/sim-economy"
    assert model.supported_actions == ["generateContent", "streamGenerateContent", "countTokens"]
    assert model.input_token_limit
    assert request("GET", sim.url, "/v1/models").json()["object"] == "list"
    # Under /v1 one model answers in OpenAI's, Anthropic's and Google's fields at once.
    same = genai_client.models.get(model="sim-economy")
    assert (same.name, same.supported_actions) == (model.name, model.supported_actions)
    assert request("GET", sim.url, "/v1/models/sim-economy").json()["id"] == "sim-economy"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"contents": []}, "contents: required"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "parts: must not be empty"),
        ({"contents": HI, "generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
        ({"contents": HI, "generationConfig": {"temperature": 3}}, "temperature"),
        ({"contents": HI, "generation_config": {"candidate_count": 2}}, "candidateCount"),
        ({"contents": HI, "cachedContent": "cachedContents/x"}, "cachedContent"),
        ({"contents": HI, "tools": [{"functionDeclarations": [{}]}]}, ".name: required"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_requests_in_google_shape(sim: RunningSim, body: Any, message: str) -> None:
    """Malformed requests get 400 INVALID_ARGUMENT naming the field to fix."""
    raw = generate(sim, "sim-standard", body)
    assert raw.status == 400
    error = raw.json()["error"]
    assert error["code"] == 400
    assert error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"]


def test_unknown_action_and_wrong_method(sim: RunningSim) -> None:
    """An action the simulator does not serve is NOT_FOUND; a GET on an action is refused."""
    raw = post(sim.url, "/v1beta/models/sim-standard:embedContent", {"content": {}})
    assert raw.status == 404
    assert raw.json()["error"]["status"] == "NOT_FOUND"
    assert "generateContent" in raw.json()["error"]["message"]
    raw = request("GET", sim.url, "/v1beta/models/sim-standard:generateContent")
    assert raw.status == 405
    assert "use POST" in raw.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fault", "status", "name"),
    [
        ("429", 429, "RESOURCE_EXHAUSTED"),
        ("500", 500, "INTERNAL"),
        ("503", 503, "UNAVAILABLE"),
        ("529", 503, "UNAVAILABLE"),
        ("context", 400, "INVALID_ARGUMENT"),
        ("content_policy", 400, "INVALID_ARGUMENT"),
    ],
)
def test_faults_in_google_shape(sim: RunningSim, fault: str, status: int, name: str) -> None:
    """``x-sim-fault`` answers with Google's code and status names."""
    raw = generate(sim, "sim-standard", {"contents": HI}, **{"x-sim-fault": fault})
    assert raw.status == status
    error = raw.json()["error"]
    assert (error["code"], error["status"]) == (status, name)
    assert "simulator" in error["message"]


def test_timeout_ends_in_deadline_exceeded(sim: RunningSim) -> None:
    """A ``timeout`` fault hangs, then answers 504 DEADLINE_EXCEEDED."""
    started = time.monotonic()
    raw = generate(sim, "sim-standard+fault=timeout+timeout=0.2", {"contents": HI})
    assert time.monotonic() - started >= 0.2
    assert raw.status == 504
    assert raw.json()["error"]["status"] == "DEADLINE_EXCEEDED"


def test_rate_limit_says_when_to_retry(sim: RunningSim) -> None:
    """A 429 carries google.rpc.RetryInfo, which Gemini CLI reads; no x-ratelimit headers."""
    body = {"contents": HI}
    assert generate(sim, "sim-gemini-rpm+rpm=1", body).status == 200
    raw = generate(sim, "sim-gemini-rpm+rpm=1", body)
    assert raw.status == 429
    details = raw.json()["error"]["details"]
    assert details[0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert details[0]["retryDelay"].endswith("s")
    assert float(details[0]["retryDelay"].removesuffix("s")) > 0
    assert not any(key.lower().startswith("x-ratelimit") for key in raw.headers)


def test_sdk_raises_google_errors(genai_client: genai.Client) -> None:
    """The SDK turns injected faults into its ClientError and ServerError with Google's status."""
    with pytest.raises(errors.ClientError) as client_error:
        genai_client.models.generate_content(model="sim-standard+fault=429", contents="hi")
    assert (client_error.value.code, client_error.value.status) == (429, "RESOURCE_EXHAUSTED")
    with pytest.raises(errors.ServerError) as server_error:
        list(
            genai_client.models.generate_content_stream(
                model="sim-standard+fault=503", contents="hi"
            )
        )
    assert (server_error.value.code, server_error.value.status) == (503, "UNAVAILABLE")


def test_reset_drops_the_stream_midway(sim: RunningSim) -> None:
    """200 and a few chunks, then the connection closes before the final chunk."""

    async def run() -> tuple[int, bytes, Exception]:
        received = b""
        url = sim.url + STREAM.format("sim-standard+fault=reset")
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"contents": HI}) as r,
        ):
            try:
                async for chunk in r.content.iter_any():
                    received += chunk
            except aiohttp.ClientPayloadError as exc:
                return r.status, received, exc
        raise AssertionError("the body completed")

    status, received, error = asyncio.run(run())
    assert status == 200
    assert received.count(b"data: ") >= 2
    assert b"finishReason" not in received
    assert "not completed" in str(error)


def test_malformed_chunk(sim: RunningSim) -> None:
    """The malformed fault puts a broken chunk in the stream, in its own framing."""
    raw = post(sim.url, STREAM.format("sim-standard+fault=malformed"), {"contents": HI})
    blocks = [block for block in raw.body.decode().split("\r\n\r\n") if block]
    broken = [block for block in blocks if not block.endswith("}")]
    assert len(broken) == 1
    assert broken[0].startswith("data: {")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(broken[0].removeprefix("data: "))
