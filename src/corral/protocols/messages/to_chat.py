"""An Anthropic Messages request, rewritten as an OpenAI Chat Completions request.

New dicts are built around the caller's strings (no copies of long text, no
deep copies); tool-input objects are written once as JSON argument text.
"""

from __future__ import annotations

from typing import Any

from corral.errors import InvalidRequest
from corral.protocols.common import json_text, refuse

_TARGET = "OpenAI Chat Completions"

# Hints that change how the provider works, not what the model reads.
_DROPPED = frozenset({"cache_control", "service_tier", "speed", "context_management"})
_UNSUPPORTED = {
    "container": "code-execution containers exist only on Anthropic's servers",
    "mcp_servers": "MCP connectors run on Anthropic's servers",
    "inference_geo": "Chat Completions cannot pin where inference runs",
}
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


def messages_to_chat(
    body: dict[str, Any], *, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    """Translate a Messages request body into a Chat Completions request body.

    ``max_tokens`` goes in ``max_tokens_field``: ``max_completion_tokens`` for
    OpenAI, ``max_tokens`` for servers that only read the older field. Raises
    :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    out: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    if "model" in body:
        out["model"] = body["model"]
    _system(body.get("system"), "system", messages)
    _conversation(body.get("messages"), messages)
    out["messages"] = messages
    for key, value in body.items():
        if value is None or key in _HANDLED:
            continue
        handler = _FIELDS.get(key)
        if handler is not None:
            handler(value, out)
        elif key not in _DROPPED:
            reason = _UNSUPPORTED.get(key, "Chat Completions has no such field")
            raise refuse(key, reason, target=_TARGET)
    if isinstance(body.get("max_tokens"), int):
        out[max_tokens_field] = body["max_tokens"]
    if "tool_choice" in out and "tools" not in out:
        del out["tool_choice"]  # Chat refuses a tool choice without tools
    if "parallel_tool_calls" in out and "tools" not in out:
        del out["parallel_tool_calls"]
    _thinking(body.get("thinking"), body.get("output_config"), out)
    return out


# -- the conversation ----------------------------------------------------------


def _system(system: Any, path: str, out: list[dict[str, Any]]) -> None:
    if system is None or system == "":
        return
    if isinstance(system, str):
        out.append({"role": "system", "content": system})
        return
    if not isinstance(system, list):
        raise InvalidRequest(f"{path}: must be a string or a list of text blocks")
    parts = [_text_part(block, f"{path}.{i}") for i, block in enumerate(system)]
    if parts:
        out.append({"role": "system", "content": _collapse(parts)})


def _conversation(messages: Any, out: list[dict[str, Any]]) -> None:
    if not isinstance(messages, list):
        raise InvalidRequest("messages: must be a list of messages")
    last = len(messages) - 1
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object with a role and content")
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            _user(content, path, out)
        elif role == "assistant":
            if i == last:
                raise refuse(
                    path,
                    "a final assistant message asks the model to continue it (prefill), "
                    "and Chat Completions always starts a new assistant message",
                    target=_TARGET,
                )
            out.append(_assistant(content, path))
        elif role == "system":  # mid-conversation system message: kept in place
            _system(content, f"{path}.content", out)
        else:
            raise InvalidRequest(f"{path}.role: must be 'user', 'assistant' or 'system'")


def _user(content: Any, path: str, out: list[dict[str, Any]]) -> None:
    """A user turn: its tool results first (Chat wants them right after the calls), then
    the rest; images inside tool results move to that user message, in order."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    answered = False
    for j, block in enumerate(content):
        bpath = f"{path}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, bpath))
        elif kind == "image":
            parts.append(_image_part(block, bpath))
        elif kind == "document":
            parts.append(_document_part(block, bpath))
        elif kind == "tool_result":
            out.append(_tool_message(block, bpath, moved))
            answered = True
        else:
            raise _block_refusal(block, bpath, "a user message")
    if moved:
        parts[:0] = moved
    if parts or not answered:
        out.append({"role": "user", "content": _collapse(parts)})


def _assistant(content: Any, path: str) -> dict[str, Any]:
    """An assistant turn: its text as content, its tool_use blocks as tool_calls.

    Thinking blocks are left out: they are one model's private reasoning,
    signed for that model, and Chat requests have no field for them.
    """
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}.content: must be a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bpath = f"{path}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, bpath))
        elif kind == "tool_use":
            calls.append(_tool_call(block, bpath))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _block_refusal(block, bpath, "an assistant message")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": _collapse(parts) if parts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part reads as a plain string (every server accepts it); else the list."""
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


# -- content blocks ------------------------------------------------------------


def _text_part(block: Any, path: str) -> dict[str, Any]:
    """A text block (citations and cache_control are annotations and hints: left out)."""
    if not isinstance(block, dict) or block.get("type") != "text":
        raise InvalidRequest(f"{path}: must be a text block")
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{path}.text: must be a string")
    return {"type": "text", "text": text}


