"""Internal form → OpenAI Responses requests, and Responses answers → the internal form.

A deployment whose provider speaks only Responses serves a Chat, Messages or Gemini
client this way: the internal (Chat-shaped) request becomes a stateless Responses
request (``store: false``: Corral keeps no server-side state, so every turn carries the
whole conversation), and the ``response`` object that answers it a ``chat.completion``.
The stream is translated by :class:`~corral.protocols.responses.to_chat_stream.
ResponsesToChatStream`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.errors import InvalidRequest, UpstreamError
from corral.protocols.base import max_field
from corral.protocols.common import chat_id, count, refuse, tool_call_id

_TARGET = "OpenAI Responses"

# Hints about how the provider works, not about what the model reads.
_DROPPED = frozenset(
    {
        "seed",  # Responses has no seed; a seed never promised the same answer anyway
        "metadata",  # Chat keeps it with a stored completion; nothing is stored
        "stream_options",  # Responses always reports usage in its last event
        "top_k",  # a sampling hint OpenAI's models take no counterpart of
    }
)
# Fields both protocols spell and mean the same way.
_PASSED = frozenset(
    {
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "service_tier",
        "moderation",
    }
)
_UNSUPPORTED = {
    "n": "Responses returns one answer per request",
    "stop": "Responses has no stop sequences",
    "logprobs": "Corral does not translate log probabilities",
    "top_logprobs": "Corral does not translate log probabilities",
    "logit_bias": "Responses cannot bias tokens",
    "presence_penalty": "Responses has no presence penalty",
    "frequency_penalty": "Responses has no frequency penalty",
    "audio": "Responses answers in text only",
    "modalities": "Responses answers in text only",
    "prediction": "Responses has no predicted outputs",
    "web_search_options": "web search runs as a Responses server tool Corral does not carry",
    "functions": "the deprecated functions field is not translated; send tools",
    "function_call": "the deprecated function_call field is not translated; send tool_choice",
    "store": "Corral keeps no server-side state; send false",
}
# Values of unsupported fields that ask for nothing, so are accepted.
_NO_OPS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "stop": ([],),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "modalities": (["text"],),
    "store": (False,),
}
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
_VERBOSITY = frozenset({"low", "medium", "high"})
_DETAILS = frozenset({"low", "high", "auto"})


def _refuse(path: str, reason: str) -> InvalidRequest:
    return refuse(path, reason, target=_TARGET)


# -- requests ------------------------------------------------------------------


def chat_to_responses(body: dict[str, Any]) -> dict[str, Any]:
    """Translate an internal (Chat Completions) request body into a Responses request body.

    The first message, when it is a system or developer message of plain text, becomes
    ``instructions``; the rest of the conversation becomes input items. Raises
    :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    instructions, items = _conversation(body.get("messages"))
    if instructions:
        out["instructions"] = instructions
    out["input"] = items
    for key, value in body.items():
        if value is None or key in _HANDLED or key in _DROPPED:
            continue
        handler = _FIELDS.get(key)
        if handler is not None:
            handler(value, out)
        elif key in _PASSED:
            out[key] = value
        elif key in _NO_OPS and value in _NO_OPS[key]:
            continue
        else:
            raise _refuse(key, _UNSUPPORTED.get(key, "Responses has no such field"))
    limit = max_field(body, "max_completion_tokens", "max_tokens")
    if limit is not None:
        out["max_output_tokens"] = limit
    if "tools" not in out:
        out.pop("tool_choice", None)  # a tool choice without tools is refused upstream
        out.pop("parallel_tool_calls", None)
    out["store"] = False
    return out


