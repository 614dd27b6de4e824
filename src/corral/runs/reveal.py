"""Let a run's unprivileged uid reach exactly the host paths its run needs, wherever they are.

A run's folders, Corral's Python and an agent's install may sit under folders
the run's uid cannot enter (a ``0700`` home such as ``/root``, a private
``$CORRAL_HOME``, a ``0700`` runs folder). bubblewrap runs as that uid and can
only bind what it can reach by name (even ``--bind-fd`` resolves the path), and
without the sandbox the agent itself opens them by name.

So the run's first process, still root, moves into a mount namespace of its
own (private: nothing propagates back to the host) and, over each topmost
folder the uid cannot enter, mounts a small tmpfs that holds only the way down
to the needed paths, each bind-mounted from the real one. Then it drops to the
uid. The host's folders keep their modes; other users see nothing new; the run
sees, of a private folder, only its own paths. Paths the uid already reaches
are left as they are, and a process that is already the run's uid needs none
of this.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError

_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_NOSUID, _MS_NODEV = 0x2, 0x4
# Looked up now, not in the forked child: dlsym there could wait on a lock another thread
# of the server held when it forked.
_LIBC = ctypes.CDLL(None, use_errno=True)
_unshare = _LIBC.unshare
_mount = _LIBC.mount
_mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)


@dataclass(frozen=True, slots=True)
class Cover:
    """A folder the uid cannot enter, shadowed by a tmpfs holding only ``paths`` below it."""

    folder: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reveal:
    covers: tuple[Cover, ...] = ()

    def apply(self) -> None:
        """In the child, as root, before it drops to the run's uid: unshare the mount
        namespace and lay the covers. Nothing happens without covers."""
        if not self.covers:
            return
        _check(_unshare(_CLONE_NEWNS), "unshare a mount namespace")
        _check(_mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
        for cover in self.covers:
            # Opened before the tmpfs hides them; bound from /proc/self/fd (fds opened in
            # the parent would belong to its mount namespace, which mount(2) refuses).
            fds = [os.open(path, os.O_PATH | os.O_NOFOLLOW) for path in cover.paths]
            options = b"mode=0711,size=1m,nr_inodes=4096"
            flags = _MS_NOSUID | _MS_NODEV
            _check(_mount(b"tmpfs", cover.folder.encode(), b"tmpfs", flags, options), "tmpfs")
            for path, fd in zip(cover.paths, fds, strict=True):
                _mount_point(path, stat.S_ISDIR(os.fstat(fd).st_mode))
                source = f"/proc/self/fd/{fd}".encode()
                _check(_mount(source, path.encode(), None, _MS_BIND | _MS_REC, None), path)
                os.close(fd)


def plan(paths: Iterable[Path], uid: int) -> Reveal:
    """The covers that let ``uid`` reach every one of ``paths`` (resolved; they must exist).

    A path inside another needed path is reached through it, not bound again.
    """
    if uid == os.geteuid():
        return Reveal()
    wanted: list[Path] = []
    for path in paths:
        try:
            wanted.append(path.resolve(strict=True))
        except OSError as exc:
            raise ConfigError(f"{path} is needed by the run but cannot be found: {exc}") from exc
    wanted = sorted(set(wanted), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in wanted:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    by_cover: dict[str, list[str]] = {}
    for path in kept:
        blocked = _first_blocked(path, uid)
        if blocked is not None:
            by_cover.setdefault(str(blocked), []).append(str(path))
    return Reveal(tuple(Cover(folder, tuple(found)) for folder, found in by_cover.items()))


def _first_blocked(path: Path, uid: int) -> Path | None:
    """The topmost folder above ``path`` that ``uid`` (its own group, no other) cannot
    search, by mode bits; None when it can reach ``path``."""
    for folder in reversed(path.parents):
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == uid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def _mount_point(path: str, folder: bool) -> None:
    if folder:
        os.makedirs(path, mode=0o711, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
