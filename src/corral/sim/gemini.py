"""Google Gemini API: ``models/{m}:generateContent``, ``:streamGenerateContent``, ``:countTokens``.

Served under ``/v1beta`` and ``/v1`` (the google-genai SDK 3.x calls ``/v1``
by default, Gemini CLI ``/v1beta``). The model comes from the URL, not the
body. Bodies arrive in camelCase (REST) or snake_case (the proto field names,
which Google accepts too and the google-genai SDK sends for nested config
objects such as ``thinkingConfig``); every field is read in both spellings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from corral.errors import InvalidRequest
from corral.sim.generate import Reply, ToolCall
from corral.sim.request import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    SimRequest,
    ToolSpec,
    new_request,
    positive_int,
)
from corral.sim.wire import Frame, Meta, Usage, text_chunks

ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
"""The ``:action`` suffixes the simulator serves."""

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_ROLES = ("user", "model", "function")
_TOOL_MODES = ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_SSE_END = b"\r\n\r\n"
_INPUT_LIMIT = 1_048_576
_OUTPUT_LIMIT = 65_536


@dataclass(frozen=True, slots=True)
class GeminiPath:
    """A Gemini URL: the model named (without ``models/``) and the ``:action`` ("" for a GET)."""

    model: str
    action: str


def match_path(path: str) -> GeminiPath | None:
    """The Gemini call ``path`` names, or ``None`` when it is not a Gemini path.

    ``/v1beta/models`` (the list) gives ``GeminiPath("", "")``; ``/v1beta/models/m``
    gives ``GeminiPath("m", "")``; ``/v1beta/models/m:countTokens`` and
    ``/v1/models/m:countTokens`` give ``GeminiPath("m", "countTokens")``.
    ``/v1/models`` and ``/v1/models/m`` without an action stay OpenAI's.
    """
    if path == "/v1beta/models":
        return GeminiPath("", "")
    for prefix in ("/v1beta/models/", "/v1/models/"):
        if not path.startswith(prefix):
            continue
        rest = path.removeprefix(prefix).removeprefix("models/")
        model, colon, action = rest.rpartition(":")
        if colon:
            return GeminiPath(model, action)
        if prefix == "/v1beta/models/":
            return GeminiPath(rest, "")
    return None


def parse_gemini(body: Any, model: str, *, action: str, sse: bool) -> SimRequest:
    """Normalise a ``generateContent``/``streamGenerateContent``/``countTokens`` body.

    ``sse`` is whether the URL asked ``alt=sse``; a stream without it is one
    JSON array of chunks, as Google sends it.
    """
    if action == "countTokens":
        return _parse_count(body, model)
    request = new_request("gemini", body, model=model)
    request.stream = action == "streamGenerateContent"
    request.json_array = request.stream and not sse
    _parse_generate(request, body, count_only=False)
    return request


def _parse_count(body: Any, model: str) -> SimRequest:
    """``countTokens`` takes ``contents`` alone or a whole ``generateContentRequest``."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    inner = _get(body, "generateContentRequest")
    if inner is not None:
        if _get(body, "contents") is not None:
            raise InvalidRequest(
                "countTokens: set 'contents' or 'generateContentRequest', not both"
            )
        if not isinstance(inner, dict):
            raise InvalidRequest("generateContentRequest: must be a GenerateContentRequest object")
        named = inner.get("model")
        if isinstance(named, str) and named:
            model = named.removeprefix("models/")
        body = inner
    request = new_request("gemini", body, model=model)
    _parse_generate(request, body, count_only=True)
    return request


def _get(table: dict[str, Any], camel: str) -> Any:
    """``table[camel]``, or the same field under its snake_case name."""
    if camel in table:
        return table[camel]
    return table.get(_CAMEL.sub("_", camel).lower())


def _parse_generate(request: SimRequest, body: dict[str, Any], *, count_only: bool) -> None:
    contents = _get(body, "contents")
    if contents is None and count_only:
        contents = []
    if not isinstance(contents, list) or not (contents or count_only):
        raise InvalidRequest("contents: required, a non-empty list of Content objects")
    if _get(body, "cachedContent") is not None:
        raise InvalidRequest(
            "cachedContent: explicit context caches are not simulated by Corral; leave it out "
            "(implicit caching is simulated and reported as cachedContentTokenCount)"
        )
    _parse_tools(request, body)
    _parse_system(request, _get(body, "systemInstruction"))
    for index, content in enumerate(contents):
        _parse_content(request, content, index)
    _parse_config(request, _get(body, "generationConfig"))


