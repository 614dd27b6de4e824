"""Whole (non-streamed) responses and error bodies, from one protocol to the other."""

from __future__ import annotations

from typing import Any

import orjson

from corral.errors import CorralError, UpstreamError
from corral.protocols.base import anthropic_error, error_fields, openai_error, upstream_error
from corral.protocols.common import (
    chat_id,
    chat_usage,
    finish_reason,
    json_text,
    message_id,
    messages_usage,
    stop_reason,
    tool_call_id,
)


def chat_response_to_messages(resp: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A ``chat.completion`` as a Messages ``message``, named ``model``.

    Reasoning text (``reasoning_content`` or ``reasoning``, as vLLM and
    DeepSeek send it) becomes a thinking block with an empty signature.
    Raises :class:`UpstreamError` when the completion is malformed or a tool
    call's arguments are not a JSON object.
    """
    choices = resp.get("choices") if isinstance(resp, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamError("the upstream chat completion has no choices[0].message")
    source = _source_id(resp)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UpstreamError("the upstream chat completion's tool_calls is not a list")
    content = _message_content(message)
    content += [_tool_use(call, source, i) for i, call in enumerate(calls)]
    return {
        "id": message_id(source),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), called_tools=bool(calls)),
        "stop_sequence": None,
        "usage": messages_usage(resp.get("usage") if isinstance(resp.get("usage"), dict) else None),
    }


def _message_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Reasoning, text and refusal of a Chat message as thinking and text blocks."""
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with text parts
        text = "".join(
            p["text"] for p in text if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    return content


def _source_id(resp: dict[str, Any]) -> str:
    source = resp.get("id")
    return source if isinstance(source, str) else ""


def _tool_use(call: Any, source: str, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise UpstreamError(f"the upstream tool call {index} has no function name")
    call_id = call.get("id")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else tool_call_id(source, index),
        "name": function["name"],
        "input": tool_input(function.get("arguments"), function["name"]),
    }


def tool_input(arguments: Any, name: str) -> dict[str, Any]:
    """Tool-call argument text as the object Anthropic's ``input`` holds.

    Empty text means no arguments. Anything else that is not a JSON object
    is an upstream failure: an Anthropic client could not run the call.
    """
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, dict):  # a few servers send the object itself
        return arguments
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"the upstream model called tool {name!r} with arguments that are not a JSON object"
        )
    return value


def messages_response_to_chat(
    resp: dict[str, Any], *, model: str, created: int = 0
) -> dict[str, Any]:
    """A Messages ``message`` as a ``chat.completion``, named ``model``.

    Text blocks join into ``content``; thinking joins into ``reasoning_content``
    (the field vLLM and DeepSeek use; OpenAI's own Chat has none); redacted
    thinking is opaque and left out. ``created`` is the Unix time to report
    (pass the gateway clock's). Raises :class:`UpstreamError` on a block no
    Chat client could use (server tools, which requests never ask for).
    """
    blocks = resp.get("content") if isinstance(resp, dict) else None
    if not isinstance(blocks, list):
        raise UpstreamError("the upstream message has no content list")
    source = _source_id(resp)
    usage = resp.get("usage")
    choice = {
        "index": 0,
        "message": _chat_message(blocks),
        "logprobs": None,
        "finish_reason": finish_reason(resp.get("stop_reason")),
    }
    return {
        "id": chat_id(source),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": chat_usage(usage if isinstance(usage, dict) else None),
    }


def _chat_message(blocks: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            calls.append(_tool_call(block))
        elif kind != "redacted_thinking":
            raise UpstreamError(f"the upstream message holds a {kind!r} block Chat cannot carry")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise UpstreamError("the upstream tool_use block has no id or name")
    try:
        arguments = json_text(block.get("input", {}), "input")
    except CorralError as exc:
        raise UpstreamError(f"the upstream tool_use input cannot be written: {exc}") from exc
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- error bodies --------------------------------------------------------------


def openai_error_to_anthropic(status: int, body: bytes | dict[str, Any]) -> bytes:
    """An OpenAI-style error body (any status) as Anthropic's error shape.

    The message is kept; the type follows the status, as Corral renders its
    own errors. Understands OpenAI's ``{"error": {...}}``, vLLM's older
    ``{"object": "error", "message": ...}`` and plain-text bodies.
    """
    message, _ = error_fields(body)
    text = message or f"upstream error (HTTP {status})"
    return anthropic_error(upstream_error(text, status=status))


def anthropic_error_to_openai(status: int, body: bytes | dict[str, Any]) -> bytes:
    """An Anthropic error body as OpenAI's shape; the Anthropic type becomes ``code``.

    A prompt longer than the context window gets OpenAI's own code for it,
    ``context_length_exceeded``, which clients look for.
    """
    message, kind = error_fields(body)
    text = message or f"upstream error (HTTP {status})"
    code = kind or "upstream_error"
    if status == 400 and "prompt is too long" in text:
        code = "context_length_exceeded"
    return openai_error(upstream_error(text, status=status, code=code))
