"""The agents drive the same live gateway fixture as the gateway tests; managed runs share a
runs folder the run's uid can traverse and a repository with a typo to fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import corral
from tests.sandboxing import make_repo, shared_folder

__all__ = ["NOTES", "corral", "repo", "runs_root"]

NOTES = "Corral runs agnets.\n"


@pytest.fixture
def runs_root() -> Iterator[Path]:
    with shared_folder("corral-managed-") as root:
        yield root


@pytest.fixture
def repo(runs_root: Path) -> Path:
    """A one-commit repository whose notes.txt has a typo."""
    return make_repo(runs_root / "repo", {"notes.txt": NOTES})
