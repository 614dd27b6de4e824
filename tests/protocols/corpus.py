"""Realistic request bodies: what Claude Code sends, and what the openai SDK sends."""

from __future__ import annotations

from typing import Any

_WORDS = [
    "the",
    "agent",
    "reads",
    "files",
    "runs",
    "commands",
    "edits",
    "code",
    "and",
    "reports",
    "what",
    "it",
    "found",
    "while",
    "the",
    "user",
    "watches",
    "every",
    "tool",
    "call",
    "and",
    "its",
    "result",
    "stream",
    "past",
    "in",
    "the",
    "terminal",
    "window",
]


def prose(words: int, salt: int = 0) -> str:
    """``words`` words of filler, different for each ``salt``."""
    return " ".join(_WORDS[(i * 7 + salt) % len(_WORDS)] for i in range(words))


def tool_schema(i: int) -> dict[str, Any]:
    """A Claude Code-like tool: a few typed properties, some required, an enum, an array."""
    return {
        "name": f"Tool{i}",
        "description": prose(60, i),
        "input_schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "file_path": {"type": "string", "description": prose(12, i + 1)},
                "command": {"type": "string", "description": prose(10, i + 2)},
                "limit": {"type": "number", "description": "How many lines to read"},
                "mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
                "paths": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["file_path"],
        },
    }


def claude_code_request(*, turns: int = 60, tools: int = 20, stream: bool = True) -> dict[str, Any]:
    """A Messages body shaped like a long Claude Code session (about 100 KB at the defaults).

    A system prompt in blocks with cache markers, ``tools`` with JSON schemas,
    then turns of assistant text + tool_use and user tool_result (+ reminder text).
    """
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>" + prose(80) + "</system-reminder>"},
                {"type": "text", "text": "Fix the failing test in tests/test_app.py please."},
            ],
        }
    ]
    for turn in range(turns // 2):
        call_id = f"toolu_01{turn:022d}"
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": prose(25, turn)},
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": f"Tool{turn % tools}",
                        "input": {"file_path": f"/repo/src/module_{turn}.py", "limit": 200},
                    },
                ],
            }
        )
        result = {
            "type": "tool_result",
            "tool_use_id": call_id,
            "content": "\n".join(f"{n:>6}\t{prose(9, turn + n)}" for n in range(22)),
        }
        if turn % 5 == 4:
            result["is_error"] = True
        messages.append({"role": "user", "content": [result]})
    messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": stream,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account_def_session_0123"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": prose(5000), "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [tool_schema(i) for i in range(tools)],
        "messages": messages,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }


BASH = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
}


def openai_agent_request() -> dict[str, Any]:
    """A Chat body as an openai-SDK agent sends it: system, user, a tool round trip."""
    return {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "user", "content": "List the files."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "README.md\nsrc"},
            {"role": "user", "content": "And now?"},
        ],
        "tools": [BASH],
        "tool_choice": "auto",
        "max_completion_tokens": 2048,
        "temperature": 0.2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
