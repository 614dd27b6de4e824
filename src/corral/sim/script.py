"""Scripted models: fixed replies, turn by turn, so agents run deterministically.

A script (TOML or JSON) lists conversations; each has a model glob, an
optional regex matched against the opening user text, and turns::

    [[conversations]]
    name = "fix-readme"
    model = "sim-*"
    match = "(?i)readme"

    [[conversations.turns]]
    text = "Let me read the README first."
    tool_calls = [{ name = "read_file", arguments = { path = "README.md" } }]

    [[conversations.turns]]
    text = "The README is fixed."

Which turn is played is the number of assistant turns already in the
request's history, so the simulator stays stateless: concurrent
conversations and restarts do not interfere. Past the last turn the reply is
a plain "script exhausted" text that ends the conversation.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from corral.errors import ConfigError

_TURN_KEYS = frozenset({"text", "tool_calls", "thinking"})
_CALL_KEYS = frozenset({"name", "arguments"})
_CONVERSATION_KEYS = frozenset({"name", "model", "match", "turns"})


@dataclass(frozen=True, slots=True)
class ScriptToolCall:
    """A tool call to play; ``arguments`` is JSON text, or free text for custom tools."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ScriptTurn:
    """One assistant turn: optional thinking, text and tool calls."""

    text: str = ""
    tool_calls: tuple[ScriptToolCall, ...] = ()
    thinking: str = ""


@dataclass(frozen=True, slots=True)
class ScriptedConversation:
    """Turns played to requests whose model matches ``model`` and text matches ``match``."""

    name: str
    model: str
    match: re.Pattern[str] | None
    turns: tuple[ScriptTurn, ...]

    def applies_to(self, model: str, opening_text: str) -> bool:
        """Whether this conversation answers ``model`` for a conversation opened by that text."""
        if not fnmatch.fnmatchcase(model, self.model):
            return False
        return self.match is None or self.match.search(opening_text) is not None


@dataclass(frozen=True, slots=True)
class Script:
    """Scripted conversations, tried in order; the first that applies answers."""

    conversations: tuple[ScriptedConversation, ...]
    source: str = "<script>"

    def find(self, model: str, opening_text: str) -> ScriptedConversation | None:
        """The first conversation that applies, or ``None`` (then the default answer is used)."""
        for conversation in self.conversations:
            if conversation.applies_to(model, opening_text):
                return conversation
        return None


def load_script(path: str | Path) -> Script:
    """Read and validate a script file (``.toml``, or JSON for any other suffix).

    Raises :class:`ConfigError` naming the file and the offending entry.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read simulator script {file}: {exc.strerror}") from exc
    try:
        data: Any = (
            tomllib.loads(raw.decode()) if file.suffix.lower() == ".toml" else orjson.loads(raw)
        )
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"simulator script {file} is not valid: {exc}") from exc
    return parse_script(data, source=str(file))


def parse_script(data: Any, *, source: str = "<script>") -> Script:
    """Validate already parsed script data (a mapping with ``conversations``).

    A mapping with ``turns`` but no ``conversations`` is taken as a single
    conversation for every model, which is handy for per-request scripts.
    """
    if isinstance(data, Mapping) and "conversations" not in data and "turns" in data:
        data = {"conversations": [data]}
    if not isinstance(data, Mapping) or set(data) - {"conversations"}:
        raise ConfigError(f"{source}: a script is a table with one key, 'conversations'")
    items = data.get("conversations")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: 'conversations' must be a non-empty list")
    conversations = tuple(
        _conversation(item, f"{source}: conversations[{index}]", index)
        for index, item in enumerate(items)
    )
    return Script(conversations, source)


def _conversation(item: Any, where: str, index: int) -> ScriptedConversation:
    table = _table(item, where, _CONVERSATION_KEYS)
    model = table.get("model", "*")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}: 'model' must be a non-empty string (a name or a glob)")
    match = table.get("match")
    pattern = None
    if match is not None:
        if not isinstance(match, str):
            raise ConfigError(f"{where}: 'match' must be a string (a regular expression)")
        try:
            pattern = re.compile(match)
        except re.error as exc:
            raise ConfigError(f"{where}: 'match' is not a valid regular expression: {exc}") from exc
    turns = table.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where}: 'turns' must be a non-empty list")
    name = table.get("name", f"conversation-{index}")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: 'name' must be a string")
    parsed = tuple(_turn(turn, f"{where}.turns[{i}]") for i, turn in enumerate(turns))
    return ScriptedConversation(name, model, pattern, parsed)


def _turn(item: Any, where: str) -> ScriptTurn:
    table = _table(item, where, _TURN_KEYS)
    text = table.get("text", "")
    thinking = table.get("thinking", "")
    for key, value in (("text", text), ("thinking", thinking)):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string")
    calls = table.get("tool_calls", [])
    if not isinstance(calls, list):
        raise ConfigError(f"{where}: 'tool_calls' must be a list")
    parsed = tuple(_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls))
    if not text and not parsed:
        raise ConfigError(f"{where}: a turn needs 'text' or 'tool_calls'")
    return ScriptTurn(text=text, tool_calls=parsed, thinking=thinking)


def _call(item: Any, where: str) -> ScriptToolCall:
    table = _table(item, where, _CALL_KEYS)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    arguments = table.get("arguments", {})
    if isinstance(arguments, str):
        return ScriptToolCall(name, arguments)
    if not isinstance(arguments, Mapping):
        raise ConfigError(f"{where}: 'arguments' must be a table (JSON object) or a string")
    # json, not orjson: TOML gives datetime values orjson would render differently.
    text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"), default=str)
    return ScriptToolCall(name, text)


def _table(item: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(item) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {known})")
    return item
