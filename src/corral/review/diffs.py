"""Reading a run's change: the files a ``git diff --binary`` patch changes.

The patch is agent output, so ``parse`` treats it as hostile: it reads it once, a line at a
time, in time linear in its size; it keeps at most ``MAX_FILES`` files, ``MAX_LINES_PER_FILE``
added lines of a file and ``MAX_LINES`` in all, each cut to ``MAX_LINE_CHARS`` characters
(lines past a cap are still counted, never kept); and it never raises on what it is given:
a line it cannot place is recorded in ``Change.problems`` and reading goes on.

Why not ``unidiff``: it raises on a truncated hunk (a run's patch cut at the size limit is
one), keeps git's quoted paths quoted (``"caf\\303\\251.txt"``), has no field for a mode
change, and builds an object per line (300k added lines: ~117 MB and ~5 s here).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from corral.runs.snapshot import CUT_MARKER

__all__ = [
    "MAX_FILES",
    "MAX_LINES",
    "MAX_LINES_PER_FILE",
    "MAX_LINE_CHARS",
    "MAX_PROBLEMS",
    "AddedLine",
    "Change",
    "FileChange",
    "Status",
    "parse",
]

MAX_FILES = 5_000
"""Files kept; files past it are counted in ``Change.files_total`` only."""
MAX_LINES_PER_FILE = 10_000
"""Added lines kept for one file (the rest are counted, not kept or scanned)."""
MAX_LINES = 50_000
"""Added lines kept for the whole change."""
MAX_LINE_CHARS = 1_000
"""Characters kept of an added line: what pattern and secret checks see of it."""
MAX_PROBLEMS = 20
"""Problems recorded of a malformed patch; past it only ``problems_total`` grows."""

Status = Literal["added", "deleted", "modified", "renamed", "copied"]


@dataclass(frozen=True, slots=True)
class AddedLine:
    number: int  # its line number in the new file
    text: str  # without its newline, at most MAX_LINE_CHARS characters


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file of the change. ``old_path`` is None for a new file, ``new_path`` for a
    deleted one; modes are git's octal strings (``"100755"``), None where unchanged."""

    old_path: str | None
    new_path: str | None
    status: Status
    old_mode: str | None
    new_mode: str | None
    binary: bool
    added: int
    removed: int
    added_lines: tuple[AddedLine, ...]
    lines_dropped: int  # added lines counted in ``added`` but not kept (the caps)

    @property
    def path(self) -> str:
        """The name a reviewer knows it by: the new one, or the old one if deleted."""
        return self.new_path or self.old_path or ""

    @property
    def paths(self) -> tuple[str, ...]:
        """Every name the file has in the change (old and new, once each)."""
        return tuple(dict.fromkeys(p for p in (self.old_path, self.new_path) if p))


@dataclass(frozen=True, slots=True)
class Change:
    """What ``parse`` could read. ``files_total`` counts files past ``MAX_FILES`` too;
    ``cut`` says the run's patch itself says it was cut at the size limit; ``problems``
    describe what could not be read (the first ``MAX_PROBLEMS``)."""

    files: tuple[FileChange, ...]
    files_total: int
    added: int
    removed: int
    cut: bool
    problems: tuple[str, ...]
    problems_total: int

    @property
    def malformed(self) -> bool:
        return self.problems_total > 0

    @property
    def lines_dropped(self) -> int:
        return sum(f.lines_dropped for f in self.files)


_HUNK = re.compile(rb"@@ -(\d{1,10})(?:,(\d{1,10}))? \+(\d{1,10})(?:,(\d{1,10}))? @@")
_HEADERS = (
    b"old mode ",
    b"new mode ",
    b"deleted file mode ",
    b"new file mode ",
    b"similarity index ",
    b"dissimilarity index ",
    b"rename from ",
    b"rename to ",
    b"copy from ",
    b"copy to ",
    b"index ",
)
_ESCAPES = {b"a": 7, b"b": 8, b"t": 9, b"n": 10, b"v": 11, b"f": 12, b"r": 13}


