"""OpenAI Responses requests served by a Chat Completions deployment.

A Responses request (Codex CLI, the openai SDK's ``client.responses``)
becomes a Chat Completions request; the ``chat.completion`` that answers it
becomes a Responses ``response`` object. The stream is translated by
:class:`~corral.protocols.responses.streams.ChatToResponsesStream`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from corral.errors import InvalidRequest, UpstreamError
from corral.protocols.common import count, refuse, tool_call_id

_TARGET = "OpenAI Chat Completions"

# Hints that change how the provider works, not what the model reads.
_DROPPED = frozenset(
    {"metadata", "prompt_cache_key", "prompt_cache_retention", "service_tier", "stream_options"}
)
_UNSUPPORTED = {
    "previous_response_id": "Chat Completions keeps no server-side conversation state",
    "conversation": "Chat Completions keeps no server-side conversation state",
    "prompt": "stored prompt templates exist only on OpenAI's servers",
    "max_tool_calls": "Chat Completions cannot cap the number of tool calls",
    "top_logprobs": "Corral does not translate log probabilities",
}
_PASSED = ("temperature", "top_p")
# ``include`` values Chat can honour by giving nothing: Corral returns no
# encrypted reasoning, and reasoning items in the input are dropped anyway.
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


def item_id(prefix: str, source: str) -> str:
    """A Responses id (``resp_…``, ``msg_…``, ``fc_…``), the same for the same upstream id.

    Items are named from the upstream id and their place in the output, so a
    streamed and a whole answer give their items the same ids.
    """
    digest = hashlib.blake2b(source.encode(errors="surrogatepass"), digest_size=12).hexdigest()
    return f"{prefix}_{digest}"


# -- requests ------------------------------------------------------------------


def _refuse(path: str, reason: str) -> InvalidRequest:
    return refuse(path, reason, target=_TARGET)


def responses_to_chat(
    body: dict[str, Any], *, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    """Translate a Responses request body into a Chat Completions request body.

    ``max_output_tokens`` goes in ``max_tokens_field``. Raises
    :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions not in (None, ""):
        raise InvalidRequest("instructions: must be a string")
    _input(body.get("input"), messages)
    out["messages"] = messages
    for key, value in body.items():
        if value is None or key in _HANDLED:
            continue
        handler = _FIELDS.get(key)
        if handler is not None:
            handler(value, out)
        elif key in _PASSED:
            out[key] = value
        elif key not in _DROPPED:
            raise _refuse(key, _UNSUPPORTED.get(key, "Chat Completions has no such field"))
    if isinstance(body.get("max_output_tokens"), int):
        out[max_tokens_field] = body["max_output_tokens"]
    if "tools" not in out:
        out.pop("tool_choice", None)  # Chat refuses a tool choice without tools
        out.pop("parallel_tool_calls", None)
    return out


def _input(value: Any, messages: list[dict[str, Any]]) -> None:
    if value is None:
        return
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
        return
    if not isinstance(value, list):
        raise InvalidRequest("input: must be a string or a list of input items")
    for i, item in enumerate(value):
        path = f"input.{i}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{path}: must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, path))
        elif kind == "function_call":
            _function_call(item, path, messages)
        elif kind == "function_call_output":
            messages.append(_call_output(item, path))
        elif kind != "reasoning":  # one model's reasoning: a hint, not conversation
            raise _refuse(f"{path}.type", f"{kind!r} items have no Chat counterpart")


