"""A run's change as a patch, computed without letting git near the working tree.

The working tree is the agent's: it may hold nested repositories (``sub/.git``, a gitfile
pointing at a repository of the host, an empty or unborn one), folders git refuses
(``.GIT/``), links anywhere, and files of any size. Git run over it would treat a nested
repository as a submodule (reading the repository its gitfile names, and putting that
repository's commit into the patch in place of the files), and refuse ``.GIT/`` outright,
losing the whole change.

So Corral walks the tree itself, one folder descriptor at a time without following a link
(``O_NOFOLLOW``), skips every ``.git`` of any case (git can record none), and streams each
file's bytes into ``git fast-import`` in a private bare repository whose only view of the
workspace's history is its object folder as an alternate (Corral's, which the agent could
not write). Git thus never opens a path of the working tree, except ``.gitignore`` files for
``git check-ignore`` (which opens them without following links and does not look into
nested repositories); the patch is the tree-to-tree diff of the base commit and that
snapshot, streamed to a file. The server holds one chunk of a file or of the patch at a
time, whatever their size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from corral.errors import InvalidRequest
from corral.runs.repos import git, git_bytes, git_env

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_DEPTH = 256
"""Folders nested deeper than this are left out of a patch (one descriptor is open per
level, and no repository a person reviews is this deep)."""
CUT_MARKER = b"# corral: the patch was cut here"
"""The last line of a patch cut at its size limit. A complete patch never has it: every
line of one starts with a header word, `+`, `-`, a space, a backslash or base85 (`A-Za-z`)."""
_DIFF_HEADER = b"\ndiff --git "


@dataclass(frozen=True, slots=True)
class DiffResult:
    """What ``diff`` wrote."""

    files: int  # files changed (a rename is one)
    size: int  # bytes of the full patch, however much of it was kept
    complete: bool  # False: the patch exceeded max_bytes; dest holds its first lines and
    # then one CUT_MARKER line


@dataclass(slots=True)
class _Base:
    """The base commit's paths: tracked ones (never dropped as ignored), the folders holding
    them, and its submodules (kept as they were)."""

    tracked: set[bytes] = field(default_factory=set)
    folders: set[bytes] = field(default_factory=set)
    gitlinks: dict[bytes, bytes] = field(default_factory=dict)


def private_repo(folder: Path, objects: Path) -> list[str]:
    """A bare repository at ``folder`` reading ``objects`` as an alternate; its git args."""
    git("init", "--quiet", "--bare", str(folder))
    (folder / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    return ["--git-dir", str(folder)]


def snapshot(repo: Sequence[str], work_tree: Path, base: str) -> str:
    """Commit ``work_tree`` as it is, on top of ``base``, in ``repo``; return the commit."""
    known = _base(repo, base)
    with _Ignores(repo, work_tree) as ignores, _FastImport(repo, base) as commit:
        for path, oid in known.gitlinks.items():
            commit.write(b"M 160000 %s %s\n" % (oid, _quote(path)))
        for path, mode, fd_or_target in _walk(work_tree, known, ignores):
            commit.add(path, mode, fd_or_target)
    return git(*repo, "rev-parse", "--verify", _REF).strip()


def write_patch(repo: Sequence[str], base: str, commit: str, dest: Path, most: int) -> DiffResult:
    """Stream ``git diff base commit`` into ``dest``, keeping at most ``most`` bytes."""
    args = ["git", *repo, "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv"]
    size = files = kept = last_line = 0
    tail = b"\n"  # so a header on the first line counts
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with (
        git_env() as env,
        tempfile.TemporaryFile() as errors,
        open(os.open(dest, flags, 0o644), "wb") as out,
        subprocess.Popen(
            [*args, base, commit], stdout=subprocess.PIPE, stderr=errors, env=env
        ) as p,
    ):
        assert p.stdout is not None
        while chunk := p.stdout.read(CHUNK):
            files += (tail + chunk).count(_DIFF_HEADER)
            tail = chunk[-(len(_DIFF_HEADER) - 1) :]
            if kept < most:
                part = chunk[: most - kept]
                out.write(part)
                newline = part.rfind(b"\n")
                if newline >= 0:
                    last_line = kept + newline + 1
                kept += len(part)
            size += len(chunk)
        if p.wait() != 0:
            errors.seek(0)
            raise InvalidRequest(f"git diff failed: {errors.read(500).decode(errors='replace')}")
        if size > most:
            out.truncate(last_line)
            out.seek(last_line)
            out.write(b"%s: %d of its %d bytes are kept\n" % (CUT_MARKER, last_line, size))
    return DiffResult(files=files, size=size, complete=size <= most)


def _base(repo: Sequence[str], base: str) -> _Base:
    known = _Base()
    listing = git_bytes(*repo, "ls-tree", "-r", "-z", "--full-tree", base)
    for entry in filter(None, listing.split(b"\0")):
        info, path = entry.split(b"\t", 1)
        mode, _, oid = info.split(b" ")
        if mode == b"160000":
            known.gitlinks[path] = oid
        else:
            known.tracked.add(path)
        parts = path.split(b"/")
        known.folders.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
    return known


_REF = "refs/heads/corral-snapshot"


class _FastImport:
    """One commit, written to ``git fast-import``'s stdin as the walk finds files."""

    def __init__(self, repo: Sequence[str], base: str) -> None:
        self._repo, self._base = repo, base

    def __enter__(self) -> _FastImport:
        self._env = git_env()
        env = self._env.__enter__()
        self._errors = tempfile.TemporaryFile()
        # big files go straight into a pack in chunks instead of through git's memory
        args = ["git", *self._repo, "-c", "core.bigFileThreshold=8m", "fast-import"]
        self._proc = subprocess.Popen(
            [*args, "--quiet", "--done"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._errors, env=env,
        )  # fmt: skip
        assert self._proc.stdin is not None
        self._in: IO[bytes] = self._proc.stdin
        self.write(b"commit %s\ncommitter Corral <runs@corral.invalid> 0 +0000\n" % _REF.encode())
        self.write(b"data 0\nfrom %s\ndeleteall\n" % self._base.encode())
        return self

    def write(self, data: bytes) -> None:
        try:
            self._in.write(data)
        except BrokenPipeError:
            self._fail()

    def add(self, path: bytes, mode: int, source: int | bytes) -> None:
        """A file (``source`` an open descriptor, closed here) or a link (its target)."""
        name = _quote(path)
        if isinstance(source, bytes):
            self.write(b"M %o inline %s\ndata %d\n%s\n" % (mode, name, len(source), source))
            return
        with open(source, "rb", buffering=0, closefd=True) as f:
            size = os.fstat(f.fileno()).st_size
            self.write(b"M %o inline %s\ndata %d\n" % (mode, name, size))
            left = size
            while left > 0:
                chunk = f.read(min(CHUNK, left)) or b"\0" * min(CHUNK, left)  # it shrank
                self.write(chunk)
                left -= len(chunk)
            self.write(b"\n")

    def _fail(self) -> None:
        self._proc.wait()
        self._errors.seek(0)
        why = self._errors.read(500).decode(errors="replace").strip()
        raise InvalidRequest(f"git fast-import failed: {why}")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                self.write(b"\ndone\n")
                with contextlib.suppress(BrokenPipeError):
                    self._in.close()
                if self._proc.wait() != 0:
                    self._fail()
            else:
                self._proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                self._in.close()
            self._proc.wait()
            self._errors.close()
            self._env.__exit__(None, None, None)


class _Ignores:
    """``git check-ignore`` asked one path at a time (a folder ends with ``/``)."""

    def __init__(self, repo: Sequence[str], work_tree: Path) -> None:
        self._args = ["git", *repo, "--work-tree", str(work_tree), "check-ignore"]
        self._buffer = b""
        self._broken = False

    def __enter__(self) -> _Ignores:
        self._env = git_env({"GIT_FLUSH": "1"})
        env = self._env.__enter__()
        self._proc = subprocess.Popen(
            [*self._args, "--no-index", "--verbose", "--non-matching", "-z", "--stdin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        return self

    def ignored(self, path: bytes) -> bool:
        if self._broken:
            return False  # better a patch with an ignored file than no patch
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(path + b"\0")
            self._proc.stdin.flush()
            source, _line, pattern, _path = (self._field() for _ in range(4))
        except (BrokenPipeError, EOFError):
            log.warning("git check-ignore stopped; .gitignore is not applied to the rest")
            self._broken = True
            return False
        return bool(source) and not pattern.startswith(b"!")

    def _field(self) -> bytes:
        assert self._proc.stdout is not None
        while b"\0" not in self._buffer:
            more = os.read(self._proc.stdout.fileno(), 65536)
            if not more:
                raise EOFError
            self._buffer += more
        value, self._buffer = self._buffer.split(b"\0", 1)
        return value

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(BrokenPipeError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        self._proc.kill()
        self._proc.wait()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        self._env.__exit__(None, None, None)


def _walk(top: Path, known: _Base, ignores: _Ignores) -> Iterator[tuple[bytes, int, int | bytes]]:
    """Every file and link of ``top`` to record, as (path, mode, open descriptor or link
    target): tracked ones, and untracked ones ``.gitignore`` does not exclude."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    stack: list[tuple[int, bytes, Iterator[str]]] = []
    root = os.open(top, flags)
    stack.append((root, b"", iter(os.listdir(root))))
    try:
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            if name.lower() == ".git":  # a repository's, or a name git cannot record
                continue
            path = prefix + os.fsencode(name)
            info = os.lstat(name, dir_fd=fd)
            if path in known.gitlinks:
                continue
            if stat.S_ISDIR(info.st_mode):
                if path not in known.folders and ignores.ignored(path + b"/"):
                    continue
                if len(stack) >= MAX_DEPTH:
                    log.warning("left %s out of the patch: folders nested too deep", path)
                    continue
                child = os.open(name, flags, dir_fd=fd)
                stack.append((child, path + b"/", iter(os.listdir(child))))
            elif path not in known.tracked and ignores.ignored(path):
                continue
            elif stat.S_ISREG(info.st_mode):
                yield path, _file_mode(info), _open_file(name, fd)
            elif stat.S_ISLNK(info.st_mode):
                yield path, 0o120000, os.fsencode(os.readlink(name, dir_fd=fd))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _open_file(name: str, folder: int) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    fd = os.open(name, flags, dir_fd=folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the lstat
        os.close(fd)
        raise InvalidRequest(f"{name} changed while the patch was made")
    return fd


def _file_mode(info: os.stat_result) -> int:
    return 0o100755 if info.st_mode & stat.S_IXUSR else 0o100644


def _quote(path: bytes) -> bytes:
    """``path`` C-quoted, as fast-import reads any byte of a name."""
    out = bytearray(b'"')
    for byte in path:
        if byte in (0x22, 0x5C):
            out += b"\\%c" % byte
        elif byte < 0x20 or byte >= 0x7F:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    out += b'"'
    return bytes(out)