@dataclass(slots=True)
class _File:
    old_path: str | None = None
    new_path: str | None = None
    status: Status = "modified"
    old_mode: str | None = None
    new_mode: str | None = None
    binary: bool = False
    added: int = 0
    removed: int = 0
    lines: list[AddedLine] = field(default_factory=list)
    dropped: int = 0

    def freeze(self) -> FileChange:
        return FileChange(
            self.old_path, self.new_path, self.status, self.old_mode, self.new_mode,
            self.binary, self.added, self.removed, tuple(self.lines), self.dropped,
        )  # fmt: skip


class _Reader:
    """The parser's state as it walks the patch's lines."""

    def __init__(self) -> None:
        self.files: list[FileChange] = []
        self.files_total = self.added = self.removed = self.kept = 0
        self.current: _File | None = None
        self.old_left = self.new_left = self.new_line = 0  # of the open hunk
        self.cut = False
        self.problems: list[str] = []
        self.problems_total = 0

    def problem(self, number: int, what: str) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"line {number}: {what}")

    def close(self, number: int) -> None:
        if self.old_left or self.new_left:
            self.problem(number, "the hunk before it is shorter than its header says")
            self.old_left = self.new_left = 0
        if self.current is not None and len(self.files) < MAX_FILES:
            self.files.append(self.current.freeze())
        self.current = None

    def line(self, number: int, line: bytes) -> None:
        if line.startswith(CUT_MARKER):  # never a hunk line: those start with + - or space
            self.old_left = self.new_left = 0  # the run cut the hunk short, not the agent
            self.close(number)
            self.cut = True
        elif self.old_left or self.new_left:
            self.hunk_line(number, line)
        elif line.startswith(b"diff --git "):
            self.close(number)
            self.files_total += 1
            self.current = _File()
            self.current.old_path, self.current.new_path = _header_paths(line[11:])
        elif self.current is None:
            self.problem(number, "text outside any file's section")
        else:
            self.file_line(number, line, self.current)

    def file_line(self, number: int, line: bytes, f: _File) -> None:
        if line.startswith(b"@@"):
            hunk = _HUNK.match(line)
            if hunk is None:
                self.problem(number, "a malformed hunk header")
                return
            self.old_left = int(hunk[2] or b"1")
            self.new_left = int(hunk[4] or b"1")
            self.new_line = int(hunk[3])
        elif line.startswith(b"--- "):
            f.old_path = _side_path(line[4:], b"a/")
        elif line.startswith(b"+++ "):
            f.new_path = _side_path(line[4:], b"b/")
        elif line.startswith((b"GIT binary patch", b"Binary files ")):
            f.binary = True
        elif line.startswith(_HEADERS):
            _extended_header(line, f)
        elif f.binary and (line == b"" or line[:1].isalnum()):
            pass  # the base85 lines of a binary patch, and the blank line after each part
        elif line.startswith(b"\\"):
            pass  # "\ No newline at end of file"
        else:
            self.problem(number, "text git does not write in a file's section")

    def hunk_line(self, number: int, line: bytes) -> None:
        kind = line[:1]
        if kind == b"+" and self.new_left:
            self.new_left -= 1
            self.keep(line[1:])
            self.new_line += 1
        elif kind == b"-" and self.old_left:
            self.old_left -= 1
            self.removed += 1
            if self.current is not None:
                self.current.removed += 1
        elif kind in (b" ", b"") and self.old_left and self.new_left:
            self.old_left -= 1
            self.new_left -= 1
            self.new_line += 1
        elif kind == b"\\":
            pass
        else:
            self.old_left = self.new_left = 0
            if line.startswith((b"diff --git ", b"@@ ")):
                self.problem(number, "the hunk before it is shorter than its header says")
            else:
                self.problem(number, "a hunk line that does not fit its header")
            self.line(number, line)  # it may open the next file or hunk

    def keep(self, text: bytes) -> None:
        self.added += 1
        f = self.current
        if f is None:
            return
        f.added += 1
        if (
            len(f.lines) < MAX_LINES_PER_FILE
            and self.kept < MAX_LINES
            and len(self.files) < MAX_FILES  # a file past the cap is not kept at all
        ):
            # cut in bytes first so a huge line is never decoded whole
            kept = text[: MAX_LINE_CHARS * 4].decode(errors="replace")[:MAX_LINE_CHARS]
            f.lines.append(AddedLine(self.new_line, kept.rstrip("\r")))
            self.kept += 1
        else:
            f.dropped += 1

    def result(self) -> Change:
        return Change(
            tuple(self.files), self.files_total, self.added, self.removed, self.cut,
            tuple(self.problems), self.problems_total,
        )  # fmt: skip


