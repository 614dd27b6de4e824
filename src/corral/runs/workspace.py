"""A run's workspace: its own clone of the repository at the ref, and what it changed.

The clone is Corral's, never the engineer's checkout: a local repository is
cloned with ``--no-local`` (objects copied, not hard-linked, so nothing the
agent does can reach the source's object store), a URL is fetched. The
workspace is checked out detached at the ref's commit, which is recorded as
the base; ``diff`` compares the working tree against it from outside the
sandbox (the agent cannot rewrite ``.git``), untracked files included.

Layout under the runs folder: ``RUN/workspace`` (the clone), ``RUN/scratch``
(the agent's scratch and ``/tmp``), ``RUN/artifacts`` (logs, the report, the
diff, and what the agent writes there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import Conflict, InvalidRequest, PermissionDenied

_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for credentials on a terminal
    "GIT_CONFIG_NOSYSTEM": "1",
    # Only these transports, whatever a URL, a submodule or a config says: never ext::
    # (which runs a command) or another remote helper.
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "LC_ALL": "C",
}
_URL_SCHEMES = ("https://", "http://", "ssh://", "git://")


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path
    base: str  # the commit the run started from

    @property
    def path(self) -> Path:
        return self.root / "workspace"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"


def prepare(repo: str, ref: str | None, runs: Path, run_id: str) -> Workspace:
    """Clone ``repo`` (a local path or a URL) at ``ref`` (branch, tag or commit; default:
    its HEAD) into ``runs/run_id``; raise ``InvalidRequest`` naming what is wrong."""
    root = runs / run_id
    if root.exists():
        raise InvalidRequest(f"run folder {root} already exists")
    source = _source(repo)
    runs.mkdir(parents=True, exist_ok=True)
    runs.chmod(0o711)  # the run's unprivileged uid must traverse it, not list it
    root.mkdir(mode=0o711)
    try:
        _git("clone", "--quiet", "--no-local", "--no-checkout", source, str(root / "workspace"))
        workspace = root / "workspace"
        commit = _resolve(workspace, ref or "HEAD", repo)
        _git("-C", str(workspace), "checkout", "--quiet", "--detach", commit)
        for sub in ("scratch", "artifacts"):
            (root / sub).mkdir(mode=0o700)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Workspace(root, commit)


def diff(ws: Workspace) -> str:
    """The change against the base commit as a patch, new files included (binary as git
    binary patches), whatever the agent staged or not."""
    index = ws.root / "diff.index"  # a private index: the workspace's own is left as it is
    env = {"GIT_INDEX_FILE": str(index)}
    # The working tree belongs to the run's uid now: _git trusts it (the clone is Corral's).
    here = ("-C", str(ws.path))
    try:
        _git(*here, "read-tree", ws.base, env=env)
        _git(*here, "add", "--all", ".", env=env)
        return _git(*here, "diff", "--cached", "--binary", ws.base, env=env)
    finally:
        index.unlink(missing_ok=True)


def hand_over(ws: Workspace, uid: int) -> None:
    """Give the working tree and the scratch folder to the run's uid (``.git`` stays
    Corral's: the sandbox binds it read-only and ``diff`` reads it from outside)."""
    for top in (ws.path, ws.scratch):
        os.chown(top, uid, uid)
        for folder, dirs, files in os.walk(top):
            if folder == str(ws.path) and ".git" in dirs:
                dirs.remove(".git")
            for name in (*dirs, *files):
                os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Delete one folder of a run (its workspace once it is no longer needed)."""
    shutil.rmtree(path, ignore_errors=True)


def remove(ws: Workspace) -> None:
    """Delete the run's folder (workspace, scratch and artifacts)."""
    shutil.rmtree(ws.root, ignore_errors=True)