def _message(item: dict[str, Any], path: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(f"{path}.role: must be user, assistant, system or developer")
    # Many OpenAI-compatible servers know no "developer" role; it means system.
    chat_role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of content parts")
    parts = [_part(part, f"{path}.content.{j}", chat_role) for j, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        texts = [p["text"] for p in parts]
        if chat_role != "user" or len(texts) == 1:
            return {"role": chat_role, "content": "".join(texts)}
    return {"role": chat_role, "content": parts}


def _part(part: Any, path: str, role: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(part, dict):
        raise InvalidRequest(f"{path}: must be an object")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{path}.text: must be a string")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        if role != "user":
            raise _refuse(path, "Chat Completions takes images only in user messages")
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _refuse(f"{path}.file_id", "Chat Completions cannot read uploaded files")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise _refuse(f"{path}.type", f"{kind!r} content parts have no Chat counterpart")


def _function_call(item: dict[str, Any], path: str, messages: list[dict[str, Any]]) -> None:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise InvalidRequest(f"{path}: a function_call needs a call_id and a name")
    if not isinstance(arguments, str):
        raise InvalidRequest(f"{path}.arguments: must be a string of JSON")
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = messages[-1] if messages else None
    # Chat holds an assistant turn's text and its calls in one message.
    if last is not None and last["role"] == "assistant" and isinstance(last["content"], str | None):
        last.setdefault("tool_calls", []).append(call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{path}.call_id: must be a string")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                reason = "Chat tool messages hold text only"
                raise _refuse(f"{path}.output.{j}", reason)
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{path}.output.{j}.text: must be a string")
            texts.append(part["text"])
        output = "".join(texts)
    if not isinstance(output, str):
        raise InvalidRequest(f"{path}.output: must be a string or a list of text parts")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


# -- other fields --------------------------------------------------------------


def _tools(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, list):
        raise InvalidRequest("tools: must be a list")
    tools = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: must be an object")
        if kind != "function":
            reason = f"{kind!r} tools run on OpenAI's servers or have no Chat counterpart"
            raise _refuse(f"tools.{i}.type", reason)
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools.{i}.name: must be a string")
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        tools.append({"type": "function", "function": function})
    if tools:
        out["tools"] = tools


def _tool_choice(value: Any, out: dict[str, Any]) -> None:
    if value in ("auto", "none", "required"):
        out["tool_choice"] = value
    elif isinstance(value, dict) and value.get("type") == "function":
        if not isinstance(value.get("name"), str):
            raise InvalidRequest("tool_choice.name: must be a string")
        out["tool_choice"] = {"type": "function", "function": {"name": value["name"]}}
    else:
        kind = value.get("type") if isinstance(value, dict) else value
        raise _refuse("tool_choice", f"{kind!r} has no Chat counterpart")


def _parallel(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest("parallel_tool_calls: must be a boolean")
    out["parallel_tool_calls"] = value


def _stream(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest("stream: must be a boolean")
    out["stream"] = value
    if value:  # the usage chunk is what the completed event reports
        out["stream_options"] = {"include_usage": True}


def _text(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest("text: must be an object")
    # text.verbosity is a length hint few Chat servers read; it is dropped.
    fmt = value.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise _refuse("text.format", f"{kind!r} formats have no Chat counterpart")


def _reasoning(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest("reasoning: must be an object")
    # summary / generate_summary ask for summaries Chat servers do not write.
    effort = value.get("effort")
    if effort is None:
        return
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise InvalidRequest(f"reasoning.effort: unknown effort {effort!r}")
    out["reasoning_effort"] = effort


def _include(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, list):
        raise InvalidRequest("include: must be a list")
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in _INCLUDABLE:
            raise _refuse(f"include.{i}", f"Chat Completions cannot return {name!r}")


def _store(value: Any, out: dict[str, Any]) -> None:
    if value is not False:
        raise _refuse("store", "Chat Completions keeps no stored responses; send false")


def _background(value: Any, out: dict[str, Any]) -> None:
    if value is not False:
        raise _refuse("background", "Chat Completions cannot run a request in the background")


def _truncation(value: Any, out: dict[str, Any]) -> None:
    if value != "disabled":
        raise _refuse("truncation", "Chat Completions cannot truncate the conversation")


def _user(value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, str):
        out["user"] = value


_FIELDS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _parallel,
    "stream": _stream,
    "text": _text,
    "reasoning": _reasoning,
    "include": _include,
    "store": _store,
    "background": _background,
    "truncation": _truncation,
    "user": _user,
    "safety_identifier": _user,
}
_HANDLED = frozenset({"model", "instructions", "input", "max_output_tokens"})


# -- whole responses -----------------------------------------------------------


def responses_usage(chat: dict[str, Any] | None) -> dict[str, Any]:
    """A Chat ``usage`` block as a Responses one (both count cache reads and reasoning inside)."""
    chat = chat or {}
    prompt, output = count(chat.get("prompt_tokens")), count(chat.get("completion_tokens"))
    prompt_details = chat.get("prompt_tokens_details")
    output_details = chat.get("completion_tokens_details")
    cached = count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        count(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(cached, prompt)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": min(reasoning, output)},
        "total_tokens": prompt + output,
    }


def response_object(
    source: str, *, model: str, created: int, status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``response`` envelope; ``status`` in_progress, completed, incomplete or failed."""
    return {
        "id": item_id("resp", source),
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def finish(response: dict[str, Any], reason: Any) -> None:
    """Set ``status`` (and ``incomplete_details``) from a Chat ``finish_reason``."""
    incomplete = _INCOMPLETE.get(reason) if isinstance(reason, str) else None
    response["status"] = "incomplete" if incomplete else "completed"
    response["incomplete_details"] = {"reason": incomplete} if incomplete else None


def reasoning_item(source: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id("rs", source),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def message_item(source: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id("msg", source),
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id("fc", call_id),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def chat_response_to_responses(
    resp: dict[str, Any], *, model: str, created: int = 0
) -> dict[str, Any]:
    """A ``chat.completion`` as a Responses ``response``, named ``model``.

    Reasoning text (``reasoning_content``/``reasoning``) becomes a reasoning
    item, text (and a refusal) one message item, each tool call a
    function_call item. ``length`` stops read as incomplete
    (``max_output_tokens``). Raises :class:`UpstreamError` when malformed.
    """
    choices = resp.get("choices") if isinstance(resp, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamError("the upstream chat completion has no choices[0].message")
    source = resp["id"] if isinstance(resp.get("id"), str) else ""
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(f"{source}:{len(output)}", reasoning))
    text = _text_of(message)
    if text:
        output.append(message_item(f"{source}:{len(output)}", text))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UpstreamError("the upstream chat completion's tool_calls is not a list")
    output += [_call(call, source, i) for i, call in enumerate(calls)]
    response = response_object(source, model=model, created=created, status="", output=output)
    finish(response, choice.get("finish_reason"))
    usage = resp.get("usage")
    response["usage"] = responses_usage(usage if isinstance(usage, dict) else None)
    return response


def _text_of(message: dict[str, Any]) -> str:
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with text parts
        text = "".join(
            p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    refusal = message.get("refusal")
    texts = [t for t in (text, refusal) if isinstance(t, str) and t]
    return "".join(texts)


def _call(call: Any, source: str, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise UpstreamError(f"the upstream tool call {index} has no function name")
    given = call.get("id")
    call_id = given if isinstance(given, str) and given else tool_call_id(source, index)
    return call_item(call_id, function["name"], arguments_text(function.get("arguments")))


def arguments_text(arguments: Any) -> str:
    """Tool-call arguments as the JSON text Responses carries (empty reads as ``{}``)."""
    if isinstance(arguments, str) and arguments.strip():
        return arguments
    if isinstance(arguments, dict):  # a few servers send the object itself
        return orjson.dumps(arguments).decode()
    return "{}"
