"""Google Gemini: the last turn of a request, as stuck detectors compare it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import TURN_PARTS, Turn, TurnHasher, text_of, turn_start

_MARKS = frozenset({"thought", "thoughtSignature", "thought_signature", "partMetadata"})
"""Part keys that only mark or sign a part: signatures differ from call to call."""


def gemini_turn(body: Mapping[str, Any]) -> Turn | None:
    """The last turn of a Gemini request: the latest ``model`` content's text and
    ``functionCall`` parts (thought parts left out), then ``functionResponse`` parts (an
    error when the response holds an ``error`` key) and user text. ``executableCode`` and
    ``codeExecutionResult`` parts count as a call and its result. Both proto-JSON
    spellings are read (``functionCall``, ``function_call``)."""
    contents = body.get("contents") if isinstance(body, Mapping) else None
    if not isinstance(contents, list):
        return None
    start, acted = turn_start(contents, _is_model)
    hasher = TurnHasher()
    for content in contents[start:]:
        if not isinstance(content, dict):
            hasher.text(content)
            continue
        role, parts = content.get("role") or "user", content.get("parts")
        if not isinstance(parts, list):
            hasher.text(parts, role)
            continue
        for part in parts[:TURN_PARTS]:
            _part(part, role, hasher)
    return hasher.turn(len(contents), acted)


def _is_model(content: Any) -> bool:
    return isinstance(content, dict) and content.get("role") == "model"


def _part(part: Any, role: Any, hasher: TurnHasher) -> None:
    if not isinstance(part, dict):
        hasher.text(part, role)
        return
    call = _field(part, "functionCall", "function_call")
    response = _field(part, "functionResponse", "function_response")
    code = _field(part, "executableCode", "executable_code")
    outcome = _field(part, "codeExecutionResult", "code_execution_result")
    if call is not None:
        hasher.action(call.get("name") if isinstance(call, dict) else None, _get(call, "args"))
    elif response is not None:
        result = _get(response, "response")
        if isinstance(result, dict) and len(result) == 1 and isinstance(result.get("output"), str):
            result = result["output"]  # Gemini's conventional {"output": text}
        hasher.result(text_of(result), isinstance(result, dict) and "error" in result)
    elif code is not None:
        hasher.action("code_execution", code)
    elif outcome is not None:
        verdict = _get(outcome, "outcome")
        hasher.result(_get(outcome, "output"), verdict not in (None, "OUTCOME_OK"))
    elif part.get("thought") is True:
        pass  # reasoning: it differs from call to call
    elif isinstance(part.get("text"), str):
        hasher.text(part["text"], role)
    else:  # inline data, file data, …
        hasher.text({k: v for k, v in part.items() if k not in _MARKS}, role)


def _field(part: dict[str, Any], camel: str, snake: str) -> Any:
    value = part.get(camel)
    return part.get(snake) if value is None else value


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
