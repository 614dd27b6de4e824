"""The agent's tools: a table of small functions over one working directory.

Every path a tool takes is relative to the workdir (an absolute path inside it
is accepted too) and is checked after resolving symlinks, so nothing outside
the workdir is read or written. A tool that fails returns its error as its
result text; :meth:`Toolbox.call` never raises, the model reads the error and
carries on. Outputs are bounded so one answer cannot flood the context.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.agent.errors import ToolError

LIST_MAX_FILES = 1000
READ_MAX_CHARS = 64_000
SEARCH_MAX_MATCHES = 200
SEARCH_MAX_FILE_BYTES = 2_000_000
SEARCH_LINE_CHARS = 300
OUTPUT_HEAD_BYTES = 4_000  # a command's output keeps its start (the command echoing) ...
OUTPUT_TAIL_BYTES = 12_000  # ... and mostly its end, where test summaries and errors are
SKIP_DIRS = frozenset({".git", "__pycache__"})  # history and bytecode: noise to every tool


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call gave back: the text the model reads, and whether it failed."""

    text: str
    ok: bool = True


@dataclass(frozen=True, slots=True)
class CommandRun:
    """One ``run`` call, for the report: the command, its exit code (None when it was killed)
    and how it ended (``exit 0``, ``timed out after 120s``, ``interrupted``)."""

    command: str
    exit_code: int | None
    ending: str
    seconds: float


@dataclass
class Toolbox:
    """The tools bound to one workdir, counting what was called for the report.

    ``command_timeout`` is both the default and the longest time a ``run``
    command may take; a model asking for longer gets this much.
    """

    workdir: Path
    command_timeout: float = 120.0
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    commands: list[CommandRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()

    def call(self, name: str, arguments: str) -> ToolResult:
        """Run tool ``name`` with ``arguments`` (a JSON object, as the model sent it)."""
        self.calls[name] += 1
        try:
            tool = TOOLS.get(name)
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")
            result = ToolResult(tool.run(self, **tool.check(arguments)))
        except ToolError as exc:
            result = ToolResult(f"error: {exc.message}", ok=False)
        except (OSError, ValueError) as exc:  # ValueError: bad bytes, a NUL in a path
            result = ToolResult(f"error: {describe_os_error(exc)}", ok=False)
        if not result.ok:
            self.failures[name] += 1
        return result

    def path(self, relative: str) -> Path:
        """``relative`` resolved inside the workdir; a ToolError if it leads outside."""
        resolved = (self.workdir / relative).resolve()
        if resolved != self.workdir and not resolved.is_relative_to(self.workdir):
            raise ToolError(f"{relative!r} is outside the workdir; paths are relative to it")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.workdir).as_posix() or "."


def describe_os_error(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def walk_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself), sorted, skipping ``SKIP_DIRS``, not following
    links."""
    if not root.is_dir():
        yield root
        return
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            yield Path(current, name)


# -- the tools -----------------------------------------------------------------------------


def list_files(box: Toolbox, path: str = ".") -> str:
    root = box.path(path)
    if not root.exists():
        raise ToolError(f"{path!r} does not exist")
    lines: list[str] = []
    for count, file in enumerate(walk_files(root)):
        if count == LIST_MAX_FILES:
            lines.append(f"[more files not shown: only the first {LIST_MAX_FILES} are listed]")
            break
        lines.append(box.relative(file))
    return "\n".join(lines) if lines else "(no files)"


def read_file(box: Toolbox, path: str) -> str:
    text = box.path(path).read_text(encoding="utf-8", errors="replace")
    if len(text) <= READ_MAX_CHARS:
        return text
    return f"{text[:READ_MAX_CHARS]}\n[cut: showed {READ_MAX_CHARS} of {len(text)} characters]"


def search(box: Toolbox, pattern: str, path: str = ".") -> str:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ToolError(f"invalid regular expression {pattern!r}: {exc}") from exc
    matches: list[str] = []
    for file in walk_files(box.path(path)):
        for number, line in searchable_lines(file):
            if regex.search(line):
                if len(matches) == SEARCH_MAX_MATCHES:
                    matches.append(f"[more matches not shown: only the first {len(matches)}]")
                    return "\n".join(matches)
                matches.append(f"{box.relative(file)}:{number}: {line[:SEARCH_LINE_CHARS]}")
    return "\n".join(matches) if matches else "no matches"


def searchable_lines(file: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text file; nothing for binary, oversized or unreadable files."""
    try:
        if not file.is_file() or file.stat().st_size > SEARCH_MAX_FILE_BYTES:
            return
        data = file.read_bytes()
    except OSError:
        return
    if b"\0" in data[:8192]:
        return
    lines = data.decode("utf-8", errors="replace").splitlines()
    yield from enumerate(lines, start=1)


def write_file(box: Toolbox, path: str, content: str) -> str:
    target = box.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    return f"wrote {len(content.encode())} bytes to {box.relative(target)}"


def edit_file(box: Toolbox, path: str, old: str, new: str) -> str:
    if not old:
        raise ToolError("'old' is empty; give the exact text to replace")
    target = box.path(path)
    text = target.read_text(encoding="utf-8")
    found = text.count(old)
    if found != 1:
        where = "not found" if found == 0 else f"found {found} times"
        raise ToolError(
            f"'old' was {where} in {path}; it must occur exactly once "
            "(quote more of the surrounding text to make it unique)"
        )
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f"edited {box.relative(target)}: replaced 1 occurrence"


