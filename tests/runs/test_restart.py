"""A server that stops or dies while runs are live leaves no orphan process and no run in a
state that lies; queued runs wait for the next server and run there."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx

from corral.identity.service import IdentityService, bootstrap
from corral.settings import load_settings
from corral.store import Store
from tests.conftest import ADMIN_KEY
from tests.gateway.serve import start_server, stop_server
from tests.runs.conftest import LIVE, make_repo, need_sandbox
from tests.runs.test_runs import _processes, _wait_for_file


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(home: Path) -> str:
    """Team payments, user ada and her key in ``home``'s store (migrated first)."""
    home.mkdir(parents=True, exist_ok=True)
    settings = load_settings(home=home, admin_key=ADMIN_KEY)
    store = Store(settings.resolved_database_url)
    store.migrate()
    bootstrap(store, settings, _Clock())
    identity = IdentityService(store, _Clock())
    team = identity.create_team("payments")
    user = identity.create_user("ada", team.id)
    _, raw = identity.create_key(team.id, user.id)
    store.close()
    return raw


class _Clock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def _get(url: str, key: str, run_id: str) -> dict[str, object]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_state(url: str, key: str, run_id: str, leave: tuple[str, ...]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        run = _get(url, key, run_id)
        if run["state"] not in leave:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def test_a_killed_server_leaves_no_orphan_and_the_next_one_says_what_happened(
    shared_dir: Path,
) -> None:
    """SIGKILL the server mid-run: the sandbox dies with it; the next server marks the run
    failed with the reason, and starts the run that was still queued."""
    need_sandbox()
    home = shared_dir / "home"
    key = _setup(home)
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    env = {
        "CORRAL_RUNS_DIR": str(shared_dir / "runs"),
        "CORRAL_RUN_TEAM_CONCURRENCY": "1",
        "CORRAL_RUN_HEARTBEAT_INTERVAL": "0.2",
        "CORRAL_RUN_GRACE": "2",
    }
    port = _port()
    server = start_server(home, port, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        headers = {"authorization": f"Bearer {key}"}
        body = {"agent": "command", "repo": str(repo), "task": "t"}
        live = httpx.post(
            f"{url}/api/v1/runs",
            headers=headers,
            json={**body, "command": ["sh", "-c", "touch /artifacts/up; sleep 3021"]},
        ).json()
        waiting = httpx.post(
            f"{url}/api/v1/runs",
            headers=headers,
            json={**body, "command": ["sh", "-c", "echo second > README"]},
        ).json()
        _wait_for_file(shared_dir / "runs" / live["id"] / "artifacts" / "up")
        assert _get(url, key, waiting["id"])["state"] == "queued"  # the team's one slot is taken
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _processes("3021") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes("3021") == 0, "the sandbox outlived its server"
    finally:
        stop_server(server)
    server = start_server(home, port, **env)
    try:
        failed = _get(url, key, live["id"])
        assert failed["state"] == "failed", failed
        assert "server process that ran it" in str(failed["reason"])
        assert "ended while the run was running" in str(failed["reason"])
        assert failed["events"][-1]["actor"] == "executor"  # type: ignore[index]
        second = _wait_state(url, key, waiting["id"], LIVE)
        assert second["state"] == "awaiting_review", second
    finally:
        stop_server(server)


def test_a_stopping_server_stops_its_runs_and_says_so(shared_dir: Path) -> None:
    """SIGTERM: the server stops its live runs (their trees too) and marks them failed."""
    need_sandbox()
    home = shared_dir / "home"
    key = _setup(home)
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    port = _port()
    env = {"CORRAL_RUNS_DIR": str(shared_dir / "runs"), "CORRAL_RUN_GRACE": "2"}
    server = start_server(home, port, **env)
    url = f"http://127.0.0.1:{port}"
    try:
        run = httpx.post(
            f"{url}/api/v1/runs",
            headers={"authorization": f"Bearer {key}"},
            json={
                "agent": "command",
                "repo": str(repo),
                "task": "t",
                "command": ["sh", "-c", "touch /artifacts/up; sleep 3031"],
            },
        ).json()
        _wait_for_file(shared_dir / "runs" / run["id"] / "artifacts" / "up")
    finally:
        stop_server(server)
    assert _processes("3031") == 0
    server = start_server(home, port, **env)
    try:
        done = _get(url, key, run["id"])
        assert done["state"] == "failed", done
        assert done["reason"] == "the server stopped while the run was live"
    finally:
        stop_server(server)
