"""What the simulator says: default answers, scripted turns, limits applied.

A :class:`Reply` is protocol-neutral; each protocol module renders it. The
default answer is deterministic: its length and filler come from a hash of
the request and the seed, so the same request always gets the same words,
streamed or not.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from corral.sim.request import SimRequest, ToolSpec
from corral.sim.script import ScriptedConversation, ScriptTurn
from corral.tokens import count_tokens

Finish = Literal["stop", "length", "tool_calls"]

_FILLER = (
    "No language model wrote this reply.",
    "Its length comes from a hash of the request and the seed.",
    "Token counts are computed offline by Corral's deterministic tokenizer.",
    "Latency, faults and tool calls are set by headers or by options in the model name.",
    "Scripted conversations make agent runs repeatable.",
    "This filler exists so that streaming, usage and limits can be exercised.",
    "Real providers are a configuration change away.",
    "The same request with the same seed always gets the same answer.",
    "Every number in the usage block is computed, not measured.",
    "Prompt caching is simulated from hashes of prompt prefixes.",
)
_THINKING = (
    "The simulator does not reason; this text stands in for a reasoning trace.",
    "Its length depends on the request, the seed and the reasoning effort.",
    "Reasoning tokens are counted as output tokens, as providers do.",
)
_EFFORT = {"minimal": 0.25, "low": 0.5, "medium": 1.0, "high": 2.0, "xhigh": 3.0, "max": 3.0}
_WORD = re.compile(r"\S+\s*")
_QUOTE_WORDS = 12


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the reply makes: ``arguments`` is JSON text (free text for custom tools)."""

    id: str
    name: str
    arguments: str
    kind: str = "function"

    def tokens(self) -> int:
        """Output tokens the call costs: its name and its arguments."""
        return count_tokens(self.name) + count_tokens(self.arguments)

    def input_object(self) -> Any:
        """The arguments as a JSON object (Anthropic ``tool_use.input``), wrapping non-objects."""
        try:
            value = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            return {"input": self.arguments}
        return value if isinstance(value, dict) else {"input": value}


@dataclass(frozen=True, slots=True)
class Reply:
    """The assistant's turn: thinking (reasoning), text, tool calls and why it ended.

    ``output_tokens`` counts everything generated, reasoning included, as
    every provider bills it; both counts are computed once, at creation.
    """

    text: str
    tool_calls: tuple[ToolCall, ...]
    thinking: str
    finish: Finish
    reasoning_tokens: int = field(init=False)
    text_tokens: int = field(init=False)
    output_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        reasoning = count_tokens(self.thinking) if self.thinking else 0
        text = count_tokens(self.text) if self.text else 0
        calls = sum(call.tokens() for call in self.tool_calls)
        object.__setattr__(self, "reasoning_tokens", reasoning)
        object.__setattr__(self, "text_tokens", text)
        object.__setattr__(self, "output_tokens", reasoning + text + calls)