def run(box: Toolbox, command: str, timeout: float | None = None) -> str:
    limit = box.command_timeout if timeout is None else min(max(timeout, 1.0), box.command_timeout)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        # Its own process group, so a timeout kills what the command started too; output to a
        # file, so a background process that keeps the descriptor cannot hold us up.
        process = subprocess.Popen(  # noqa: S602 - running shell commands is this tool's job
            command,
            shell=True,
            cwd=box.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        exit_code, ending = None, "interrupted"
        try:
            exit_code = process.wait(timeout=limit)
            ending = f"exit {exit_code}"
        except subprocess.TimeoutExpired:
            ending = f"timed out after {limit:g}s"
        finally:
            if process.poll() is None:  # timed out, or the agent was interrupted while waiting
                kill_group(process)
            box.commands.append(CommandRun(command, exit_code, ending, time.monotonic() - started))
        output = capped_output(out)
    if exit_code is None:
        return f"{output}\n[{ending}: the command and its children were killed]"
    return f"{output}\n[exit code {exit_code}]"


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def capped_output(out: Any) -> str:
    """The command's output: all of it, or its head and tail around a note of what was cut."""
    size = out.seek(0, os.SEEK_END)
    out.seek(0)
    if size <= OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES:
        return str(out.read().decode("utf-8", errors="replace"))
    head = out.read(OUTPUT_HEAD_BYTES).decode("utf-8", errors="replace")
    out.seek(size - OUTPUT_TAIL_BYTES)
    tail = out.read().decode("utf-8", errors="replace")
    cut = size - OUTPUT_HEAD_BYTES - OUTPUT_TAIL_BYTES
    return f"{head}\n[... {cut} bytes of output cut ...]\n{tail}"


# -- the table -----------------------------------------------------------------------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float)}


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: its function, what the model is told about it, its parameters.

    ``parameters`` maps each argument to its JSON type and description; those
    in ``required`` must be given, the others take the function's default.
    """

    run: Callable[..., str]
    description: str
    parameters: dict[str, tuple[str, str]]
    required: tuple[str, ...]

    def spec(self, name: str) -> dict[str, Any]:
        """The tool as an OpenAI Chat Completions function tool."""
        properties = {
            arg: {"type": kind, "description": text}
            for arg, (kind, text) in self.parameters.items()
        }
        schema = {"type": "object", "properties": properties, "required": list(self.required)}
        function = {"name": name, "description": self.description, "parameters": schema}
        return {"type": "function", "function": function}

    def check(self, arguments: str) -> dict[str, Any]:
        """The arguments as keyword arguments, or a ToolError saying what is wrong with them."""
        try:
            given = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolError(f"the arguments are not valid JSON: {exc}") from exc
        if not isinstance(given, dict):
            raise ToolError("the arguments must be a JSON object")
        unknown = sorted(set(given) - set(self.parameters))
        missing = [arg for arg in self.required if arg not in given]
        if unknown or missing:
            problems = [f"unknown {', '.join(unknown)}"] if unknown else []
            problems += [f"missing {', '.join(missing)}"] if missing else []
            raise ToolError(f"bad arguments ({'; '.join(problems)})")
        for arg, value in given.items():
            kind = self.parameters[arg][0]
            if not isinstance(value, _JSON_TYPES[kind]) or isinstance(value, bool):
                raise ToolError(f"argument {arg!r} must be a {kind}")
        return given


_PATH = ("string", "A path relative to the workdir.")
_DIR = ("string", "A directory or file relative to the workdir (default: the workdir).")

TOOLS: dict[str, Tool] = {
    "list_files": Tool(
        list_files,
        f"List the files under a directory, recursively (skipping .git; at most {LIST_MAX_FILES}).",
        {"path": _DIR},
        (),
    ),
    "read_file": Tool(read_file, "Read a text file.", {"path": _PATH}, ("path",)),
    "search": Tool(
        search,
        "Search files for a Python regular expression; answers 'file:line: text' lines.",
        {"pattern": ("string", "The regular expression."), "path": _DIR},
        ("pattern",),
    ),
    "write_file": Tool(
        write_file,
        "Create or overwrite a file with the given content (parent directories are created).",
        {"path": _PATH, "content": ("string", "The whole new content of the file.")},
        ("path", "content"),
    ),
    "edit_file": Tool(
        edit_file,
        "Replace the one occurrence of 'old' in a file with 'new'; 'old' must occur exactly once.",
        {
            "path": _PATH,
            "old": ("string", "The exact text to replace, unique in the file."),
            "new": ("string", "The replacement text."),
        },
        ("path", "old", "new"),
    ),
    "run": Tool(
        run,
        "Run a shell command in the workdir; answers its combined stdout and stderr and its "
        "exit code.",
        {
            "command": ("string", "The shell command."),
            "timeout": ("number", "Seconds before the command is killed (optional)."),
        },
        ("command",),
    ),
}


def tool_specs() -> list[dict[str, Any]]:
    """Every tool, in the shape of the ``tools`` field of a Chat Completions request."""
    return [tool.spec(name) for name, tool in TOOLS.items()]
