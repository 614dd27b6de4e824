"""A Gemini ``generateContent`` request, rewritten as an internal-form (Chat) request.

Both proto-JSON spellings of field names are read (``systemInstruction`` and
``system_instruction``). Function calls Gemini sent without an ``id`` get a stable one,
and each ``functionResponse`` is paired with the call of the same name, in order, in the
model turn before it.
"""

from __future__ import annotations

from typing import Any

from corral.errors import InvalidRequest
from corral.protocols.common import json_text, refuse, tool_call_id
from corral.protocols.gemini.schema import openapi_to_json_schema
from corral.protocols.gemini.wire import fields

_TARGET = "OpenAI Chat Completions"

# Hints that change how Google works, not what the model reads.
_DROPPED = frozenset({"safetySettings", "labels", "serviceTier", "store"})
_UNSUPPORTED = {
    "cachedContent": "Google's context caches live on Google's servers",
    "continuationToken": "continuations live on Google's servers",
}
_CONFIG_DROPPED = frozenset({"mediaResolution", "enableEnhancedCivicAnswers"})
_CONFIG_UNSUPPORTED = {
    "responseLogprobs": "log probabilities are not translated",
    "logprobs": "log probabilities are not translated",
    "speechConfig": "Chat Completions models answer in text here",
    "imageConfig": "Chat Completions models answer in text here",
    "audioTimestamp": "Chat Completions has no audio timestamps",
    "audioTranscriptionConfig": "Chat Completions has no audio transcription",
    "routingConfig": "Google's model routing has no counterpart",
    "modelSelectionConfig": "Google's model selection has no counterpart",
    "responseModalities": "Chat Completions models answer in text here",
}
_CONFIG_NO_OPS: dict[str, tuple[Any, ...]] = {
    "candidateCount": (1,),
    "responseLogprobs": (False,),
    "responseModalities": (["TEXT"], ["text"]),
}
_FILTER_MODES = {"AUTO": "auto", "MODE_UNSPECIFIED": "auto", "NONE": "none"}
_MARKS = frozenset({"thought", "thoughtSignature", "partMetadata"})
"""Part keys that mark or sign a part: a part with nothing else holds nothing to read."""
_LEVELS = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high"}


def gemini_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Translate a Gemini request body into an internal-form request.

    Raises :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    body = fields(body)
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction")
    if system is not None:
        text = _system_text(system, "systemInstruction")
        if text:
            messages.append({"role": "system", "content": text})
    _contents(body.get("contents"), messages)
    out: dict[str, Any] = {"messages": messages}
    for key, value in body.items():
        if value is None or key in ("contents", "systemInstruction", "model"):
            continue
        if key == "tools":
            _tools(value, out)
        elif key == "toolConfig":
            _tool_config(value, out)
        elif key == "generationConfig":
            _generation_config(value, out)
        elif key not in _DROPPED:
            raise refuse(
                key, _UNSUPPORTED.get(key, "Gemini field with no counterpart"), target=_TARGET
            )
    if "tools" not in out:
        out.pop("tool_choice", None)
    return out


# -- the conversation ----------------------------------------------------------


def _system_text(system: Any, path: str) -> str:
    """A system instruction as text (a string, or a Content of text parts)."""
    if isinstance(system, str):
        return system
    if not isinstance(system, dict):
        raise InvalidRequest(f"{path}: must be a Content object with text parts")
    parts = system.get("parts")
    if not isinstance(parts, list):
        raise InvalidRequest(f"{path}.parts: must be a list of parts")
    texts: list[str] = []
    for i, part in enumerate(parts):
        part = fields(part) if isinstance(part, dict) else part
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise refuse(
                f"{path}.parts[{i}]", "a system instruction holds text only", target=_TARGET
            )
        texts.append(part["text"])
    return "\n\n".join(texts)


