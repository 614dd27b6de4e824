"""A run's workspace: its own clone of the repository at the ref, and what it changed.

The clone is Corral's, never the engineer's checkout: a local repository is cloned with
``--no-local`` (objects copied, not hard-linked, so nothing the agent does can reach the
source's object store), a URL is fetched. Where a repository may come from, and how git is
run on one Corral does not own (as its owner, hooks off, no link followed, never in the
runs folder), is ``corral.runs.repos``. The workspace is checked out detached at the ref's
commit, which is recorded as the base; ``diff`` writes the working tree's change against it
from outside the sandbox without letting git treat anything in the tree specially
(``corral.runs.snapshot``), untracked files included.

Layout under the runs folder: ``RUN/workspace`` (the clone), ``RUN/scratch`` (the agent's
scratch and ``/tmp``), ``RUN/artifacts`` (what the agent writes there), ``RUN/output``
(logs, the report, the diff).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from corral.errors import Conflict, InvalidRequest
from corral.runs import snapshot
from corral.runs.repos import (
    SERVER_PINS,
    LocalRepo,
    RepoPolicy,
    check_url,
    git,
    git_bytes,
    is_url,
    open_local,
    remote_env,
    repo_policy,
    server_program,
    team_policy,
)
from corral.runs.snapshot import DiffResult

ANY_FOLDER = RepoPolicy()
"""No roots and no URL host: what a caller gets that names no policy (tests, tools)."""

__all__ = [
    "ANY_FOLDER",
    "DiffResult",
    "RepoPolicy",
    "Workspace",
    "check_source",
    "deliver_branch",
    "diff",
    "hand_over",
    "prepare",
    "remove",
    "remove_tree",
    "repo_policy",
    "team_policy",
]


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


def prepare(
    repo: str,
    ref: str | None,
    runs: Path,
    run_id: str,
    policy: RepoPolicy = ANY_FOLDER,
    start: bytes | None = None,
) -> Workspace:
    """Clone ``repo`` (a local path or a URL, as ``check_source`` returned it) at ``ref``
    (branch, tag or commit; default: its HEAD) into ``runs/run_id``, checking it against
    ``policy`` again (a path may have changed since it was submitted); raise a
    ``ClientError`` naming what is wrong. ``start``: a patch (an earlier run's change, from
    the artifact store) applied to the working tree before the agent sees it, so the run
    continues that change and its diff against the base commit is the whole change; git
    applies it as it applies any patch, refusing paths outside the tree or through a link."""
    root = runs / run_id
    if root.exists():
        raise InvalidRequest(f"run folder {root} already exists")
    policy = replace(policy, forbidden=(*policy.forbidden, runs.resolve()))
    source, local, env = _remote(repo, policy)
    runs.mkdir(mode=0o700, parents=True, exist_ok=True)  # Corral's alone: a run reaches
    root.mkdir(mode=0o700)  # its own folders through the sandbox's binds (runs.reveal)
    try:
        workspace = root / "workspace"
        git("clone", "--quiet", "--no-local", "--no-checkout", *_serve(local, "upload-pack"),
            "--", source, str(workspace), env=env)  # fmt: skip
        commit = _resolve(workspace, ref or "HEAD", repo)
        git("-C", str(workspace), "checkout", "--quiet", "--detach", commit)
        if start is not None and start.strip():
            git("-C", str(workspace), "apply", "--binary", "--whitespace=nowarn", stdin=start)
        for sub in ("scratch", "artifacts"):
            (root / sub).mkdir(mode=0o700)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Workspace(root, commit)


def diff(ws: Workspace, dest: Path, max_bytes: int) -> DiffResult:
    """Write the change against the base commit to ``dest`` as a patch (new files included,
    binary as git binary patches, ``.gitignore`` respected, nested repositories' files as
    plain files and their ``.git`` left out), holding a chunk at a time. Past ``max_bytes``
    ``dest`` keeps the patch's first lines and a last line saying it was cut there."""
    objects = _own_objects(ws)
    private = ws.root / ".diff.git"
    shutil.rmtree(private, ignore_errors=True)
    try:
        repo = snapshot.private_repo(private, objects)
        commit = snapshot.snapshot(repo, ws.path, ws.base)
        return snapshot.write_patch(repo, ws.base, commit, dest, max_bytes)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _own_objects(ws: Workspace) -> Path:
    """The workspace's object folder, once it is sure to be Corral's (without the sandbox
    the agent owns the working tree, so it could have replaced ``.git``)."""
    git_dir = ws.path / ".git"
    for path in (git_dir, git_dir / "objects"):
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise InvalidRequest(
                f"the workspace's {path.relative_to(ws.path)} is no longer Corral's own "
                "folder (the agent replaced it): its change cannot be read"
            )
    return git_dir / "objects"


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


