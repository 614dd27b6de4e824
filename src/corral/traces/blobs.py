"""The blob store: raw (redacted, capped) request and response bodies, out of the indexed rows.

A body is one file under ``{team}/{YYYY-MM-DD}/{span_id}.{part}``, the day
being the UTC day of the span's start. One folder per team and day lets
retention drop a whole day with one directory walk instead of looking up
millions of keys. Writes are atomic: a temporary file in the same folder,
then ``os.replace``, so a reader never sees half a body. Files are ``0600``
and folders ``0700``: bodies are redacted, but still what people typed.

``BlobBackend`` is the interface the span writer and retention use; ``BlobStore``
is the local-folder implementation (an object store would be another).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal, Protocol

from corral.errors import InvalidRequest, StoreError

Part = Literal["request", "response"]

# The folder of bodies of spans that belong to no team.
NO_TEAM = "_"

_TEAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_KEY = re.compile(
    r"(?P<team>[A-Za-z0-9_][A-Za-z0-9_-]{0,63})/(?P<day>\d{4}-\d{2}-\d{2})/"
    r"[A-Za-z0-9_-]{1,64}\.(?:request|response)"
)
_SPAN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PARTS = ("request", "response")


class BlobBackend(Protocol):
    """Where bodies are kept. Keys are made by ``key_for`` and are safe as relative paths."""

    def key_for(self, team_id: str | None, start_ns: int, span_id: str, part: Part) -> str:
        """The key of one body: ``{team or "_"}/{UTC day of start_ns}/{span_id}.{part}``."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous value atomically."""
        ...

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None when there are none (never written, or expired)."""
        ...

    def delete_days_before(self, team_id: str | None, day: date) -> tuple[int, int]:
        """Delete the team's bodies of every day strictly before ``day``: (files, bytes freed)."""
        ...

    def teams(self) -> list[str]:
        """The team folders that hold bodies (``"_"`` for spans without a team)."""
        ...

    def usage(self) -> dict[str, int]:
        """``{"bytes": ..., "files": ...}`` over every stored body."""
        ...


class BlobStore:
    """Bodies as files under a root folder (``blob_dir``, by default ``$CORRAL_HOME/blobs``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key_for(self, team_id: str | None, start_ns: int, span_id: str, part: Part) -> str:
        """The key of one body; ``InvalidRequest`` when an id could not be a path segment."""
        team = _team_folder(team_id)
        if not _SPAN_ID.fullmatch(span_id) or part not in _PARTS:
            raise InvalidRequest(f"cannot make a blob key of span {span_id!r} part {part!r}")
        day = datetime.fromtimestamp(start_ns // 1_000_000_000, UTC).date().isoformat()
        return f"{team}/{day}/{span_id}.{part}"

    def put(self, key: str, data: bytes) -> None:
        """Write atomically (temporary file in the same folder, then rename); files are 0600."""
        path = self._path(key)
        try:
            try:
                self._write(path, data)
            except FileNotFoundError:
                # Retention removed the day folder between our mkdir and the write: once more.
                self._write(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write body {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None when the key holds nothing."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read body {key}: {exc.strerror or exc}") from exc

    def delete_days_before(self, team_id: str | None, day: date) -> tuple[int, int]:
        """Remove the team's day folders strictly before ``day``; returns (files, bytes)."""
        folder = self.root / _team_folder(team_id)
        files = freed = 0
        for entry in _scan(folder):
            if not entry.is_dir(follow_symlinks=False) or _day_of(entry.name) >= day:
                continue
            n, size = _remove_folder(Path(entry.path))
            files += n
            freed += size
        return files, freed

    def teams(self) -> list[str]:
        """Names of the team folders under the root, sorted."""
        return sorted(
            entry.name
            for entry in _scan(self.root)
            if entry.is_dir(follow_symlinks=False) and _TEAM.fullmatch(entry.name)
        )

    def usage(self) -> dict[str, int]:
        """Bytes and files of every stored body (a walk of the tree: seconds at millions)."""
        files = size = 0
        for team in _scan(self.root):
            if not team.is_dir(follow_symlinks=False):
                continue
            for day in _scan(Path(team.path)):
                if not day.is_dir(follow_symlinks=False):
                    continue
                for entry in _scan(Path(day.path)):
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue  # a write in progress
                    with contextlib.suppress(FileNotFoundError):
                        size += entry.stat(follow_symlinks=False).st_size
                        files += 1
        return {"bytes": size, "files": files}

    # -- internals ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        match = _KEY.fullmatch(key)
        if match is None or _parse_day(match["day"]) is None:
            raise InvalidRequest(f"invalid blob key {key!r}")
        return self.root / key

    def _write(self, path: Path, data: bytes) -> None:
        _make_dirs(self.root, path.parent)
        # mkstemp creates the file 0600; the dot keeps it out of usage() until it is renamed.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _team_folder(team_id: str | None) -> str:
    if team_id is None:
        return NO_TEAM
    if not _TEAM.fullmatch(team_id):
        raise InvalidRequest(f"team id {team_id!r} cannot name a blob folder")
    return team_id


def _parse_day(name: str) -> date | None:
    try:
        return date.fromisoformat(name) if len(name) == 10 else None
    except ValueError:
        return None


def _day_of(name: str) -> date:
    """The day a folder is named after; folders that are not days sort after every day."""
    return _parse_day(name) or date.max


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _make_dirs(root: Path, folder: Path) -> None:
    """Create the day ``folder`` (``root/team/day``) and whatever is missing above it, 0700."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        return
    except FileNotFoundError:
        pass
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.parent.mkdir(mode=0o700, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)


def _remove_folder(folder: Path) -> tuple[int, int]:
    """Delete the files of one day folder, then the folder; returns (files, bytes)."""
    files = size = 0
    for entry in _scan(folder):
        if not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            if not entry.name.startswith("."):
                size += entry.stat(follow_symlinks=False).st_size
                files += 1
            os.unlink(entry.path)
    # A body written into this folder meanwhile keeps it; the next pass takes both.
    with contextlib.suppress(OSError):
        folder.rmdir()
    return files, size
