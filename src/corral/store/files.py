"""Modes of the files that hold secrets or tenant data: folders 0700, files 0600.

``$CORRAL_HOME`` holds the SQLite database (key hashes, every team's usage),
the record journal (bodies before redaction) and the blob folder: nobody but
the service user may read any of it, whatever the process's umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a folder only its owner may enter; a folder of
    ours that is open to others is closed (one made by someone else keeps its mode)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_sqlite(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use the umask's 0644);
    its ``-wal`` and ``-shm`` files take the database's mode. Files left open to others by
    an older Corral are closed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for name in ("", *_SQLITE_SIDE_FILES):
        _tighten(path.with_name(path.name + name), 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
        return
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & mode)
