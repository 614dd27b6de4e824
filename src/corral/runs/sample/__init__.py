"""The sample repository and scripted conversations of the demo and the runs tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "script.toml"
"""Scripted conversations for the simulator: fix the failing test, plan, implement."""


def make_repo(dest: Path) -> Path:
    """Copy the sample repository to ``dest`` as a git repository with one commit on main
    (its test fails until ``add`` is fixed); return ``dest``."""
    shutil.copytree(HERE / "repo", dest)
    git = ["git", "-C", str(dest), "-c", "user.name=Corral", "-c", "user.email=demo@corral.invalid"]
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "."],
        ["commit", "-qm", "calc: add and scale"],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return dest
