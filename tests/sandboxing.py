"""What tests of the run sandbox share: the check that it can work here, a private folder
for runs, and a small git repository."""

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
    """A private (0700) folder under /var/tmp, removed afterwards. The run's uid cannot enter
    it, as it cannot enter a 0700 home: every run made under it shows that a run reaches its
    own folders anyway (``corral.runs.reveal``)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_another_user(script: str, stdin: str = "") -> str:
    """What ``script`` prints run as uid 65533: a local user who is neither Corral nor a run.
    A secret to look for goes on ``stdin`` (``grep -f -``), never on a command line."""
    result = subprocess.run(
        ["/bin/sh", "-c", script], input=stdin, capture_output=True, text=True, timeout=30,
        user=65533, group=65533, extra_groups=[], cwd="/",
    )  # fmt: skip
    return result.stdout


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
