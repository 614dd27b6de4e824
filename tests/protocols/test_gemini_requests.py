"""Gemini requests to and from the internal form: each mapping, round trips, refusals."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest
from google import genai
from google.genai import types

from corral.errors import InvalidRequest
from corral.protocols import GEMINI, MESSAGES, Crossing
from corral.protocols.common import tool_call_id
from corral.protocols.gemini.from_chat import SKIP_SIGNATURE

PNG = "iVBORw0KGgo="


def to_internal(body: dict[str, Any]) -> dict[str, Any]:
    return GEMINI.to_internal(body)


def from_internal(body: dict[str, Any], default_max: int = 4096) -> dict[str, Any]:
    return GEMINI.from_internal(body, default_max=default_max, provider_kind="google")


def sdk_request(**config: Any) -> dict[str, Any]:
    """The body the google-genai SDK sends for ``generate_content`` with ``config``."""
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        reply = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}}]}
        return httpx.Response(200, content=orjson.dumps(reply))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url="http://test", httpx_client=http)
    )
    contents = config.pop("contents", "What is the weather in Paris?")
    client.models.generate_content(
        model="gemini-x", contents=contents, config=types.GenerateContentConfig(**config)
    )
    body: dict[str, Any] = orjson.loads(sent[0])
    return body


# -- Gemini → internal ---------------------------------------------------------------


def test_sdk_request_with_every_common_setting() -> None:
    """What the SDK really sends (snake_case thinkingConfig included) maps field by field."""
    body = sdk_request(
        system_instruction="Be brief.",
        max_output_tokens=50,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        stop_sequences=["END"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        candidate_count=1,
        thinking_config=types.ThinkingConfig(thinking_budget=2000, include_thoughts=True),
        response_mime_type="application/json",
        response_schema={
            "type": "OBJECT",
            "properties": {"n": {"type": "INTEGER", "nullable": True}},
        },
        safety_settings=[
            types.SafetySetting(category="HARM_CATEGORY_HATE_SPEECH", threshold="BLOCK_NONE")
        ],
        tools=[
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name="weather",
                        description="Weather for a city",
                        parameters=types.Schema(
                            type="OBJECT",
                            properties={"city": types.Schema(type="STRING")},
                            required=["city"],
                        ),
                    )
                ]
            )
        ],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode="ANY", allowed_function_names=["weather"]
            )
        ),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    internal = to_internal(body)
    assert internal["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    assert internal["max_completion_tokens"] == 50
    assert (internal["temperature"], internal["top_p"], internal["seed"]) == (0.2, 0.9, 7)
    assert internal["stop"] == ["END"]
    assert (internal["presence_penalty"], internal["frequency_penalty"]) == (0.1, 0.2)
    assert internal["reasoning_effort"] == "low"
    assert internal["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "response",
            "schema": {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}},
        },
    }
    assert internal["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    assert internal["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert "model" not in internal


def test_snake_case_spellings_are_read() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"inline_data": {"mime_type": "image/png", "data": PNG}}]}
        ],
        "system_instruction": {"parts": [{"text": "sys"}]},
        "generation_config": {"max_output_tokens": 9, "stop_sequences": ["x"]},
        "tool_config": {"function_calling_config": {"mode": "NONE"}},
        "tools": [
            {"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object"}}]}
        ],
    }
    internal = to_internal(body)
    assert internal["messages"][0] == {"role": "system", "content": "sys"}
    assert internal["messages"][1]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    ]
    assert internal["max_completion_tokens"] == 9
    assert internal["stop"] == ["x"]
    assert internal["tool_choice"] == "none"
    assert internal["tools"][0]["function"]["parameters"] == {"type": "object"}


def test_conversation_with_calls_thoughts_and_responses() -> None:
    """Ids are generated when Gemini omits them, and each response pairs with the call of
    its name, in order; thought text becomes reasoning, signatures are dropped."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me think.", "thought": True},
                    {"text": "Checking."},
                    {
                        "functionCall": {"name": "weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2ln",
                    },
                    {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "weather", "response": {"output": "sunny"}}},
                    {"functionResponse": {"name": "weather", "response": {"temp": 20}}},
                    {"text": "Thanks"},
                ],
            },
        ]
    }
    messages = to_internal(body)["messages"]
    first, second = tool_call_id("contents[1]", 0), tool_call_id("contents[1]", 1)
    assert messages[1] == {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Let me think.",
        "tool_calls": [
            {
                "id": first,
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": second,
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": first, "content": "sunny"},
        {"role": "tool", "tool_call_id": second, "content": '{"temp":20}'},
        {"role": "user", "content": "Thanks"},
    ]


def test_calls_and_responses_with_ids_pair_by_id() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"id": "a", "name": "f", "args": {}}},
                    {"functionCall": {"id": "b", "name": "f"}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "b", "name": "f", "response": {}}},
                    {"functionResponse": {"id": "a", "name": "f", "response": {}}},
                ],
            },
        ]
    }
    messages = to_internal(body)["messages"]
    assert [m.get("tool_call_id") for m in messages[2:]] == ["b", "a"]
    assert messages[1]["content"] is None


