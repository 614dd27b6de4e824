"""An OpenAI Chat Completions request, rewritten as an Anthropic Messages request.

New dicts are built around the caller's strings; tool-call argument text is
parsed once into the ``input`` object Anthropic wants.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.errors import InvalidRequest
from corral.protocols.base import max_field
from corral.protocols.common import refuse

_TARGET = "Anthropic Messages"
DEFAULT_MAX_TOKENS = 8192
"""Output cap when a Chat request sets none: Anthropic requires one."""

# Hints about how the provider works, not about what the model reads or writes.
_DROPPED = frozenset(
    {
        "seed",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "metadata",  # OpenAI keeps it with a stored completion; nothing is stored here
        "stream_options",  # usage is always read from the Anthropic stream
    }
)
_UNSUPPORTED = {
    "functions": "the deprecated functions field is not translated; send tools",
    "function_call": "the deprecated function_call field is not translated; send tool_choice",
    "prediction": "Anthropic has no predicted outputs",
    "web_search_options": "web search runs as an OpenAI server tool",
    "verbosity": "Anthropic has no verbosity setting",
    "moderation": "Anthropic has no moderation setting",
    "logit_bias": "Anthropic cannot bias tokens",
    "logprobs": "Anthropic returns no log probabilities",
    "top_logprobs": "Anthropic returns no log probabilities",
    "n": "Anthropic returns one choice per request",
    "audio": "Anthropic models do not speak",
    "modalities": "Anthropic models answer in text only",
    "store": "Anthropic does not store completions",
    "frequency_penalty": "Anthropic has no frequency penalty",
    "presence_penalty": "Anthropic has no presence penalty",
}
# Values of unsupported fields that ask for nothing, so are accepted.
_NO_OPS: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "n": (1,),
    "modalities": (["text"],),
    "store": (False,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}
# Extended-thinking budget for each reasoning effort (Anthropic wants >= 1024, < max_tokens).
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}


def chat_to_messages(
    body: dict[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """Translate a Chat Completions request body into a Messages request body.

    ``default_max_tokens`` is the output cap when the request sets none
    (Anthropic requires one; pass the deployment's limit). Raises
    :class:`InvalidRequest` naming any part that has no faithful translation.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system, messages = _conversation(body.get("messages"))
    out["max_tokens"] = _max_tokens(body, default_max_tokens)
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = messages
    for key, value in body.items():
        if value is None or key in _HANDLED:
            continue
        handler = _FIELDS.get(key)
        if handler is not None:
            handler(value, out)
        elif key in _NO_OPS and value in _NO_OPS[key]:
            continue
        elif key not in _DROPPED:
            reason = _UNSUPPORTED.get(key, "Anthropic Messages has no such field")
            raise refuse(key, reason, target=_TARGET)
    _parallel(body.get("parallel_tool_calls"), out)
    if "tools" not in out:
        out.pop("tool_choice", None)  # Anthropic refuses a tool choice without tools
    _user(body, out)
    return out


# -- the conversation ----------------------------------------------------------


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system blocks and the Anthropic messages.

    System and developer messages before the first other message make the
    system prompt. One later on is refused: Anthropic's system prompt comes
    before the conversation, and moving it would change what the model reads
    when.
    """
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of messages")
    system: list[dict[str, Any]] = []
    turns = _Turns()
    last = len(messages) - 1
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{path}: must be an object with a 'role'")
        role = message.get("role")
        if message.get("name") is not None:
            raise refuse(f"{path}.name", "Anthropic messages carry no author name", target=_TARGET)
        if role in ("system", "developer"):
            if turns.messages:
                raise refuse(
                    path,
                    f"a {role} message after the conversation has started has no place in "
                    "Anthropic's system prompt, which precedes every message; move it first",
                    target=_TARGET,
                )
            system += _text_blocks(message.get("content"), f"{path}.content")
        elif role == "tool":
            turns.tool_result(_tool_result(message, path))
        elif role == "user":
            turns.user(_user_content(message.get("content"), f"{path}.content"))
        elif role == "assistant":
            if i == last and not message.get("tool_calls"):
                raise refuse(
                    path,
                    "a final assistant message would be continued by Anthropic (prefill), "
                    "not answered with a new message as Chat Completions does",
                    target=_TARGET,
                )
            turns.assistant(_assistant(message, path))
        else:
            raise refuse(f"{path}.role", f"role {role!r} is not translated", target=_TARGET)
    return system, turns.messages


class _Turns:
    """Anthropic messages being built: the results of one round of tool calls and the
    user message after them make one user turn (tool results first, as Anthropic wants)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._results: list[dict[str, Any]] | None = None  # the open user turn's content

    def tool_result(self, block: dict[str, Any]) -> None:
        if self._results is None:
            self._results = [block]
            self.messages.append({"role": "user", "content": self._results})
        else:
            self._results.append(block)

    def user(self, content: str | list[dict[str, Any]]) -> None:
        if self._results is None:
            self.messages.append({"role": "user", "content": content})
        elif isinstance(content, str):
            if content:  # Anthropic refuses empty text blocks
                self._results.append({"type": "text", "text": content})
        else:
            self._results += content
        self._results = None

    def assistant(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._results = None


def _text_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or an array of text parts")
    return [_text_block(part, f"{path}[{k}]") for k, part in enumerate(content)]


def _text_block(part: Any, path: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in ("text", "refusal"):
        raise InvalidRequest(f"{path}: must be a text part")
    text = part.get(kind)
    if not isinstance(text, str):
        raise InvalidRequest(f"{path}.{kind}: must be a string")
    return {"type": "text", "text": text}


def _user_content(content: Any, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: must be a string or an array of content parts")
    blocks: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        ppath = f"{path}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_block(part, ppath))
        elif kind == "image_url":
            blocks.append(_image(part, ppath))
        elif kind == "file":
            blocks.append(_document(part, ppath))
        elif kind == "input_audio":
            raise refuse(f"{ppath}.type", "Anthropic models do not hear audio", target=_TARGET)
        elif isinstance(kind, str):
            raise refuse(f"{ppath}.type", f"a '{kind}' part is not translated", target=_TARGET)
        else:
            raise InvalidRequest(f"{ppath}: must be a content part with a 'type'")
    return blocks


def _parse_data_url(url: str, path: str) -> tuple[str, str]:
    """``data:<media type>;base64,<data>`` → (media type, data)."""
    head, comma, data = url.partition(",")
    media_type, _, encoding = head[5:].partition(";")
    if not comma or encoding != "base64" or not media_type:
        raise refuse(path, "only base64 data URLs can be translated", target=_TARGET)
    return media_type, data


def _image(part: dict[str, Any], path: str) -> dict[str, Any]:
    """An ``image_url`` part as an image block (``detail`` is a resolution hint: left out)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest(f"{path}.image_url.url: must be a string")
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, f"{path}.image_url.url")
        source = {"type": "base64", "media_type": media_type, "data": data}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def _document(part: dict[str, Any], path: str) -> dict[str, Any]:
    """A ``file`` part holding a base64 PDF as a document block (the filename its title)."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise InvalidRequest(f"{path}.file: must be an object")
    data_url = file.get("file_data")
    if not isinstance(data_url, str):
        reason = "a file_id names a file uploaded to OpenAI; send file_data"
        raise refuse(f"{path}.file", reason, target=_TARGET)
    if not data_url.startswith("data:"):
        data_url = "data:application/pdf;base64," + data_url
    media_type, data = _parse_data_url(data_url, f"{path}.file.file_data")
    if media_type != "application/pdf":
        raise refuse(f"{path}.file", "only PDF files can be translated", target=_TARGET)
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block


def _assistant(message: dict[str, Any], path: str) -> dict[str, Any]:
    """Text (and a refusal, which is text the model said) then the tool calls as tool_use.

    ``reasoning_content`` / ``reasoning`` (vLLM, DeepSeek) are left out: an
    Anthropic model accepts only reasoning it signed itself.
    """
    for key in ("audio", "function_call"):
        if message.get(key) is not None:
            raise refuse(f"{path}.{key}", "is not translated", target=_TARGET)
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        blocks = [
            block
            for block in _text_blocks(content, f"{path}.content")
            if block["text"]  # Anthropic refuses empty text blocks
        ]
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidRequest(f"{path}.tool_calls: must be an array")
        blocks += [_tool_use(call, f"{path}.tool_calls[{k}]") for k, call in enumerate(calls)]
    if not blocks:
        return {"role": "assistant", "content": content if isinstance(content, str) else ""}
    return {"role": "assistant", "content": blocks}


def _tool_use(call: Any, path: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise InvalidRequest(f"{path}: must be an object")
    if call.get("type", "function") != "function":
        raise refuse(f"{path}.type", "only function tool calls are translated", target=_TARGET)
    function = call.get("function")
    call_id = call.get("id")
    if not isinstance(function, dict) or not isinstance(call_id, str):
        raise InvalidRequest(f"{path}: a tool call needs an id and a function")
    name, arguments = function.get("name"), function.get("arguments", "")
    if not isinstance(name, str) or not isinstance(arguments, str):
        raise InvalidRequest(f"{path}.function: needs string name and arguments")
    return {"type": "tool_use", "id": call_id, "name": name, "input": _arguments(arguments, path)}


def _arguments(arguments: str, path: str) -> dict[str, Any]:
    """Argument text as the object Anthropic wants; empty text (no arguments) is ``{}``."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise refuse(
            f"{path}.function.arguments",
            f"is not valid JSON ({exc}), and Anthropic tool input must be a JSON object",
            target=_TARGET,
        ) from exc
    if not isinstance(value, dict):
        raise refuse(
            f"{path}.function.arguments",
            "is not a JSON object, and Anthropic tool input must be one",
            target=_TARGET,
        )
    return value


def _tool_result(message: dict[str, Any], path: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(f"{path}.tool_call_id: must be a string")
    content = message.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        content = _text_blocks(content, f"{path}.content")
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


# -- fields --------------------------------------------------------------------


def _max_tokens(body: dict[str, Any], default: int) -> int:
    value = max_field(body, "max_completion_tokens", "max_tokens")
    return default if value is None else value


def _tools(tools: Any, out: dict[str, Any]) -> None:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array")
    if tools:
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]


def _tool(tool: Any, path: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidRequest(f"{path}: must be an object")
    if tool.get("type") != "function":
        kind = tool.get("type")
        raise refuse(f"{path}.type", f"a '{kind}' tool is not translated", target=_TARGET)
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{path}.function: needs a 'name'")
    out: dict[str, Any] = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    schema = function.get("parameters")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(f"{path}.function.parameters: must be a JSON schema object")
    out["input_schema"] = schema if schema is not None else {"type": "object", "properties": {}}
    if isinstance(function.get("strict"), bool):
        out["strict"] = function["strict"]
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if choice == "auto":
        out["tool_choice"] = {"type": "auto"}
    elif choice == "required":
        out["tool_choice"] = {"type": "any"}
    elif choice == "none":
        out["tool_choice"] = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice.function.name: must be a string")
        out["tool_choice"] = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        reason = f"a '{choice['type']}' tool choice is not translated"
        raise refuse("tool_choice", reason, target=_TARGET)
    else:
        raise InvalidRequest("tool_choice: must be auto, required, none or a function choice")


def _parallel(value: Any, out: dict[str, Any]) -> None:
    if value is None or value is True:
        return
    if value is not False:
        raise InvalidRequest("parallel_tool_calls: must be true or false")
    choice = out.setdefault("tool_choice", {"type": "auto"})
    if choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True


def _user(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``user`` (or its successor ``safety_identifier``) as ``metadata.user_id``."""
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string")
        out["metadata"] = {"user_id": value}
        return


def _stop(stop: Any, out: dict[str, Any]) -> None:
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = stop
    else:
        raise InvalidRequest("'stop' must be a string or an array of strings")


def _temperature(value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("'temperature' must be a number")
    if value > 1:
        raise refuse(
            "temperature", f"{value} is above 1, the highest Anthropic accepts", target=_TARGET
        )
    out["temperature"] = value


def _top_p(value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("'top_p' must be a number")
    out["top_p"] = value


def _top_k(value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest("'top_k' must be a non-negative integer")
    out["top_k"] = value


def _stream(value: Any, out: dict[str, Any]) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest("'stream' must be true or false")
    out["stream"] = value


def _reasoning_effort(effort: Any, out: dict[str, Any]) -> None:
    """An effort level as extended thinking with a token budget (``none`` turns it off).

    The budget must leave room for the answer: at least 1024 tokens and fewer
    than ``max_tokens``; it shrinks to fit, and the request is refused if even
    1024 do not fit. A request that answers tool calls (its last message holds
    tool results) continues an assistant turn; Anthropic then wants that turn's
    signed thinking, which Chat never carries, so thinking stays off for it.
    """
    if not isinstance(effort, str) or (effort != "none" and effort not in THINKING_BUDGETS):
        raise InvalidRequest("'reasoning_effort' must be none, minimal, low, medium or high")
    if effort == "none" or _continues_tool_use(out["messages"]):
        # Anthropic requires the assistant turn a tool result continues to open with the
        # model's signed thinking, which a Chat history never holds: think on the next turn.
        out["thinking"] = {"type": "disabled"}
        return
    budget = min(THINKING_BUDGETS[effort], out["max_tokens"] - 1)
    if budget < 1024:
        raise refuse(
            "reasoning_effort",
            "Anthropic thinking needs a budget of 1024 tokens below max_tokens; "
            "raise max_completion_tokens above 1024",
            target=_TARGET,
        )
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _continues_tool_use(messages: list[dict[str, Any]]) -> bool:
    content = messages[-1]["content"] if messages else None
    return isinstance(content, list) and bool(content) and content[0]["type"] == "tool_result"


def _response_format(value: Any, out: dict[str, Any]) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema: must be an object")
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif kind == "json_object":
        reason = "Anthropic has JSON output only with a schema; send a json_schema format"
        raise refuse("response_format", reason, target=_TARGET)
    else:
        raise InvalidRequest("response_format: must be text, json_schema or json_object")


def _ignore(value: Any, out: dict[str, Any]) -> None:
    """Read elsewhere."""


_HANDLED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens"})
_FIELDS = {
    "stream": _stream,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "stop": _stop,
    "temperature": _temperature,
    "top_p": _top_p,
    "top_k": _top_k,
    "reasoning_effort": _reasoning_effort,
    "response_format": _response_format,
    "parallel_tool_calls": _ignore,
    "user": _ignore,
    "safety_identifier": _ignore,
}
