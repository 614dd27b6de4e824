"""A run's outputs are served by any server sharing the store, not only the one that ran it.

Two real ``corral serve`` processes share a PostgreSQL database and an artifact folder
(``artifact_dir``), each with its own ``CORRAL_HOME`` and runs folder; the second runs no
runs (``run_slots = 0``). A run executed by the first is read through the second's API:
its live log while it runs, then its logs, artifacts, diff and report, and its delivery
as a patch."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.identity.service import IdentityService, bootstrap
from corral.settings import load_settings
from corral.store import Store
from tests.conftest import ADMIN_KEY, PostgresServer
from tests.gateway.serve import start_server, stop_server
from tests.runs.conftest import make_repo, need_sandbox

pytestmark = pytest.mark.postgres

AGENT = (
    "echo 'live line'; echo 'to stderr' >&2; echo 'the plan' > /artifacts/plan.md; "
    "echo 'the report' > /artifacts/report.md; echo changed > README; "
    "while [ ! -e /scratch/go ]; do sleep 0.1; done; echo 'last line'"
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Clock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


def _setup(home: Path, url: str) -> str:
    """Team payments, user ada and her key in the shared store (migrated first)."""
    settings = load_settings(home=home, admin_key=ADMIN_KEY, database_url=url)
    store = Store(settings.resolved_database_url)
    try:
        store.migrate()
        bootstrap(store, settings, _Clock())
        identity = IdentityService(store, _Clock())
        team = identity.create_team("payments")
        user = identity.create_user("ada", team.id)
        _, raw = identity.create_key(team.id, user.id)
    finally:
        store.close()
    return raw


def _until(check: object, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_second_server_sharing_the_store_serves_a_run_it_did_not_run(
    shared_dir: Path, database: str
) -> None:
    need_sandbox()
    key = _setup(shared_dir / "a", database)
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    common = {
        "CORRAL_DATABASE_URL": database,
        "CORRAL_ARTIFACT_DIR": str(shared_dir / "artifacts"),
        "CORRAL_RUN_HEARTBEAT_INTERVAL": "0.2",
        "CORRAL_RUN_GRACE": "2",
    }
    port_a, port_b = _port(), _port()
    runner = start_server(
        shared_dir / "a", port_a, CORRAL_RUNS_DIR=str(shared_dir / "runs-a"), **common
    )
    reader = start_server(
        shared_dir / "b", port_b, CORRAL_RUNS_DIR=str(shared_dir / "runs-b"),
        CORRAL_RUN_SLOTS="0", **common,
    )  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port_a}", headers=headers) as a,
            httpx.Client(base_url=f"http://127.0.0.1:{port_b}", headers=headers) as b,
        ):
            body = {
                "agent": "command",
                "repo": str(repo),
                "task": "t",
                "command": ["sh", "-c", AGENT],
            }
            submitted = a.post("/api/v1/runs", json=body)
            assert submitted.status_code == 201, submitted.text
            run_id = submitted.json()["id"]

            def live_log() -> bool:
                r = b.get(f"/api/v1/runs/{run_id}/logs")
                return r.status_code == 200 and b"live line" in r.content

            _until(live_log, "the live log never reached the second server")
            assert b.get(f"/api/v1/runs/{run_id}").json()["state"] == "running"
            (shared_dir / "runs-a" / run_id / "scratch" / "go").touch()

            def ended() -> bool:
                return bool(b.get(f"/api/v1/runs/{run_id}").json()["state"] != "running")

            _until(ended, "the run did not end")
            run = b.get(f"/api/v1/runs/{run_id}").json()
            assert run["state"] == "awaiting_review", run
            assert not (shared_dir / "runs-b" / run_id).exists(), "the second server ran nothing"

            stdout = b.get(f"/api/v1/runs/{run_id}/logs").content
            assert stdout == b"live line\nlast line\n"
            stderr = b.get(f"/api/v1/runs/{run_id}/logs", params={"stream": "stderr"}).content
            assert stderr == b"to stderr\n"
            listed = b.get(f"/api/v1/runs/{run_id}/artifacts").json()["artifacts"]
            assert [x["path"] for x in listed] == [
                "diff.patch", "report.md", "stdout.log", "stderr.log",
                "artifacts/plan.md", "artifacts/report.md",
            ]  # fmt: skip
            plan = b.get(f"/api/v1/runs/{run_id}/artifacts/artifacts/plan.md")
            assert plan.text == "the plan\n"
            assert b.get(f"/api/v1/runs/{run_id}/artifacts/report.md").text == "the report\n"
            diff = b.get(f"/api/v1/runs/{run_id}/artifacts/diff.patch").text
            assert "-hello\n+changed\n" in diff
            approved = b.post(  # someone who is not its author: the organisation admin
                f"/api/v1/reviews/{run_id}/approve", json={},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            )  # fmt: skip
            assert approved.json()["passed"] is True, approved.text
            delivered = b.post(f"/api/v1/runs/{run_id}/deliver", json={"patch": True})
            assert delivered.status_code == 200, delivered.text
            assert delivered.json()["patch"] == diff
    finally:
        stop_server(runner)
        stop_server(reader)