def _source(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{path}.source: must be an object")
    return source


def _data_url(source: dict[str, Any], path: str) -> str:
    media_type, data = source.get("media_type"), source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise InvalidRequest(f"{path}.source: a base64 source needs media_type and data strings")
    return f"data:{media_type};base64,{data}"


def _image_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = _source(block, path)
    kind = source.get("type")
    if kind == "base64":
        url = _data_url(source, path)
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif kind == "file":
        raise refuse(
            f"{path}.source", "a file_id names a file uploaded to Anthropic", target=_TARGET
        )
    else:
        raise InvalidRequest(f"{path}.source: must be a base64 or url image source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], path: str) -> dict[str, Any]:
    """A base64 PDF becomes a Chat ``file`` part; nothing else has a counterpart."""
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise refuse(f"{path}.citations", "Chat Completions cannot cite documents", target=_TARGET)
    if block.get("context") is not None:
        raise refuse(f"{path}.context", "Chat file parts carry no context", target=_TARGET)
    source = _source(block, path)
    if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
        raise refuse(
            f"{path}.source",
            "only base64 PDF documents have a Chat counterpart (a file part)",
            target=_TARGET,
        )
    title = block.get("title")
    name = title if isinstance(title, str) and title else "document.pdf"
    return {"type": "file", "file": {"filename": name, "file_data": _data_url(source, path)}}


def _tool_call(block: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise InvalidRequest(f"{path}: a tool_use block needs string id and name")
    arguments = json_text(block.get("input", {}), f"{path}.input")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_message(block: dict[str, Any], path: str, moved: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool_result as a ``tool`` message; ``is_error`` shows as a leading "Error: "."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{path}.tool_use_id: must be a string")
    content = block.get("content")
    error = block.get("is_error") is True
    result: str | list[dict[str, Any]]
    if content is None or isinstance(content, str):
        text = content or ""
        result = ("Error: " + text if text else "Error") if error else text
    elif isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for k, item in enumerate(content):
            ipath = f"{path}.content.{k}"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append(_text_part(item, ipath))
            elif kind == "image":  # Chat tool messages hold text only
                moved.append(_image_part(item, ipath))
            else:
                raise _block_refusal(item, ipath, "a tool result")
        if error and parts and parts[0]["type"] == "text":
            parts[0] = {"type": "text", "text": "Error: " + parts[0]["text"]}
        elif error:
            parts.insert(0, {"type": "text", "text": "Error"})
        result = _collapse(parts)
    else:
        raise InvalidRequest(f"{path}.content: must be a string or a list of content blocks")
    return {"role": "tool", "tool_call_id": call_id, "content": result}


def _block_refusal(block: Any, path: str, where: str) -> InvalidRequest:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        return InvalidRequest(f"{path}: must be a content block with a 'type'")
    return refuse(
        f"{path}.type", f"a '{kind}' block in {where} has no Chat counterpart", target=_TARGET
    )


# -- fields --------------------------------------------------------------------


def _tools(tools: Any, out: dict[str, Any]) -> None:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    if tools:
        out["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]


def _tool(tool: Any, path: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"{path}: each tool needs a 'name'")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise refuse(
            f"{path}.type",
            f"'{kind}' is a tool Anthropic defines and runs or schemas itself",
            target=_TARGET,
        )
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{path}.input_schema: must be a JSON schema object")
    function: dict[str, Any] = {"name": tool["name"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = schema
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequest("tool_choice: must be auto, any, none or {type: tool, name}")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


def _metadata(metadata: Any, out: dict[str, Any]) -> None:
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object")
    for key, value in metadata.items():
        if key != "user_id":
            raise refuse(f"metadata.{key}", "Chat Completions knows only a user", target=_TARGET)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidRequest("metadata.user_id: must be a string")
            out["user"] = value


def _stop_sequences(stop: Any, out: dict[str, Any]) -> None:
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop_sequences: must be a list of strings")
    if stop:
        out["stop"] = stop


def _number(name: str) -> Any:
    def copy(value: Any, out: dict[str, Any]) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{name}: must be a number")
        out[name] = value

    return copy


def _stream(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest("stream: must be true or false")
    out["stream"] = value
    if value:  # the client's message_delta needs the usage only this chunk carries
        out["stream_options"] = {"include_usage": True}


def _max_tokens(value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("max_tokens: must be an integer")


def _thinking(thinking: Any, config: Any, out: dict[str, Any]) -> None:
    """``output_config.effort`` or an extended-thinking budget → ``reasoning_effort``.

    Anthropic states reasoning as a token budget, Chat as an effort level:
    under 4096 tokens reads as low, under 16384 as medium, more as high.
    Adaptive or disabled thinking leaves the model's default.
    """
    effort: str | None = None
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise InvalidRequest("thinking.budget_tokens: must be an integer")
            effort = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
        elif kind not in ("adaptive", "disabled", "between_tools"):
            raise InvalidRequest("thinking: must be {type: enabled, budget_tokens} or adaptive")
    if config is not None:
        if not isinstance(config, dict):
            raise InvalidRequest("output_config: must be an object")
        for key, value in config.items():
            if value is None:
                continue
            if key == "effort":
                if not isinstance(value, str) or value not in _EFFORTS:
                    raise InvalidRequest("output_config.effort: must be low, medium, high or max")
                effort = _EFFORTS[value]
            elif key == "format":
                out["response_format"] = _response_format(value)
            else:
                raise refuse(f"output_config.{key}", "Chat has no such setting", target=_TARGET)
    if effort is not None:
        out["reasoning_effort"] = effort


def _response_format(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        raise InvalidRequest("output_config.format: must be {type: json_schema, schema}")
    schema = value.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("output_config.format.schema: must be a JSON schema object")
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def _ignore(value: Any, out: dict[str, Any]) -> None:
    """Read elsewhere (``thinking`` and ``output_config`` together, at the end)."""


_HANDLED = frozenset({"model", "messages", "system"})
_FIELDS = {
    "max_tokens": _max_tokens,
    "stream": _stream,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "metadata": _metadata,
    "stop_sequences": _stop_sequences,
    "temperature": _number("temperature"),
    "top_p": _number("top_p"),
    "top_k": _number("top_k"),
    "thinking": _ignore,
    "output_config": _ignore,
}
