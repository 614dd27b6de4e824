"""OpenAI Responses: ``POST /v1/responses`` (what Codex CLI speaks), streamed or not."""

from __future__ import annotations

from typing import Any

import orjson

from corral.errors import InvalidRequest
from corral.sim.chat import content_text
from corral.sim.generate import Reply, ToolCall
from corral.sim.request import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    SimRequest,
    ToolSpec,
    new_request,
    positive_int,
)
from corral.sim.wire import Frame, Meta, Usage, argument_chunks, sse_event, text_chunks

_ASSISTANT_ITEMS = frozenset(
    {
        "function_call",
        "custom_tool_call",
        "reasoning",
        "local_shell_call",
        "web_search_call",
        "tool_search_call",
        "file_search_call",
        "computer_call",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_call",
    }
)
_RESULT_ITEMS = frozenset(
    {
        "function_call_output",
        "custom_tool_call_output",
        "local_shell_call_output",
        "computer_call_output",
        "tool_search_output",
        "mcp_approval_response",
    }
)
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt_cache_key",
    "store",
    "temperature",
    "top_p",
    "truncation",
    "user",
)


def parse_responses(body: Any) -> SimRequest:
    """Normalise a Responses body; unknown item and tool types are counted, not refused."""
    request = new_request("responses", body)
    _parse_tools(request, body)
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        request.prompt.add(f"system: {instructions}", overhead=MESSAGE_OVERHEAD)
    items = body.get("input", [])
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise InvalidRequest("'input' must be a string or an array of items")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{index}] must be an object")
        _parse_item(request, item)
    request.max_tokens = positive_int(body, "max_output_tokens")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    request.effort = effort if isinstance(effort, str) else None
    asked = isinstance(reasoning, dict) and effort != "none"
    request.reasoning = asked or "reason" in request.base_model
    return request


def _parse_tools(request: SimRequest, body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array")
    for tool in tools or ():
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            continue  # web_search, tool_search and the like: accepted, never called
        if tool.get("type") == "function":
            schema = tool.get("parameters")
            request.tools.append(ToolSpec(tool["name"], schema if isinstance(schema, dict) else {}))
        elif tool.get("type") == "custom":
            request.tools.append(ToolSpec(tool["name"], {}, "custom"))
    if tools:
        request.prompt.add(orjson.dumps(tools).decode(), overhead=MESSAGE_OVERHEAD)
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        request.tool_choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("name"), str):
        request.tool_choice, request.forced_tool = "tool", choice["name"]


def _parse_item(request: SimRequest, item: dict[str, Any]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = str(item.get("role", "user"))
        text, images = content_text(item.get("content"))
        request.prompt.add(
            f"{role}: {text}", overhead=MESSAGE_OVERHEAD, fixed=images * IMAGE_TOKENS
        )
        if role == "assistant":
            request.saw_assistant()
        elif role == "user":
            request.saw_user(text)
        return
    # Other items are counted as the model would see them: their JSON, less bookkeeping.
    visible = {k: v for k, v in item.items() if k not in ("id", "status", "encrypted_content")}
    request.prompt.add(orjson.dumps(visible).decode(), overhead=MESSAGE_OVERHEAD)
    if kind in _ASSISTANT_ITEMS:
        name = item.get("name")
        request.saw_assistant([name] if isinstance(name, str) else None)
    elif kind in _RESULT_ITEMS:
        request.saw_user("", tool_result=True)


def responses_usage(usage: Usage) -> dict[str, Any]:
    """Usage in Responses shape: cached within input, reasoning within output."""
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": 0},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.output,
    }


class _Items:
    """Builds output items with stable ids, shared by the JSON and the streamed form."""

    def __init__(self, reply: Reply, meta: Meta, body: dict[str, Any]) -> None:
        self.reply = reply
        self.suffix = meta.response_id.removeprefix("resp_")
        reasoning = body.get("reasoning")
        self.summary = isinstance(reasoning, dict) and reasoning.get("summary") not in (None, "")
        include = body.get("include")
        self.encrypted = isinstance(include, list) and "reasoning.encrypted_content" in include

    def reasoning(self, done: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"id": f"rs_{self.suffix}", "type": "reasoning", "summary": []}
        if done and self.summary:
            item["summary"] = [{"type": "summary_text", "text": self.reply.thinking}]
        if self.encrypted:
            item["encrypted_content"] = "corral-sim-reasoning" if done else None
        return item

    def message(self, done: bool) -> dict[str, Any]:
        return {
            "id": f"msg_{self.suffix}",
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [_text_part(self.reply.text)] if done else [],
        }

    def call(self, index: int, call: ToolCall, done: bool) -> dict[str, Any]:
        status = "completed" if done else "in_progress"
        item_id = f"fc_{self.suffix}{index:02d}"
        if call.kind == "custom":
            text = call.arguments if done else ""
            return {
                "id": item_id,
                "type": "custom_tool_call",
                "status": status,
                "call_id": call.id,
                "name": call.name,
                "input": text,
            }
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": call.arguments if done else "",
            "call_id": call.id,
            "name": call.name,
        }

    def all_done(self) -> list[dict[str, Any]]:
        items = [self.reasoning(True)] if self.reply.thinking else []
        if self.reply.text:
            items.append(self.message(True))
        items += [self.call(i, call, True) for i, call in enumerate(self.reply.tool_calls)]
        return items


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _response(
    body: dict[str, Any],
    meta: Meta,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    status: str,
) -> dict[str, Any]:
    reasoning = body.get("reasoning")
    response: dict[str, Any] = {
        "id": meta.response_id,
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": meta.model,
        "output": output,
        "reasoning": reasoning
        if isinstance(reasoning, dict)
        else {"effort": None, "summary": None},
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "metadata": body.get("metadata") or {},
        "usage": usage,
    }
    for key in _ECHOED:
        response[key] = body.get(key)
    if response["parallel_tool_calls"] is None:
        response["parallel_tool_calls"] = True
    return response