def _parse_tools(request: SimRequest, body: dict[str, Any]) -> None:
    tools = _get(body, "tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list of Tool objects")
    for index, tool in enumerate(tools or ()):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools[{index}]: must be a Tool object")
        declarations = _get(tool, "functionDeclarations")
        if declarations is None:
            continue  # googleSearch, codeExecution, urlContext: accepted, never called
        if not isinstance(declarations, list):
            raise InvalidRequest(f"tools[{index}].functionDeclarations: must be a list")
        for number, declaration in enumerate(declarations):
            name = declaration.get("name") if isinstance(declaration, dict) else None
            if not isinstance(name, str) or not name:
                where = f"tools[{index}].functionDeclarations[{number}]"
                raise InvalidRequest(f"{where}.name: required, a non-empty string")
            request.tools.append(ToolSpec(name, _declared_schema(declaration)))
    if tools:
        request.prompt.add(orjson.dumps(tools).decode(), overhead=MESSAGE_OVERHEAD)
    _parse_tool_config(request, _get(body, "toolConfig"))


def _declared_schema(declaration: dict[str, Any]) -> dict[str, Any]:
    """A declaration's parameters as JSON schema (``parametersJsonSchema`` or ``parameters``)."""
    schema = _get(declaration, "parametersJsonSchema")
    if schema is None:
        schema = _get(declaration, "parameters")
    converted = json_schema(schema)
    return converted if isinstance(converted, dict) else {}


def json_schema(schema: Any) -> Any:
    """Google's OpenAPI-style ``Schema`` as JSON schema: its ``type`` names (``OBJECT``) lowered.

    Applied to ``*JsonSchema`` fields too: Gemini CLI sends Google's upper-case
    type names there as well.
    """
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: value.lower() if key == "type" and isinstance(value, str) else json_schema(value)
        for key, value in schema.items()
    }


def _parse_tool_config(request: SimRequest, tool_config: Any) -> None:
    config = _get(tool_config, "functionCallingConfig") if isinstance(tool_config, dict) else None
    if not isinstance(config, dict):
        return
    mode = str(config.get("mode", "AUTO")).upper()
    if mode not in _TOOL_MODES:
        raise InvalidRequest(
            f"toolConfig.functionCallingConfig.mode: unknown mode {mode!r} "
            "(AUTO, ANY, NONE or VALIDATED)"
        )
    names = _get(config, "allowedFunctionNames")
    if mode == "NONE":
        request.tool_choice = "none"
    elif mode == "ANY":
        request.tool_choice = "required"
        if isinstance(names, list) and names and isinstance(names[0], str):
            # The first allowed function is the one the simulator calls.
            request.tool_choice, request.forced_tool = "tool", names[0]


def _parse_system(request: SimRequest, system: Any) -> None:
    if system is None:
        return
    if isinstance(system, str):
        text = system
    elif isinstance(system, dict) and isinstance(system.get("parts"), list):
        text = "\n".join(_part_text(part)[0] for part in system["parts"] if isinstance(part, dict))
    else:
        raise InvalidRequest("systemInstruction: must be a Content object with 'parts'")
    if text:
        request.prompt.add(f"system: {text}", overhead=MESSAGE_OVERHEAD)


