"""A run's trajectory: what its agent executed, read from the run's ``tool`` spans.

Pure: span rows (the ``spans`` table's columns as dicts) and a body reader in,
``Executed`` steps out, in start order. The rows are agent telemetry, hostile:
at most ``MAX_ROWS`` tool rows are read, at most ``BODY_HEAD_BYTES`` +
``BODY_TAIL_BYTES`` of each body and ``MAX_TOTAL_BODY_BYTES`` over all of them
(past that budget, steps carry no command text), commands are cut at
``MAX_COMMAND_CHARS`` and outputs keep ``OUTPUT_HEAD_CHARS`` +
``OUTPUT_TAIL_CHARS`` (the tail is where test summaries and exit codes are).

What each agent's tool spans hold (``request_blob`` = the tool's input,
``response_blob`` = its output, when the team keeps bodies):

* Corral's reference agent (``execute_tool NAME`` spans): ``run`` ``{"command"}``
  whose result ends ``[exit code N]`` (or ``[timed out …]``; the span is ``ok``
  even for a non-zero exit); ``write_file``/``edit_file`` ``{"path", …}``;
  ``read_file``, ``list_files``, ``search``. A tool error makes the span ``error``.
* Claude Code (its ``tool_result`` log event): ``Bash`` ``{"command"}``, ``Edit``,
  ``MultiEdit``, ``Write`` ``{"file_path"}``, ``NotebookEdit``; no output body;
  ``success`` false (status ``error``) when the command exited non-zero.
* Codex (``codex.tool_result``): ``exec_command`` ``{"cmd"}`` answering ``Process
  exited with code N``; the older ``shell`` ``{"command": ["bash", "-lc", …]}``
  answering ``Exit code: N`` or JSON ``metadata.exit_code``; ``apply_patch`` (the
  patch text, paths from its ``*** Update File:`` lines).
* Gemini CLI (``gemini_cli.tool_call``): ``run_shell_command`` ``{"command"}``,
  ``write_file``/``replace`` ``{"file_path"}``, ``read_file``…; no output body, and
  its ``success`` does not follow the exit code.

Outcome (``ok``): the exit code when the result shows one (0 → True); else
False when the span failed; else True for tools whose success flag follows the
exit code (Claude Code's ``Bash``) or that are not commands; else None (unknown).

Commands that edit. A shell command is an ``edit`` when one of its parts is,
by this heuristic list: ``sed -i``, ``perl -i``, an output redirect (``>``,
``>>``) to a file outside ``/dev`` and ``/tmp``, ``tee FILE``, ``patch``,
``apply_patch``, ``mv``, ``cp``, ``rm``, ``truncate``, ``dd of=``, ``git
apply|am|cherry-pick|revert|merge|pull|rebase|restore|stash pop|stash apply``,
``git checkout -- …`` and ``git reset --hard``. A test run's redirect (``pytest >
log``) writes a log, not the change: a test part is never an edit. Files
written by a program (``python - <<EOF … open(f, "w")``) are not seen.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from corral.errors import InvalidRequest

__all__ = [
    "MAX_ROWS",
    "Executed",
    "Shape",
    "StepKind",
    "command_shape",
    "exit_code_of",
    "is_test_command",
    "patch_paths",
    "trajectory",
]

StepKind = Literal["command", "edit", "read", "other"]

MAX_ROWS = 5_000  # tool rows read; the caller should pass them in start order
BODY_HEAD_BYTES = 64 * 1024
BODY_TAIL_BYTES = 64 * 1024
MAX_TOTAL_BODY_BYTES = 64 * 1024 * 1024  # over all bodies of one trajectory
MAX_COMMAND_CHARS = 2_000
MAX_PATHS = 50
OUTPUT_HEAD_CHARS = 1_000
OUTPUT_TAIL_CHARS = 3_000
_MAX_ID_CHARS = 64
_MAX_TOOL_CHARS = 200
_MAX_PATH_CHARS = 500


@dataclass(frozen=True, slots=True)
class Executed:
    """One tool execution of the trajectory.

    ``tool`` is the name as the agent reported it; ``command`` the shell command
    (cut), for command tools and shell edits; ``exit_code`` when the result shows
    one; ``ok`` True/False, or None when the outcome is unknown; ``paths`` the
    files an edit touched, when known; ``output`` the result text's head and tail
    ("" when the agent reports none).
    """

    span_id: str
    start_ns: int
    end_ns: int
    tool: str
    kind: StepKind
    command: str | None
    exit_code: int | None
    ok: bool | None
    paths: tuple[str, ...]
    output: str


# Tool names (lower-cased) of every agent Corral knows, by what they do.
_COMMAND_TOOLS = frozenset(
    {"run", "bash", "shell", "exec_command", "local_shell", "container.exec", "shell_command"}
    | {"run_shell_command", "unified_exec"}
)
_EDIT_TOOLS = frozenset(
    {"write_file", "edit_file", "edit", "multiedit", "write", "notebookedit", "apply_patch"}
    | {"replace", "smart_edit", "create_file", "str_replace_based_edit_tool"}
)
_READ_TOOLS = frozenset(
    {"read_file", "list_files", "search", "read", "glob", "grep", "ls", "notebookread"}
    | {"list_dir", "grep_files", "read_many_files", "list_directory", "search_file_content"}
    | {"view_image", "web_fetch", "webfetch", "websearch", "google_web_search"}
)
# Tools whose reported success follows the command's exit code (Claude Code's Bash).
_SUCCESS_IS_EXIT = frozenset({"Bash"})
_PATH_KEYS = ("path", "file_path", "notebook_path", "absolute_path", "filename")
_COMMAND_KEYS = ("command", "cmd", "script")

_EXIT_PATTERNS = (
    re.compile(r"\[exit code (-?\d{1,5})\]\s*\Z"),  # the reference agent's last line
    re.compile(r"^Process exited with code (-?\d{1,5})", re.M),  # Codex exec_command
    re.compile(r"^Exit code: (-?\d{1,5})", re.M),  # Codex shell (text)
    re.compile(r'"exit_code"\s*:\s*(-?\d{1,5})'),  # Codex shell (JSON metadata)
    re.compile(r"^Exit Code: (-?\d{1,5})", re.M),  # Gemini CLI run_shell_command
    re.compile(r"^Error: Exit code (\d{1,5})", re.M),  # Claude Code Bash
)
_KILLED = re.compile(r"\[(?:timed out after [^\]]*|interrupted)[^\]]*\]\s*\Z")
_PATCH_FILE = re.compile(r"^\*\*\* (?:Add|Update|Delete) File: (.+)$|^\*\*\* Move to: (.+)$", re.M)
_PATH_IN_JSON = re.compile(
    r'"(?:file_path|path|notebook_path|absolute_path)"\s*:\s*"((?:[^"\\]|\\.){1,500})"'
)
_COMMAND_IN_JSON = re.compile(r'"(?:command|cmd)"\s*:\s*"((?:[^"\\]|\\.){1,2000})')


def trajectory(
    rows: Sequence[Mapping[str, Any]], body: Callable[[str], bytes | None]
) -> list[Executed]:
    """The run's tool executions in start order (then span id), from its span rows.

    Rows of another kind than ``tool`` are skipped; at most ``MAX_ROWS`` tool rows
    are read. ``body(key)`` answers a blob's bytes or None (expired, never kept); a
    key it refuses with ``InvalidRequest`` counts as no body, while its other errors
    (a ``StoreError``: the blob store cannot be read) propagate. A body past the
    budget is not read and the step's command is then None.
    """
    reader = _Bodies(body)
    steps = [_step(row, reader) for row in _tool_rows(rows)]
    steps.sort(key=lambda step: (step.start_ns, step.span_id))
    return steps


def _tool_rows(rows: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    taken = 0
    for row in rows:
        if taken >= MAX_ROWS:
            return
        if isinstance(row, Mapping) and row.get("kind") == "tool":
            taken += 1
            yield row


class _Bodies:
    """Reads bodies through ``body`` within the trajectory's byte budget."""

    def __init__(self, body: Callable[[str], bytes | None]) -> None:
        self._body = body
        self._left = MAX_TOTAL_BODY_BYTES

    def text(self, key: Any) -> str | None:
        """The body's head and tail as text (a note marks a cut middle); None if absent."""
        if not isinstance(key, str) or not key or self._left <= 0:
            return None
        try:
            data = self._body(key)
        except InvalidRequest:  # not a body key at all: no body (a store that is down raises)
            return None
        if not isinstance(data, bytes):
            return None
        self._left -= len(data)
        if len(data) > BODY_HEAD_BYTES + BODY_TAIL_BYTES:
            cut = len(data) - BODY_HEAD_BYTES - BODY_TAIL_BYTES
            data = (
                data[:BODY_HEAD_BYTES]
                + b"\n[... %d bytes cut ...]\n" % cut
                + data[-BODY_TAIL_BYTES:]
            )
        return data.decode("utf-8", errors="replace").replace("\0", "")