def _conversation(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """The instructions and the input items."""
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of messages")
    instructions = ""
    items: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object with a 'role'")
        role = message.get("role")
        if message.get("name") is not None and role != "tool":  # a call id names a result
            raise _refuse(f"{path}.name", "Responses messages carry no author name")
        if role in ("system", "developer"):
            content = message.get("content")
            text = _plain_text(content) if i == 0 else None
            if text is not None:
                instructions = text
            else:  # kept in place, as the same role: moving it would change what is read when
                items.append(_message(role, _parts(content, f"{path}.content", "input_text")))
        elif role == "user":
            items.append(_message("user", _user_content(message.get("content"), f"{path}.content")))
        elif role == "assistant":
            items += _assistant(message, path)
        elif role == "tool":
            items.append(_tool_output(message, path))
        else:
            raise _refuse(f"{path}.role", f"role {role!r} is not translated")
    return instructions, items


def _plain_text(content: Any) -> str | None:
    """The text of content that is a string or a single text part, else None."""
    if isinstance(content, str):
        return content
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].get("type") == "text"
        and isinstance(content[0].get("text"), str)
    ):
        text: str = content[0]["text"]
        return text
    return None


def _message(role: str, content: str | list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content}


def _parts(content: Any, path: str, kind: str) -> str | list[dict[str, Any]]:
    """Text content: a string as it is, text (and refusal) parts as ``kind`` parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or an array of text parts")
    return [_text_part(part, f"{path}[{k}]", kind) for k, part in enumerate(content)]


def _text_part(part: Any, path: str, kind: str) -> dict[str, Any]:
    if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
        raise InvalidRequest(f"{path}: must be a text part")
    if part["type"] == "refusal":  # text the model said
        if not isinstance(part.get("refusal"), str):
            raise InvalidRequest(f"{path}.refusal: must be a string")
        return {"type": kind, "text": part["refusal"]}
    if not isinstance(part.get("text"), str):
        raise InvalidRequest(f"{path}.text: must be a string")
    return {"type": kind, "text": part["text"]}


def _user_content(content: Any, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or an array of content parts")
    return [_input_part(part, f"{path}[{k}]") for k, part in enumerate(content)]


def _input_part(part: Any, path: str) -> dict[str, Any]:
    """A user (or tool-output) part: text, an image, or a file given inline."""
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(kind, str):
        raise InvalidRequest(f"{path}: must be a content part with a 'type'")
    if kind == "text":
        return _text_part(part, path, "input_text")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{path}.image_url.url: must be a string")
        detail = image.get("detail") if isinstance(image, dict) else None
        return {
            "type": "input_image",
            "image_url": url,
            "detail": detail if detail in _DETAILS else "auto",
        }
    if kind == "file":
        return _file(part, path)
    if kind == "input_audio":
        raise _refuse(f"{path}.type", "Responses takes no audio input")
    raise _refuse(f"{path}.type", f"a '{kind}' part is not translated")


def _file(part: dict[str, Any], path: str) -> dict[str, Any]:
    file = part.get("file")
    if not isinstance(file, dict):
        raise InvalidRequest(f"{path}.file: must be an object")
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        # A file id names an upload in the caller's OpenAI account, not the deployment's.
        raise _refuse(f"{path}.file", "a file_id names an uploaded file; send file_data")
    out = {"type": "input_file", "file_data": data}
    if isinstance(file.get("filename"), str) and file["filename"]:
        out["filename"] = file["filename"]
    return out


def _assistant(message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """An assistant turn: a message item for its text, a function_call item per call.

    The text travels as a plain string, the form the Responses API documents for
    earlier assistant turns (output parts would need the ids of a stored response); a
    refusal is text the model said, and joins it. ``reasoning_content`` is left out:
    the Responses API takes back only its own (encrypted) reasoning items, which the
    internal form never holds.
    """
    for key in ("audio", "function_call"):
        if message.get(key) is not None:
            raise _refuse(f"{path}.{key}", "is not translated")
    content = message.get("content")
    texts: list[str] = []
    if content is not None:
        parts = _parts(content, f"{path}.content", "input_text")
        texts = [parts] if isinstance(parts, str) else [p["text"] for p in parts]
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        texts.append(refusal)
    text = "".join(texts)
    items = [_message("assistant", text)] if text else []
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidRequest(f"{path}.tool_calls: must be an array")
        items += [_function_call(call, f"{path}.tool_calls[{k}]") for k, call in enumerate(calls)]
    return items


def _function_call(call: Any, path: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise InvalidRequest(f"{path}: must be an object")
    if call.get("type", "function") != "function":
        raise _refuse(f"{path}.type", "only function tool calls are translated")
    function, call_id = call.get("function"), call.get("id")
    if not isinstance(function, dict) or not isinstance(call_id, str):
        raise InvalidRequest(f"{path}: a tool call needs an id and a function")
    name, arguments = function.get("name"), function.get("arguments", "")
    if not isinstance(name, str) or not isinstance(arguments, str):
        raise InvalidRequest(f"{path}.function: needs string name and arguments")
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def _tool_output(message: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{path}.tool_call_id: must be a string")
    content = message.get("content")
    output: str | list[dict[str, Any]] = ""
    if isinstance(content, list):
        output = [_input_part(part, f"{path}.content[{k}]") for k, part in enumerate(content)]
    elif isinstance(content, str):
        output = content
    elif content is not None:
        raise InvalidRequest(f"{path}.content: must be a string or an array of content parts")
    return {"type": "function_call_output", "call_id": call_id, "output": output}


# -- other fields --------------------------------------------------------------


def _tools(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, list):
        raise InvalidRequest("tools: must be an array")
    tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(value)]
    if tools:
        out["tools"] = tools


def _tool(tool: Any, path: str) -> dict[str, Any]:
    """A function tool, flattened. ``strict`` is always sent: Responses makes an unmarked
    tool strict (rewriting its schema), while Chat leaves it loose."""
    if not isinstance(tool, dict):
        raise InvalidRequest(f"{path}: must be an object")
    if tool.get("type", "function") != "function":
        raise _refuse(f"{path}.type", f"{tool.get('type')!r} tools are not translated")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{path}.function: needs a 'name'")
    schema = function.get("parameters")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(f"{path}.function.parameters: must be a JSON schema object")
    out: dict[str, Any] = {
        "type": "function",
        "name": function["name"],
        "parameters": schema if schema is not None else {"type": "object", "properties": {}},
        "strict": function.get("strict") is True,
    }
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.function.name: must be a string")
        out["tool_choice"] = {"type": "function", "name": name}
    elif kind == "allowed_tools":
        out["tool_choice"] = _allowed_tools(choice.get("allowed_tools"))
    elif isinstance(kind, str):
        raise _refuse("tool_choice", f"a '{kind}' tool choice is not translated")
    else:
        raise InvalidRequest("tool_choice: must be auto, required, none or a function choice")


def _allowed_tools(value: Any) -> dict[str, Any]:
    mode = value.get("mode") if isinstance(value, dict) else None
    tools = value.get("tools") if isinstance(value, dict) else None
    if mode not in ("auto", "required") or not isinstance(tools, list):
        raise InvalidRequest("tool_choice.allowed_tools: needs a mode and a list of tools")
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            path = f"tool_choice.allowed_tools.tools[{i}]"
            raise _refuse(path, "only function tools are translated")
        names.append({"type": "function", "name": function["name"]})
    return {"type": "allowed_tools", "mode": mode, "tools": names}


def _stream(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest("'stream' must be true or false")
    out["stream"] = value


def _response_format(value: Any, out: dict[str, Any]) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        fmt: dict[str, Any] = {"type": "json_object"}
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequest("response_format.json_schema.schema: must be an object")
        fmt = {"type": "json_schema", "name": spec.get("name") or "response"}
        fmt.update((k, spec[k]) for k in ("description", "schema", "strict") if k in spec)
    else:
        raise InvalidRequest("response_format: must be text, json_schema or json_object")
    out.setdefault("text", {})["format"] = fmt


def _verbosity(value: Any, out: dict[str, Any]) -> None:
    if value not in _VERBOSITY:
        raise InvalidRequest("'verbosity' must be low, medium or high")
    out.setdefault("text", {})["verbosity"] = value


def _reasoning_effort(value: Any, out: dict[str, Any]) -> None:
    # No summary is asked for: OpenAI refuses summaries to unverified organisations,
    # and a refusal of every request would cost more than a missing thinking block.
    if not isinstance(value, str) or value not in _EFFORTS:
        raise InvalidRequest(f"'reasoning_effort' must be one of {', '.join(sorted(_EFFORTS))}")
    out["reasoning"] = {"effort": value}


_HANDLED = frozenset({"model", "messages", "max_completion_tokens", "max_tokens"})
_FIELDS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    "stream": _stream,
    "response_format": _response_format,
    "verbosity": _verbosity,
    "reasoning_effort": _reasoning_effort,
}


# -- whole responses -----------------------------------------------------------


def responses_response_to_chat(resp: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A Responses ``response`` object as a ``chat.completion``, named ``model``.

    Message items' text joins into ``content`` and their refusals into ``refusal``;
    reasoning items' text (their ``content``, else their summary) into
    ``reasoning_content``, items and summary parts apart by a blank line;
    function_call items become ``tool_calls``. Raises :class:`UpstreamError` when the
    response is malformed, failed, unfinished, or holds an item Chat cannot carry.
    """
    output = resp.get("output") if isinstance(resp, dict) else None
    if not isinstance(output, list):
        raise UpstreamError("the upstream response has no output list")
    source = resp["id"] if isinstance(resp.get("id"), str) else ""
    reason = finish_of(resp)
    message = _chat_message(output, source)
    if reason == "stop" and message.get("tool_calls"):
        reason = "tool_calls"
    created = resp.get("created_at")
    usage = resp.get("usage")
    return {
        "id": chat_id(source),
        "object": "chat.completion",
        "created": created if isinstance(created, int) else 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": chat_usage(usage if isinstance(usage, dict) else None),
    }


