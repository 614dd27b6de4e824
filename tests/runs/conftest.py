"""A live Corral that executes runs in the real sandbox, a team with a user and key, and a
fixture repository; helpers to submit runs and wait for them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.identity.service import IdentityService
from corral.runs import sample
from tests.conftest import Corral, run_corral
from tests.services import missing_service

LIVE = ("queued", "admitted", "running")

# Runs finish in a second or two: fast heartbeats, short grace, fast flushes.
QUICK: dict[str, Any] = {
    "run_grace": 2.0,
    "run_heartbeat_interval": 0.2,
    "record_flush_interval": 0.05,
    "key_refresh_interval": 0.1,
}


def need_sandbox() -> None:
    if shutil.which("bwrap") is None:
        missing_service("bubblewrap", "bwrap is not installed (apt-get install bubblewrap)")
    if os.geteuid() != 0:
        missing_service("root", "runs drop to an unprivileged uid and make cgroups: run as root")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the run's uid can traverse (pytest's temp folders are 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="corral-runs-", dir="/var/tmp"))
    root.chmod(0o711)
    yield root
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


@dataclass
class Runs:
    """A live Corral executing runs; ``key`` is ada's (team payments)."""

    corral: Corral
    identity: IdentityService
    key: str
    user_id: str
    team_id: str
    repo: Path
    dir: Path

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.corral.url,
            headers={"authorization": f"Bearer {key or self.key}"},
            timeout=60,
        )

    def submit(self, key: str | None = None, **body: Any) -> dict[str, Any]:
        body = {"agent": "command", "repo": str(self.repo), "task": "a test run", **body}
        with self.api(key) as c:
            r = c.post("/api/v1/runs", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def get(self, run_id: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/api/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(
        self, run_id: str, *, leave: tuple[str, ...] = LIVE, limit: float = 60
    ) -> dict[str, Any]:
        """The run once it is in none of the states ``leave`` (bounded)."""
        deadline = time.monotonic() + limit
        while True:
            run = self.get(run_id)
            if run["state"] not in leave:
                return run
            assert time.monotonic() < deadline, f"run still {run['state']}: {run}"
            time.sleep(0.1)

    def artifact(self, run_id: str, name: str) -> str:
        with self.api() as c:
            r = c.get(f"/api/v1/runs/{run_id}/artifacts/{name}")
        assert r.status_code == 200, r.text
        return r.text


@pytest.fixture
def runs(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    need_sandbox()
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    settings = {**QUICK, "runs_dir": shared_dir / "runs", "sim_script": sample.SCRIPT}
    with run_corral(tmp_path / "home", f"sqlite:///{tmp_path}/corral.db", **settings) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        team = identity.create_team("payments")
        user = identity.create_user("ada", team.id)
        _, raw = identity.create_key(team.id, user.id, name="ada-laptop")
        assert corral.app.executor.refusal is None, corral.app.executor.refusal
        yield Runs(corral, identity, raw, user.id, team.id, repo, shared_dir)
