"""What every protocol parser produces: one normalised view of a generation request.

The four wire protocols differ in shape, not in what the simulator needs:
the text the model would see (as segments, for token counts and prompt
caching), where the conversation stands (assistant turns so far, whether the
last thing said was a tool result), the tools on offer, the limits and the
reasoning settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from corral.errors import InvalidRequest
from corral.sim.options import ModelOptions, parse_model_name
from corral.tokens import count_tokens

Protocol = Literal["chat", "responses", "messages", "gemini"]

MESSAGE_OVERHEAD = 4
"""Tokens each message costs beyond its text (role and separators), as chat templates do."""
REPLY_PRIMING = 3
"""Tokens that open the assistant's reply in every prompt."""
IMAGE_TOKENS = 800
"""Flat cost of an image or a file part: the simulator never decodes them."""


@dataclass(slots=True)
class Prompt:
    """The prompt as ordered segments, each with its token count and hashable text.

    ``marks`` are segment counts after which a cache breakpoint sits
    (Anthropic ``cache_control``); OpenAI caching uses every boundary.
    """

    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
    total: int = REPLY_PRIMING

    def add(self, text: str, *, overhead: int = 0, fixed: int = 0) -> None:
        """Append a segment costing ``count_tokens(text) + overhead + fixed`` tokens."""
        cost = count_tokens(text) + overhead + fixed
        self.tokens.append(cost)
        self.texts.append(text)
        self.total += cost

    def mark(self) -> None:
        """Put a cache breakpoint after the last segment added."""
        if self.tokens and (not self.marks or self.marks[-1] != len(self.tokens)):
            self.marks.append(len(self.tokens))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the request offers: ``kind`` is ``function`` or ``custom`` (free-form input)."""

    name: str
    schema: dict[str, Any]
    kind: str = "function"


@dataclass(slots=True)
class SimRequest:
    """A generation request, whatever protocol it came in."""

    protocol: Protocol
    model: str
    base_model: str
    options: ModelOptions
    body: dict[str, Any]
    prompt: Prompt = field(default_factory=Prompt)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` or ``tool`` (then ``forced_tool`` names it)."""
    forced_tool: str | None = None
    reasoning: bool = False
    effort: str | None = None
    thinking_budget: int | None = None
    include_thoughts: bool = False
    """Gemini ``thinkingConfig.includeThoughts``: thought parts shown, not only counted."""
    structured: dict[str, Any] | None = None
    """The JSON schema a structured (JSON-mode) answer follows; ``{}`` for any JSON object."""
    json_array: bool = False
    """Gemini ``streamGenerateContent`` without ``alt=sse``: chunks in one JSON array."""
    opening_text: str = ""
    """User text before the first assistant turn: what scripts match against."""
    last_user_text: str = ""
    assistant_turns: int = 0
    after_tool_result: bool = False
    last_tool_name: str = ""
    _in_assistant_run: bool = False

    def saw_user(self, text: str, *, tool_result: bool = False) -> None:
        """Record a user (or tool-result) message in the history."""
        self._in_assistant_run = False
        self.after_tool_result = tool_result
        if text and not tool_result:
            self.last_user_text = text
            if self.assistant_turns == 0:
                self.opening_text = f"{self.opening_text}\n{text}" if self.opening_text else text

    def saw_assistant(self, tool_names: list[str] | None = None) -> None:
        """Record assistant output; consecutive assistant items make one turn."""
        if not self._in_assistant_run:
            self.assistant_turns += 1
            self._in_assistant_run = True
        self.after_tool_result = False
        if tool_names:
            self.last_tool_name = tool_names[-1]

    def function_tools(self) -> list[ToolSpec]:
        """Tools the simulator may call by default: function tools only."""
        return [tool for tool in self.tools if tool.kind == "function"]


def new_request(protocol: Protocol, body: Any, *, model: str | None = None) -> SimRequest:
    """Start a :class:`SimRequest` from a decoded body, checking ``model``.

    ``model`` comes from the URL when the protocol puts it there (Gemini);
    otherwise the body's ``model`` field is required.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if model is None:
        model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string")
    try:
        base, options = parse_model_name(model)
    except ValueError as exc:
        raise InvalidRequest(f"model {model!r}: {exc}") from exc
    return SimRequest(
        protocol=protocol,
        model=model,
        base_model=base,
        options=options,
        body=body,
        stream=body.get("stream") is True,
    )


def positive_int(body: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` present in ``body``, checked to be a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer")
        return value
    return None
