"""`make run` (``python -m corral.demo``) on a host that cannot sandbox runs says what to
install for the full demo, rather than a flag `make run` cannot take."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from corral.demo import missing_for_runs, runs_advice
from tests.conftest import ADMIN_KEY
from tests.services import free_port


def test_without_bubblewrap_the_demo_says_what_to_install(tmp_path: Path) -> None:
    """The demo, started as `make run` starts it but looking for a bubblewrap that does not
    exist, serves its fleet, submits no run, and says how to get the runs."""
    port, sim_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CORRAL_HOME": str(tmp_path / "corral"),
        "CORRAL_PORT": str(port),
        "CORRAL_SIM_PORT": str(sim_port),
        "CORRAL_ADMIN_KEY": ADMIN_KEY,
    }
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "corral.demo", "--bwrap", str(tmp_path / "no-bwrap")],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Dashboard" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        runs = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/runs",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert runs.json()["runs"] == []
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(timeout=30)
    said = " ".join(log.read_text().split())  # rich wraps lines
    assert f"bubblewrap ({tmp_path / 'no-bwrap'}) is not installed" in said, said
    assert "apt-get install bubblewrap" in said
    assert "then `make run` also runs the reference agent" in said
    assert "--unsafe-no-sandbox" not in said


def test_the_advice_names_root_when_the_demo_is_not_root() -> None:
    """Bubblewrap alone is not enough: a run drops to a uid of its own and gets cgroup
    limits, which takes root; found bubblewrap and root, nothing is missing."""
    missing = missing_for_runs("/nonexistent/bwrap", 1000)
    assert [what for what, _ in missing] == [
        "bubblewrap (/nonexistent/bwrap) is not installed",
        "the demo does not run as root",
    ]
    assert "sudo make run" in runs_advice(missing)
    assert missing_for_runs(sys.executable, 0) == []
