"""A run's workspace: a private clone at the ref, and its change as a patch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, PermissionDenied
from corral.runs.workspace import check_source, diff, prepare, remove
from tests.sandboxing import make_repo


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with two commits on main and a branch `fix`."""
    path = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a - b\n"})
    git(path, "branch", "fix")
    (path / "README.md").write_text("calc\n")
    git(path, "add", ".")
    git(path, "commit", "--quiet", "-m", "two")
    return path


def test_a_clone_at_the_ref_and_its_change_as_a_patch(repo: Path, tmp_path: Path) -> None:
    """Edits and new files show in the diff against the base; the source is untouched."""
    ws = prepare(str(repo), "fix", tmp_path / "runs", "run_1")
    assert ws.base == git(repo, "rev-parse", "fix")
    assert not (ws.path / "README.md").exists(), "checked out at the branch, not at HEAD"
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (ws.path / "test_calc.py").write_text("from calc import add\n")
    patch = diff(ws)
    assert "-    return a - b" in patch
    assert "+    return a + b" in patch
    assert "new file mode" in patch
    assert "test_calc.py" in patch
    assert git(repo, "status", "--porcelain") == "", "the source checkout is never touched"
    applied = tmp_path / "check"
    subprocess.run(
        ["git", "clone", "--quiet", "--branch", "fix", str(repo), str(applied)], check=True
    )
    subprocess.run(["git", "-C", str(applied), "apply"], input=patch, text=True, check=True)
    assert "a + b" in (applied / "calc.py").read_text()
    assert ws.scratch.is_dir()
    assert ws.artifacts.is_dir()
    remove(ws)
    assert not ws.root.exists()


def test_default_ref_is_head_and_a_commit_works(repo: Path, tmp_path: Path) -> None:
    """No ref: the repository's HEAD; a commit id: that commit."""
    head = prepare(str(repo), None, tmp_path / "runs", "run_head")
    assert head.base == git(repo, "rev-parse", "HEAD")
    assert diff(head) == ""
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    pinned = prepare(str(repo), first[:10], tmp_path / "runs", "run_pinned")
    assert pinned.base == first


def test_bad_repo_and_ref_are_clear_errors(repo: Path, tmp_path: Path) -> None:
    """A folder that is no repository and a ref that does not exist are named; nothing stays."""
    with pytest.raises(InvalidRequest, match="not a git repository"):
        prepare(str(tmp_path), None, tmp_path / "runs", "run_x")
    with pytest.raises(InvalidRequest, match="--ref nope: no such branch, tag or commit"):
        prepare(str(repo), "nope", tmp_path / "runs", "run_y")
    assert not (tmp_path / "runs" / "run_y").exists()


def test_sources_are_paths_or_plain_urls_and_roots_confine_paths(
    repo: Path, tmp_path: Path
) -> None:
    """A local repository (or file://) resolves; ext:: and other transports are refused;
    with run_repo_roots a repository outside them is refused 403, one inside accepted."""
    assert check_source(str(repo), "main") == str(repo.resolve())
    assert check_source(f"file://{repo}", None) == str(repo.resolve())
    assert check_source("https://example.com/x.git", None) == "https://example.com/x.git"
    for bad in ("ext::sh -c touch% /tmp/pwned", "fd::3", "ftp://example.com/x.git"):
        with pytest.raises(InvalidRequest, match="not a repository Corral clones"):
            check_source(bad, None)
    elsewhere = tmp_path / "allowed"
    elsewhere.mkdir()
    with pytest.raises(PermissionDenied, match="outside the folders runs may clone from"):
        check_source(str(repo), None, [elsewhere])
    assert check_source(str(repo), None, [repo.parent]) == str(repo.resolve())