def _contents(contents: Any, out: list[dict[str, Any]]) -> None:
    if not isinstance(contents, list):
        raise InvalidRequest("contents: must be a list of Content objects")
    calls: list[dict[str, Any]] = []  # the tool calls of the last model turn, not yet answered
    for i, content in enumerate(contents):
        path = f"contents[{i}]"
        if not isinstance(content, dict):
            raise InvalidRequest(f"{path}: must be an object with a role and parts")
        role = content.get("role") or "user"
        parts = content.get("parts")
        if not isinstance(parts, list):
            raise InvalidRequest(f"{path}.parts: must be a list of parts")
        if role == "model":
            message = _model_turn(parts, path)
            calls = list(message.get("tool_calls") or [])
            out.append(message)
        elif role in ("user", "function", "tool"):
            _user_turn(parts, path, calls, out)
        else:
            raise InvalidRequest(f"{path}.role: must be 'user' or 'model'")


def _model_turn(parts: list[Any], path: str) -> dict[str, Any]:
    """A model turn: text parts as content, thought parts as ``reasoning_content``,
    function calls as ``tool_calls`` (``thoughtSignature`` is Google's own, dropped)."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, raw in enumerate(parts):
        ppath = f"{path}.parts[{j}]"
        part = _part(raw, ppath)
        if "functionCall" in part:
            calls.append(
                _tool_call(part["functionCall"], f"{ppath}.functionCall", path, len(calls))
            )
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif not set(part) <= _MARKS:  # a part only marked or signed holds nothing to read
            raise _part_refusal(part, ppath, "a model turn")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(call: Any, path: str, turn: str, index: int) -> dict[str, Any]:
    call = fields(call) if isinstance(call, dict) else call
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise InvalidRequest(f"{path}.name: must be a string")
    args = call.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidRequest(f"{path}.args: must be an object")
    ident = call.get("id")
    return {
        "id": ident if isinstance(ident, str) and ident else tool_call_id(turn, index),
        "type": "function",
        "function": {"name": call["name"], "arguments": json_text(args, f"{path}.args")},
    }


def _user_turn(
    parts: list[Any], path: str, calls: list[dict[str, Any]], out: list[dict[str, Any]]
) -> None:
    """A user turn: its function responses first, as tool messages right after the calls,
    then the rest as one user message."""
    content: list[dict[str, Any]] = []
    answered = False
    for j, raw in enumerate(parts):
        ppath = f"{path}.parts[{j}]"
        part = _part(raw, ppath)
        if "functionResponse" in part:
            out.append(_tool_message(part["functionResponse"], f"{ppath}.functionResponse", calls))
            answered = True
        elif isinstance(part.get("text"), str):
            content.append({"type": "text", "text": part["text"]})
        elif "inlineData" in part:
            content.append(_inline(part["inlineData"], f"{ppath}.inlineData"))
        elif "fileData" in part:
            content.append(_file_data(part["fileData"], f"{ppath}.fileData"))
        elif not set(part) <= _MARKS:
            raise _part_refusal(part, ppath, "a user turn")
    if content or not answered:
        # One text part reads as a plain string (every server accepts it); else the list.
        single = len(content) == 1 and content[0]["type"] == "text"
        out.append({"role": "user", "content": content[0]["text"] if single else content or ""})


def _tool_message(response: Any, path: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    response = fields(response) if isinstance(response, dict) else response
    if not isinstance(response, dict) or not isinstance(response.get("name"), str):
        raise InvalidRequest(f"{path}.name: must be a string")
    for key in response:
        if key not in ("id", "name", "response", "willContinue", "scheduling"):
            raise refuse(f"{path}.{key}", "only a JSON response can be translated", target=_TARGET)
    return {
        "role": "tool",
        "tool_call_id": _pair(response, calls, path),
        "content": _result_text(response.get("response"), path),
    }


def _pair(response: dict[str, Any], calls: list[dict[str, Any]], path: str) -> str:
    """The id of the call this response answers: by id when given, else the first
    unanswered call of the same name (consumed, so repeated calls pair in order)."""
    raw = response.get("id")
    ident: str | None = raw if isinstance(raw, str) and raw else None
    match = next((k for k, call in enumerate(calls) if ident and call["id"] == ident), None)
    if match is None:
        name = response["name"]
        match = next((k for k, c in enumerate(calls) if c["function"]["name"] == name), None)
    if match is not None:
        return str(calls.pop(match)["id"])
    if ident:
        return ident
    raise InvalidRequest(
        f"{path}: answers function {response['name']!r}, which the model turn before "
        "it did not call"
    )


def _result_text(result: Any, path: str) -> str:
    """A function's response as tool-message text: Gemini's conventional ``{"output": text}``
    as the text itself, any other object as JSON text."""
    if isinstance(result, dict) and set(result) == {"output"} and isinstance(result["output"], str):
        return result["output"]
    if result is None:
        return ""
    return json_text(result, f"{path}.response")


def _part(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{path}: must be a Part object")
    part = fields(raw)
    if "videoMetadata" in part:
        raise refuse(f"{path}.videoMetadata", "video clipping has no counterpart", target=_TARGET)
    return part


def _part_refusal(part: dict[str, Any], path: str, where: str) -> InvalidRequest:
    kinds = [k for k in part if k not in _MARKS]
    kind = kinds[0] if kinds else "empty part"
    return refuse(f"{path}.{kind}", f"{kind} parts in {where} cannot be translated", target=_TARGET)


def _inline(data: Any, path: str) -> dict[str, Any]:
    """Inline bytes: images as data-URL ``image_url`` parts, PDFs as ``file`` parts."""
    data = fields(data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: must be an object with mimeType and data")
    mime, payload = data.get("mimeType"), data.get("data")
    if not isinstance(mime, str) or not isinstance(payload, str):
        raise InvalidRequest(f"{path}: mimeType and data must be strings")
    url = f"data:{mime};base64,{payload}"
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    if mime == "application/pdf":
        return {"type": "file", "file": {"file_data": url, "filename": "document.pdf"}}
    raise refuse(f"{path}.mimeType", f"{mime} content has no Chat Completions part", target=_TARGET)


def _file_data(data: Any, path: str) -> dict[str, Any]:
    """A file by URL: an image at a public http(s) URL. Google's own file URIs (Files API,
    ``gs://``) can only be read by Google."""
    data = fields(data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not isinstance(data.get("fileUri"), str):
        raise InvalidRequest(f"{path}.fileUri: must be a string")
    uri: str = data["fileUri"]
    mime = data.get("mimeType")
    google = "generativelanguage.googleapis.com" in uri or "youtube.com" in uri
    if not uri.startswith(("http://", "https://")) or google:
        raise refuse(f"{path}.fileUri", "only Google can read this file URI", target=_TARGET)
    if isinstance(mime, str) and not mime.startswith("image/"):
        raise refuse(f"{path}.mimeType", "only images can be passed by URL", target=_TARGET)
    return {"type": "image_url", "image_url": {"url": uri}}


# -- tools ---------------------------------------------------------------------


def _tools(tools: Any, out: dict[str, Any]) -> None:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list of Tool objects")
    found: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools[{i}]: must be a Tool object")
        for key, value in fields(tool).items():
            if key != "functionDeclarations":
                raise refuse(
                    f"tools[{i}].{key}",
                    "Google's built-in tools run on Google's servers",
                    target=_TARGET,
                )
            if not isinstance(value, list):
                raise InvalidRequest(f"tools[{i}].functionDeclarations: must be a list")
            for j, declaration in enumerate(value):
                found.append(_function(declaration, f"tools[{i}].functionDeclarations[{j}]"))
    if found:
        out["tools"] = found


def _function(declaration: Any, path: str) -> dict[str, Any]:
    if not isinstance(declaration, dict):
        raise InvalidRequest(f"{path}: must be a FunctionDeclaration object")
    declaration = fields(declaration)
    name = declaration.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{path}.name: must be a string")
    function: dict[str, Any] = {"name": name}
    if isinstance(declaration.get("description"), str):
        function["description"] = declaration["description"]
    if declaration.get("parametersJsonSchema") is not None:
        function["parameters"] = declaration["parametersJsonSchema"]
    elif declaration.get("parameters") is not None:
        function["parameters"] = openapi_to_json_schema(declaration["parameters"])
    else:
        function["parameters"] = {"type": "object", "properties": {}}
    behavior = declaration.get("behavior")
    if behavior not in (None, "BLOCKING", "UNSPECIFIED"):
        raise refuse(
            f"{path}.behavior", "non-blocking functions belong to Google's Live API", target=_TARGET
        )
    return {"type": "function", "function": function}


def _tool_config(config: Any, out: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise InvalidRequest("toolConfig: must be an object")
    config = fields(config)
    for key in config:
        if key != "functionCallingConfig":
            raise refuse(
                f"toolConfig.{key}", "only functionCallingConfig can be translated", target=_TARGET
            )
    calling = config.get("functionCallingConfig")
    if calling is None:
        return
    if not isinstance(calling, dict):
        raise InvalidRequest("toolConfig.functionCallingConfig: must be an object")
    calling = fields(calling)
    path = "toolConfig.functionCallingConfig"
    mode = calling.get("mode") or "AUTO"
    names = calling.get("allowedFunctionNames") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequest(f"{path}.allowedFunctionNames: must be a list of names")
    if mode == "ANY":
        if len(names) > 1:
            raise refuse(
                f"{path}.allowedFunctionNames",
                "Chat can force one function or any, not a subset",
                target=_TARGET,
            )
        out["tool_choice"] = (
            {"type": "function", "function": {"name": names[0]}} if names else "required"
        )
        return
    if mode not in _FILTER_MODES:
        raise refuse(f"{path}.mode", f"mode {mode} has no Chat tool_choice", target=_TARGET)
    if names:
        raise refuse(
            f"{path}.allowedFunctionNames",
            "Chat restricts functions only when forcing one",
            target=_TARGET,
        )
    out["tool_choice"] = _FILTER_MODES[mode]


# -- generation settings ------------------------------------------------------


def _generation_config(config: Any, out: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise InvalidRequest("generationConfig: must be an object")
    config = fields(config)
    schema = config.get("responseJsonSchema", config.get("responseSchema"))
    if schema is not None and config.get("responseMimeType") != "application/json":
        raise InvalidRequest(
            "generationConfig.responseMimeType: must be application/json with a response schema"
        )
    for key, value in config.items():
        path = f"generationConfig.{key}"
        if (
            value is None
            or key in _CONFIG_DROPPED
            or key in ("responseSchema", "responseJsonSchema")
        ):
            continue
        simple = _SIMPLE.get(key)
        if simple is not None:
            out[simple] = value
        elif key == "stopSequences":
            out["stop"] = value
        elif key == "responseMimeType":
            _response_format(value, config, out)
        elif key == "thinkingConfig":
            _thinking(value, out)
        elif key in _CONFIG_NO_OPS and value in _CONFIG_NO_OPS[key]:
            continue
        elif key == "candidateCount":
            raise refuse(path, "Corral translates one candidate per request", target=_TARGET)
        else:
            raise refuse(path, _CONFIG_UNSUPPORTED.get(key, "no counterpart"), target=_TARGET)


_SIMPLE = {
    "maxOutputTokens": "max_completion_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "topK": "top_k",
    "seed": "seed",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
}


def _response_format(mime: Any, config: dict[str, Any], out: dict[str, Any]) -> None:
    if mime == "text/plain":
        return
    if mime != "application/json":
        raise refuse(
            "generationConfig.responseMimeType",
            f"{mime} answers have no Chat response_format",
            target=_TARGET,
        )
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = openapi_to_json_schema(config["responseSchema"])
    if schema is None:
        out["response_format"] = {"type": "json_object"}
    else:
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }


def _thinking(config: Any, out: dict[str, Any]) -> None:
    """``thinkingLevel`` maps by name; ``thinkingBudget``: 0 → none, up to 1024 → minimal,
    under 4096 → low, under 16384 → medium, more → high; -1 (dynamic) leaves the model's
    default. ``includeThoughts`` is dropped: reasoning text comes back when the upstream
    sends it."""
    if not isinstance(config, dict):
        raise InvalidRequest("generationConfig.thinkingConfig: must be an object")
    config = fields(config)
    level = config.get("thinkingLevel")
    budget = config.get("thinkingBudget")
    if isinstance(level, str) and level in _LEVELS:
        out["reasoning_effort"] = _LEVELS[level]
    elif isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        out["reasoning_effort"] = (
            "none"
            if budget == 0
            else "minimal"
            if budget <= 1024
            else "low"
            if budget < 4096
            else "medium"
            if budget < 16384
            else "high"
        )
