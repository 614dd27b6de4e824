"""Whole Gemini responses to and from the internal form; finish reasons and usage blocks."""

from __future__ import annotations

from typing import Any

from corral.errors import UpstreamError
from corral.protocols.common import chat_id, count, json_text, tool_call_id
from corral.protocols.messages.bodies import tool_input

_TO_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_FROM_FINISH = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}


def chat_finish(reason: Any, *, called_tools: bool) -> str:
    """Gemini ``finishReason`` → Chat ``finish_reason``. A normal stop after function
    calls says ``tool_calls`` (clients decide to run tools from it); reasons with no
    counterpart (MALFORMED_FUNCTION_CALL, OTHER, …) read as ``stop``."""
    finish = _TO_FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called_tools and finish == "stop" else finish


def gemini_finish(reason: Any) -> str:
    """Chat ``finish_reason`` → Gemini ``finishReason``."""
    return _FROM_FINISH.get(reason, "STOP") if isinstance(reason, str) else "STOP"


def chat_usage(meta: dict[str, Any] | None) -> dict[str, Any]:
    """``usageMetadata`` as a Chat usage block: tool-use prompt tokens are prompt tokens
    (cached ones are already in ``promptTokenCount``); thoughts are completion tokens."""
    meta = meta or {}
    prompt = count(meta.get("promptTokenCount")) + count(meta.get("toolUsePromptTokenCount"))
    cached = min(prompt, count(meta.get("cachedContentTokenCount")))
    thoughts = count(meta.get("thoughtsTokenCount"))
    completion = count(meta.get("candidatesTokenCount")) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def usage_metadata(usage: dict[str, Any] | None) -> dict[str, Any]:
    """A Chat usage block as ``usageMetadata`` (cache writes stay in the prompt count:
    Google has no column for them)."""
    usage = usage or {}
    prompt = count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(prompt, count(details.get("cached_tokens"))) if isinstance(details, dict) else 0
    completion = count(usage.get("completion_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    reasoning = min(reasoning, completion)
    meta: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion - reasoning,
        "totalTokenCount": prompt + completion,
    }
    if cached:
        meta["cachedContentTokenCount"] = cached
    if reasoning:
        meta["thoughtsTokenCount"] = reasoning
    return meta


# -- Gemini → internal -------------------------------------------------------------


def gemini_response_to_chat(
    body: dict[str, Any], *, model: str, created: int = 0
) -> dict[str, Any]:
    """A ``GenerateContentResponse`` as a ``chat.completion`` named ``model``.

    A prompt blocked before any candidate reads as an empty ``content_filter`` answer.
    """
    source = body.get("responseId")
    source = source if isinstance(source, str) else ""
    candidates = body.get("candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
    if not isinstance(candidate, dict):
        raise UpstreamError("the upstream sent a candidate that is not an object")
    message = model_message(candidate.get("content"), source)
    reason = candidate.get("finishReason")
    if not candidates and isinstance(body.get("promptFeedback"), dict):
        reason = "SAFETY" if body["promptFeedback"].get("blockReason") else reason
    usage = body.get("usageMetadata")
    return {
        "id": chat_id(source),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": chat_finish(reason, called_tools=bool(message.get("tool_calls"))),
            }
        ],
        "usage": chat_usage(usage if isinstance(usage, dict) else None),
    }


def model_message(content: Any, source: str) -> dict[str, Any]:
    """A candidate's content as an assistant message: text, thought text as
    ``reasoning_content``, function calls as ``tool_calls`` (stable ids when Gemini sends
    none)."""
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append(chat_tool_call(call, source, len(calls)))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif any(k in part for k in ("executableCode", "codeExecutionResult", "inlineData")):
            kind = next(
                k for k in part if k in ("executableCode", "codeExecutionResult", "inlineData")
            )
            raise UpstreamError(
                f"the upstream answered with a {kind} part, which cannot be carried"
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def chat_tool_call(call: dict[str, Any], source: str, index: int) -> dict[str, Any]:
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise UpstreamError("the upstream sent a function call without a name")
    args = call.get("args")
    if args is not None and not isinstance(args, dict):
        raise UpstreamError(
            f"the upstream called function {name!r} with args that are not an object"
        )
    ident = call.get("id")
    return {
        "id": ident if isinstance(ident, str) and ident else tool_call_id(source, index),
        "type": "function",
        "function": {"name": name, "arguments": json_text(args or {}, "functionCall.args")},
    }


# -- internal → Gemini -------------------------------------------------------------


def chat_response_to_gemini(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A ``chat.completion`` as a ``GenerateContentResponse`` (``modelVersion`` is
    ``model``; the response id is the upstream's)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    parts = model_parts(message if isinstance(message, dict) else {})
    usage = body.get("usage")
    ident = body.get("id")
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts or [{"text": ""}]},
                "finishReason": gemini_finish(
                    choice.get("finish_reason") if isinstance(choice, dict) else None
                ),
                "index": 0,
            }
        ],
        "usageMetadata": usage_metadata(usage if isinstance(usage, dict) else None),
        "modelVersion": model,
        "responseId": ident if isinstance(ident, str) else "",
    }


def model_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message as Gemini parts: thought text, text, then function calls."""
    parts: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append({"text": reasoning, "thought": True})
    for key in ("content", "refusal"):
        text = message.get(key)
        if isinstance(text, str) and text:
            parts.append({"text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamError("the upstream sent a tool call without a function name")
        name = function["name"]
        part: dict[str, Any] = {"name": name, "args": tool_input(function.get("arguments"), name)}
        if isinstance(call.get("id"), str) and call["id"]:
            part["id"] = call["id"]
        parts.append({"functionCall": part})
    return parts