def check_source(repo: str, ref: str | None, policy: RepoPolicy = ANY_FOLDER) -> str:
    """Check before queueing that ``repo`` is a repository the policy allows, holding
    ``ref``; return it as it will be cloned (a local path resolved, a URL as given). A
    URL's host is checked now, without connecting; its ref when the run starts (a failed
    clone fails the run, saying why)."""
    if is_url(repo):
        check_url(repo, policy)
        return repo
    path = _local_path(repo)
    if not os.path.lexists(path):
        raise InvalidRequest(f"--repo {repo}: no such folder on the server ({path})")
    local = open_local(path.resolve(), policy, repo)
    _check_ref(local, ref or "HEAD", repo)
    return str(local.path)


def deliver_branch(
    repo: str,
    base: str,
    patch: Path | str | bytes,
    branch: str,
    *,
    message: str,
    author: str,
    policy: RepoPolicy = ANY_FOLDER,
) -> str:
    """Create ``branch`` in ``repo`` holding ``patch`` (a file, streamed, or its text)
    applied to ``base``; return its commit. An empty patch is refused (409): no empty
    commit is made.

    The commit is made in a private clone and pushed to the new branch, so the repository's
    checked-out working tree and index are never touched; an existing branch is refused.
    In a local repository, receive-pack runs as the repository's owner with its hooks off.
    """
    if not branch or branch.startswith("-") or " " in branch:
        raise InvalidRequest(f"--branch {branch!r}: not a usable branch name")
    git("check-ref-format", "--branch", branch)
    if _empty(patch):
        raise Conflict("the run changed nothing: there is nothing to deliver")
    target, local, env = _remote(repo, policy)
    upload, receive = _serve(local, "upload-pack"), _serve(local, "receive-pack")
    if git("ls-remote", "--heads", *upload, target, f"refs/heads/{branch}", env=env):
        raise Conflict(f"branch {branch} already exists in {repo}; choose another --branch")
    with tempfile.TemporaryDirectory(prefix="corral-deliver-") as tmp:
        clone = Path(tmp) / "clone"
        git("clone", "--quiet", "--no-local", "--no-checkout", *upload, "--", target,
            str(clone), env=env)  # fmt: skip
        commit_env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": "runs@corral.invalid",
            "GIT_COMMITTER_NAME": "Corral",
            "GIT_COMMITTER_EMAIL": "runs@corral.invalid",
        }
        here = ("-C", str(clone))
        git(*here, "read-tree", base, env=commit_env)
        apply = (*here, "apply", "--cached", "--binary")
        if isinstance(patch, Path):
            with _read(patch) as change:
                git(*apply, env=commit_env, stdin=change)
        else:
            git(*apply, env=commit_env, stdin=patch.encode() if isinstance(patch, str) else patch)
        tree = git(*here, "write-tree", env=commit_env).strip()
        commit = git(*here, "commit-tree", tree, "-p", base, "-m", message, env=commit_env)
        commit = commit.strip()
        git(*here, "push", "--quiet", *receive, "origin",
            f"{commit}:refs/heads/{branch}", env=env)  # fmt: skip
    return commit


