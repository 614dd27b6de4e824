"""Where a run's repository may come from, and how git is run on repositories Corral does
not own.

A repository given to a run, or delivered into, is someone else's, and possibly hostile: a
tenant can build one (hooks, a config naming commands, ``.git`` a link to another) in a
folder it writes. So:

* **Never Corral's runs folder.** A path inside it (a run's workspace, artifacts, scratch)
  is refused: what a run leaves behind is never a source or a delivery target.
* **No links.** The path is resolved once at submit; every later use opens it component by
  component without following links (``O_NOFOLLOW``), so a path replaced by a link while
  the run was queued is refused, and a ``.git`` that is a link is never followed. A gitfile
  (``gitdir: …``, a worktree's) is followed only to a real folder passing the same checks.
* **Inside the team's roots** (``run_repo_roots``, per team ``run_team_repo_roots``),
  checked at submit and again when the run starts or is delivered.
* **As its owner, with nothing of its own run.** The git that reads or writes the
  repository (upload-pack for a clone, receive-pack for a push, rev-parse for a ref) runs as
  the uid owning its git folder (``lstat``) with its hooks off and every setting that names
  a command pinned (``SERVER_PINS``). The pins go on that program's own command line
  (``--upload-pack``/``--receive-pack``): git clears ``-c`` and ``GIT_CONFIG_*`` for the
  child of a local transport, and a repository's config overrides the global one.
* **URLs only to allowed hosts** (``run_repo_hosts``; none by default), no redirects, and
  never the server's own SSH keys or agent (``run_repo_ssh_key`` names the one key to use).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from corral.errors import InvalidRequest, PermissionDenied

if TYPE_CHECKING:
    from corral.settings import Settings

URL_SCHEMES = ("https://", "http://", "ssh://", "git://")

SERVER_PINS = (
    "core.hooksPath=/dev/null",  # no hook of the repository's runs
    "core.fsmonitor=false",
    "core.alternateRefsCommand=true",  # receive-pack runs it to list an alternate's refs
    "receive.autogc=false",  # no gc or maintenance, whose settings name commands
    "receive.denyCurrentBranch=refuse",  # never updateInstead (a checkout runs filters)
    "receive.denyDeleteCurrent=refuse",
    "gc.auto=0",
)
"""Settings forced on git run inside a repository Corral does not own: those of its own
config that would run something (hooks, fsmonitor, filters through a checkout, gc)."""

_GIT_CONFIG = """\
[safe]
\tdirectory = *
[core]
\thooksPath = /dev/null
\tfsmonitor = false
\texcludesFile = /dev/null
\tattributesFile = /dev/null
[http]
\tfollowRedirects = false
[submodule]
\trecurse = false
"""
"""Corral's own global git config (``GIT_CONFIG_GLOBAL``; root's ``~/.gitconfig`` is left
out). Ownership is not what makes a repository safe here (``safe.directory``): git runs on a
foreign repository as its owner with ``SERVER_PINS``, and otherwise only on Corral's own
clones. Redirects are not followed: the allowed host is the one asked."""

_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for credentials on a terminal
    "GIT_CONFIG_NOSYSTEM": "1",
    # Only these transports, whatever a URL, a submodule or a config says: never ext::
    # (which runs a command) or another remote helper.
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "HOME": "/nonexistent",
    "LC_ALL": "C",
}
_PASSED = ("PATH", "http_proxy", "https_proxy", "no_proxy", "HTTPS_PROXY", "NO_PROXY")
"""The only variables of the server's environment git sees (it holds the admin key)."""


@dataclass(frozen=True, slots=True)
class RepoPolicy:
    """What a team's runs may clone from and deliver into."""

    roots: tuple[Path, ...] = ()  # empty: any folder (a one-person machine)
    forbidden: tuple[Path, ...] = ()  # Corral's runs folders: never a repository
    hosts: tuple[str, ...] = ()  # URL hosts allowed ("*.example.com", "*" for any)
    ssh_key: Path | None = None  # the key ssh URLs use; none: no key at all
    roots_setting: str = "run_repo_roots"  # named in refusals

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for allowed in self.hosts:
            allowed = allowed.lower().rstrip(".")
            if allowed == "*" or allowed == host:
                return True
            if allowed.startswith("*.") and host.endswith(allowed[1:]):
                return True
        return False