def _parse_content(request: SimRequest, content: Any, index: int) -> None:
    if not isinstance(content, dict):
        raise InvalidRequest(f"contents[{index}]: must be a Content object")
    role = content.get("role") or "user"
    if role not in _ROLES:
        raise InvalidRequest(f"contents[{index}].role: Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest(f"contents[{index}].parts: must not be empty")
    texts: list[str] = []
    names: list[str] = []
    tool_result = role == "function"
    request.prompt.add(role, overhead=MESSAGE_OVERHEAD)
    for number, part in enumerate(parts):
        if not isinstance(part, dict):
            raise InvalidRequest(f"contents[{index}].parts[{number}]: must be a Part object")
        text, images = _part_text(part)
        request.prompt.add(text, fixed=images * IMAGE_TOKENS)
        call = _get(part, "functionCall")
        if isinstance(call, dict):
            names.append(str(call.get("name", "")))
        elif _get(part, "functionResponse") is not None:
            tool_result = True
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(text)
    if role == "model":
        request.saw_assistant(names)
    else:
        request.saw_user("\n".join(texts), tool_result=tool_result)


def _part_text(part: dict[str, Any]) -> tuple[str, int]:
    """What the model sees of one part, and how many images (or files) it holds."""
    text = part.get("text")
    if isinstance(text, str):
        return text, 0
    call = _get(part, "functionCall")
    if isinstance(call, dict):
        return f"{call.get('name', '')}({orjson.dumps(call.get('args', {})).decode()})", 0
    response = _get(part, "functionResponse")
    if isinstance(response, dict):
        result = orjson.dumps(response.get("response", {})).decode()
        return f"{response.get('name', '')}: {result}", 0
    if _get(part, "inlineData") is not None or _get(part, "fileData") is not None:
        return "", 1
    code = _get(part, "executableCode")
    if isinstance(code, dict):
        return str(code.get("code", "")), 0
    outcome = _get(part, "codeExecutionResult")
    if isinstance(outcome, dict):
        return str(outcome.get("output", "")), 0
    visible = {k: v for k, v in part.items() if k not in ("thoughtSignature", "thought_signature")}
    return orjson.dumps(visible).decode(), 0


def _parse_config(request: SimRequest, config: Any) -> None:
    request.reasoning = "reason" in request.base_model
    if config is None:
        return
    if not isinstance(config, dict):
        raise InvalidRequest("generationConfig: must be a GenerationConfig object")
    request.max_tokens = positive_int(config, "maxOutputTokens", "max_output_tokens")
    stops = _get(config, "stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise InvalidRequest("generationConfig.stopSequences: must be a list of strings")
    temperature = _get(config, "temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise InvalidRequest("generationConfig.temperature: must be a number from 0 to 2")
    if _get(config, "candidateCount") not in (None, 1):
        raise InvalidRequest(
            "generationConfig.candidateCount: Corral's simulator answers one candidate; "
            "set it to 1 or leave it out"
        )
    _parse_thinking(request, _get(config, "thinkingConfig"))
    if _get(config, "responseMimeType") == "application/json":
        schema = _get(config, "responseJsonSchema")
        if schema is None:
            schema = _get(config, "responseSchema")
        schema = json_schema(schema)
        request.structured = schema if isinstance(schema, dict) else {}


def _parse_thinking(request: SimRequest, thinking: Any) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise InvalidRequest("generationConfig.thinkingConfig: must be a ThinkingConfig object")
    request.include_thoughts = _get(thinking, "includeThoughts") is True
    budget = _get(thinking, "thinkingBudget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise InvalidRequest(
            "generationConfig.thinkingConfig.thinkingBudget: must be an integer "
            "(-1 for dynamic, 0 for no thinking)"
        )
    if budget == 0:
        request.reasoning = False
        return
    request.reasoning = True
    if budget is not None and budget > 0:
        request.thinking_budget = budget
    level = _get(thinking, "thinkingLevel")
    if isinstance(level, str):
        request.effort = level.lower()


def gemini_usage(
    usage: Usage, *, candidates: int | None = None, thoughts: int | None = None
) -> dict[str, Any]:
    """``usageMetadata``: the prompt count includes cached tokens; thoughts are not candidates.

    ``candidates`` and ``thoughts`` override the final counts (for a stream's
    running totals); ``totalTokenCount`` is always prompt + candidates + thoughts.
    """
    thoughts = usage.reasoning if thoughts is None else thoughts
    candidates = usage.output - usage.reasoning if candidates is None else candidates
    metadata: dict[str, Any] = {
        "promptTokenCount": usage.prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": usage.prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt}],
    }
    if usage.cache_read:
        metadata["cachedContentTokenCount"] = usage.cache_read
        metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.cache_read}]
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    return metadata


def _signature(reply: Reply) -> str | None:
    """A stand-in thought signature (base64, as the SDKs decode it) when the reply thought."""
    if not reply.thinking:
        return None
    digest = hashlib.blake2b(reply.thinking.encode(), digest_size=24).digest()
    return base64.b64encode(b"corral-sim:" + digest).decode()


def _call_part(call: ToolCall, signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {
        "functionCall": {"name": call.name, "args": call.input_object(), "id": call.id}
    }
    if signature is not None:
        # Google puts the turn's signature on its first function call.
        part["thoughtSignature"] = signature
    return part


def _call_parts(reply: Reply) -> list[dict[str, Any]]:
    signature = _signature(reply)
    return [
        _call_part(call, signature if index == 0 else None)
        for index, call in enumerate(reply.tool_calls)
    ]


def _candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    candidate: dict[str, Any] = {"content": content}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return candidate


def _response(
    parts: list[dict[str, Any]], finish: str | None, usage: dict[str, Any], meta: Meta
) -> dict[str, Any]:
    return {
        "candidates": [_candidate(parts, finish)],
        "usageMetadata": usage,
        "modelVersion": meta.model,
        "responseId": meta.response_id,
    }


def gemini_json(reply: Reply, usage: Usage, meta: Meta, *, thoughts: bool = False) -> bytes:
    """The non-streamed ``GenerateContentResponse``; ``thoughts`` shows thought parts."""
    parts: list[dict[str, Any]] = []
    if thoughts and reply.thinking:
        parts.append({"text": reply.thinking, "thought": True})
    if reply.text:
        parts.append({"text": reply.text})
    parts += _call_parts(reply)
    return orjson.dumps(_response(parts, _FINISH[reply.finish], gemini_usage(usage), meta))


def gemini_frames(
    reply: Reply,
    usage: Usage,
    meta: Meta,
    *,
    chunk_words: int,
    thoughts: bool = False,
    json_array: bool = False,
) -> list[Frame]:
    """The streamed chunks: text in deltas, each call whole, usage on every chunk.

    Every chunk carries running token totals; the last one carries the final
    usage and the ``finishReason``. Frames are SSE ``data:`` events, or the
    pieces of one JSON array when ``json_array``.
    """
    pieces: list[tuple[dict[str, Any] | None, int, int]] = []  # part, candidate, thought tokens
    if thoughts and reply.thinking:
        pieces += [
            ({"text": piece, "thought": True}, 0, n)
            for piece, n in text_chunks(reply.thinking, chunk_words, reply.reasoning_tokens)
        ]
    pieces += [
        ({"text": piece}, n, 0)
        for piece, n in text_chunks(reply.text, chunk_words, reply.text_tokens)
    ]
    pieces += [
        (part, call.tokens(), 0)
        for part, call in zip(_call_parts(reply), reply.tool_calls, strict=True)
    ]
    # Hidden thinking still takes time: it is paced before the first chunk.
    hidden = reply.reasoning_tokens if reply.thinking and not thoughts else 0
    frames: list[Frame] = []
    candidates = thinking = 0
    for index, (part, part_candidates, part_thoughts) in enumerate(pieces or [(None, 0, 0)]):
        extra = hidden if index == 0 else 0
        candidates += part_candidates
        thinking += part_thoughts + extra
        last = index == max(len(pieces), 1) - 1
        metadata = (
            gemini_usage(usage)
            if last
            else gemini_usage(usage, candidates=candidates, thoughts=thinking)
        )
        finish = _FINISH[reply.finish] if last else None
        payload = orjson.dumps(_response([part] if part else [], finish, metadata, meta))
        data = (b"[" if index == 0 else b",\r\n") + payload if json_array else payload
        tokens = part_candidates + part_thoughts + extra
        frames.append(Frame(data if json_array else b"data: " + data + _SSE_END, tokens))
    if json_array:
        frames.append(Frame(b"]"))
    return frames


def gemini_malformed(*, json_array: bool) -> Frame:
    """A broken chunk, for the ``malformed`` fault, in the stream's own framing."""
    if json_array:
        return Frame(b',\r\n{"candidates": [{"content": {"par')
    return Frame(b'data: {"candidates": [{"content": {"par' + _SSE_END)


def gemini_count(request: SimRequest) -> bytes:
    """The ``countTokens`` answer: what ``promptTokenCount`` would be for the same request."""
    total = request.prompt.total
    details = [{"modality": "TEXT", "tokenCount": total}]
    return orjson.dumps({"totalTokens": total, "promptTokensDetails": details})


def model_entry(name: str, *, window: int | None) -> dict[str, Any]:
    """One ``Model`` as ``GET /v1beta/models`` lists it."""
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": f"{name} (Corral simulator)",
        "description": "A model simulated by Corral: no language model answers.",
        "inputTokenLimit": window or _INPUT_LIMIT,
        "outputTokenLimit": _OUTPUT_LIMIT,
        "supportedGenerationMethods": list(ACTIONS),
        "temperature": 1.0,
        "maxTemperature": 2.0,
        "topP": 0.95,
        "topK": 64,
        "thinking": True,
    }


def models_body(names: tuple[str, ...], *, window: int | None) -> bytes:
    """The ``ListModelsResponse`` for ``GET /v1beta/models`` (one page, no token)."""
    return orjson.dumps({"models": [model_entry(name, window=window) for name in names]})
