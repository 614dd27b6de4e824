"""A run's workspace: a private clone at the ref, and its change as a patch."""

from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, PermissionDenied
from corral.runs.workspace import RepoPolicy, Workspace, check_source, diff, prepare, remove
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
    result = diff(ws, tmp_path / "diff.patch", 2**20)
    patch = (tmp_path / "diff.patch").read_text()
    assert (result.files, result.size, result.complete) == (2, len(patch), True)
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
    assert diff(head, tmp_path / "empty.patch", 2**20).files == 0
    assert (tmp_path / "empty.patch").read_bytes() == b""
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    pinned = prepare(str(repo), first[:10], tmp_path / "runs", "run_pinned")
    assert pinned.base == first


def test_bad_repo_and_ref_are_clear_errors(repo: Path, tmp_path: Path) -> None:
    """A folder that is no repository and a ref that does not exist are named; nothing stays."""
    with pytest.raises(InvalidRequest, match="not a git repository"):
        prepare(str(tmp_path), None, tmp_path / "runs", "run_x")
    with pytest.raises(InvalidRequest, match="no such folder on the server"):
        check_source(str(tmp_path / "nowhere"), None)
    with pytest.raises(InvalidRequest, match="--ref nope: no such branch, tag or commit"):
        prepare(str(repo), "nope", tmp_path / "runs", "run_y")
    assert not (tmp_path / "runs" / "run_y").exists()


def test_sources_are_paths_or_plain_urls_and_roots_confine_paths(
    repo: Path, tmp_path: Path
) -> None:
    """A local repository (or file://) resolves; a URL only to an allowed host; ext:: and
    other transports are refused; with roots a repository outside them is refused 403, one
    inside accepted."""
    assert check_source(str(repo), "main") == str(repo.resolve())
    assert check_source(f"file://{repo}", None) == str(repo.resolve())
    hosts = RepoPolicy(hosts=("example.com", "*.corp.example"))
    assert check_source("https://example.com/x.git", None, hosts) == "https://example.com/x.git"
    assert check_source("git@git.corp.example:x.git", None, hosts) == "git@git.corp.example:x.git"
    for elsewhere in ("https://example.org/x.git", "ssh://corp.example/x", "git@evil:x"):
        with pytest.raises(PermissionDenied, match="run_repo_hosts"):
            check_source(elsewhere, None, hosts)
    anywhere = RepoPolicy(hosts=("*",))
    for odd in ("http://example.com\\@evil/x", "git@-oProxyCommand=x:y", "http:///x"):
        with pytest.raises(InvalidRequest, match=r"URL may not hold|not a host name"):
            check_source(odd, None, anywhere)  # read alike by Python and git, or refused
    for bad in ("ext::sh -c touch% /tmp/pwned", "fd::3", "ftp://example.com/x.git"):
        with pytest.raises(InvalidRequest, match="not a repository Corral clones"):
            check_source(bad, None)
    elsewhere = tmp_path / "allowed"
    elsewhere.mkdir()
    with pytest.raises(PermissionDenied, match="outside the folders this team's runs may use"):
        check_source(str(repo), None, RepoPolicy(roots=(elsewhere,)))
    inside = RepoPolicy(roots=(repo.parent.resolve(),))
    assert check_source(str(repo), None, inside) == str(repo.resolve())


def test_a_diff_is_streamed_to_its_file_and_cut_past_its_limit(repo: Path, tmp_path: Path) -> None:
    """A 64 MiB file makes a patch larger than the limit: the server holds a chunk at a time
    (Python's allocations stay far below the file's size), the full size and the files are
    counted, and the file keeps whole lines then one line saying it was cut."""
    ws = prepare(str(repo), None, tmp_path / "runs", "run_big")
    with (ws.path / "big.txt").open("wb") as f:
        for _ in range(64):
            f.write((b"y" * 1023 + b"\n") * 1024)
    (ws.path / "calc.py").write_text("changed\n")
    tracemalloc.start()
    try:
        result = diff(ws, tmp_path / "diff.patch", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"the diff held {peak} bytes in Python"
    assert (result.files, result.complete) == (2, False)
    assert result.size > 64 * 2**20
    kept = (tmp_path / "diff.patch").read_bytes()
    assert len(kept) <= 100_000 + 200
    body, last = kept.rstrip(b"\n").rsplit(b"\n", 1)
    assert last.startswith(b"# corral: the patch was cut here")
    assert body.startswith(b"diff --git a/big.txt b/big.txt")
    assert all(line == b"+" + b"y" * 1023 for line in body.split(b"\n")[6:])


def _hostile_tree(ws: Workspace, kind: str) -> None:
    """Things an agent leaves in its working tree that git would treat specially."""
    if kind == "dot-GIT":
        (ws.path / ".GIT").mkdir()
        (ws.path / ".GIT" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/x\n")
    elif kind == "empty-nested":
        (ws.path / "sub" / ".git").mkdir(parents=True)
    elif kind == "unborn-nested":
        subprocess.run(["git", "init", "-q", str(ws.path / "sub")], check=True)
    (ws.path / "sub").mkdir(exist_ok=True)
    (ws.path / "sub" / "notes.txt").write_text("kept\n")


@pytest.mark.parametrize("kind", ["dot-GIT", "empty-nested", "unborn-nested"])
def test_folders_git_refuses_do_not_lose_the_change(repo: Path, tmp_path: Path, kind: str) -> None:
    """`.GIT/`, an empty `sub/.git/` and an unborn nested repository are left out of the
    patch; the change (an edit and the nested folder's files as plain files) is kept."""
    ws = prepare(str(repo), None, tmp_path / "runs", "run_" + kind.replace("-", "_"))
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    _hostile_tree(ws, kind)
    result = diff(ws, tmp_path / "diff.patch", 2**20)
    patch = (tmp_path / "diff.patch").read_text()
    assert "+    return a + b" in patch
    assert "+kept" in patch
    assert "b/sub/notes.txt" in patch
    assert ".GIT" not in patch
    assert "fsmonitor" not in patch
    assert "Subproject" not in patch
    assert result.files == 2
