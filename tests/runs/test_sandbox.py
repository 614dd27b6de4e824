"""The run sandbox isolates, each guarantee tested against the real bubblewrap and kernel.

These need root (the sandbox drops to an unprivileged uid and makes cgroups) and
bubblewrap; without them they skip, except under CI=true where that is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.runs import Limits, Sandbox, probe
from tests.sandboxing import make_repo, need_sandbox, shared_folder


@pytest.fixture(autouse=True)
def _needs_bubblewrap_and_root() -> None:
    need_sandbox()


@pytest.fixture
def runs() -> Iterator[Path]:
    with shared_folder() as root:
        yield root


@pytest.fixture
def box(runs: Path) -> Sandbox:
    workspace, scratch = runs / "workspace", runs / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    (workspace / "README.md").write_text("the repo\n")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return Sandbox(workspace, scratch, limits=Limits(wall_seconds=30))


def sh(box: Sandbox, script: str) -> tuple[int, str]:
    result = box.run(["/bin/sh", "-c", script])
    return result.returncode, result.stdout + result.stderr


def test_the_probe_passes_on_this_host(runs: Path) -> None:
    """Start-up's check finds the isolation working (CI installs bubblewrap)."""
    found = probe(runs)
    assert found.ok, found.problems


def test_a_file_outside_the_workspace_cannot_be_read(box: Sandbox, tmp_path: Path) -> None:
    """A secret planted next to the workspace is not there inside; the workspace is."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    _, out = sh(box, f"cat {secret}; cat /root/.bashrc; cat /workspace/README.md")
    assert "s3cret" not in out
    assert "the repo" in out
    assert "No such file" in out


def test_nothing_outside_workspace_and_scratch_can_be_written(box: Sandbox) -> None:
    """Workspace and scratch take writes; the system, the root and .git do not."""
    script = (
        "echo a > /workspace/new.txt && echo WS_OK; echo b > /scratch/s && echo SCRATCH_OK; "
        "echo c > /tmp/t && echo TMP_OK; "
        "echo x > /usr/evil || echo USR_DENIED; echo x > /evil || echo ROOT_DENIED; "
        "echo x > /workspace/.git/HEAD || echo GIT_DENIED; "
        "echo x > /etc/passwd || echo ETC_DENIED"
    )
    _, out = sh(box, script)
    for marker in ("WS_OK", "SCRATCH_OK", "TMP_OK", "USR_DENIED", "ROOT_DENIED", "GIT_DENIED"):
        assert marker in out, out
    assert "ETC_DENIED" in out
    assert (box.workspace / "new.txt").read_text() == "a\n"
    assert (box.workspace / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert not Path("/usr/evil").exists()


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers anyone who connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.sendall(b"HOST-SECRET\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_a_host_loopback_server_cannot_be_reached(box: Sandbox, host_server: int) -> None:
    """The sandbox's loopback is its own: the host's port answers outside, not inside."""
    with socket.create_connection(("127.0.0.1", host_server), timeout=2) as outside:
        assert outside.recv(64) == b"HOST-SECRET\n"
    script = (
        "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', "
        f'{host_server}), timeout=2); print(s.recv(64))" || echo UNREACHABLE'
    )
    _, out = sh(box, script)
    assert "HOST-SECRET" not in out
    assert "UNREACHABLE" in out


def test_host_processes_are_invisible(box: Sandbox) -> None:
    """Only the sandbox's own processes are in its /proc; the test's pid is not."""
    _, out = sh(box, "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '")
    pids = {int(p) for p in out.split()}
    assert os.getpid() not in pids
    assert max(pids) < 20, pids


def test_the_environment_is_only_what_the_profile_sets(box: Sandbox) -> None:
    """No host variable leaks; the profile's do."""
    os.environ["CORRAL_TEST_HOST_SECRET"] = "leak"
    try:
        env_box = Sandbox(box.workspace, box.scratch, env={"AGENT_MODEL": "sim-standard"})
        _, out = sh(env_box, "env")
    finally:
        del os.environ["CORRAL_TEST_HOST_SECRET"]
    assert "leak" not in out
    assert "AGENT_MODEL=sim-standard" in out


def test_memory_limit_stops_a_hog(box: Sandbox) -> None:
    """A process allocating past the run's memory is killed or refused."""
    tight = Sandbox(box.workspace, box.scratch, limits=Limits(memory_bytes=64 * 1024**2))
    code, out = sh(tight, "python3 -c \"b = bytearray(512 * 1024 * 1024); print('ALLOCATED')\"")
    assert "ALLOCATED" not in out
    assert code != 0


def test_process_limit_stops_a_fork_bomb(box: Sandbox) -> None:
    """Forks past the run's process count fail (the shell gives up), and the run ends."""
    tight = Sandbox(box.workspace, box.scratch, limits=Limits(processes=16))
    started = time.monotonic()
    code, out = sh(tight, "for i in $(seq 40); do sleep 30 & done; echo ALL_FORKED")
    assert "cannot fork" in out.lower(), out
    assert "ALL_FORKED" not in out
    assert code != 0
    assert time.monotonic() - started < 20, "the sleeps died with the sandbox"


def test_wall_clock_limit_kills_the_whole_tree(box: Sandbox) -> None:
    """Past the wall clock the run is stopped, children included, within the grace."""
    slow = Sandbox(box.workspace, box.scratch, limits=Limits(wall_seconds=1.0))
    started = time.monotonic()
    result = slow.run(["/bin/sh", "-c", "sleep 60 & sleep 60; echo NEVER"], grace=2.0)
    assert time.monotonic() - started < 8
    assert result.returncode != 0
    assert "NEVER" not in result.stdout


def test_an_agent_edits_its_workspace_and_the_diff_shows_it(runs: Path, tmp_path: Path) -> None:
    """A clone handed to the run's uid is editable inside; .git is not; the patch is right."""
    from corral.runs.workspace import diff, hand_over, prepare

    source = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a - b\n"})
    ws = prepare(str(source), None, runs / "runs", "run_edit")
    hand_over(ws, 65534)
    box = Sandbox(ws.path, ws.scratch)
    script = (
        "sed -i 's/a - b/a + b/' calc.py && echo EDITED; "
        "echo x > .git/HEAD || echo GIT_DENIED; git --version >/dev/null 2>&1; true"
    )
    _, out = sh(box, script)
    assert "EDITED" in out, out
    assert "GIT_DENIED" in out
    patch = diff(ws)
    assert "+    return a + b" in patch


def test_runs_are_refused_where_the_sandbox_cannot_start(runs: Path) -> None:
    """No bubblewrap: the refusal says why and what to install."""
    from corral.errors import ConfigError
    from corral.runs import require

    require(runs)  # this host isolates
    with pytest.raises(ConfigError, match="corral-no-such-bwrap is not installed"):
        require(runs, bwrap="corral-no-such-bwrap")