def repo_policy(
    *,
    team: str,
    runs_dirs: Sequence[Path],
    roots: Sequence[Path] = (),
    team_roots: Mapping[str, Sequence[Path]] | None = None,
    hosts: Sequence[str] = (),
    ssh_key: Path | None = None,
) -> RepoPolicy:
    """The policy of ``team``: its own roots when ``team_roots`` names it, else ``roots``
    (``{team}`` in a root becomes the team's name)."""
    setting = "run_repo_roots"
    if team_roots and team in team_roots:
        roots, setting = team_roots[team], f"run_team_repo_roots.{team}"
    resolved = tuple(
        Path(str(root).replace("{team}", team)).expanduser().resolve() for root in roots
    )
    return RepoPolicy(
        roots=resolved,
        forbidden=tuple(dict.fromkeys(p.expanduser().resolve() for p in runs_dirs)),
        hosts=tuple(hosts),
        ssh_key=ssh_key,
        roots_setting=setting,
    )


def team_policy(settings: Settings, team: str, runs_dir: Path) -> RepoPolicy:
    """``repo_policy`` of ``team`` from the settings; ``runs_dir`` is the executor's runs
    folder (refused with the configured one and the default one)."""
    s = settings
    return repo_policy(
        team=team,
        runs_dirs=(runs_dir, s.runs_dir or runs_dir, s.home / "runs"),
        roots=s.run_repo_roots,
        team_roots=s.run_team_repo_roots,
        hosts=s.run_repo_hosts,
        ssh_key=s.run_repo_ssh_key,
    )


def is_url(source: str) -> bool:
    return source.startswith(URL_SCHEMES) or (source.startswith("git@") and ":" in source)


def check_url(url: str, policy: RepoPolicy) -> None:
    """Refuse (403) a URL whose host the operator has not allowed, before any connection."""
    host = url_host(url)
    if not policy.allows_host(host):
        allowed = ", ".join(policy.hosts) or "none"
        raise PermissionDenied(
            f"--repo {url}: runs may not clone from {host} (run_repo_hosts allows {allowed}); "
            "give a repository on the server, or ask the operator to allow the host"
        )


def url_host(url: str) -> str:
    """The host ``url`` names, as git would connect to it; a URL Python and git could read
    differently (a backslash, a space, a control character, an odd host) is refused."""
    if any(c in url for c in "\\ ") or not url.isprintable():
        raise InvalidRequest(f"--repo {url!r}: a URL may not hold spaces, backslashes or controls")
    if url.startswith("git@"):
        host = url.removeprefix("git@").split(":", 1)[0]
    else:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError as exc:
            raise InvalidRequest(f"--repo {url}: not a URL ({exc})") from exc
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]+", host.lower()):
        raise InvalidRequest(f"--repo {url}: {host!r} is not a host name Corral connects to")
    return host.lower()


@dataclass(frozen=True, slots=True)
class LocalRepo:
    """A repository on the server that passed ``open_local``."""

    path: Path  # as given (absolute, no link in it)
    git_dir: Path
    uid: int  # the owner of its git folder
    gid: int

    def drop(self) -> tuple[int, int] | None:
        """The uid and gid git must switch to for this repository, if any."""
        if os.geteuid() != 0 or self.uid == 0:
            return None
        return self.uid, self.gid

    def owner_reaches(self) -> bool:
        """Whether the owner (without supplementary groups) may traverse to the git folder."""
        for folder in (self.git_dir, *self.git_dir.parents):
            info = os.stat(folder)
            if info.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif info.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                return False
        return True


