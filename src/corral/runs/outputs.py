"""What a run leaves behind, read as hostile: the one way the server touches a run's files.

The agent owns most of its run's folder (``workspace``, ``scratch``,
``artifacts``) and can put anything there: a link to ``/proc/self/environ`` or
``/etc/shadow``, a named pipe, a file it swaps for a link while the server
reads it, gigabytes. The server reads those files as root, so every read here:

* starts from a directory handle on the run's folder and opens each component
  of the path with ``O_NOFOLLOW`` (folders also ``O_DIRECTORY``): a link
  anywhere on the way is refused, never followed, and there is no check-then-
  open window (what was checked is the open file itself);
* opens the last component as ``O_PATH`` first and ``fstat``\\ s it: a FIFO, a
  device, a socket or a folder is refused without being opened for reading
  (opening a FIFO would block, opening a device may act);
* reads with a byte cap, leaving a marker where it cut
  (``[corral: cut at N of M bytes]``), or a tail by seeking, or streams an
  already-open file in chunks.

Walking a folder never follows a link or leaves the folder's filesystem, and
holds one descriptor per level (so its depth is capped). ``disk_usage`` is a
run's disk use for its quota: allocated blocks, links not followed, a file
with several hard links counted once.

``LogCapture`` is the other half: the agent's stdout and stderr arrive through
pipes and are copied into the run's log files by the server, which keeps at
most ``run_log_max_bytes`` of each (a marker where it cut) and reads and drops
the rest, so the agent never blocks on a full pipe and never fills the disk.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from corral.errors import CorralError, NotFound

CHUNK = 64 * 1024
"""Bytes read at a time, however large the file."""
LIST_DEPTH = 32
"""Folders deeper than this under ``artifacts`` are not listed."""
LIST_MAX = 10_000
"""At most this many artifacts are listed."""
DIFF_TOO_LARGE = "diff.too-large"
"""Beside ``diff.patch`` in a run's ``output`` folder when its diff was too large to keep whole
(it holds the cap); delivery refuses such a run."""
MEASURE_DEPTH = 256
"""A run whose folders nest deeper cannot be measured; it is stopped (``DiskUnmeasurable``)."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OUTSIDE = "not a plain path inside the run's folder"
_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}


class Unreadable(NotFound):
    """A path in a run's folder that is missing or is not a regular file reached without
    links; ``what`` says which (``missing``, ``a symbolic link``, ``a named pipe``...)."""

    def __init__(self, path: str, what: str) -> None:
        if what == "missing":
            super().__init__(f"{path} does not exist")
        elif what == _OUTSIDE:
            super().__init__(f"{path!r} is {what}")
        else:
            super().__init__(f"{path} is {what}, not a regular file: Corral does not read it")
        self.path = path
        self.what = what


class DiskUnmeasurable(CorralError):
    """A run's folders nest deeper than ``MEASURE_DEPTH``: their size cannot be measured."""


def size_in_words(n: int) -> str:
    """A byte count as people read it: ``64 MiB``, ``1.5 MiB``, ``4,096 bytes``."""
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def cut_marker(kept: int, size: int) -> str:
    return f"[corral: cut at {kept} of {size} bytes]"


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def plain_parts(rel: str) -> list[str]:
    """``rel`` as path components; refused (``Unreadable``) unless a plain relative path: no
    ``..``, ``.``, empty component or NUL."""
    parts = rel.split("/")
    if not rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise Unreadable(rel, _OUTSIDE)
    return parts


_parts = plain_parts


# -- one open file --------------------------------------------------------------------------