def check_source(repo: str, ref: str | None, roots: Sequence[Path] = ()) -> str:
    """Check before queueing that ``repo`` is a repository holding ``ref``; return the
    repository as it will be cloned (a local path resolved, a URL as given). With ``roots``,
    a local repository must lie inside one of them (several teams share the server: one
    must not clone another's checkout). A URL's ref is checked when the run starts (a
    failed clone fails the run, saying why)."""
    source = _source(repo)
    if _is_url(source):
        return source
    if roots and not any(_inside(Path(source), root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PermissionDenied(
            f"--repo {repo} is outside the folders runs may clone from ({allowed}; "
            "run_repo_roots): give a repository under one of them, or a URL"
        )
    _resolve(Path(source), ref or "HEAD", repo, remote=False)
    return source


def _is_url(source: str) -> bool:
    return source.startswith(_URL_SCHEMES) or (source.startswith("git@") and ":" in source)


def _inside(path: Path, root: Path) -> bool:
    root = root.expanduser().resolve()
    return path == root or root in path.parents


def deliver_branch(
    repo: str, base: str, patch: str, branch: str, *, message: str, author: str
) -> str:
    """Create ``branch`` in ``repo`` holding ``patch`` applied to ``base``; return its commit.

    The commit is made in a private clone and pushed to the new branch, so the repository's
    checked-out working tree and index are never touched. An existing branch is refused.
    """
    source = _source(repo)
    if not branch or branch.startswith("-") or " " in branch:
        raise InvalidRequest(f"--branch {branch!r}: not a usable branch name")
    _git("check-ref-format", "--branch", branch)
    if _git("ls-remote", "--heads", source, f"refs/heads/{branch}").strip():
        raise Conflict(f"branch {branch} already exists in {repo}; choose another --branch")
    with tempfile.TemporaryDirectory(prefix="corral-deliver-") as tmp:
        clone = Path(tmp) / "clone"
        _git("clone", "--quiet", "--no-local", "--no-checkout", source, str(clone))
        env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": "runs@corral.invalid",
            "GIT_COMMITTER_NAME": "Corral",
            "GIT_COMMITTER_EMAIL": "runs@corral.invalid",
        }
        here = ("-C", str(clone))
        _git(*here, "read-tree", base, env=env)
        if patch.strip():
            patch_file = Path(tmp) / "change.patch"
            patch_file.write_text(patch)
            _git(*here, "apply", "--cached", "--binary", str(patch_file), env=env)
        tree = _git(*here, "write-tree", env=env).strip()
        commit = _git(*here, "commit-tree", tree, "-p", base, "-m", message, env=env).strip()
        owner = _owner(source)
        if owner is not None:  # write into the repository as its owner, never as root
            _chown_tree(Path(tmp), *owner)
        _git(*here, "push", "--quiet", "origin", f"{commit}:refs/heads/{branch}", user=owner)
    return commit


def _owner(source: str) -> tuple[int, int] | None:
    """The uid and gid a push into local repository ``source`` must run as, when Corral runs
    as root and the repository is someone else's (objects root wrote there would be
    folders its owner could no longer write into)."""
    if _is_url(source) or os.geteuid() != 0:
        return None
    git_dir = Path(source) / ".git"
    info = (git_dir if git_dir.exists() else Path(source)).stat()
    return None if info.st_uid == 0 else (info.st_uid, info.st_gid)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _source(repo: str) -> str:
    if _is_url(repo):
        return repo
    if repo.startswith("file://"):
        repo = repo.removeprefix("file://")
    elif "::" in repo or "://" in repo:
        raise InvalidRequest(
            f"--repo {repo}: not a repository Corral clones (a path on the server, or an "
            "https, http, ssh or git URL)"
        )
    path = Path(repo).expanduser().resolve()
    if not (path / ".git").exists() and not (path / "HEAD").exists():
        raise InvalidRequest(f"--repo {repo}: not a git repository (no .git there)")
    return str(path)


def _resolve(workspace: Path, ref: str, repo: str, *, remote: bool = True) -> str:
    for candidate in (f"origin/{ref}", ref) if remote else (ref,):
        try:
            return _git(
                "-C", str(workspace), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"
            ).strip()
        except InvalidRequest:
            continue
    raise InvalidRequest(f"--ref {ref}: no such branch, tag or commit in {repo}")


_GIT_CONFIG = "[safe]\n\tdirectory = *\n"
"""Corral's own global git config. Repositories are trusted whoever owns them: an engineer's
source is only cloned from (upload-pack ignores a repository's hook and command settings
by design) and checked for a ref, and a workspace's .git is Corral's (read-only to the
agent). Given through GIT_CONFIG_GLOBAL, which, unlike ``-c``, reaches the upload-pack of
a local clone; root's own ~/.gitconfig is left out."""


def _git(*args: str, env: dict[str, str] | None = None, user: tuple[int, int] | None = None) -> str:
    """Run git (as ``user``'s uid and gid when given); ``InvalidRequest`` with its stderr."""
    drop: dict[str, object] = {}
    if user is not None:
        drop = {"user": user[0], "group": user[1], "extra_groups": []}
    with tempfile.NamedTemporaryFile("w", prefix="corral-git-", suffix=".config") as config:
        config.write(_GIT_CONFIG)
        config.flush()
        os.chmod(config.name, 0o644)  # readable by ``user`` too
        result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            ["git", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **_GIT_ENV, "GIT_CONFIG_GLOBAL": config.name, **(env or {})},
            timeout=600,
            check=False,
            **drop,
        )
    if result.returncode != 0:
        raise InvalidRequest(f"git {_verb(args)} failed: {result.stderr.strip()[:500]}")
    return result.stdout


def _verb(args: tuple[str, ...]) -> str:
    """The git command of ``args`` (past ``-C path`` and ``-c name=value``), for messages."""
    skip = False
    for arg in args:
        if skip or arg in ("-C", "-c"):
            skip = not skip
            continue
        if not arg.startswith("-"):
            return arg
    return ""
