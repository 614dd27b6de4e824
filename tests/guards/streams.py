"""Signal streams for detector tests: hand-made turns for exact thresholds, and whole agents
(their requests built as Anthropic Messages bodies, their turns read by the real adapter)
for healthy and runaway behaviour.

``feed`` plays the engine's part: one state per subject and detector, the effective
thresholds (defaults with overrides), and a fresh state after each finding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.guards.model import (
    SIGNALS,
    Call,
    Detector,
    Finding,
    Progress,
    Sandbox,
    Signal,
    Subject,
    Tool,
)
from corral.protocols import ADAPTERS
from corral.protocols.base import Turn

MESSAGES = ADAPTERS["messages"]
_spans = itertools.count(1)


def span() -> str:
    return f"span-{next(_spans):08d}"


def limits(detector: Detector, **overrides: float) -> dict[str, float]:
    return {**detector.defaults, **overrides}


def feed(
    detector: Detector, signals: Iterable[Signal], **overrides: float
) -> list[tuple[int, Finding]]:
    """Every finding with the index of the signal that made it, the engine's way."""
    effective = limits(detector, **overrides)
    state = detector.state()
    found = []
    for i, signal in enumerate(signals):
        finding = detector.observe(state, signal, effective)
        if finding is not None:
            found.append((i, finding))
            state = detector.state()
    return found


def turn(
    digest: str = "d0",
    actions: Sequence[str] = (),
    results: Sequence[str] = (),
    failed: Sequence[bool] | None = None,
    acted: bool | None = True,
    messages: int = 10,
) -> Turn:
    return Turn(
        digest=digest,
        actions=tuple(actions),
        results=tuple(results),
        failed=tuple(failed) if failed is not None else (False,) * len(results),
        acted=acted,
        messages=messages,
    )


def call(
    at: float = 0.0,
    turn: Turn | None = None,
    *,
    status: str = "ok",
    http_status: int | None = None,
    input_tokens: int = 1000,
    output_tokens: int = 100,
    cost_nusd: int | None = None,
    team_id: str | None = "team-a",
    span_id: str | None = None,
) -> Call:
    tokens = input_tokens + output_tokens
    return Call(
        at=at,
        span_id=span_id or span(),
        key_id="key-1",
        team_id=team_id,
        status=status,
        http_status=http_status or {"ok": 200, "error": 500, "refused": 429}.get(status, 500),
        error_class=None if status == "ok" else "upstream",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_nusd=tokens * 3_000 if cost_nusd is None else cost_nusd,
        turn=turn,
    )


def tool(action: str, result: str | None = "r1", error: str | None = None, at: float = 0.0) -> Tool:
    return Tool(
        at=at,
        span_id=span(),
        name=action.partition(":")[0],
        action=action,
        result=result,
        error=error,
    )


# One tool call of a script: (tool name, input, result text, whether it failed).
Execution = tuple[str, dict[str, Any], str, bool]


@dataclass
class Conversation:
    """An agent's conversation as Anthropic Messages requests."""

    task: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.messages.append({"role": "user", "content": self.task})

    def body(self) -> dict[str, Any]:
        return {"model": "claude-x", "max_tokens": 4096, "messages": list(self.messages)}

    def turn(self) -> Turn:
        found = MESSAGES.turn(self.body())
        assert found is not None
        return found

    def act(self, executions: Sequence[Execution], text: str = "") -> None:
        """The model called these tools; the agent ran them and sends their results."""
        ids = [f"toolu_{next(self.ids):04d}" for _ in executions]
        calls = [
            {"type": "tool_use", "id": i, "name": name, "input": args}
            for i, (name, args, _, _) in zip(ids, executions, strict=True)
        ]
        prose = [{"type": "text", "text": text}] if text else []
        self.messages.append({"role": "assistant", "content": prose + calls})
        results = [
            {"type": "tool_result", "tool_use_id": i, "content": out, "is_error": failed}
            for i, (_, _, out, failed) in zip(ids, executions, strict=True)
        ]
        self.messages.append({"role": "user", "content": results})

    def say(self, text: str, reply: str) -> None:
        """The model answered in prose; the user (or agent) wrote again."""
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        self.messages.append({"role": "user", "content": reply})

    def compact(self, summary: str) -> None:
        self.messages = [{"role": "user", "content": f"{self.task}\n\nSummary: {summary}"}]