def _step(row: Mapping[str, Any], bodies: _Bodies) -> Executed:
    attributes = row.get("attributes")
    attrs: Mapping[str, Any] = attributes if isinstance(attributes, Mapping) else {}
    tool = _tool_name(row, attrs)
    start = _int(row.get("start_ns"))
    end = max(_int(row.get("end_ns")), start)
    failed = row.get("status") == "error"
    request = bodies.text(row.get("request_blob"))
    response = bodies.text(row.get("response_blob"))
    output = bounded_output(response or "")
    kind: StepKind = _kind_of(tool)
    # Only a command's result states an exit code; a file read may merely contain the words.
    exit_code = exit_code_of(response) if response and kind == "command" else None
    command: str | None = None
    paths: tuple[str, ...] = ()
    if kind == "command":
        command = command_of(request, attrs)
        shape = command_shape(command) if command else None
        if shape is not None and shape.edit:
            kind, paths = "edit", shape.paths
    elif kind == "edit":
        paths = _edited_paths(tool, request)
    ok = _outcome(tool, kind, exit_code, failed, response, attrs)
    span_id = str(row.get("span_id") or "")[:_MAX_ID_CHARS]
    return Executed(span_id, start, end, tool, kind, command, exit_code, ok, paths, output)


def _tool_name(row: Mapping[str, Any], attrs: Mapping[str, Any]) -> str:
    name = row.get("name")
    if isinstance(name, str) and name.startswith("execute_tool "):
        return name[len("execute_tool ") :][:_MAX_TOOL_CHARS]
    for key in ("gen_ai.tool.name", "tool_name", "function_name"):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value[:_MAX_TOOL_CHARS]
    return name[:_MAX_TOOL_CHARS] if isinstance(name, str) else ""


