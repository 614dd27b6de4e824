"""An agent CLI installed with a plain ``npm install --prefix DIR`` (not ``-g``) runs too.

Such an install keeps the package's dependencies beside it in ``DIR/node_modules``:
Codex's own binary is the sibling package ``@openai/codex-linux-x64``, which binding
only ``@openai/codex`` into the sandbox leaves out. The profile binds the whole
``node_modules`` tree. Codex is installed into ``.cache/npm-prefix`` once (npm's
registry is reachable; ``make agents`` uses ``.cache/npm`` the same way).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.runs.profiles import AgentContext, Codex
from corral.runs.runtime import find
from corral.runs.sandbox import Limits, Sandbox
from tests.agents.conftest import NOTES
from tests.agents.test_managed_runs import CODEX, SCRIPT, check_managed_run, managed_corral
from tests.sandboxing import make_repo, need_sandbox, shared_folder

pytestmark = pytest.mark.agent_cli

PREFIX = Path(__file__).resolve().parents[2] / ".cache" / "npm-prefix"
VERSION = "0.171.0"  # the version tests/agents/data/managed_runs.toml was recorded with


def prefix_bin() -> Path:
    """``.cache/npm-prefix/node_modules/.bin``, with Codex installed there non-globally."""
    found = PREFIX / "node_modules" / ".bin"
    if not (found / "codex").exists():
        PREFIX.mkdir(parents=True, exist_ok=True)
        npm = ["npm", "install", "--silent", "--no-fund", "--no-audit", "--prefix", str(PREFIX)]
        done = subprocess.run(
            [*npm, f"@openai/codex@{VERSION}"], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            message = f"npm install --prefix failed: {done.stderr[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return found


def _context(agent_path: Path) -> AgentContext:
    return AgentContext(
        run_id="run_x", team="t", owner="o", task="t", model="m", key="k", gateway="g",
        traceparent="", workspace="/workspace", artifacts="/artifacts", home="/scratch",
        agent_path=str(agent_path),
    )  # fmt: skip


def test_the_codex_profile_binds_the_whole_node_modules_of_a_prefix_install() -> None:
    """The binds hold the package and its sibling platform package, and nothing above
    ``node_modules`` (not the prefix's package.json and lock file)."""
    binds = Codex().read_only(_context(prefix_bin()))
    modules = (PREFIX / "node_modules").resolve()
    assert binds == [modules]
    assert (modules / "@openai" / "codex-linux-x64").is_dir()
    assert Codex().command(_context(prefix_bin()))[0] == str(
        modules / "@openai" / "codex" / "bin" / "codex.js"
    )


def _version_in_sandbox(read_only: list[Path], root: Path) -> subprocess.CompletedProcess[str]:
    work, scratch = root / "ws", root / "scratch"
    work.mkdir()
    scratch.mkdir()
    box = Sandbox(
        work, scratch, read_only=[*find().read_only, *read_only], limits=Limits(wall_seconds=60)
    )
    codex = Codex().command(_context(prefix_bin()))[0]
    return box.run([codex, "--version"])


def test_codex_version_runs_in_the_sandbox_from_a_prefix_install() -> None:
    """``codex --version`` inside bubblewrap, as the run's uid, from the ``--prefix`` layout
    and the profile's binds; with only the package folder bound (the binds before this
    change) it cannot find its platform binary."""
    need_sandbox()
    binds = Codex().read_only(_context(prefix_bin()))
    with shared_folder() as root:
        done = _version_in_sandbox(binds, root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"codex-cli {VERSION}", done.stdout
    package_only = (PREFIX / "node_modules" / "@openai" / "codex").resolve()
    with shared_folder() as root:
        narrow = _version_in_sandbox([package_only], root)
    assert narrow.returncode != 0, narrow.stdout


def test_codex_from_a_prefix_install_completes_a_managed_run(
    tmp_path: Path, store_url: str
) -> None:
    """The managed Codex run of test_managed_runs.py, its CLI found on a ``--prefix``
    install's ``node_modules/.bin`` (``run_agent_path``)."""
    with shared_folder("corral-managed-") as runs_root:
        repo = make_repo(runs_root / "repo", {"notes.txt": NOTES})
        with managed_corral(
            tmp_path / "home", runs_root, store_url, agent_path=prefix_bin(), script=SCRIPT
        ) as running:
            check_managed_run(running, repo, CODEX)
