"""The workspace fingerprint guards compare (``corral.runs.progress``): it moves when the
change moves and only then, and a hostile tree (links out, FIFOs, ``.git``, a huge folder)
is read by name and size only, never followed or opened, at a bounded cost."""

from __future__ import annotations

import os
from pathlib import Path

from corral.runs import progress


def _tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "README.md").write_text("calc\n")
    return root


def test_it_moves_with_the_change_and_only_then(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ws")
    first = progress.fingerprint(root)
    assert first is not None
    assert progress.fingerprint(root) == first  # nothing changed
    (root / "src" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    second = progress.fingerprint(root)
    assert second is not None
    assert second[0] != first[0]
    (root / "notes.txt").write_text("x" * 100)
    third = progress.fingerprint(root)
    assert third is not None
    assert third[0] != second[0]
    assert third[1] == second[1] + 100


def test_git_links_and_fifos_are_not_followed_or_opened(tmp_path: Path) -> None:
    root = _tree(tmp_path / "ws")
    before = progress.fingerprint(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 10_000)
    (root / ".GIT").mkdir()
    (root / ".GIT" / "objects").write_bytes(b"y" * 5_000)  # any case: git's own
    os.symlink(outside, root / "elsewhere")  # a link to a folder: not walked
    os.symlink("/etc/passwd", root / "passwd")
    os.mkfifo(root / "pipe")  # opened, it would block the walk for ever
    after = progress.fingerprint(root)
    assert before is not None
    assert after is not None
    assert after[1] == before[1]  # no byte behind a link or under .git counted
    (outside / "big").write_bytes(b"x" * 20_000)
    assert progress.fingerprint(root) == after  # what a link points at is not read


def test_a_huge_folder_costs_at_most_the_cap(tmp_path: Path) -> None:
    """Past ``MAX_ENTRIES`` entries the walk stops: of a folder with more one-byte files,
    at most that many bytes are counted."""
    root = tmp_path / "ws"
    root.mkdir()
    for n in range(progress.MAX_ENTRIES + 500):
        fd = os.open(root / f"f{n}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    found = progress.fingerprint(root)
    assert found is not None
    assert found[1] == progress.MAX_ENTRIES


def test_a_workspace_that_is_gone_has_no_fingerprint(tmp_path: Path) -> None:
    assert progress.fingerprint(tmp_path / "removed") is None
