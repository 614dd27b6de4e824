"""Sequester, release and kill a live run, in the real sandbox (bubblewrap, cgroups).

The agent is the ``command`` profile running a Python busy loop that writes its progress to
a file in its workspace until a file appears in its scratch folder (the test makes it),
then writes its result and exits. The guards engine decides; here the tests call the
executor's ``*_local`` methods on the server's loop, or change the stored state as another
process would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.runs.conftest import Runs, make_repo, need_sandbox, start_runs

T = TypeVar("T")

AGENT = """
import os, sys
n = 0
while not os.path.exists("/scratch/finish"):
    n += 1
    if n % 2000 == 0:
        with open("/workspace/progress.txt", "w") as f:
            f.write(f"{n}\\n")
with open("/workspace/result.txt", "w") as f:
    f.write("finished\\n")
"""
CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")
INCIDENT = "incident inc_7: the same model request 12 times"


@pytest.fixture(autouse=True)
def _needs_the_freezer() -> None:
    need_sandbox()
    if not Path("/sys/fs/cgroup/freezer/cgroup.procs").exists():
        pytest.skip("this host has no freezer cgroup (v1)")


def agent(marker: str) -> list[str]:
    """The busy loop; ``marker`` on its command line finds its processes."""
    return ["/usr/bin/python3", "-c", AGENT, marker]


def on_loop(runs: Runs, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work()`` on the server's loop (where the executor lives) and return its result."""
    loop = runs.corral.server.loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(work(), loop).result(30)


def sequester(runs: Runs, run_id: str, reason: str = INCIDENT) -> bool:
    executor = runs.corral.app.executor
    return on_loop(runs, lambda: executor.sequester_local(run_id, "guards", reason))


def release(runs: Runs, run_id: str) -> bool:
    executor = runs.corral.app.executor
    return on_loop(runs, lambda: executor.release_local(run_id, "admin", "released: inc_7"))


def kill(runs: Runs, run_id: str, reason: str) -> bool:
    executor = runs.corral.app.executor

    async def work() -> bool:
        return executor.kill_local(run_id, "guards", reason)

    return on_loop(runs, work)


