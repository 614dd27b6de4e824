"""The final report: how the run ended, what the model said, what it did and changed.

Changed files are found by comparing two snapshots of the workdir (skipping
``.git`` and ``__pycache__``), taken before and after the run: a file's size, modification time
and, for files up to ``HASH_MAX_BYTES``, a content hash (a same-size edit
within the clock's granularity would otherwise go unseen). This catches the
changes commands made too, in a git checkout or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.agent.loop import Outcome
from corral.agent.tools import Toolbox, walk_files

SNAPSHOT_MAX_FILES = 50_000
HASH_MAX_BYTES = 1_000_000

Fingerprint = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The workdir's files and their fingerprints; ``complete`` is False past the file cap."""

    files: dict[str, Fingerprint]
    complete: bool


def snapshot(workdir: Path) -> Snapshot:
    """Fingerprint every file under ``workdir`` (up to ``SNAPSHOT_MAX_FILES``)."""
    files: dict[str, Fingerprint] = {}
    for path in walk_files(workdir):
        if len(files) == SNAPSHOT_MAX_FILES:
            return Snapshot(files, complete=False)
        try:
            stat = path.lstat()
            digest = ""
            if path.is_file() and not path.is_symlink() and stat.st_size <= HASH_MAX_BYTES:
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        except OSError:
            continue  # gone or unreadable since the walk listed it
        files[path.relative_to(workdir).as_posix()] = (stat.st_size, stat.st_mtime_ns, digest)
    return Snapshot(files, complete=True)


def changes(before: Snapshot, after: Snapshot) -> list[tuple[str, str]]:
    """``(path, "added" | "modified" | "deleted")`` for every file that differs, by path."""
    found = []
    for path in sorted(before.files.keys() | after.files.keys()):
        old, new = before.files.get(path), after.files.get(path)
        if old == new:
            continue
        found.append((path, "added" if old is None else "deleted" if new is None else "modified"))
    return found


def render(
    outcome: Outcome,
    toolbox: Toolbox,
    changed: Sequence[tuple[str, str]],
    *,
    model: str,
    max_turns: int,
    complete: bool = True,
) -> str:
    """The report as Markdown."""
    lines = [
        "# Corral agent report",
        "",
        f"- Outcome: {outcome_line(outcome)}",
        f"- Model: {code(model)}",
        f"- Turns: {outcome.turns} of {max_turns}",
        f"- Trace: {code(outcome.trace_id)}",
        "",
        "## Summary",
        "",
        outcome.summary.strip() or "(the model gave no final text)",
        "",
        "## Tool calls",
        "",
    ]
    for name, count in sorted(toolbox.calls.items()):
        failed = toolbox.failures[name]
        lines.append(f"- {code(name)}: {count}" + (f" ({failed} failed)" if failed else ""))
    if not toolbox.calls:
        lines.append("(none)")
    lines += ["", "## Files changed", ""]
    lines += [f"- {kind} {code(path)}" for path, kind in changed] or ["(none)"]
    if not complete:
        lines.append(f"(only the first {SNAPSHOT_MAX_FILES} files of the workdir were compared)")
    lines += ["", "## Commands", ""]
    for run in toolbox.commands:
        lines.append(f"- {code(run.command)}: {run.ending} ({run.seconds:.1f}s)")
    if not toolbox.commands:
        lines.append("(none)")
    return "\n".join(lines) + "\n"


def outcome_line(outcome: Outcome) -> str:
    if outcome.status == "completed":
        return "completed"
    if outcome.status == "turn_limit":
        return f"turn limit reached ({outcome.turns} turns) before a final answer"
    return f"stopped: {outcome.error}"


def code(text: str) -> str:
    """``text`` as Markdown inline code on one line, fenced past any backticks it holds."""
    text = " ".join(text.split())
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