def open_local(path: Path, policy: RepoPolicy, shown: str) -> LocalRepo:
    """Check repository ``path`` (absolute, resolved at submit) without following a link:
    not in a runs folder, inside the roots, a real ``.git`` (or a gitfile to a real folder,
    or a bare repository), not writable by everyone. ``shown`` is how the caller named it."""
    path = Path(os.path.normpath(path))
    _check_place(path, policy, shown, "--repo")
    with _opened(path, shown, _must_stay(policy)) as fd:
        try:
            info = os.lstat(".git", dir_fd=fd)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise PermissionDenied(
                f"--repo {shown}: its .git is a symbolic link, which Corral never follows; "
                "give the repository it points to"
            )
        if info is not None and stat.S_ISDIR(info.st_mode):
            git_dir = path / ".git"
        elif info is not None and stat.S_ISREG(info.st_mode):
            git_dir = _gitfile_target(fd, path, shown)
            _check_place(git_dir, policy, shown, "its .git file points to a folder that")
            with _opened(git_dir, shown, _must_stay(policy)) as target:
                info = os.fstat(target)
        elif _is_bare(fd):
            git_dir, info = path, os.fstat(fd)
        else:
            raise InvalidRequest(f"--repo {shown}: not a git repository (no .git there)")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise PermissionDenied(
            f"--repo {shown}: its git folder {git_dir} may be written by anyone; Corral does "
            "not run git in it (chmod o-w it)"
        )
    return LocalRepo(path, git_dir, info.st_uid, info.st_gid)


def _check_place(path: Path, policy: RepoPolicy, shown: str, what: str) -> None:
    for folder in policy.forbidden:
        if _inside(path, folder):
            raise PermissionDenied(
                f"{what} {shown} is inside Corral's runs folder ({folder}): what a run leaves "
                "behind is never a repository to clone or deliver into"
            )
    if policy.roots and not any(_inside(path, root) for root in policy.roots):
        allowed = ", ".join(str(r) for r in policy.roots)
        raise PermissionDenied(
            f"{what} {shown} is outside the folders this team's runs may use ({allowed}; "
            f"{policy.roots_setting}): give a repository under one of them"
        )


def _must_stay(policy: RepoPolicy) -> str:
    if not policy.roots:
        return ""
    roots = ", ".join(str(r) for r in policy.roots)
    return f"; the repository must be a real folder inside {roots} ({policy.roots_setting})"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@contextlib.contextmanager