def test_pdf_and_url_files() -> None:
    body = {
        "contents": [
            {
                "parts": [
                    {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
                    {
                        "fileData": {
                            "mimeType": "image/jpeg",
                            "fileUri": "https://example.com/cat.jpg",
                        }
                    },
                    {"text": "Describe"},
                ]
            }
        ]
    }
    assert to_internal(body)["messages"][0] == {
        "role": "user",
        "content": [
            {
                "type": "file",
                "file": {
                    "file_data": "data:application/pdf;base64,JVBER",
                    "filename": "document.pdf",
                },
            },
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "Describe"},
        ],
    }


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"thinkingBudget": 0}, "none"),
        ({"thinkingBudget": 512}, "minimal"),
        ({"thinkingBudget": 4096}, "medium"),
        ({"thinkingBudget": 20000}, "high"),
        ({"thinkingBudget": -1}, None),
        ({"thinkingLevel": "HIGH", "includeThoughts": True}, "high"),
        ({"thinking_level": "MINIMAL"}, "minimal"),
    ],
)
def test_thinking_bands(thinking: dict[str, Any], effort: str | None) -> None:
    body = {"contents": [], "generationConfig": {"thinkingConfig": thinking}}
    assert to_internal(body).get("reasoning_effort") == effort


@pytest.mark.parametrize(
    ("config", "choice"),
    [
        ({"mode": "AUTO"}, "auto"),
        ({"mode": "ANY"}, "required"),
        ({"mode": "NONE"}, "none"),
    ],
)
def test_tool_config_modes(config: dict[str, Any], choice: str) -> None:
    body = {
        "contents": [],
        "tools": [{"functionDeclarations": [{"name": "f"}]}],
        "toolConfig": {"functionCallingConfig": config},
    }
    internal = to_internal(body)
    assert internal["tool_choice"] == choice
    assert internal["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_hints_are_dropped() -> None:
    body = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "a"},
        "generationConfig": {
            "mediaResolution": "MEDIA_RESOLUTION_LOW",
            "responseMimeType": "text/plain",
        },
    }
    assert to_internal(body) == {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cachedContent": "cachedContents/1"}, "cachedContent"),
        ({"generationConfig": {"candidateCount": 2}}, "generationConfig.candidateCount"),
        (
            {"generationConfig": {"responseMimeType": "text/x.enum"}},
            "generationConfig.responseMimeType",
        ),
        (
            {"generationConfig": {"responseModalities": ["IMAGE"]}},
            "generationConfig.responseModalities",
        ),
        ({"tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
        ({"tools": [{"codeExecution": {}}]}, "tools[0].codeExecution"),
        ({"tools": [{"urlContext": {}}]}, "tools[0].urlContext"),
        (
            {
                "toolConfig": {
                    "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["a", "b"]}
                }
            },
            "toolConfig.functionCallingConfig.allowedFunctionNames",
        ),
        (
            {"toolConfig": {"functionCallingConfig": {"mode": "VALIDATED"}}},
            "toolConfig.functionCallingConfig.mode",
        ),
        ({"toolConfig": {"retrievalConfig": {}}}, "toolConfig.retrievalConfig"),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AA"}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {
                "contents": [
                    {
                        "parts": [
                            {
                                "fileData": {
                                    "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/x"
                                }
                            }
                        ]
                    }
                ]
            },
            "contents[0].parts[0].fileData.fileUri",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"executableCode": {"code": "1"}}]}]},
            "contents[0].parts[0].executableCode",
        ),
        ({"somethingNew": 1}, "somethingNew"),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], field: str) -> None:
    body = {"contents": [], **body}
    with pytest.raises(InvalidRequest) as raised:
        to_internal(body)
    assert raised.value.message.startswith(field + ":")


def test_a_response_without_its_call_is_refused() -> None:
    body = {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}
    with pytest.raises(InvalidRequest, match="did not call"):
        to_internal(body)


# -- internal → Gemini ---------------------------------------------------------------

INTERNAL: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "hmm",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "d",
                "parameters": {"type": "object"},
                "strict": True,
            },
        }
    ],
    "tool_choice": "required",
    "max_completion_tokens": 300,
    "temperature": 0.5,
    "top_p": 0.8,
    "stop": "END",
    "seed": 1,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    },
    "reasoning_effort": "medium",
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "u1",
    "parallel_tool_calls": True,
}


