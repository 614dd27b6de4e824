"""How far a live run's workspace has moved: a fingerprint of its files, cheaply.

Guards compare it from one sample to the next (tokens rising while the change stands
still). The fingerprint covers every file's path, size and modification time, walked one
folder at a time without following a link and without reading a file (the agent made the
tree: it may hold links anywhere, FIFOs, millions of files); ``.git`` folders of any case
are skipped. The walk stops after ``MAX_ENTRIES`` entries: a bigger tree is fingerprinted
by its first ones and its size is a lower bound. Rewriting a file with the same bytes moves
the fingerprint (its time changes); an agent looping on the same write is the repeated-tool
detector's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

MAX_ENTRIES = 50_000


def fingerprint(workspace: Path) -> tuple[str, int] | None:
    """``(16 hex, bytes)`` of the tree under ``workspace``; None when it is not there.

    Entries are read as the folder yields them and never all held: a folder of a million
    files costs one entry at a time, and the walk stops at ``MAX_ENTRIES``. Each entry's hash
    is summed (mod 2**64), so the order a folder yields them in does not matter."""
    total = 0
    size = 0
    seen = 0
    stack = [(str(workspace), "")]
    while stack and seen < MAX_ENTRIES:
        folder, rel = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            if not rel:
                return None
            continue
        with entries:
            for entry in entries:
                seen += 1
                if seen > MAX_ENTRIES:
                    break
                path = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if entry.name.lower() != ".git":
                        stack.append((entry.path, path))
                    continue
                size += info.st_size if stat.S_ISREG(info.st_mode) else 0
                line = b"%s\0%d\0%d\0%d" % (
                    os.fsencode(path),
                    info.st_mode,
                    info.st_size,
                    info.st_mtime_ns,
                )
                total += int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "big")
    return f"{total & _MASK:016x}", size


_MASK = 2**64 - 1