def request_digest(request: SimRequest, seed: int) -> bytes:
    """A 16-byte digest of what the model sees, keyed by the seed.

    Streaming flags and options are left out, so a streamed and a
    non-streamed request get the same answer.
    """
    digest = hashlib.blake2b(digest_size=16, key=seed.to_bytes(8, "little", signed=True))
    digest.update(request.base_model.encode())
    for text in request.prompt.texts:
        digest.update(b"\x1e")
        digest.update(text.encode(errors="surrogatepass"))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class Phrasebook:
    """The sentences default answers are made of, with their token counts worked out once."""

    filler: tuple[tuple[str, int], ...]
    thinking: tuple[tuple[str, int], ...]

    @classmethod
    def standard(cls) -> Phrasebook:
        def counted(pool: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
            return tuple((sentence, count_tokens(sentence)) for sentence in pool)

        return cls(counted(_FILLER), counted(_THINKING))


def default_reply(
    request: SimRequest, digest: bytes, phrases: Phrasebook, *, want_tool: bool
) -> Reply:
    """The unscripted answer: one tool call when asked for, else simulator text."""
    rng = random.Random(digest)
    thinking = _thinking(request, rng, phrases) if request.reasoning else ""
    tool = _tool_to_call(request) if want_tool else None
    if tool is not None:
        call = ToolCall(_call_id(digest, 0), tool.name, _arguments(tool), tool.kind)
        return limit_reply(request, Reply("", (call,), thinking, "tool_calls"))
    text = _answer_text(request, rng, phrases)
    return limit_reply(request, Reply(text, (), thinking, "stop"))


def structured_reply(request: SimRequest, digest: bytes, phrases: Phrasebook) -> Reply:
    """A JSON-mode answer: an example of the requested schema, or ``{"answer": text}``.

    Agents ask for JSON in side requests (Gemini CLI's next-speaker check and
    model router); answering those with a schema-valid example keeps them working.
    """
    rng = random.Random(digest)
    thinking = _thinking(request, rng, phrases) if request.reasoning else ""
    value = example_value(request.structured, "") if request.structured else None
    if value is None:
        value = {"answer": _answer_text(request, rng, phrases)}
    text = orjson.dumps(value).decode()
    return limit_reply(request, Reply(text, (), thinking, "stop"))


def scripted_reply(request: SimRequest, conversation: ScriptedConversation, digest: bytes) -> Reply:
    """The turn of ``conversation`` this request has reached, or an "exhausted" text."""
    index = request.assistant_turns
    if index >= len(conversation.turns):
        text = (
            f"Corral's simulator: the script '{conversation.name}' is exhausted "
            f"after {len(conversation.turns)} turns."
        )
        return limit_reply(request, Reply(text, (), "", "stop"))
    return limit_reply(request, _play(request, conversation.turns[index], digest))


def _play(request: SimRequest, turn: ScriptTurn, digest: bytes) -> Reply:
    kinds = {tool.name: tool.kind for tool in request.tools}
    calls = tuple(
        ToolCall(_call_id(digest, i), call.name, call.arguments, kinds.get(call.name, "function"))
        for i, call in enumerate(turn.tool_calls)
    )
    thinking = turn.thinking if request.reasoning else ""
    return Reply(turn.text, calls, thinking, "tool_calls" if calls else "stop")


def limit_reply(request: SimRequest, reply: Reply) -> Reply:
    """Cut the reply to ``max_tokens``: thinking first, then text; calls that do not fit go."""
    limit = request.max_tokens
    if limit is None or reply.output_tokens <= limit:
        return reply
    thinking = truncate_tokens(reply.thinking, limit)
    left = limit - count_tokens(thinking)
    text = truncate_tokens(reply.text, left)
    left -= count_tokens(text)
    calls: list[ToolCall] = []
    for call in reply.tool_calls:
        if call.tokens() > left:
            break
        calls.append(call)
        left -= call.tokens()
    return Reply(text, tuple(calls), thinking, "length")


def truncate_tokens(text: str, limit: int) -> str:
    """The longest word-boundary prefix of ``text`` that costs at most ``limit`` tokens."""
    if limit <= 0 or not text:
        return ""
    # Token counts add up word by word (no counted piece spans two ``\S+\s*`` words),
    # so one pass finds the cut.
    used = end = 0
    for match in _WORD.finditer(text):
        cost = count_tokens(match.group())
        if used + cost > limit:
            return text[:end].rstrip()
        used += cost
        end = match.end()
    return text


def _tool_to_call(request: SimRequest) -> ToolSpec | None:
    if request.forced_tool is not None:
        for tool in request.tools:
            if tool.name == request.forced_tool:
                return tool
    functions = request.function_tools()
    return functions[0] if functions else None


def _answer_text(request: SimRequest, rng: random.Random, phrases: Phrasebook) -> str:
    opening = f"This is Corral's simulator answering as {request.base_model}, not a real model."
    if request.after_tool_result:
        name = request.last_tool_name or "the tool"
        opening += f" It received the result of {name}."
    elif request.last_user_text:
        words = request.last_user_text.split()
        quote = " ".join(words[:_QUOTE_WORDS]) + (" …" if len(words) > _QUOTE_WORDS else "")
        opening += f' You said: "{quote}"'
    return _fill(opening, phrases.filler, rng, rng.randint(20, 120))


def _thinking(request: SimRequest, rng: random.Random, phrases: Phrasebook) -> str:
    factor = _EFFORT.get(request.effort or "medium", 1.0)
    thinking = _fill("", phrases.thinking, rng, max(8, int(rng.randint(40, 200) * factor)))
    if request.thinking_budget is not None:
        return truncate_tokens(thinking, request.thinking_budget)
    return thinking


def _fill(opening: str, pool: tuple[tuple[str, int], ...], rng: random.Random, target: int) -> str:
    """``opening`` then sentences from ``pool`` (shuffled, cycled) until ``target`` tokens."""
    parts = [opening] if opening else []
    total = count_tokens(opening) if opening else 0
    order = rng.sample(pool, len(pool))
    while total < target:
        sentence, tokens = order[len(parts) % len(order)]
        parts.append(sentence)
        total += tokens
    return " ".join(parts)


def _call_id(digest: bytes, index: int) -> str:
    return f"call_sim{digest[:6].hex()}{index:02d}"


def _arguments(tool: ToolSpec) -> str:
    if tool.kind != "function":
        return "Corral simulator input"
    value = example_value(tool.schema, tool.name)
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()


def example_value(schema: Any, name: str, *, depth: int = 0) -> Any:
    """A plausible value for a JSON schema: required properties filled, nothing else."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_value(options[0], name, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        return _example_object(schema, depth)
    if kind == "array":
        count = schema.get("minItems", 1)
        item = example_value(schema.get("items", {"type": "string"}), name, depth=depth + 1)
        return [item] * (count if isinstance(count, int) and 0 < count < 5 else 1)
    if kind in ("integer", "number"):
        low = schema.get("minimum", 1)
        return low if isinstance(low, int | float) else 1
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _example_string(name, schema)


def _example_object(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    return {
        key: example_value(properties.get(key, {}), key, depth=depth + 1)
        for key in required
        if isinstance(key, str)
    }


_STRINGS = (
    (("path", "file", "filename", "dir", "directory"), "README.md"),
    (("command", "cmd", "script", "shell"), "echo corral-sim"),
    (("url", "uri", "link"), "https://example.com/"),
    (("query", "pattern", "regex", "search", "glob"), "TODO"),
    (
        ("content", "text", "body", "message", "prompt", "description"),
        "Written by Corral's simulator.",
    ),
    (("old_string", "old"), "old text"),
    (("new_string", "new"), "new text"),
)


def _example_string(name: str, schema: dict[str, Any]) -> str:
    lowered = name.lower()
    for keys, value in _STRINGS:
        if lowered in keys or any(lowered.endswith(f"_{key}") for key in keys):
            return value
    if schema.get("format") == "uri":
        return "https://example.com/"
    return f"sim-{name}" if name else "sim"