def cgroup(run_id: str, controller: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/corral-{run_id}")


def freezer_state(run_id: str) -> str:
    return (cgroup(run_id, "freezer") / "freezer.state").read_text().strip()


def cpu_seconds(run_id: str) -> float:
    return int((cgroup(run_id, "cpuacct") / "cpuacct.usage").read_text()) / 1e9


def until(check: Callable[[], object], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def start(runs: Runs, marker: str, **body: Any) -> str:
    """Submit the busy loop and wait until it has written its progress."""
    run_id = str(runs.submit(command=agent(marker), **body)["id"])
    progress = runs.dir / "runs" / run_id / "workspace" / "progress.txt"
    until(progress.exists, "the agent never wrote its progress")
    return run_id


def finish(runs: Runs, run_id: str) -> None:
    """Tell the agent to write its result and exit."""
    (runs.dir / "runs" / run_id / "scratch" / "finish").write_text("")


def processes(marker: str) -> int:
    """Processes on this host whose command line holds ``marker``."""
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and b"pytest" not in cmdline:
            found += 1
    return found


def artifacts(runs: Runs, run_id: str) -> list[str]:
    with runs.api() as c:
        r = c.get(f"/api/v1/runs/{run_id}/artifacts")
    assert r.status_code == 200, r.text
    return [a["path"] for a in r.json()["artifacts"]]


def test_a_sequestered_run_is_frozen_its_slot_freed_and_released_it_finishes(
    shared_dir: Path, tmp_path: Path
) -> None:
    """Sequestered: frozen (no CPU over a second, its process still there), stored
    sequestered by who and why, its change so far kept as a patch, and with one slot another
    run is admitted and finishes meanwhile. Released: it goes on and ends awaiting review
    with its change."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, run_slots=1) as runs:
        executor = runs.corral.app.executor
        run_id = start(runs, "seq-marker-4101")
        assert sequester(runs, run_id)
        assert freezer_state(run_id) == "FROZEN"
        before = cpu_seconds(run_id)
        time.sleep(1.0)
        assert cpu_seconds(run_id) - before < 0.01
        assert processes("seq-marker-4101") >= 1
        assert (executor.live, executor.sequestered) == (0, 1)
        run = runs.get(run_id)
        last = run["events"][-1]
        assert (run["state"], last["actor"], last["reason"]) == ("sequestered", "guards", INCIDENT)

        until(lambda: "sequestered/1.patch" in artifacts(runs, run_id), "no snapshot kept")
        assert "progress.txt" in runs.artifact(run_id, "sequestered/1.patch")

        other = runs.submit(command=["sh", "-c", "echo other > other.txt"])
        assert runs.wait(other["id"])["state"] == "awaiting_review"
        assert runs.get(run_id)["state"] == "sequestered"

        assert release(runs, run_id)
        assert freezer_state(run_id) == "THAWED"
        assert runs.get(run_id)["state"] == "running"
        assert executor.live == 1
        finish(runs, run_id)
        done = runs.wait(run_id, leave=("running",))
        assert done["state"] == "awaiting_review", done
        assert "result.txt" in runs.artifact(run_id, "diff.patch")
        assert [e["to_state"] for e in done["events"]][-4:] == [
            "running", "sequestered", "running", "awaiting_review",
        ]  # fmt: skip


def test_the_wall_clock_does_not_run_while_frozen(runs: Runs) -> None:
    """A run with a 3 s limit frozen for 4 s is still running a second after its release,
    and then fails on its limit: only the time it ran counts."""
    started = time.monotonic()
    run_id = start(runs, "seq-marker-4102", timeout="3s")
    assert sequester(runs, run_id)
    time.sleep(4.0)
    assert runs.get(run_id)["state"] == "sequestered"
    assert release(runs, run_id)
    released = time.monotonic()
    time.sleep(1.0)
    assert runs.get(run_id)["state"] == "running"
    done = runs.wait(run_id, leave=("running",))
    ended = time.monotonic()
    assert (done["state"], done["reason"]) == ("failed", "the wall-clock limit (3s) passed")
    assert ended - started > 3.0 + 4.0  # the frozen seconds did not count
    assert ended - released < 3.0 + 2.0  # the seconds it had left did


def test_killing_a_sequestered_run_fails_it_and_leaves_nothing(runs: Runs) -> None:
    """Kill of a frozen run: thawed to receive its signals, failed with the reason given, no
    process left, its cgroups removed, its snapshot kept."""
    run_id = start(runs, "seq-marker-4103")
    assert sequester(runs, run_id)
    assert kill(runs, run_id, "killed: incident inc_7 (by admin)")
    done = runs.wait(run_id, leave=("sequestered",))
    assert (done["state"], done["reason"]) == ("failed", "killed: incident inc_7 (by admin)")
    assert processes("seq-marker-4103") == 0
    assert not any(cgroup(run_id, c).exists() for c in CONTROLLERS)
    assert "sequestered/1.patch" in artifacts(runs, run_id)
    assert runs.corral.app.executor.sequestered == 0


def test_a_decision_stored_by_another_process_reaches_the_holder(runs: Runs) -> None:
    """Another process changes only the stored state: the holder freezes the run at its next
    heartbeat (and snapshots it), thaws it when stored running again, and stops it when
    stored failed, leaving the state as that process wrote it."""
    run_id = start(runs, "seq-marker-4104")
    store = runs.corral.app.runs
    executor = runs.corral.app.executor
    store.transition(run_id, "sequestered", actor="guards", reason=INCIDENT)
    until(lambda: freezer_state(run_id) == "FROZEN", "not frozen at the heartbeat", limit=2)
    assert executor.sequestered == 1
    until(lambda: "sequestered/1.patch" in artifacts(runs, run_id), "no snapshot kept")

    store.transition(run_id, "running", actor="admin", reason="released: inc_7")
    until(lambda: freezer_state(run_id) == "THAWED", "not thawed at the heartbeat", limit=2)
    assert executor.sequestered == 0

    store.transition(run_id, "sequestered", actor="guards", reason=INCIDENT)
    until(lambda: freezer_state(run_id) == "FROZEN", "not frozen again", limit=2)
    store.transition(run_id, "failed", actor="admin", reason="killed: inc_7")
    until(lambda: processes("seq-marker-4104") == 0, "the frozen run was not stopped")
    until(lambda: executor.sequestered == 0 and executor.live == 0, "still held")
    done = runs.get(run_id)
    assert (done["state"], done["reason"]) == ("failed", "killed: inc_7")
    assert "sequestered/2.patch" in artifacts(runs, run_id)


def test_a_sequestered_run_can_be_cancelled(runs: Runs) -> None:
    """Cancel (the API) stops a sequestered run like a live one."""
    run_id = start(runs, "seq-marker-4105")
    assert sequester(runs, run_id)
    with runs.api() as c:
        r = c.post(f"/api/v1/runs/{run_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled", r.json()
    assert processes("seq-marker-4105") == 0


def test_sequester_is_refused_where_it_cannot_apply(runs: Runs) -> None:
    """Not held here: False. Releasing a run that is not sequestered: Conflict (409)."""
    from corral.errors import Conflict

    assert not sequester(runs, "run_00000000000000000000")
    run_id = start(runs, "seq-marker-4106")
    with pytest.raises(Conflict, match="not sequestered"):
        release(runs, run_id)
    finish(runs, run_id)
    assert runs.wait(run_id)["state"] == "awaiting_review"


def test_stopping_the_server_leaves_no_process_of_a_sequestered_run(
    shared_dir: Path, tmp_path: Path
) -> None:
    """The server stops with a run frozen: the run is thawed, killed and failed, and no
    process or cgroup of it is left."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo) as runs:
        run_id = start(runs, "seq-marker-4107")
        assert sequester(runs, run_id)
        store = runs.corral.app.runs
    assert processes("seq-marker-4107") == 0
    assert not any(cgroup(run_id, c).exists() for c in CONTROLLERS)
    done = store.load(run_id)
    assert (done.state, done.reason) == ("failed", "the server stopped while the run was live")


def test_a_dead_servers_sequestered_run_is_killed_and_failed_by_the_next(
    shared_dir: Path,
) -> None:
    """SIGKILL the server holding a frozen run: its sandbox cannot die with it (a frozen
    process keeps even SIGKILL pending), so the next server's recovery thaws and kills what
    is left, removes its cgroups and fails the run, naming the state it was in."""
    from corral.identity.service import IdentityService
    from corral.runs.service import RunService
    from corral.settings import load_settings
    from corral.store import Store
    from tests.conftest import ADMIN_KEY
    from tests.gateway.serve import start_server, stop_server
    from tests.runs.test_restart import _Clock, _get, _port, _setup

    home = shared_dir / "home"
    key = _setup(home)
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    env = {
        "CORRAL_RUNS_DIR": str(shared_dir / "runs"),
        "CORRAL_RUN_HEARTBEAT_INTERVAL": "0.2",
        "CORRAL_RUN_GRACE": "2",
    }
    port = _port()
    url = f"http://127.0.0.1:{port}"
    store = Store(load_settings(home=home, admin_key=ADMIN_KEY).resolved_database_url)
    runs = RunService(store, _Clock(), IdentityService(store, _Clock()))
    server = start_server(home, port, **env)
    try:
        r = httpx.post(
            f"{url}/api/v1/runs", headers={"authorization": f"Bearer {key}"},
            json={"agent": "command", "repo": str(repo), "task": "t",
                  "command": agent("seq-marker-4108")},
        )  # fmt: skip
        run_id = r.json()["id"]
        until((shared_dir / "runs" / run_id / "workspace" / "progress.txt").exists, "no progress")
        runs.transition(run_id, "sequestered", actor="guards", reason=INCIDENT)
        until(lambda: freezer_state(run_id) == "FROZEN", "not frozen", limit=5)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        time.sleep(0.5)
        assert processes("seq-marker-4108") >= 1  # frozen: it outlives its server
    finally:
        stop_server(server)
    server = start_server(home, port, **env)
    try:
        failed = _get(url, key, run_id)
        assert failed["state"] == "failed", failed
        assert "ended while the run was sequestered" in str(failed["reason"])
        assert processes("seq-marker-4108") == 0
        assert not any(cgroup(run_id, c).exists() for c in CONTROLLERS)
    finally:
        stop_server(server)
        store.close()