class _Descriptor:
    """An open descriptor (``fd``), closed once, also as a context manager."""

    fd: int

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Opened(_Descriptor):
    """A regular file of a run, open for reading; ``size`` as it was when opened."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read_at(self, offset: int, limit: int) -> bytes:
        """At most ``limit`` bytes from ``offset`` (fewer at the end of the file)."""
        pieces: list[bytes] = []
        got = 0
        while got < limit:
            data = os.pread(self.fd, min(CHUNK, limit - got), offset + got)
            if not data:
                break
            pieces.append(data)
            got += len(data)
        return b"".join(pieces)

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes; a marker after them when the file is longer."""
        data = self.read_at(0, limit + 1)
        if len(data) <= limit:
            return data
        size = max(self.size, os.fstat(self.fd).st_size)
        return data[:limit] + f"\n{cut_marker(limit, size)}\n".encode()

    def tail(self, limit: int) -> bytes:
        """The last ``limit`` bytes, found by seeking; a marker before them when cut."""
        size = os.fstat(self.fd).st_size
        start = max(0, size - limit)
        data = self.read_at(start, limit)
        if start == 0:
            return data
        return f"[corral: the first {start} of {size} bytes are left out]\n".encode() + data

    def chunks(self) -> Iterator[bytes]:
        """The file's content in chunks, up to the size it had when opened (a file that
        keeps growing does not keep the stream open); closes the file at the end."""
        try:
            offset = 0
            while offset < self.size:
                data = os.pread(self.fd, min(CHUNK, self.size - offset), offset)
                if not data:
                    break
                offset += len(data)
                yield data
        finally:
            self.close()


# -- a run's folder ---------------------------------------------------------------------------


class Folder(_Descriptor):
    """A handle on a run's folder (made by Corral); every path below it is the agent's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, _DIR)
        except OSError as exc:
            raise Unreadable(str(path), "missing") from exc

    def open(self, rel: str) -> Opened:
        """The regular file at ``rel``, opened without following any link on the way."""
        parts = _parts(rel)
        with self._folder(parts[:-1], rel) as at:
            try:
                handle = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            except OSError as exc:
                raise Unreadable(rel, "missing") from exc
            try:
                found = os.fstat(handle)
                if not stat.S_ISREG(found.st_mode):
                    raise Unreadable(rel, _kind(found.st_mode))
                fd = _reopen(handle, parts[-1], at)
            except BlockingIOError as exc:
                raise Unreadable(rel, "held by a lease") from exc
            except OSError as exc:  # swapped for a link or removed (only without /proc)
                raise Unreadable(rel, "missing") from exc
            finally:
                os.close(handle)
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
            os.close(fd)
            raise Unreadable(rel, "changed while it was opened")
        return Opened(fd, opened.st_size)

    def head(self, rel: str, limit: int) -> bytes:
        with self.open(rel) as f:
            return f.head(limit)

    def tail(self, rel: str, limit: int) -> bytes:
        with self.open(rel) as f:
            return f.tail(limit)

    def size(self, rel: str) -> int:
        with self.open(rel) as f:
            return f.size

    def files(self, rel: str, *, limit: int = LIST_MAX) -> list[tuple[str, int]]:
        """The regular files below folder ``rel`` as (path under ``rel``, size), sorted; links,
        pipes and devices left out, folders deeper than ``LIST_DEPTH`` not entered."""
        found: list[tuple[str, int]] = []
        with contextlib.suppress(Unreadable), self._folder(_parts(rel), rel) as fd:
            for path, info in _walk(fd, LIST_DEPTH, deep=None):
                if stat.S_ISREG(info.st_mode) and _printable(path):
                    found.append((path, info.st_size))
                    if len(found) >= limit:
                        break
        return sorted(found)

    def others(self, rel: str, *, limit: int = LIST_MAX) -> dict[str, str]:
        """What below folder ``rel`` is neither a regular file nor a folder (links, pipes,
        devices, sockets), by path under ``rel``, with what it is (``a symbolic link``...)."""
        found: dict[str, str] = {}
        with contextlib.suppress(Unreadable), self._folder(_parts(rel), rel) as fd:
            for path, info in _walk(fd, LIST_DEPTH, deep=None):
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    if _printable(path):
                        found[path] = _kind(info.st_mode)
                    if len(found) >= limit:
                        break
        return found

    @contextlib.contextmanager
    def _folder(self, parts: list[str], rel: str) -> Iterator[int]:
        """A descriptor of the folder ``parts`` below this one, each component opened with
        O_NOFOLLOW | O_DIRECTORY (a link or a file on the way: ``Unreadable``)."""
        fd = os.dup(self.fd)
        try:
            for name in parts:
                try:
                    inner = os.open(name, _DIR, dir_fd=fd)
                except OSError as exc:
                    raise Unreadable(rel, _what_is(fd, name)) from exc
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)


def _reopen(handle: int, name: str, folder: int) -> int:
    """Open for reading the file ``handle`` (O_PATH) holds: through /proc, the very inode
    checked, whatever ``name`` points at by now; without /proc, ``name`` again with
    O_NOFOLLOW (the caller compares the inodes). O_NONBLOCK: a lease the agent holds on its
    file fails the open at once instead of stalling it for the lease's break time, and a
    FIFO swapped in meanwhile does not block."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(f"/proc/self/fd/{handle}", flags)
    except FileNotFoundError:
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=folder)