def _kind_of(tool: str) -> StepKind:
    name = tool.lower()
    if name in _COMMAND_TOOLS:
        return "command"
    if name in _EDIT_TOOLS:
        return "edit"
    if name in _READ_TOOLS:
        return "read"
    return "other"


def _int(value: Any) -> int:
    if type(value) is int:
        return max(value, 0)
    try:
        return max(int(value), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _outcome(
    tool: str,
    kind: StepKind,
    exit_code: int | None,
    failed: bool,
    response: str | None,
    attrs: Mapping[str, Any],
) -> bool | None:
    if exit_code is not None:
        return exit_code == 0
    if failed or (response is not None and _KILLED.search(response)):
        return False
    if kind in ("command", "edit") and tool.lower() in _COMMAND_TOOLS:
        success = attrs.get("success")
        if tool in _SUCCESS_IS_EXIT and (success is True or success == "true"):
            return True
        return None
    return True


def exit_code_of(text: str) -> int | None:
    """The exit code a tool result shows, in any known agent's wording; None if none."""
    for pattern in _EXIT_PATTERNS:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def bounded_output(text: str) -> str:
    """``text``, or its head and tail around a note of what was cut."""
    if len(text) <= OUTPUT_HEAD_CHARS + OUTPUT_TAIL_CHARS:
        return text
    cut = len(text) - OUTPUT_HEAD_CHARS - OUTPUT_TAIL_CHARS
    return (
        f"{text[:OUTPUT_HEAD_CHARS]}\n[... {cut} characters cut ...]\n{text[-OUTPUT_TAIL_CHARS:]}"
    )


def _arguments(request: str | None) -> Any:
    """The tool input as JSON when it is a small JSON document, else None."""
    if not request or len(request) > BODY_HEAD_BYTES or request.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(request)
    except ValueError:
        return None


def command_of(request: str | None, attrs: Mapping[str, Any]) -> str | None:
    """The shell command of a command tool's input (whitespace kept, cut), or None."""
    args = _arguments(request)
    command: Any = None
    if isinstance(args, dict):
        command = next((args[k] for k in _COMMAND_KEYS if args.get(k)), None)
    elif isinstance(args, list):
        command = args
    elif request:
        match = _COMMAND_IN_JSON.search(request[:BODY_HEAD_BYTES])
        command = _unescape(match.group(1)) if match else request
    if command is None:  # Claude Code's trace spans name it as an attribute
        command = attrs.get("full_command")
    if isinstance(command, list) and all(isinstance(part, str) for part in command):
        command = _script_of(command)
    if not isinstance(command, str) or not command.strip():
        return None
    return command.strip()[:MAX_COMMAND_CHARS]


def _unescape(text: str) -> str:
    try:
        value = json.loads(f'"{text}"')
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _script_of(argv: list[str]) -> str:
    """Codex's ``["bash", "-lc", SCRIPT]`` as the script; another argv joined for a shell."""
    if len(argv) >= 3 and argv[0].rsplit("/", 1)[-1] in _SHELLS and argv[-2] in _SHELL_FLAGS:
        return argv[-1]
    return shlex.join(argv)


def _edited_paths(tool: str, request: str | None) -> tuple[str, ...]:
    if request is None:
        return ()
    if tool.lower() == "apply_patch":
        return patch_paths(request)
    args = _arguments(request)
    if isinstance(args, dict):
        for key in _PATH_KEYS:
            value = args.get(key)
            if isinstance(value, str) and value:
                return (value[:_MAX_PATH_CHARS],)
        patch = args.get("input") or args.get("patch")
        return patch_paths(patch) if isinstance(patch, str) else ()
    match = _PATH_IN_JSON.search(request[:BODY_HEAD_BYTES])  # a large write: its path leads
    return (_unescape(match.group(1))[:_MAX_PATH_CHARS],) if match else ()


def patch_paths(patch: str) -> tuple[str, ...]:
    """The files a Codex ``apply_patch`` patch adds, updates, deletes or moves to."""
    found: list[str] = []
    for match in _PATCH_FILE.finditer(patch):
        path = (match.group(1) or match.group(2) or "").strip()[:_MAX_PATH_CHARS]
        if path and path not in found:
            found.append(path)
        if len(found) >= MAX_PATHS:
            break
    return tuple(found)


# -- what a shell command does ---------------------------------------------------------------

_SHELLS = frozenset({"bash", "sh", "zsh", "dash", "ksh"})
_SHELL_FLAGS = frozenset({"-c", "-lc", "-cl", "-ec", "-xc", "-euc", "-eu", "-l"})
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")
_SEPARATOR = re.compile(r"\|\||&&|;|\|(?!&)|\|&|\n|(?<![>&<0-9])&(?![&>0-9])")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_REDIRECT = re.compile(r"(?<![<>&0-9])(?:[0-9]?)>>?\s*(?!&)([^\s;&|<>()]+)")
_ENV_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPERS = frozenset({"sudo", "env", "time", "nice", "nohup", "xvfb-run", "command", "exec"})
_RUNNERS = frozenset({"uv", "poetry", "pipenv", "pdm", "hatch", "rye", "pnpm", "bundle", "yarn"})
_MAX_DEPTH = 2


@dataclass(frozen=True, slots=True)
class Shape:
    """What a shell command does, by the heuristics in the module docstring.

    ``test_last``: the command's exit code is its last test run's (a test is its
    final part, not piped on nor ``||``-ed); ``test_after_edit``: a test part
    follows an edit part inside the command.
    """

    test: bool
    edit: bool
    paths: tuple[str, ...]
    test_last: bool
    test_after_edit: bool


def is_test_command(command: str) -> bool:
    """Whether a shell command runs a test suite (any of its parts, by the list below)."""
    return command_shape(command).test


def command_shape(command: str, depth: int = 0) -> Shape:
    """The shape of ``command`` (cut at ``MAX_COMMAND_CHARS``)."""
    parts = _parts(command[:MAX_COMMAND_CHARS])
    test = edit = test_after_edit = False
    paths: list[str] = []
    exits: list[bool | None] = []  # per part: a test whose exit code is the part's, or None
    for text, _ in parts:
        argv = _argv(text)
        inner = _inner_script(argv)
        if inner is not None and depth < _MAX_DEPTH:
            shape = command_shape(inner, depth + 1)
            is_test, is_edit, part_paths = shape.test, shape.edit, shape.paths
            exits.append(shape.test_last if is_test else None)
        else:
            is_test = is_test_argv(argv)
            is_edit, part_paths = (False, ()) if is_test else _edit_of(text, argv)
            exits.append(True if is_test else None)
        test_after_edit = test_after_edit or (is_test and edit)
        edit, test = edit or is_edit, test or is_test
        paths.extend(p for p in part_paths if p not in paths)
    return Shape(test, edit, tuple(paths[:MAX_PATHS]), _test_last(parts, exits), test_after_edit)


def _test_last(parts: list[tuple[str, str]], exits: list[bool | None]) -> bool:
    """Whether the command's exit code is a test run's: the last test part is followed only by
    ``&&``-chained parts (``pytest | tail``, ``pytest; echo``, ``pytest || true`` hide it)."""
    for index in range(len(parts) - 1, -1, -1):
        if exits[index] is not None:
            return bool(exits[index])
        if index and parts[index - 1][1] != "&&":
            return False
    return False


def _parts(command: str) -> list[tuple[str, str]]:
    """The simple commands of ``command`` and the separator after each (heredoc bodies and
    quoted text never split)."""
    command = _strip_heredocs(command)
    masked = _QUOTED.sub(lambda m: "_" * len(m.group()), command)
    parts: list[tuple[str, str]] = []
    start = 0
    for match in _SEPARATOR.finditer(masked):
        text = command[start : match.start()].strip()
        if text:
            parts.append((text, match.group()))
        start = match.end()
    tail = command[start:].strip()
    if tail:
        parts.append((tail, ""))
    return parts


def _strip_heredocs(command: str) -> str:
    if "<<" not in command:
        return command
    lines = command.split("\n")
    out: list[str] = []
    ending: str | None = None
    for line in lines:
        if ending is not None:
            if line.strip() == ending:
                ending = None
            continue
        out.append(line)
        match = _HEREDOC.search(line)
        if match:
            ending = match.group(2)
    return "\n".join(out)


def _argv(text: str) -> list[str]:
    try:
        argv = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote: the words as they stand
        argv = text.split()
    while argv and (_ENV_ASSIGN.match(argv[0]) or argv[0] in _WRAPPERS):
        argv = argv[1:]
    if argv and argv[0] == "timeout":
        argv = [a for a in argv[1:] if not a.startswith("-")][1:]
    if len(argv) > 1 and argv[0] in _RUNNERS and argv[1] in ("run", "exec", "dlx"):
        argv = argv[2:]
    if argv and argv[0] in ("npx", "bunx", "pnpx"):
        argv = [a for a in argv[1:] if not a.startswith("-")]
    return argv


def _inner_script(argv: list[str]) -> str | None:
    if len(argv) >= 3 and _base(argv[0]) in _SHELLS and argv[1] in _SHELL_FLAGS:
        return argv[2]
    return None


def _base(program: str) -> str:
    return program.rsplit("/", 1)[-1]


_TEST_PROGRAMS = frozenset(
    {"pytest", "py.test", "tox", "nox", "jest", "vitest", "mocha", "ava", "rspec", "phpunit"}
    | {"ctest", "nosetests", "nose2", "bats", "karma", "trial", "ward", "tap", "busted"}
)
_PYTHON = re.compile(r"python(\d(\.\d+)?)?\Z")
_PYTHON_TEST_MODULES = frozenset({"pytest", "unittest", "tox", "nox", "nose", "nose2", "trial"})
_TARGET_TEST = re.compile(r"(test|tests|check|spec)([-_:.].*)?\Z")
# Programs whose ``test`` subcommand runs the tests (``go test``, ``cargo test``…).
_TEST_SUBCOMMAND = frozenset(
    {"go", "cargo", "dotnet", "mix", "deno", "swift", "sbt", "lein", "stack", "cabal", "bazel"}
    | {"hatch", "bun", "playwright", "composer"}
)


def is_test_argv(argv: list[str]) -> bool:
    """Whether one simple command (its words) runs a test suite, by the list above."""
    if not argv:
        return False
    program, rest = _base(argv[0]), argv[1:]
    words = [word for word in rest if not word.startswith("-")]
    if program in _TEST_PROGRAMS:
        return True
    if _PYTHON.match(program):
        if "-m" in rest:
            module = rest[rest.index("-m") + 1 : rest.index("-m") + 2]
            return bool(module) and module[0] in _PYTHON_TEST_MODULES
        return bool(words) and (
            (words[0].endswith("manage.py") and "test" in words[1:2])
            or _base(words[0]) in ("runtests.py", "run_tests.py")
            or (words[0].endswith("setup.py") and "test" in words[1:2])
            or _TEST_SCRIPT.match(_base(words[0])) is not None  # python3 test_calc.py
        )
    if program in ("make", "gmake", "just", "task", "rake", "invoke", "ninja"):
        return any(_TARGET_TEST.match(word) for word in words)
    if program in ("npm", "yarn", "pnpm", "bun"):
        if words[:1] in (["test"], ["t"]):
            return True
        script = words[1] if len(words) > 1 and words[0] in ("run", "run-script") else ""
        return bool(_TARGET_TEST.match(script))
    if program in ("mvn", "mvnw", "gradle", "gradlew"):
        return any(w in ("test", "verify", "check") or w.endswith(":test") for w in words)
    if program == "zig":
        return words[:2] == ["build", "test"]
    if program in _TEST_SUBCOMMAND and words:
        return words[0] == "test" or (program == "cargo" and words[0] == "nextest")
    return False


_TEST_SCRIPT = re.compile(r"^(?:test_\w*|\w+_test|tests?)\.py$")
"""A test file run as a script (unittest's ``if __name__ == "__main__"``, a plain script)."""
_EDIT_PROGRAMS = frozenset({"patch", "mv", "cp", "rm", "truncate", "apply_patch", "applypatch"})
# Writes there are scratch (a log, a pipe), not the change.
_SCRATCH = ("/dev/", "/tmp/")  # noqa: S108 - only compared against, never written
_GIT_EDITS = frozenset(
    {"apply", "am", "cherry-pick", "revert", "merge", "pull", "rebase", "restore"}
)


def _edit_of(text: str, argv: list[str]) -> tuple[bool, tuple[str, ...]]:
    """Whether one simple command edits files by the heuristic list, and which when known."""
    masked = _QUOTED.sub("''", text)
    targets = [t for t in _REDIRECT.findall(masked) if not t.startswith(_SCRATCH)]
    if not argv:
        return bool(targets), tuple(targets)
    program, rest = _base(argv[0]), argv[1:]
    words = [word for word in rest if not word.startswith("-")]
    if program in ("apply_patch", "applypatch"):
        return True, patch_paths(rest[0]) if rest else ()
    if program in ("sed", "perl") and any(_in_place(word) for word in rest):
        script_given = any(word in ("-e", "-f") for word in rest)
        return True, tuple(targets) + tuple(words if script_given else words[1:])
    if program in _EDIT_PROGRAMS:
        return True, tuple(targets) + tuple(words)
    if program == "tee":
        return True, tuple(w for w in words if not w.startswith(_SCRATCH))
    if program == "dd":
        return any(word.startswith("of=") for word in rest), ()
    if program == "git" and words:
        sub = words[0]
        if sub in _GIT_EDITS or (sub == "stash" and words[1:2] in (["pop"], ["apply"])):
            return True, tuple(targets)
        if (sub == "checkout" and "--" in rest) or (sub == "reset" and "--hard" in rest):
            return True, tuple(targets)
    return bool(targets), tuple(targets)


def _in_place(word: str) -> bool:
    if word.startswith("--in-place"):
        return True
    return word.startswith("-") and not word.startswith("--") and "i" in word[1:3]