@dataclass
class Agent:
    """Turns a script into signals: one call per request (tokens growing with the
    conversation), tool spans when the agent reports them, workspace and sandbox samples."""

    task: str
    team_id: str | None = "team-a"
    spans: bool = False
    at: float = 0.0
    step_s: float = 7.0
    conversation: Conversation = field(init=False)
    out: list[Signal] = field(default_factory=list)
    edits: int = 0

    def __post_init__(self) -> None:
        self.conversation = Conversation(self.task)
        self.request()

    def request(self, *, status: str = "ok") -> Turn:
        t = self.conversation.turn()
        size = sum(len(str(m["content"])) for m in self.conversation.messages)
        self.at += self.step_s
        self.out.append(
            call(
                self.at,
                t,
                status=status,
                input_tokens=2_000 + size // 3 if status == "ok" else 0,
                output_tokens=350 if status == "ok" else 0,
                team_id=self.team_id,
            )
        )
        self.out.append(Progress(self.at, f"diff-{self.edits}", 120 * self.edits))
        self.out.append(Sandbox(self.at, 300 << 20, 4 << 30, 6, 512, self.at / 10, 0, 0))
        return t

    def step(self, *executions: Execution, text: str = "") -> None:
        self.conversation.act(executions, text)
        self.edits += sum(1 for name, *_ in executions if name == "edit_file")
        if self.spans:
            t = self.conversation.turn()
            for action, result, (_, _, _, failed) in zip(
                t.actions, t.results, executions, strict=False
            ):
                self.out.append(
                    Tool(
                        self.at + 1,
                        span(),
                        action.partition(":")[0],
                        action,
                        None if failed else result,
                        result if failed else None,
                    )
                )
        self.request()

    def retry_once(self) -> None:
        """The last request failed upstream (an overload) and was sent again as it was."""
        last = self.out[-3]
        assert isinstance(last, Call)
        self.out[-3] = call(
            last.at, last.turn, status="error", http_status=529, team_id=self.team_id
        )
        self.request()


def bash(command: str, output: str, failed: bool = False) -> Execution:
    return ("bash", {"command": command}, output, failed)


def read(path: str, content: str) -> Execution:
    return ("read_file", {"path": path}, content, False)


def edit(path: str, old: str, new: str) -> Execution:
    return ("edit_file", {"path": path, "old": old, "new": new}, "ok", False)


def healthy_run(name: str, *, spans: bool = False, rounds: int = 3, **kw: Any) -> list[Signal]:
    """A coding agent fixing tests, file after file: it lists, reads, runs the tests (which
    fail differently after each edit), edits, checks git, mistypes a path once, reads two
    files at once, and its conversation compacts once. Realistic repetition included: the
    same test command several times (different output), `git status` twice in a row."""
    agent = Agent(f"fix the failing tests of {name}", spans=spans, **kw)
    agent.step(bash("ls", "README.md\nsrc\ntests"))
    for r in range(rounds):
        module = f"{name}_m{r}"
        agent.step(read(f"src/{module}.py", f"def parse(x):\n    return x  # {module}"))
        agent.step(read(f"tests/test_{module}.py", f"assert parse('1') == 1  # {module}"))
        agent.step(bash("pytest -q", f"1 failed: {module}: '1' != 1"))
        agent.step(edit(f"src/{module}.py", "return x", "return int(x)"))
        agent.step(bash("pytest -q", f"1 failed: {module}: int('') raised"))
        agent.step(read(f"src/{module}.py", f"def parse(x):\n    return int(x)  # {module}"))
        agent.step(edit(f"src/{module}.py", "int(x)", "int(x) if x else 0"))
        agent.retry_once()
        agent.step(bash("pytest -q", f"{3 + r} passed"))
        agent.step(bash("grep -rn parse src/lib", "grep: src/lib: No such file", True))
        agent.step(bash("grep -rn parse src", f"src/{module}.py:1:def parse(x):"))
        agent.step(
            read(f"docs/{module}.md", f"# {module}"), read("CHANGELOG.md", f"## {r}"), text="both"
        )
        agent.step(bash("git status", f"M src/{module}.py"))
        agent.step(bash("git status", f"M src/{module}.py"))
        agent.step(bash("git diff --stat", f"{r + 1} files changed"))
        if r == 1:
            agent.conversation.compact(f"fixed {name}_m0 and {name}_m1")
            agent.request()
    agent.conversation.say("All tests pass now.", "Thanks, please also run the linter.")
    agent.request()
    agent.step(bash("ruff check", "All checks passed!"))
    return agent.out


def chat_session(name: str, turns: int = 60, at: float = 0.0) -> list[Signal]:
    """A person chatting through a key: questions and prose answers, no tools."""
    conversation = Conversation(f"{name}: what does this error mean?")
    out: list[Signal] = []
    for i in range(turns):
        at += 20.0
        t = conversation.turn()
        out.append(call(at, t, input_tokens=500 + 200 * i, output_tokens=300, team_id="team-b"))
        conversation.say(f"answer {i} for {name}", f"{name}: follow-up question {i}")
    return out


def watch(
    streams: Mapping[Subject, Sequence[Signal]], detectors: Sequence[Detector]
) -> dict[Subject, list[Finding]]:
    """Every subject's findings, its signals interleaved with the others' by time and each
    given to the detectors that read its kind for its kind of subject, the engine's way."""
    kinds = {cls: kind for kind, cls in SIGNALS.items()}
    merged = sorted(
        (
            (signal.at, n, subject, signal)
            for subject, signals in streams.items()
            for n, signal in enumerate(signals)
        ),
        key=lambda item: (item[0], item[1]),
    )
    states: dict[tuple[Subject, str], Any] = {}
    found: dict[Subject, list[Finding]] = {subject: [] for subject in streams}
    for _, _, subject, signal in merged:
        for d in detectors:
            if kinds[type(signal)] not in d.signals or subject.kind not in d.subjects:
                continue
            key = (subject, d.name)
            if key not in states:
                states[key] = d.state()
            finding = d.observe(states[key], signal, d.defaults)
            if finding is not None:
                found[subject].append(finding)
                states[key] = d.state()
    return found
