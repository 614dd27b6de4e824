"""The artifact store: where a run's logs, diff, report and artifacts live once Corral has them.

Everything a run leaves that people read is written to and read through an
``ArtifactStore``, never from the run's workspace: so any server process that
shares the store (the database and the artifact folder), not only the one that
ran the run, serves ``/api/v1/runs/{id}/logs`` and ``/artifacts/...``.

Logs are written into the store as the agent prints them (``logs``), so a live
run's output is readable while it runs, from any process. Files the agent made
are copied in after it has exited (``collect``) only through the hostile-file
readers of ``corral.runs.outputs``: a link, a pipe or a device is never followed
or opened, and each copy stops at a byte budget. What the store holds is then
Corral's own regular files; it is still read through the same readers.

``LocalArtifactStore`` is a folder (``artifact_dir``, default
``$CORRAL_HOME/artifacts``), ``0700``, one sub-folder per run::

    RUN/stdout.log  RUN/stderr.log  RUN/diff.patch  RUN/report.md  RUN/artifacts/...
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.runs import outputs
from corral.store.files import private_dir

NOT_FILES = ".not-files.json"
"""In a run's folder of the store: the paths where the agent left something other than a
regular file (not copied), and what it was."""
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class Collected:
    """What a ``collect`` copied, and what it left out (over the budget), by path."""

    files: int = 0
    bytes: int = 0
    left_out: list[str] = field(default_factory=list)
    not_files: dict[str, str] = field(default_factory=dict)  # path: what it was (a link...)


class ArtifactStore(Protocol):
    """Where a run's outputs are kept and served from. Names are plain relative paths
    (``diff.patch``, ``artifacts/plan.md``); anything else is ``outputs.Unreadable``."""

    def logs(self, run_id: str, max_bytes: int) -> outputs.LogCapture:
        """Pipes for the agent's stdout and stderr whose output lands in the store's
        ``stdout.log`` and ``stderr.log`` as it arrives (readable while the run runs)."""
        ...

    def put(self, run_id: str, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` (replacing what was there)."""
        ...

    def collect(
        self, run_id: str, source: outputs.Folder, rel: str, name: str, *, budget: int
    ) -> Collected:
        """Copy the regular file, or the regular files below the folder, ``rel`` of a run's
        folder ``source`` to ``name``, through the hostile-file readers, at most ``budget``
        bytes in all (files past it are left out whole and named)."""
        ...

    def open(self, run_id: str, name: str) -> outputs.Opened:
        """``name`` open for reading; ``outputs.Unreadable`` when there is no such file."""
        ...

    def list(self, run_id: str, prefix: str) -> list[tuple[str, int]]:
        """The files below the folder ``prefix`` as (path under it, size), sorted."""
        ...

    def export(self, run_id: str, prefix: str, dest: Path, *, budget: int) -> Collected:
        """Copy the folder ``prefix`` to the local folder ``dest`` (made if missing): what a
        later run gets bound read-only (a handoff)."""
        ...


class LocalArtifactStore:
    """An ``ArtifactStore`` in a local (or shared network) folder, ``0700``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _run(self, run_id: str, *, make: bool = False) -> Path:
        outputs.plain_parts(run_id)
        if "/" in run_id:
            raise outputs.Unreadable(run_id, "not a run id")
        folder = self.root / run_id
        if make:
            private_dir(self.root)
            folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def logs(self, run_id: str, max_bytes: int) -> outputs.LogCapture:
        return outputs.LogCapture(self._run(run_id, make=True), max_bytes)

    def put(self, run_id: str, name: str, data: bytes) -> None:
        dest = _target(self._run(run_id, make=True), name)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        fd = os.open(tmp, _WRITE, 0o600)
        try:
            _write_all(fd, [data])
        finally:
            os.close(fd)
        os.replace(tmp, dest)  # readers see the old file or the whole new one

    def collect(
        self, run_id: str, source: outputs.Folder, rel: str, name: str, *, budget: int
    ) -> Collected:
        folder = self._run(run_id, make=True)
        done = copy_out(source, rel, folder, name, budget=budget)
        if done.not_files:  # so a download of one says what it was, not just "missing"
            with outputs.Folder(folder) as kept:
                known = _not_files(kept)
            known.update(done.not_files)
            self.put(run_id, NOT_FILES, json.dumps(known).encode())
        return done

    def open(self, run_id: str, name: str) -> outputs.Opened:
        """``name`` open for reading; for a path where the agent left a link, a pipe or a
        device (never copied in), ``Unreadable`` says which."""
        with outputs.Folder(self._run(run_id)) as folder:
            try:
                return folder.open(name)
            except outputs.Unreadable as exc:
                if exc.what == "missing":
                    kind = _not_files(folder).get(name)
                    if kind is not None:
                        raise outputs.Unreadable(name, kind) from exc
                raise

    def list(self, run_id: str, prefix: str) -> list[tuple[str, int]]:
        try:
            folder = outputs.Folder(self._run(run_id))
        except outputs.Unreadable:  # nothing stored for it yet
            return []
        with folder:
            return folder.files(prefix)

    def export(self, run_id: str, prefix: str, dest: Path, *, budget: int) -> Collected:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            source = outputs.Folder(self._run(run_id))
        except outputs.Unreadable:
            return Collected()
        with source:
            return copy_out(source, prefix, dest.parent, dest.name, budget=budget)


def copy_out(
    source: outputs.Folder, rel: str, dest_root: Path, name: str, *, budget: int
) -> Collected:
    """Copy ``rel`` of ``source`` (a regular file, or the regular files below a folder) to
    ``dest_root/name``, each file opened without following a link (``outputs.Folder``),
    streamed up to the size it had when opened, ``budget`` bytes in all."""
    done = Collected()
    try:
        with source.open(rel) as single:
            _copy(single, _target(dest_root, name), budget, done, name)
        return done
    except outputs.Unreadable as exc:
        if exc.what not in ("a folder", "missing"):
            done.not_files[name] = exc.what  # a link, a pipe, a device: not copied
            return done
    for path, kind in source.others(rel).items():
        done.not_files[f"{name}/{path}"] = kind
    for path, _ in source.files(rel):
        with (
            contextlib.suppress(outputs.Unreadable),  # swapped or removed since listed
            source.open(f"{rel}/{path}") as opened,
        ):
            _copy(opened, _target(dest_root, f"{name}/{path}"), budget, done, path)
    return done


def _copy(opened: outputs.Opened, dest: Path, budget: int, done: Collected, label: str) -> None:
    if done.bytes + opened.size > budget:
        done.left_out.append(label)
        return
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dest, _WRITE, 0o600)
    try:
        done.bytes += _write_all(fd, _chunks(opened))
    finally:
        os.close(fd)
    done.files += 1


def _chunks(opened: outputs.Opened) -> Iterable[bytes]:
    """The file's content up to the size it had when opened (``Opened.chunks`` closes it;
    the caller's ``with`` closes it again harmlessly)."""
    offset = 0
    while offset < opened.size:
        data = opened.read_at(offset, min(outputs.CHUNK, opened.size - offset))
        if not data:
            break
        offset += len(data)
        yield data


def _not_files(folder: outputs.Folder) -> dict[str, str]:
    try:
        raw = folder.head(NOT_FILES, 16 * 2**20)
    except outputs.Unreadable:
        return {}
    found = json.loads(raw)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _target(root: Path, name: str) -> Path:
    return root.joinpath(*outputs.plain_parts(name))


def _write_all(fd: int, pieces: Iterable[bytes]) -> int:
    written = 0
    for data in pieces:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            written += n
    return written
