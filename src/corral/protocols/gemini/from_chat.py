"""An internal-form (Chat) request, rewritten as a Gemini ``generateContent`` request.

The model is not written: Google names it in the path. Tool messages need the function's
name, which Chat keeps only on the assistant's tool call: it is found by the call's id.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from corral.errors import InvalidRequest, UpstreamError
from corral.protocols.base import max_field
from corral.protocols.common import refuse
from corral.protocols.messages.bodies import tool_input

_TARGET = "Google Gemini"

# Hints about how the provider works, not about what the model reads or writes.
_DROPPED = frozenset(
    {
        "model",
        "stream",
        "stream_options",  # a Google stream always reports usage
        "user",
        "safety_identifier",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "metadata",
        "store",
    }
)
_UNSUPPORTED = {
    "functions": "the deprecated functions field is not translated; send tools",
    "function_call": "the deprecated function_call field is not translated; send tool_choice",
    "prediction": "Gemini has no predicted outputs",
    "web_search_options": "web search runs as an OpenAI server tool",
    "verbosity": "Gemini has no verbosity setting",
    "moderation": "Gemini has no moderation setting",
    "logit_bias": "Gemini cannot bias tokens",
    "logprobs": "log probabilities are not translated",
    "top_logprobs": "log probabilities are not translated",
    "n": "Corral translates one candidate per request",
    "audio": "Gemini answers in text here",
    "modalities": "Gemini answers in text here",
    "parallel_tool_calls": "Gemini cannot be told to call one function at a time",
}
_NO_OPS: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "n": (1,),
    "modalities": (["text"],),
    "parallel_tool_calls": (True,),
    "logit_bias": ({},),
}
_SIMPLE = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
THINKING_BUDGETS = {
    "none": 0,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 24576,
}
"""``thinkingBudget`` per reasoning effort: Anthropic's bands, with xhigh at 24576, the
most every Gemini 2.5 and 3 model accepts (Flash's ceiling). ``none`` turns thinking
off; models that always think (2.5 Pro, 3 Pro) refuse it, and Google says so."""
SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Google's documented stand-in for a thought signature on history it did not produce
(Gemini 3 refuses a function call in the current turn without one)."""


def chat_to_gemini(body: dict[str, Any], *, default_max: int) -> dict[str, Any]:
    """Translate an internal-form request into a Gemini request body.

    Raises :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    system, contents = _conversation(body.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    config: dict[str, Any] = {}
    limit = max_field(body, "max_completion_tokens", "max_tokens")
    config["maxOutputTokens"] = limit if limit is not None else default_max
    for key, value in body.items():
        if value is None or key in ("messages", "max_completion_tokens", "max_tokens"):
            continue
        if key in _SIMPLE:
            config[_SIMPLE[key]] = value
        elif key in _FIELDS:
            _FIELDS[key](value, out, config)
        elif key in _NO_OPS and value in _NO_OPS[key]:
            continue
        elif key not in _DROPPED:
            raise refuse(key, _UNSUPPORTED.get(key, "Gemini has no such field"), target=_TARGET)
    if "tools" not in out:
        out.pop("toolConfig", None)
    out["generationConfig"] = config
    return out


# -- the conversation ----------------------------------------------------------


def _conversation(messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts and Gemini contents. System and developer messages before the first
    other message make the system instruction; a later one is refused (Google's precedes
    every turn). Tool messages join one user turn with the user message after them."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of messages")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id → function name
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object with a 'role'")
        role = message.get("role")
        if message.get("name") is not None:
            raise refuse(f"{path}.name", "Gemini turns carry no author name", target=_TARGET)
        if role in ("system", "developer"):
            if contents:
                raise refuse(
                    path,
                    f"a {role} message after the conversation has started has no place in "
                    "Gemini's system instruction, which precedes every turn; move it first",
                    target=_TARGET,
                )
            system.append(_text(message.get("content"), f"{path}.content"))
        elif role == "assistant":
            contents.append(_model_turn(message, path, names))
        elif role == "tool":
            _user_parts(contents, [_function_response(message, path, names)])
        elif role == "user":
            _user_parts(contents, _parts(message.get("content"), f"{path}.content"))
        else:
            raise InvalidRequest(f"{path}.role: must be system, developer, user, assistant or tool")
    return system, contents


def _user_parts(contents: list[dict[str, Any]], parts: list[dict[str, Any]]) -> None:
    """Append to the user turn that answers function calls, else start a user turn."""
    last = contents[-1] if contents else None
    if (
        last is not None
        and last["role"] == "user"
        and any("functionResponse" in p for p in last["parts"])
    ):
        last["parts"].extend(parts)
    else:
        contents.append({"role": "user", "parts": parts})


def _model_turn(message: dict[str, Any], path: str, names: dict[str, str]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        parts.append({"text": reasoning, "thought": True})
    content = message.get("content")
    if content:
        parts.extend(_parts(content, f"{path}.content"))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{path}.tool_calls: must be a list")
    for j, call in enumerate(calls):
        parts.append(_function_call(call, f"{path}.tool_calls[{j}]", names, first=j == 0))
    if not parts:
        parts.append({"text": ""})
    return {"role": "model", "parts": parts}


def _function_call(call: Any, path: str, names: dict[str, str], *, first: bool) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{path}.function.name: must be a string")
    if call.get("type", "function") != "function":
        raise refuse(f"{path}.type", "only function calls can be translated", target=_TARGET)
    name: str = function["name"]
    try:
        args = tool_input(function.get("arguments"), name)
    except UpstreamError as exc:  # here the arguments are the caller's, not an upstream's
        raise InvalidRequest(f"{path}.function.arguments: must be a JSON object") from exc
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    ident = call.get("id")
    if isinstance(ident, str) and ident:
        part["functionCall"]["id"] = ident
        names[ident] = name
    if first:
        part["thoughtSignature"] = SKIP_SIGNATURE
    return part


def _function_response(message: dict[str, Any], path: str, names: dict[str, str]) -> dict[str, Any]:
    ident = message.get("tool_call_id")
    if not isinstance(ident, str) or ident not in names:
        raise InvalidRequest(
            f"{path}.tool_call_id: must name a tool call of an earlier assistant message"
        )
    text = _text(message.get("content"), f"{path}.content")
    response: Any = None
    if text.startswith("{"):
        try:
            response = orjson.loads(text)
        except orjson.JSONDecodeError:
            response = None
    if not isinstance(response, dict):
        response = {"output": text}
    return {"functionResponse": {"id": ident, "name": names[ident], "response": response}}


def _text(content: Any, path: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or a list of text parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        if (
            not isinstance(part, dict)
            or part.get("type") != "text"
            or not isinstance(part.get("text"), str)
        ):
            raise refuse(f"{path}[{j}]", "only text can go here", target=_TARGET)
        texts.append(part["text"])
    return "".join(texts)


def _parts(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or a list of content parts")
    return [_part(part, f"{path}[{j}]") for j, part in enumerate(content)]


def _part(part: Any, path: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"text": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequest(f"{path}.image_url.url: must be a string")
        return _url_part(url, f"{path}.image_url.url")
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        if not isinstance(data, str) or not data.startswith("data:"):
            raise refuse(
                f"{path}.file", "only inline (data URL) files can be translated", target=_TARGET
            )
        return _url_part(data, f"{path}.file.file_data")
    raise refuse(f"{path}.type", f"{kind} parts have no Gemini counterpart", target=_TARGET)


def _url_part(url: str, path: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not mime:
            raise refuse(path, "only base64 data URLs can be translated", target=_TARGET)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://")):
        mime = mimetypes.guess_type(url.partition("?")[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest(f"{path}: must be a data: or http(s) URL")


# -- tools and settings -------------------------------------------------------


def _tools(tools: Any, out: dict[str, Any], config: dict[str, Any]) -> None:
    """Function tools as one Tool of ``functionDeclarations`` (``parametersJsonSchema``:
    JSON Schema as it is; ``strict`` is dropped, Gemini has no switch for it)."""
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise refuse(
                f"tools[{i}].type", "only function tools can be translated", target=_TARGET
            )
        if not isinstance(function.get("name"), str):
            raise InvalidRequest(f"tools[{i}].function.name: must be a string")
        declaration: dict[str, Any] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        if function.get("parameters") is not None:
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]


def _tool_choice(choice: Any, out: dict[str, Any], config: dict[str, Any]) -> None:
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        calling: dict[str, Any] = {"mode": modes[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.function.name: must be a string")
        calling = {"mode": "ANY", "allowedFunctionNames": [name]}
    else:
        raise refuse(
            "tool_choice",
            "only auto, none, required or one function can be translated",
            target=_TARGET,
        )
    out["toolConfig"] = {"functionCallingConfig": calling}


def _stop(stop: Any, out: dict[str, Any], config: dict[str, Any]) -> None:
    config["stopSequences"] = [stop] if isinstance(stop, str) else stop


def _response_format(value: Any, out: dict[str, Any], config: dict[str, Any]) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
        return
    spec = value.get("json_schema") if isinstance(value, dict) else None
    if kind != "json_schema" or not isinstance(spec, dict):
        raise refuse(
            "response_format",
            "only text, json_object or json_schema can be translated",
            target=_TARGET,
        )
    config["responseMimeType"] = "application/json"
    if spec.get("schema") is not None:
        config["responseJsonSchema"] = spec["schema"]


def _effort(effort: Any, out: dict[str, Any], config: dict[str, Any]) -> None:
    """``thinkingBudget`` from the effort (``none`` turns thinking off); thoughts are asked
    for, so reasoning text comes back as ``reasoning_content``."""
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise InvalidRequest(f"reasoning_effort: must be one of {', '.join(THINKING_BUDGETS)}")
    config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}


_FIELDS = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    "stop": _stop,
    "response_format": _response_format,
    "reasoning_effort": _effort,
}