def _opened(path: Path, shown: str, why: str = "") -> Iterator[int]:
    """An ``O_PATH`` descriptor of folder ``path``, reached one component at a time without
    following a link (a component that is one is refused, naming it)."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        walked = Path("/")
        for part in path.parts[1:]:
            walked /= part
            try:
                step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise InvalidRequest(f"--repo {shown}: no such folder ({walked})") from None
            except NotADirectoryError:
                if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise PermissionDenied(
                        f"--repo {shown}: {walked} is a symbolic link now; Corral does not "
                        f"follow links in a repository's path after it was submitted{why}"
                    ) from None
                raise InvalidRequest(f"--repo {shown}: {walked} is not a folder") from None
            except PermissionError as exc:
                raise InvalidRequest(f"--repo {shown}: {walked} cannot be entered") from exc
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def _gitfile_target(fd: int, path: Path, shown: str) -> Path:
    """Where a ``.git`` file (``gitdir: …``) points, read without following a link."""
    file = os.open(".git", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    try:
        text = os.read(file, 4096).decode(errors="replace").strip()
    finally:
        os.close(file)
    if not text.startswith("gitdir:") or "\n" in text:
        raise InvalidRequest(f"--repo {shown}: its .git file is not a gitdir: line")
    return Path(os.path.normpath(path / text.removeprefix("gitdir:").strip()))


def _is_bare(fd: int) -> bool:
    try:
        head = os.lstat("HEAD", dir_fd=fd)
        objects = os.lstat("objects", dir_fd=fd)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(head.st_mode) and stat.S_ISDIR(objects.st_mode)


def server_program(verb: str, repo: LocalRepo) -> str:
    """The ``--upload-pack``/``--receive-pack`` command that serves ``repo``: git with
    ``SERVER_PINS``, as the repository's owner. Git runs it through the shell with the
    repository's path as an argument: the shell enters the folder first, as Corral, so an
    owner who may not traverse the folders above it is still served (upload-pack works from
    there; receive-pack needs the whole path, and is refused clearly without it)."""
    command = ["git", *(arg for pin in SERVER_PINS for arg in ("-c", pin)), verb]
    owner = repo.drop()
    if owner is None:
        return shlex.join(command)
    setpriv = shutil.which("setpriv", path=os.environ.get("PATH"))
    if setpriv is None:
        raise InvalidRequest(
            "setpriv (util-linux) is not installed: Corral runs git in a repository as its "
            "owner with it"
        )
    if verb == "receive-pack" and not repo.owner_reaches():
        raise InvalidRequest(
            f"the repository {repo.path} belongs to uid {repo.uid}, who cannot reach it (a "
            "folder above it is closed to that uid): Corral writes into a repository only as "
            "its owner; open the folders above it to its owner, or deliver the patch"
        )
    uid, gid = owner
    drop = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    return f'serve() {{ cd -- "$1" && exec {shlex.join([*drop, *command, "."])}; }}; serve'


def remote_env(policy: RepoPolicy) -> dict[str, str]:
    """ssh for URLs: no config, no agent, no key of the server's but ``ssh_key``."""
    key = shlex.quote(str(policy.ssh_key)) if policy.ssh_key else "none"
    ssh = (
        "ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes "
        f"-o IdentityFile={key}"
    )
    return {"GIT_SSH_COMMAND": ssh, "GIT_SSH_VARIANT": "ssh"}


@contextlib.contextmanager
def git_env(extra: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment git runs with: Corral's config, none of the server's secrets."""
    with tempfile.NamedTemporaryFile("w", prefix="corral-git-", suffix=".config") as config:
        config.write(_GIT_CONFIG)
        config.flush()
        os.chmod(config.name, 0o644)  # readable by a repository's owner too
        passed = {name: os.environ[name] for name in _PASSED if name in os.environ}
        passed.setdefault("PATH", "/usr/bin:/bin")
        yield {**passed, **_GIT_ENV, "GIT_CONFIG_GLOBAL": config.name, **(extra or {})}


def git(
    *args: str,
    env: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
    stdin: bytes | IO[bytes] | None = None,
    cwd: Path = Path("/"),
) -> str:
    """Run git in ``cwd`` (entered before switching to ``user``'s uid and gid, when
    given); its output as text, or ``InvalidRequest`` with its stderr."""
    return git_bytes(*args, env=env, user=user, stdin=stdin, cwd=cwd).decode(errors="replace")


def git_bytes(
    *args: str,
    env: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
    stdin: bytes | IO[bytes] | None = None,
    cwd: Path = Path("/"),
) -> bytes:
    """``git`` with its output as bytes (paths as git wrote them)."""
    options: dict[str, Any] = {"input": b""}
    if isinstance(stdin, bytes):
        options = {"input": stdin}
    elif stdin is not None:
        options = {"stdin": stdin}  # a file, streamed
    if user is not None:
        options.update(user=user[0], group=user[1], extra_groups=[])
    with git_env(env) as full:
        result = subprocess.run(
            ["git", *args],
            capture_output=True,
            env=full,
            cwd=cwd,
            timeout=600,
            check=False,
            **options,
        )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()[:500]
        raise InvalidRequest(f"git {verb(args)} failed: {stderr}")
    out: bytes = result.stdout
    return out


def verb(args: Sequence[str]) -> str:
    """The git command of ``args`` (past ``-C path``, ``--git-dir path``, ``-c x=y``)."""
    skip = False
    for arg in args:
        if skip or arg in ("-C", "-c", "--git-dir", "--work-tree"):
            skip = not skip
            continue
        if not arg.startswith("-"):
            return arg
    return ""
