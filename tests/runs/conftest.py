"""A live Corral that executes runs in the real sandbox, a team with a user and key, and a
fixture repository; helpers to submit runs and wait for them."""

from __future__ import annotations

import contextlib
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
from tests.sandboxing import make_repo, need_sandbox, shared_folder

__all__ = ["LIVE", "QUICK", "Runs", "make_repo", "need_sandbox", "start_runs"]

LIVE = ("queued", "admitted", "running")

# Runs finish in a second or two: fast heartbeats, short grace, fast flushes.
QUICK: dict[str, Any] = {
    "run_grace": 2.0,
    "run_heartbeat_interval": 0.2,
    "record_flush_interval": 0.05,
    "key_refresh_interval": 0.1,
}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_folder() as root:
        yield root


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

    @property
    def store(self) -> Path:
        """The artifact store's folder (``artifact_dir``)."""
        settings = self.corral.app.settings
        return settings.artifact_dir or settings.home / "artifacts"

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

    def approve(self, run_id: str, key: str | None = None) -> dict[str, Any]:
        """Approve the run's change as ``key`` (default: the organisation admin, who is not
        its author), so that its review gate passes."""
        with self.api(key or self.corral.admin_key) as c:
            r = c.post(f"/api/v1/reviews/{run_id}/approve", json={"comment": "looks right"})
        assert r.status_code == 200, r.text
        review = dict(r.json())
        assert review["passed"], review["missing"]
        return review

    def artifact(self, run_id: str, name: str) -> str:
        with self.api() as c:
            r = c.get(f"/api/v1/runs/{run_id}/artifacts/{name}")
        assert r.status_code == 200, r.text
        return r.text


@contextlib.contextmanager
def start_runs(
    shared_dir: Path, home: Path, repo: Path, database_url: str | None = None, **settings: Any
) -> Iterator[Runs]:
    """A Corral executing runs under ``shared_dir/runs``, with team payments, user ada and
    her key; ``settings`` on top of the quick ones; on SQLite unless ``database_url``."""
    need_sandbox()
    settings = {
        **QUICK,
        "runs_dir": shared_dir / "runs",
        "artifact_dir": shared_dir / "artifacts",
        "sim_script": sample.SCRIPT,
        **settings,
    }
    url = database_url or f"sqlite:///{home}/corral.db"
    with run_corral(home / "home", url, **settings) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        team = identity.create_team("payments")
        user = identity.create_user("ada", team.id)
        _, raw = identity.create_key(team.id, user.id, name="ada-laptop")
        assert corral.app.executor.refusal is None, corral.app.executor.refusal
        yield Runs(corral, identity, raw, user.id, team.id, repo, shared_dir)


@pytest.fixture
def runs(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    need_sandbox()
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo) as live:
        yield live
