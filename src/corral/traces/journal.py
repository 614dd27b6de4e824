"""An append-only journal that makes a record durable before its response completes.

Each process appends records, one JSON line each, to a segment file it holds
an exclusive ``flock`` on. ``os.write`` to a regular file reaches the kernel's
page cache before it returns, so a record journaled before the final byte of
a response is sent survives a ``SIGKILL`` of the process (it does not survive
a power loss of the machine; the store's own commit does). The recorder
rotates the segment at every batch, deletes a segment once its batch is
committed, and replays segments left behind by dead processes (their lock is
free) at start-up and periodically.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_SUFFIX = ".jsonl"


@dataclass(slots=True)
class Segment:
    """One open, locked journal file and the records written to it."""

    path: Path
    fd: int
    records: list[dict[str, Any]] = field(default_factory=list)
    first_at: float = 0.0  # time.monotonic() of the first append: how long its oldest waited

    def close(self, *, delete: bool) -> None:
        if delete:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Journal:
    """Owns this process's current segment in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # bodies, unredacted
        self._stem = f"seg-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._counter = 0
        self.current = self._open()

    def _open(self) -> Segment:
        self._counter += 1
        path = self.directory / f"{self._stem}-{self._counter:08d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd)

    def append(self, *records: dict[str, Any]) -> None:
        """Make ``records`` durable against a crash of this process (one write), keep them."""
        current = self.current
        os.write(current.fd, b"".join(orjson.dumps(r) + b"\n" for r in records))
        if not current.records:
            current.first_at = time.monotonic()
        current.records.extend(records)

    def rotate(self) -> Segment | None:
        """Start a new segment; return the old one if it holds records (still open and locked)."""
        old = self.current
        if not old.records:
            return None
        self.current = self._open()
        return old

    def close(self) -> None:
        """Close the current segment, deleting it when it holds nothing."""
        self.current.close(delete=not self.current.records)

    def orphans(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        """Segments whose writer is gone: locked here for the duration of each yield.

        The caller stores the records and the segment is deleted when the
        generator resumes; a segment another live process holds is skipped.
        """
        for path in sorted(self.directory.glob(f"seg-*{_SUFFIX}")):
            if path.name.startswith(self._stem):
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                records = list(_read_records(path))
                yield path, records
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            finally:
                os.close(fd)


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                # a write cut short by the crash itself: that response never completed
                log.warning("journal %s: ignoring a partial last line", path.name)
                return
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                log.error("journal %s line %d is not JSON; skipped", path.name, number)
