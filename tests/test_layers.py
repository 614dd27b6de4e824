"""The layer contracts of pyproject.toml (``[tool.importlinter]``), as ``make check`` runs them.

The tree keeps every contract, an import that breaks one fails the check naming the
contract and the import, and every top-level module of the package has its place in the
layer order, so a new package cannot slip past the contracts unplaced.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import corral

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
APP_ON_TOP = "No module below the app imports corral.app"


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _top_level() -> set[str]:
    return {f"corral.{m.name}" for m in pkgutil.iter_modules(corral.__path__)}


def _lint(src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts over the package found in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), *extra],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    """The working tree passes ``lint-imports``, every contract kept."""
    result = _lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


def test_an_import_of_the_app_from_below_fails_the_check(tmp_path: Path) -> None:
    """``import corral.app`` added to a quota module (a copy of the tree) breaks the app's
    contract and the layers: the check exits non-zero naming both and the import."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    rules = src / "corral" / "quota" / "rules.py"
    rules.write_text(rules.read_text() + "\nimport corral.app  # noqa: E402\n")

    result = _lint(src, "--no-cache")

    assert result.returncode != 0
    assert f"{APP_ON_TOP} BROKEN" in result.stdout
    assert _contracts()["layers"]["name"] + " BROKEN" in result.stdout
    assert "corral.quota.rules -> corral.app" in result.stdout


def test_every_top_level_module_has_a_layer() -> None:
    """Each module directly under ``corral`` sits in exactly one layer."""
    placed = [
        module.strip() for layer in _contracts()["layers"]["layers"] for module in layer.split("|")
    ]
    assert sorted(placed) == sorted(_top_level())


def test_the_agent_may_import_no_other_corral_module() -> None:
    """The sandboxed agent's contract forbids every other top-level module of Corral."""
    forbidden = {
        m for m in _contracts()["agent-sandboxed"]["forbidden_modules"] if m.startswith("corral.")
    }
    assert forbidden == _top_level() - {"corral.agent"}


def test_only_the_entry_points_may_import_the_app() -> None:
    """The app's contract names every module that is not an entry point above the app."""
    above = {"corral.__main__", "corral.docgen", "corral.cli", "corral.demo", "corral.testing"}
    sources = set(_contracts()["app-on-top"]["source_modules"])
    assert sources == _top_level() - above - {"corral.app"}