def _what_is(folder: int, name: str) -> str:
    try:
        return _kind(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode) + " on the way"
    except OSError:
        return "missing"


def _printable(path: str) -> bool:
    """Names that are not UTF-8 (kept as surrogates) cannot be listed in JSON."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- walking and measuring ----------------------------------------------------------------------


def _walk(
    top: int, max_depth: int, *, deep: Callable[[], None] | None
) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below the folder ``top`` with its ``lstat``, a folder before what it
    holds; links are not followed, other filesystems not entered. One descriptor is held per
    level: past ``max_depth`` levels ``deep`` is called (it may raise), else they are skipped."""
    device = os.fstat(top).st_dev
    stack: list[tuple[int, str, list[str]]] = []
    try:
        first = os.dup(top)
        stack.append((first, "", []))
        stack[-1][2].extend((yield from _scan(first, "")))
        while stack:
            fd, prefix, folders = stack[-1]
            if not folders:
                os.close(fd)
                stack.pop()
                continue
            name = folders.pop()
            if len(stack) > max_depth:
                if deep is not None:
                    deep()
                continue
            try:
                inner = os.open(name, _DIR, dir_fd=fd)
            except OSError:  # swapped for a link or removed since it was listed
                continue
            if os.fstat(inner).st_dev != device:
                os.close(inner)
                continue
            stack.append((inner, f"{prefix}{name}/", []))
            stack[-1][2].extend((yield from _scan(inner, f"{prefix}{name}/")))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _scan(fd: int, prefix: str) -> Generator[tuple[str, os.stat_result], None, list[str]]:
    """The entries of one folder; returns the names of its sub-folders (entered next)."""
    folders: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # removed since it was listed
                continue
            yield f"{prefix}{entry.name}", info
            if stat.S_ISDIR(info.st_mode):
                folders.append(entry.name)
    return folders


def disk_usage(path: Path) -> int:
    """Bytes of disk the folder ``path`` and everything below it take (allocated blocks;
    links not followed; a file with several hard links counted once). A tree deeper than
    ``MEASURE_DEPTH`` raises ``DiskUnmeasurable``; a missing folder uses nothing."""

    def too_deep() -> None:
        raise DiskUnmeasurable(
            f"the run's folders nest deeper than {MEASURE_DEPTH} levels: its disk use cannot "
            "be measured"
        )

    try:
        fd = os.open(path, _DIR)
    except FileNotFoundError:
        return 0
    seen: set[tuple[int, int]] = set()
    try:
        total = os.fstat(fd).st_blocks * 512
        for _, info in _walk(fd, MEASURE_DEPTH, deep=too_deep):
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    finally:
        os.close(fd)
    return total


def over_quota(folder: Path, quota_mb: int) -> str | None:
    """Why the run in ``folder`` must stop, when its disk use is over ``quota_mb`` MiB (or
    cannot be measured); None while it is within."""
    try:
        used = disk_usage(folder)
    except DiskUnmeasurable as exc:
        return exc.message
    if used <= quota_mb * 2**20:
        return None
    return (
        f"the run used {used / 2**20:,.1f} MiB of disk, over its quota of {quota_mb} MiB "
        "(run_disk_mb)"
    )


# -- what profiles read a report from -------------------------------------------------------------


