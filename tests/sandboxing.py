"""What tests of the run sandbox share: the check that it can work here, a folder the run's
unprivileged uid can traverse, and a small git repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.services import missing_service


def need_sandbox() -> None:
    """Skip without bubblewrap or root; under CI=true, fail instead."""
    if shutil.which("bwrap") is None:
        missing_service("bubblewrap", "bwrap is not installed (apt-get install bubblewrap)")
    if os.geteuid() != 0:
        missing_service("root", "runs drop to an unprivileged uid and make cgroups: run as root")


@contextlib.contextmanager
def shared_folder(prefix: str = "corral-runs-") -> Iterator[Path]:
    """A 0711 folder under /var/tmp, removed afterwards: the run's uid must traverse the
    runs folder's parents (pytest's temp folders are 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_repo(folder: Path, files: dict[str, str]) -> Path:
    """A git repository with one commit holding ``files``, on branch main."""
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    git = ["git", "-C", str(folder), "-c", "user.name=ada", "-c", "user.email=ada@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    return folder