def test_internal_request_becomes_gemini() -> None:
    out = from_internal(INTERNAL)
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert out["contents"] == [
        {
            "role": "user",
            "parts": [{"text": "Look"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}],
        },
        {
            "role": "model",
            "parts": [
                {"text": "hmm", "thought": True},
                {"text": "Checking."},
                {
                    "functionCall": {"name": "weather", "args": {"city": "Paris"}, "id": "call_1"},
                    "thoughtSignature": SKIP_SIGNATURE,
                },
                {"functionCall": {"name": "time", "args": {}, "id": "call_2"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "id": "call_2",
                        "name": "time",
                        "response": {"output": "noon"},
                    }
                },
                {"functionResponse": {"id": "call_1", "name": "weather", "response": {"temp": 20}}},
                {"text": "And tomorrow?"},
            ],
        },
    ]
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "weather", "description": "d", "parametersJsonSchema": {"type": "object"}}
            ]
        }
    ]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert out["generationConfig"] == {
        "maxOutputTokens": 300,
        "temperature": 0.5,
        "topP": 0.8,
        "stopSequences": ["END"],
        "seed": 1,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True},
    }
    assert "model" not in out
    assert "stream" not in out


def test_default_max_and_forced_function() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": INTERNAL["tools"],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "reasoning_effort": "none",
        "response_format": {"type": "json_object"},
    }
    out = from_internal(body, default_max=777)
    assert out["generationConfig"] == {
        "maxOutputTokens": 777,
        "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False},
        "responseMimeType": "application/json",
    }
    assert out["toolConfig"]["functionCallingConfig"] == {
        "mode": "ANY",
        "allowedFunctionNames": ["weather"],
    }


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
        ({"whatever": 1}, "whatever"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]},
            "messages[1]",
        ),
        ({"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "messages[0].name"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].file",
        ),
    ],
)
def test_internal_refusals_name_the_field(extra: dict[str, Any], field: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest) as raised:
        from_internal(body)
    assert raised.value.message.startswith(field + ":")


def test_a_tool_message_must_answer_a_known_call() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "nope", "content": "x"},
        ]
    }
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        from_internal(body)


# -- round trips ----------------------------------------------------------------


def test_gemini_to_internal_and_back_keeps_what_the_hub_holds() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "ok"},
                    {"functionCall": {"id": "c1", "name": "f", "args": {"a": 1}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "c1", "name": "f", "response": {"output": "done"}}}
                ],
            },
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "f", "description": "d", "parametersJsonSchema": {"type": "object"}}
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "generationConfig": {
            "maxOutputTokens": 100,
            "temperature": 0.3,
            "stopSequences": ["x"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
    }
    back = from_internal(to_internal(body))
    assert back["systemInstruction"] == body["systemInstruction"]
    assert back["tools"] == body["tools"]
    assert back["toolConfig"] == body["toolConfig"]
    assert back["generationConfig"] == body["generationConfig"]
    contents = back["contents"]
    contents[1]["parts"][1].pop("thoughtSignature")
    assert contents == body["contents"]


def test_signature_only_parts_are_skipped_and_text_parts_kept_apart() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "Context."}, {"text": "Question?"}]},
            {
                "role": "model",
                "parts": [
                    {"thoughtSignature": "c2ln"},
                    {"text": "Answer.", "thoughtSignature": "c2ln"},
                ],
            },
            {"role": "user", "parts": [{"text": "More?"}]},
        ]
    }
    assert to_internal(body)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Context."},
                {"type": "text", "text": "Question?"},
            ],
        },
        {"role": "assistant", "content": "Answer."},
        {"role": "user", "content": "More?"},
    ]


def test_crossing_gemini_client_to_anthropic_and_back() -> None:
    """A Gemini request reaches an Anthropic deployment through the hub, tools included."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [
            {"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}
        ],
        "generationConfig": {"maxOutputTokens": 64, "thinkingConfig": {"thinkingBudget": 0}},
    }
    upstream = orjson.loads(
        Crossing(GEMINI, MESSAGES).request(
            body,
            stream=False,
            upstream_model="claude-x",
            provider_kind="anthropic",
            default_max=100,
        )
    )
    assert upstream["model"] == "claude-x"
    assert upstream["max_tokens"] == 64
    assert upstream["tools"][0]["name"] == "f"
    anthropic_body = {
        "model": "claude-x",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "top_p": 0.5,
    }
    gemini = orjson.loads(
        Crossing(MESSAGES, GEMINI).request(
            anthropic_body,
            stream=False,
            upstream_model="gemini-x",
            provider_kind="google",
            default_max=100,
        )
    )
    assert gemini["generationConfig"] == {"maxOutputTokens": 10, "topP": 0.5}
    assert "model" not in gemini


def test_a_schema_without_the_json_mime_type_is_refused() -> None:
    body = {"contents": [], "generationConfig": {"responseJsonSchema": {"type": "object"}}}
    with pytest.raises(InvalidRequest, match=r"^generationConfig.responseMimeType"):
        to_internal(body)