class RunFiles:
    """What a profile may read its report from, after the agent exited: the run's
    artifacts (text, capped) and the tail of its stdout (``stdout_tail(n)``, the last ``n``
    bytes, where the logs are kept; by default ``output/stdout.log`` in ``folder``)."""

    def __init__(
        self,
        folder: Folder,
        *,
        max_bytes: int,
        stdout_bytes: int = 200_000,
        stdout_tail: Callable[[int], bytes] | None = None,
    ) -> None:
        self._folder = folder
        self.max_bytes = max_bytes
        self._stdout_bytes = stdout_bytes
        self._stdout_tail = stdout_tail or (lambda n: folder.tail("output/stdout.log", n))

    def artifact(self, name: str) -> str | None:
        """The artifact ``name`` (e.g. ``report.md``) as text, at most ``max_bytes`` of it;
        None when there is none; when it is a link, a pipe or a folder, a note saying so in
        its place (it is not followed or opened)."""
        rel = f"artifacts/{name}"
        try:
            return self._folder.head(rel, self.max_bytes).decode(errors="replace")
        except Unreadable as exc:
            if exc.what == "missing":
                return None
            return f"[corral: {rel} is {exc.what}, not a regular file; Corral did not read it]\n"

    def stdout(self) -> str:
        """The end of the agent's stdout (as the server kept it) as text."""
        try:
            return self._stdout_tail(self._stdout_bytes).decode(errors="replace")
        except Unreadable:
            return ""


# -- the agent's stdout and stderr ---------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    read: int
    write: int
    file: int
    thread: threading.Thread | None = None
    failed: bool = False  # writing the log file failed: the rest is dropped


class LogCapture:
    """Pipes for an agent's stdout and stderr, copied into ``folder/stdout.log`` and
    ``folder/stderr.log`` as output arrives (so ``logs --follow`` sees it), at most
    ``max_bytes`` kept of each: past it a marker, and the rest read and dropped (the agent
    never blocks on a full pipe); at the end a line with the whole size.

    Give ``stdout``/``stderr`` to the process, call ``started`` once it is spawned (the
    pipes' write ends held here are closed, so the copy ends when the agent's do), and
    ``drain`` when it has exited.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        try:
            for name in ("stdout", "stderr"):
                read, write = os.pipe()
                self._streams[name] = _Stream(read, write, -1)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                self._streams[name].file = os.open(folder / f"{name}.log", flags, 0o640)
        except BaseException:
            self._close()
            raise

    @property
    def stdout(self) -> int:
        return self._streams["stdout"].write

    @property
    def stderr(self) -> int:
        return self._streams["stderr"].write

    def __enter__(self) -> Self:
        for name, stream in self._streams.items():
            stream.thread = threading.Thread(
                target=self._copy, args=(stream,), name=f"corral-{name}", daemon=True
            )
            stream.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.started()  # the spawn may have failed before it was called
        self._stop.set()
        self._join(5.0)
        self._close()

    def started(self) -> None:
        """Close the write ends held here: the process has its own copies."""
        for stream in self._streams.values():
            if stream.write >= 0:
                os.close(stream.write)
                stream.write = -1

    def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for what the process wrote to be copied: the
        pipes end when the last process holding them exits."""
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        for stream in self._streams.values():
            if stream.thread is not None:
                stream.thread.join(timeout)

    def _copy(self, stream: _Stream) -> None:
        kept = total = 0
        cut = False
        poller = select.poll()
        poller.register(stream.read, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(250):
                continue
            data = os.read(stream.read, CHUNK)
            if not data:
                break
            total += len(data)
            room = self.max_bytes - kept
            if room > 0:
                kept += len(data[:room])
                _write(stream, data[:room])
            if total > self.max_bytes and not cut:
                _write(stream, _cut_here(self.max_bytes))
                cut = True
        if total > self.max_bytes:
            _write(stream, f"{cut_marker(self.max_bytes, total)}\n".encode())

    def _close(self) -> None:
        for stream in self._streams.values():
            for fd in (stream.read, stream.write, stream.file):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            stream.read = stream.write = stream.file = -1


def _cut_here(limit: int) -> bytes:
    return (
        f"\n[corral: the log is cut here at {limit} bytes (run_log_max_bytes); what follows "
        "is dropped]\n"
    ).encode()


def _write(stream: _Stream, data: bytes) -> None:
    """Append to the log file; once that fails (a full disk) the log is kept as it is, and
    the pipe is still read, so the agent does not block."""
    if stream.file < 0 or stream.failed:
        return
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(stream.file, view) :]
    except OSError:
        stream.failed = True