def _final_status(reply: Reply) -> str:
    return "incomplete" if reply.finish == "length" else "completed"


def responses_json(request: SimRequest, reply: Reply, usage: Usage, meta: Meta) -> bytes:
    """The non-streamed ``response`` object."""
    items = _Items(reply, meta, request.body).all_done()
    status = _final_status(reply)
    return orjson.dumps(_response(request.body, meta, items, responses_usage(usage), status))


class _Events:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.sequence = 0

    def add(self, name: str, payload: dict[str, Any], tokens: int = 0) -> None:
        self.frames.append(
            sse_event(name, {"type": name, "sequence_number": self.sequence, **payload}, tokens)
        )
        self.sequence += 1


def responses_frames(
    request: SimRequest, reply: Reply, usage: Usage, meta: Meta, *, chunk_words: int
) -> list[Frame]:
    """The streamed events, from ``response.created`` to ``response.completed``."""
    items = _Items(reply, meta, request.body)
    events = _Events()
    start = _response(request.body, meta, [], None, "in_progress")
    events.add("response.created", {"response": start})
    events.add("response.in_progress", {"response": start})
    index = 0
    if reply.thinking:
        _stream_reasoning(events, items, index, usage.reasoning)
        index += 1
    if reply.text:
        _stream_message(events, items, index, chunk_words)
        index += 1
    for number, call in enumerate(reply.tool_calls):
        _stream_call(events, items, index, number, call)
        index += 1
    status = _final_status(reply)
    final = _response(request.body, meta, items.all_done(), responses_usage(usage), status)
    events.add(f"response.{status}", {"response": final})
    return events.frames


def _stream_reasoning(events: _Events, items: _Items, index: int, tokens: int) -> None:
    item_id = f"rs_{items.suffix}"
    events.add(
        "response.output_item.added", {"output_index": index, "item": items.reasoning(False)}
    )
    if items.summary:
        where = {"item_id": item_id, "output_index": index, "summary_index": 0}
        text = items.reply.thinking
        empty = {"type": "summary_text", "text": ""}
        events.add("response.reasoning_summary_part.added", {**where, "part": empty})
        events.add("response.reasoning_summary_text.delta", {**where, "delta": text}, tokens)
        events.add("response.reasoning_summary_text.done", {**where, "text": text})
        part = {"type": "summary_text", "text": text}
        events.add("response.reasoning_summary_part.done", {**where, "part": part})
    else:
        # Hidden reasoning still takes time before the next item appears.
        events.frames[-1] = Frame(events.frames[-1].data, tokens)
    events.add("response.output_item.done", {"output_index": index, "item": items.reasoning(True)})


def _stream_message(events: _Events, items: _Items, index: int, chunk_words: int) -> None:
    item_id = f"msg_{items.suffix}"
    text = items.reply.text
    events.add("response.output_item.added", {"output_index": index, "item": items.message(False)})
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    events.add("response.content_part.added", {**where, "part": _text_part("")})
    for delta, tokens in text_chunks(text, chunk_words, items.reply.text_tokens):
        events.add("response.output_text.delta", {**where, "delta": delta, "logprobs": []}, tokens)
    events.add("response.output_text.done", {**where, "text": text, "logprobs": []})
    events.add("response.content_part.done", {**where, "part": _text_part(text)})
    events.add("response.output_item.done", {"output_index": index, "item": items.message(True)})


def _stream_call(events: _Events, items: _Items, index: int, number: int, call: ToolCall) -> None:
    added = items.call(number, call, False)
    events.add("response.output_item.added", {"output_index": index, "item": added})
    where = {"item_id": added["id"], "output_index": index}
    kind = "custom_tool_call_input" if call.kind == "custom" else "function_call_arguments"
    for piece, tokens in argument_chunks(call.arguments, call.tokens()):
        events.add(f"response.{kind}.delta", {**where, "delta": piece}, tokens)
    done: dict[str, Any] = {**where}
    if call.kind == "custom":
        done["input"] = call.arguments
    else:
        done["arguments"] = call.arguments
        done["name"] = call.name
    events.add(f"response.{kind}.done", done)
    events.add(
        "response.output_item.done", {"output_index": index, "item": items.call(number, call, True)}
    )
