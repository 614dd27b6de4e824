"""OpenAI Responses: the last turn of a request, as stuck detectors compare it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import Turn, TurnHasher, text_of, turn_start

_VOLATILE = frozenset({"type", "id", "call_id", "status"})
"""Keys of a built-in call left out of its arguments: they change while the call does not."""


def responses_turn(body: Mapping[str, Any]) -> Turn | None:
    """The last turn of a Responses request.

    ``input`` is a string (one user message) or items. The latest answer is the last run
    of assistant-side items (``reasoning``, assistant ``message``, ``function_call``,
    ``custom_tool_call`` and every other ``*_call``); outputs (``*_call_output``) and
    messages follow it. A ``previous_response_id`` request carries only its new items:
    its turn is what it holds. Errors are marked where the protocol says so: an
    ``mcp_call`` with an ``error``, an ``apply_patch_call_output`` that ``failed``, a
    ``shell_call_output`` that timed out or exited non-zero."""
    items = body.get("input") if isinstance(body, Mapping) else None
    if isinstance(items, str):
        hasher = TurnHasher()
        hasher.text(items, "user")
        return hasher.turn(1, False)
    if not isinstance(items, list):
        return None
    start, acted = turn_start(items, _answers, run=True)
    hasher = TurnHasher()
    for item in items[start:]:
        if isinstance(item, dict):
            _item(item, hasher)
        else:
            hasher.text(item)
    return hasher.turn(len(items), acted)


def _answers(item: Any) -> bool:
    """The item is part of a model's answer (what the latest assistant message is)."""
    if not isinstance(item, dict):
        return False
    kind = item.get("type", "message")
    if kind == "message":
        return item.get("role") == "assistant"
    return isinstance(kind, str) and (kind == "reasoning" or kind.endswith("_call"))


def _item(item: dict[str, Any], hasher: TurnHasher) -> None:
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        hasher.text(item)
    elif kind == "message":
        hasher.text(text_of(item.get("content")), item.get("role"))
    elif kind == "reasoning":
        pass  # encrypted or summarised reasoning differs from call to call
    elif kind in ("function_call", "mcp_call"):
        hasher.action(item.get("name"), item.get("arguments"))
        if kind == "mcp_call" and ("output" in item or "error" in item):
            error = item.get("error")
            hasher.result(text_of(item.get("output") if error is None else error), bool(error))
    elif kind == "custom_tool_call":
        hasher.action(item.get("name"), item.get("input"))
    elif kind.endswith("_call"):
        arguments = {k: v for k, v in item.items() if k not in _VOLATILE}
        hasher.action(kind[: -len("_call")], arguments)
    elif kind.endswith("_call_output"):
        hasher.result(text_of(item.get("output")), _failed(kind, item))
    else:  # item_reference, approval responses, what comes next
        hasher.text({k: v for k, v in item.items() if k != "type"}, kind)


def _failed(kind: str, item: dict[str, Any]) -> bool:
    if kind == "apply_patch_call_output":
        return item.get("status") == "failed"
    if kind != "shell_call_output" or not isinstance(item.get("output"), list):
        return False
    for chunk in item["output"][:64]:
        outcome = chunk.get("outcome") if isinstance(chunk, dict) else None
        if isinstance(outcome, dict) and (
            outcome.get("type") == "timeout" or outcome.get("exit_code") not in (0, None)
        ):
            return True
    return False
