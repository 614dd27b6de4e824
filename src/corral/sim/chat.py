"""OpenAI Chat Completions: ``POST /v1/chat/completions``, streamed or not."""

from __future__ import annotations

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
from corral.sim.wire import Frame, Meta, Usage, argument_chunks, sse_data, text_chunks

_FINGERPRINT = "fp_corral_sim"
_TOOL_RESULT_ROLES = ("tool", "function")


def parse_chat(body: Any) -> SimRequest:
    """Normalise a Chat Completions body; raises :class:`InvalidRequest` when malformed."""
    request = new_request("chat", body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array")
    _parse_tools(request, body)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{index}] must be an object with a 'role'")
        _parse_message(request, message)
    request.max_tokens = positive_int(body, "max_completion_tokens", "max_tokens")
    effort = body.get("reasoning_effort")
    request.effort = effort if isinstance(effort, str) else None
    request.reasoning = (effort not in (None, "none")) or "reason" in request.base_model
    options = body.get("stream_options")
    request.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return request


def _parse_tools(request: SimRequest, body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array")
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            schema = function.get("parameters")
            request.tools.append(
                ToolSpec(function["name"], schema if isinstance(schema, dict) else {})
            )
    if tools:
        request.prompt.add(orjson.dumps(tools).decode(), overhead=MESSAGE_OVERHEAD)
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        request.tool_choice = choice
    elif isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            request.tool_choice, request.forced_tool = "tool", function["name"]


def _parse_message(request: SimRequest, message: dict[str, Any]) -> None:
    role = message["role"]
    text, images = content_text(message.get("content"))
    calls = message.get("tool_calls")
    names: list[str] = []
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                names.append(str(function.get("name", "")))
                text += f"\n{function.get('name', '')}({function.get('arguments', '')})"
    request.prompt.add(f"{role}: {text}", overhead=MESSAGE_OVERHEAD, fixed=images * IMAGE_TOKENS)
    if role == "assistant":
        request.saw_assistant(names)
    elif role in _TOOL_RESULT_ROLES:
        request.saw_user(text, tool_result=True)
    elif role == "user":
        request.saw_user(text)


def content_text(content: Any) -> tuple[str, int]:
    """The text of a string-or-parts content, and how many image/file parts it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text", part.get("refusal"))
        if isinstance(text, str):
            texts.append(text)
        elif part.get("type") in ("image_url", "input_image", "file", "input_file", "input_audio"):
            images += 1
    return "\n".join(texts), images


def chat_usage(usage: Usage) -> dict[str, Any]:
    """Usage in Chat Completions shape: cached within prompt, reasoning within completion."""
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.output,
        "total_tokens": usage.prompt + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in reply.tool_calls
    ]


def chat_json(reply: Reply, usage: Usage, meta: Meta) -> bytes:
    """The non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.text if reply.text or not reply.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = _tool_calls(reply)
    return orjson.dumps(
        {
            "id": meta.response_id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
            ],
            "usage": chat_usage(usage),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
    )


def chat_frames(
    reply: Reply, usage: Usage, meta: Meta, *, include_usage: bool, chunk_words: int
) -> list[Frame]:
    """The ``chat.completion.chunk`` events, ending with ``data: [DONE]``."""
    head = {
        "id": meta.response_id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, tokens: int = 0) -> Frame:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload = {**head, "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return sse_data(payload, tokens)

    # Hidden reasoning still takes time: it is paced before the first visible delta.
    frames = [chunk({"role": "assistant", "content": "", "refusal": None}, None, usage.reasoning)]
    frames += [
        chunk({"content": text}, None, n)
        for text, n in text_chunks(reply.text, chunk_words, reply.text_tokens)
    ]
    for index, call in enumerate(reply.tool_calls):
        opening = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames.append(chunk({"tool_calls": [opening]}))
        for piece, tokens in argument_chunks(call.arguments, call.tokens()):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            frames.append(chunk(delta, None, tokens))
    frames.append(chunk({}, reply.finish))
    if include_usage:
        frames.append(sse_data({**head, "choices": [], "usage": chat_usage(usage)}))
    frames.append(Frame(b"data: [DONE]\n\n"))
    return frames