def read_at(
    repo: str, commit: str, paths: Sequence[str], max_bytes: int, policy: RepoPolicy = ANY_FOLDER
) -> dict[str, bytes | int | None]:
    """The content of each of ``paths`` at ``commit`` of ``repo``: regular files only (a
    link is the link, never followed: None), None when missing, its size (an int, not its
    content) when larger than ``max_bytes``. Read from the repository itself, never from a
    run's workspace (a run may have rewritten the objects of its own clone), as a local
    repository's owner with its settings pinned; a URL's commit is fetched alone into a
    temporary folder."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise InvalidRequest(f"not a commit id: {commit[:80]!r}")
    target, local, env = _remote(repo, policy)
    pins = [arg for pin in SERVER_PINS for arg in ("-c", pin)]
    with tempfile.TemporaryDirectory(prefix="corral-read-") as tmp:
        if local is not None:
            where: dict[str, Any] = {"user": local.drop(), "cwd": local.git_dir}
        else:
            git("init", "--quiet", "--bare", tmp)
            git("--git-dir", tmp, "fetch", "--quiet", "--depth=1", "--", target, commit, env=env)
            where = {"cwd": Path(tmp)}
        listed = git_bytes("--git-dir=.", *pins, "ls-tree", "-l", "-z", commit, "--",
                           *paths, **where)  # fmt: skip
        found: dict[str, bytes | int | None] = dict.fromkeys(paths)
        for entry in listed.split(b"\0"):
            meta, _, name = entry.partition(b"\t")
            fields = meta.split()
            if len(fields) != 4 or fields[0] not in (b"100644", b"100755"):
                continue  # not a regular file: a link, a submodule, a folder
            path, size = name.decode(errors="replace"), int(fields[3])
            if path in found and size > max_bytes:
                found[path] = size
            elif path in found:
                found[path] = git_bytes("--git-dir=.", *pins, "cat-file", "blob",
                                        fields[2].decode(), **where)  # fmt: skip
    return found


def _empty(patch: Path | str | bytes) -> bool:
    if isinstance(patch, Path):
        with _read(patch) as f:
            return not f.read(4096).strip()  # a patch starts with its first header
    return not patch.strip()


def _read(path: Path) -> BinaryIO:
    """``path`` opened for reading, never through a link (Corral's own output folder)."""
    return open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _remote(repo: str, policy: RepoPolicy) -> tuple[str, LocalRepo | None, dict[str, str]]:
    """How git reaches ``repo``: its address, the local repository it is (checked), and the
    environment (ssh without the server's keys) for a URL."""
    if is_url(repo):
        check_url(repo, policy)
        return repo, None, remote_env(policy)
    local = open_local(_local_path(repo), policy, repo)
    return str(local.path), local, {}


def _serve(local: LocalRepo | None, verb: str) -> list[str]:
    """``--upload-pack``/``--receive-pack`` arguments for a local repository."""
    return [] if local is None else [f"--{verb}", server_program(verb, local)]


def _local_path(repo: str) -> Path:
    if repo.startswith("file://"):
        repo = repo.removeprefix("file://")
    elif "::" in repo or "://" in repo:
        raise InvalidRequest(
            f"--repo {repo}: not a repository Corral clones (a path on the server, or an "
            "https, http, ssh or git URL)"
        )
    return Path(os.path.abspath(Path(repo).expanduser()))


def _check_ref(local: LocalRepo, ref: str, repo: str) -> None:
    """``ref`` names a commit of ``local``: asked as its owner, with its settings pinned."""
    if ref.startswith("-"):
        raise InvalidRequest(f"--ref {ref}: not a branch, tag or commit name")
    pins = [arg for pin in SERVER_PINS for arg in ("-c", pin)]
    try:
        # entered as Corral, then read as the owner: its path need not be open to the owner
        git("--git-dir=.", *pins, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
            user=local.drop(), cwd=local.git_dir)  # fmt: skip
    except InvalidRequest as exc:
        if not exc.message.endswith("failed: "):  # git said more than "no such ref"
            raise InvalidRequest(
                f"--repo {repo}: git could not read it as its owner (uid {local.uid}): "
                f"{exc.message}"
            ) from exc
        raise InvalidRequest(f"--ref {ref}: no such branch, tag or commit in {repo}") from None


def _resolve(workspace: Path, ref: str, repo: str) -> str:
    if ref.startswith("-"):
        raise InvalidRequest(f"--ref {ref}: not a branch, tag or commit name")
    for candidate in (f"origin/{ref}", ref):
        try:
            return git(
                "-C", str(workspace), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"
            ).strip()
        except InvalidRequest:
            continue
    raise InvalidRequest(f"--ref {ref}: no such branch, tag or commit in {repo}")
