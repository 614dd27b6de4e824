"""Anthropic Messages: the last turn of a request, as stuck detectors compare it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import TURN_PARTS, Turn, TurnHasher, text_of, turn_start

_CALLS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_UNREAD = frozenset({"thinking", "redacted_thinking"})
"""Blocks left out: reasoning and its signatures differ from call to call."""


def messages_turn(body: Mapping[str, Any]) -> Turn | None:
    """The last turn of a Messages request: the latest assistant message's text and
    ``tool_use`` blocks (server and MCP tool uses too), then ``tool_result`` blocks (an
    error where ``is_error`` is true) and user text. Content may be a string or blocks."""
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        return None
    start, acted = turn_start(messages, _is_assistant)
    hasher = TurnHasher()
    for message in messages[start:]:
        if not isinstance(message, dict):
            hasher.text(message)
            continue
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, list):
            hasher.text(content, role)
            continue
        for block in content[:TURN_PARTS]:
            _block(block, role, hasher)
    return hasher.turn(len(messages), acted)


def _is_assistant(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant"


def _block(block: Any, role: Any, hasher: TurnHasher) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        hasher.text(block, role)
    elif kind == "text":
        hasher.text(block.get("text"), role)  # cache_control markers move: left out
    elif kind in _CALLS:
        hasher.action(block.get("name"), block.get("input"))
    elif kind.endswith("tool_result"):
        # tool_result from the user; web_search_tool_result, mcp_tool_result and the like
        # inside the assistant's answer (their errors are content of a ``*_error`` type).
        content = block.get("content")
        inner = content.get("type") if isinstance(content, dict) else None
        error = block.get("is_error") is True or (
            isinstance(inner, str) and inner.endswith("_error")
        )
        hasher.result(text_of(content), error)
    elif kind not in _UNREAD:
        hasher.text({k: v for k, v in block.items() if k != "cache_control"}, role)