def finish_of(resp: dict[str, Any]) -> str:
    """The Chat ``finish_reason`` a finished response's status stands for.

    ``completed`` is ``stop`` (the caller makes it ``tool_calls`` when functions were
    called); ``incomplete`` is ``content_filter`` for that reason and ``length`` for any
    other (the answer was cut short). Raises :class:`UpstreamError` for any other status.
    """
    status = resp.get("status")
    if status == "completed" or status is None:
        return "stop"
    if status == "incomplete":
        details = resp.get("incomplete_details")
        why = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if why == "content_filter" else "length"
    error = resp.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        raise UpstreamError(f"the upstream response {status}: {message}")
    raise UpstreamError(f"the upstream response is {status!r}, not finished")


def _chat_message(output: list[Any], source: str) -> dict[str, Any]:
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in output:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            _message_texts(item, texts, refusals)
        elif kind == "reasoning":
            reasoning += reasoning_texts(item)
        elif kind == "function_call":
            calls.append(_tool_call(item, source, len(calls)))
        else:
            raise UpstreamError(f"the upstream response holds a {kind!r} item Chat cannot carry")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": "".join(refusals) or None,
    }
    if reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def _message_texts(item: dict[str, Any], texts: list[str], refusals: list[str]) -> None:
    content = item.get("content")
    if not isinstance(content, list):
        raise UpstreamError("the upstream message item has no content list")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "output_text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            refusals.append(part["refusal"])
        else:
            raise UpstreamError(f"the upstream message holds a {kind!r} part Chat cannot carry")


def reasoning_texts(item: dict[str, Any]) -> list[str]:
    """A reasoning item's texts: its reasoning text if it has any, else its summary parts.

    Encrypted reasoning is opaque and is left out."""
    for key in ("content", "summary"):
        parts = item.get(key)
        texts = [
            p["text"]
            for p in (parts if isinstance(parts, list) else ())
            if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]
        ]
        if texts:
            return texts
    return []


def _tool_call(item: dict[str, Any], source: str, index: int) -> dict[str, Any]:
    name, arguments, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
    if not isinstance(name, str) or not name:
        raise UpstreamError(f"the upstream function call {index} has no name")
    if not isinstance(call_id, str) or not call_id:
        call_id = tool_call_id(source, index)
    text = arguments if isinstance(arguments, str) else ""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """A Responses ``usage`` block as a Chat one: both count cache reads within the input
    and reasoning within the output, so only the names change."""
    usage = usage or {}
    prompt, output = count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    prompt_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    cached = count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        count(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt)},
        "completion_tokens_details": {"reasoning_tokens": min(reasoning, output)},
    }