def parse(patch: bytes) -> Change:
    """Read a patch as ``git diff --binary`` writes it (``corral.runs.workspace.diff``).

    Never raises: what cannot be read is described in ``Change.problems`` and skipped. Time
    is linear in the patch's size and what is kept is bounded by the ``MAX_*`` constants.
    """
    reader = _Reader()
    number = 0
    for number, line in enumerate(_lines(patch), start=1):
        reader.line(number, line)
    reader.close(number + 1)
    return reader.result()


def _lines(patch: bytes) -> Iterator[bytes]:
    """The patch's lines without their newline, one at a time (no list of them all)."""
    start, end = 0, len(patch)
    while start < end:
        newline = patch.find(b"\n", start)
        if newline < 0:
            newline = end
        yield patch[start:newline]
        start = newline + 1


def _extended_header(line: bytes, f: _File) -> None:
    name, _, value = line.rpartition(b" ")
    text = value.decode(errors="replace")
    if name == b"old mode":
        f.old_mode = text
    elif name == b"new mode":
        f.new_mode = text
    elif name == b"deleted file mode":
        f.status, f.old_mode, f.new_path = "deleted", text, None
    elif name == b"new file mode":
        f.status, f.new_mode, f.old_path = "added", text, None
    elif line.startswith((b"rename from ", b"copy from ")):
        f.old_path = _unquote(line.split(b" ", 2)[2])
        f.status = "renamed" if line.startswith(b"rename") else "copied"
    elif line.startswith((b"rename to ", b"copy to ")):
        f.new_path = _unquote(line.split(b" ", 2)[2])


def _header_paths(rest: bytes) -> tuple[str | None, str | None]:
    """The two names of ``diff --git a/X b/Y``. Unquoted names with spaces are ambiguous;
    git writes them only when both are the same (a rename has its own lines), so the line
    is split in half."""
    if rest.startswith(b'"'):
        old, tail = _split_quoted(rest)
        return _strip(old, b"a/"), _strip(_unquote(tail.lstrip(b" ")), b"b/")
    if rest.endswith(b'"'):
        head, _, quoted = rest.rpartition(b' "')
        return _strip(_unquote(head), b"a/"), _strip(_unquote(b'"' + quoted), b"b/")
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half : half + 1] == b" " and rest[2:half] == rest[half + 3 :]:
        return _strip(_unquote(rest[:half]), b"a/"), _strip(_unquote(rest[half + 1 :]), b"b/")
    first, _, second = rest.partition(b" b/")
    return _strip(_unquote(first), b"a/"), _unquote(second) if second else None


def _side_path(rest: bytes, prefix: bytes) -> str | None:
    """The name on a ``---``/``+++`` line: None for /dev/null. Git ends a name holding a
    space with a tab."""
    rest = rest.removesuffix(b"\t")
    if rest == b"/dev/null":
        return None
    return _strip(_unquote(rest), prefix)


def _strip(path: str, prefix: bytes) -> str:
    return path.removeprefix(prefix.decode())


def _split_quoted(text: bytes) -> tuple[str, bytes]:
    """A C-quoted name at the start of ``text``, and what follows it."""
    i = 1
    while i < len(text) and text[i : i + 1] != b'"':
        i += 2 if text[i : i + 1] == b"\\" else 1
    return _unquote(text[: i + 1]), text[i + 1 :]


def _unquote(name: bytes) -> str:
    """Undo git's C-style quoting of a name (``"caf\\303\\251"``); a plain name as is."""
    if len(name) < 2 or not (name.startswith(b'"') and name.endswith(b'"')):
        return name.decode(errors="replace")
    out = bytearray()
    body, i = name[1:-1], 0
    while i < len(body):
        char = body[i : i + 1]
        if char != b"\\" or i + 1 == len(body):
            out += char
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt.isdigit() and re.fullmatch(rb"[0-7]{3}", body[i + 1 : i + 4]):
            out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(_ESCAPES.get(nxt, nxt[0]))
            i += 2
    return out.decode(errors="replace")
