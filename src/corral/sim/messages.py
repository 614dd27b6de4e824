"""Anthropic Messages: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from corral.errors import InvalidRequest
from corral.sim.generate import Reply
from corral.sim.request import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    SimRequest,
    ToolSpec,
    new_request,
    positive_int,
)
from corral.sim.wire import Frame, Meta, Usage, argument_chunks, sse_event, text_chunks

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_IMAGE_BLOCKS = frozenset({"image", "document", "file"})


def parse_messages(body: Any, *, count_only: bool = False) -> SimRequest:
    """Normalise a Messages body; ``count_only`` (count_tokens) does not need ``max_tokens``."""
    request = new_request("messages", body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: field required (a non-empty list)")
    max_tokens = positive_int(body, "max_tokens")
    if max_tokens is None and not count_only:
        raise InvalidRequest("max_tokens: field required")
    request.max_tokens = max_tokens
    _parse_tools(request, body)
    _parse_system(request, body.get("system"))
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            # mid-conversation system messages (beta mid-conversation-system, sent by Claude Code)
            _parse_system(request, message.get("content"))
            continue
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{index}: role must be 'user', 'assistant' or 'system'")
        _parse_message(request, message)
    if isinstance(body.get("cache_control"), dict):
        request.prompt.mark()  # automatic caching: a breakpoint on the last block
    _parse_thinking(request, body.get("thinking"))
    return request


def _parse_tools(request: SimRequest, body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    for tool in tools or ():
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest("tools: each tool needs a 'name'")
        if tool.get("type") in (None, "custom"):
            schema = tool.get("input_schema")
            request.tools.append(ToolSpec(tool["name"], schema if isinstance(schema, dict) else {}))
        visible = {k: v for k, v in tool.items() if k != "cache_control"}
        request.prompt.add(orjson.dumps(visible).decode(), overhead=MESSAGE_OVERHEAD)
        if isinstance(tool.get("cache_control"), dict):
            request.prompt.mark()
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "any":
        request.tool_choice = "required"
    elif kind == "none":
        request.tool_choice = "none"
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        request.tool_choice, request.forced_tool = "tool", choice["name"]


def _parse_system(request: SimRequest, system: Any) -> None:
    if isinstance(system, str):
        if system:
            request.prompt.add(f"system: {system}", overhead=MESSAGE_OVERHEAD)
        return
    if system is None:
        return
    if not isinstance(system, list):
        raise InvalidRequest("system: must be a string or a list of text blocks")
    for block in system:
        if not isinstance(block, dict) or not isinstance(block.get("text"), str):
            raise InvalidRequest("system: each block must be a text block")
        request.prompt.add(f"system: {block['text']}", overhead=MESSAGE_OVERHEAD)
        if isinstance(block.get("cache_control"), dict):
            request.prompt.mark()


def _parse_message(request: SimRequest, message: dict[str, Any]) -> None:
    role = message["role"]
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise InvalidRequest("messages: content must be a string or a list of blocks")
    texts: list[str] = []
    names: list[str] = []
    tool_result = False
    request.prompt.add(role, overhead=MESSAGE_OVERHEAD)
    for block in blocks:
        if not isinstance(block, dict):
            raise InvalidRequest("messages: each content block must be an object")
        text, images = _block_text(block)
        kind = block.get("type")
        if kind == "text":
            texts.append(text)
        elif kind == "tool_result":
            tool_result = True
        elif kind == "tool_use":
            names.append(str(block.get("name", "")))
        request.prompt.add(text, fixed=images * IMAGE_TOKENS)
        if isinstance(block.get("cache_control"), dict):
            request.prompt.mark()
    if role == "assistant":
        request.saw_assistant(names)
    else:
        request.saw_user("\n".join(texts), tool_result=tool_result)


def _block_text(block: dict[str, Any]) -> tuple[str, int]:
    """What the model sees of one content block, and how many images it holds."""
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", "")), 0
    if kind in _IMAGE_BLOCKS:
        return "", 1
    if kind == "thinking":
        return str(block.get("thinking", "")), 0
    if kind == "tool_use":
        return f"{block.get('name', '')}({orjson.dumps(block.get('input', {})).decode()})", 0
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            parts = [_block_text(part) for part in content if isinstance(part, dict)]
            return "\n".join(text for text, _ in parts), sum(n for _, n in parts)
        return str(content), 0
    visible = {k: v for k, v in block.items() if k not in ("cache_control", "signature", "data")}
    return orjson.dumps(visible).decode(), 0


def _parse_thinking(request: SimRequest, thinking: Any) -> None:
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return
    request.reasoning = True
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        request.thinking_budget = budget


def messages_usage(usage: Usage, *, output: int | None = None) -> dict[str, Any]:
    """Usage in Messages shape: ``input_tokens`` excludes cache reads and writes."""
    return {
        "input_tokens": usage.uncached_input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.output if output is None else output,
        "service_tier": "standard",
    }


def _signature(text: str) -> str:
    return "corral-sim-" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.thinking:
        blocks.append(
            {
                "type": "thinking",
                "thinking": reply.thinking,
                "signature": _signature(reply.thinking),
            }
        )
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    blocks += [
        {
            "type": "tool_use",
            "id": _tool_id(call.id),
            "name": call.name,
            "input": call.input_object(),
        }
        for call in reply.tool_calls
    ]
    return blocks


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def messages_json(reply: Reply, usage: Usage, meta: Meta) -> bytes:
    """The non-streamed ``message`` object."""
    return orjson.dumps(
        {
            "id": meta.response_id,
            "type": "message",
            "role": "assistant",
            "model": meta.model,
            "content": _content(reply),
            "stop_reason": _STOP[reply.finish],
            "stop_sequence": None,
            "usage": messages_usage(usage),
        }
    )


def messages_frames(reply: Reply, usage: Usage, meta: Meta, *, chunk_words: int) -> list[Frame]:
    """The streamed events, from ``message_start`` to ``message_stop``."""
    message: dict[str, Any] = {
        "id": meta.response_id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": messages_usage(usage, output=1),
    }
    frames = [sse_event("message_start", {"type": "message_start", "message": message})]
    index = 0
    if reply.thinking:
        pieces = text_chunks(reply.thinking, chunk_words, reply.reasoning_tokens)
        frames += _thinking_block(index, reply.thinking, pieces)
        index += 1
    if reply.text:
        pieces = text_chunks(reply.text, chunk_words, reply.text_tokens)
        deltas = [({"type": "text_delta", "text": piece}, n) for piece, n in pieces]
        frames += _block(index, {"type": "text", "text": ""}, deltas)
        index += 1
    for call in reply.tool_calls:
        arguments = orjson.dumps(call.input_object()).decode()
        deltas = [
            ({"type": "input_json_delta", "partial_json": piece}, n)
            for piece, n in argument_chunks(arguments, call.tokens())
        ]
        opening = {"type": "tool_use", "id": _tool_id(call.id), "name": call.name, "input": {}}
        frames += _block(index, opening, deltas)
        index += 1
    if len(frames) > 1:
        frames.insert(2, sse_event("ping", {"type": "ping"}))
    delta = {"stop_reason": _STOP[reply.finish], "stop_sequence": None}
    frames.append(
        sse_event(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": messages_usage(usage)},
        )
    )
    frames.append(sse_event("message_stop", {"type": "message_stop"}))
    return frames


def _block(
    index: int, block: dict[str, Any], deltas: list[tuple[dict[str, Any], int]]
) -> list[Frame]:
    start = {"type": "content_block_start", "index": index, "content_block": block}
    frames = [sse_event("content_block_start", start)]
    for delta, tokens in deltas:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        frames.append(sse_event("content_block_delta", payload, tokens))
    frames.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return frames


def _thinking_block(index: int, thinking: str, pieces: list[tuple[str, int]]) -> list[Frame]:
    deltas = [({"type": "thinking_delta", "thinking": piece}, n) for piece, n in pieces]
    deltas.append(({"type": "signature_delta", "signature": _signature(thinking)}, 0))
    return _block(index, {"type": "thinking", "thinking": "", "signature": ""}, deltas)
