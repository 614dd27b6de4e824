"""Managed runs keep their secrets and the host's privacy, through the executor: no other
local user finds a live run's key on a command line, and a Corral whose home sits in a
private folder (a 0700 home such as /root) runs agents from its default runs folder, which
stays Corral's alone."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from corral.runs import sample
from tests.runs.conftest import Runs, make_repo, start_runs
from tests.sandboxing import as_another_user


def test_no_command_line_shows_a_live_runs_key(runs: Runs) -> None:
    """While a run is live, another local user reads every process's command line (and
    tries every environment): the run's key is in none of them, the relay's included."""
    run = runs.submit(command=["sh", "-c", 'echo "$OPENAI_API_KEY" > /artifacts/key; sleep 30'])
    written = runs.dir / "runs" / run["id"] / "artifacts" / "key"
    deadline = time.monotonic() + 30
    while not (written.exists() and written.read_text().strip()):
        assert time.monotonic() < deadline, runs.get(run["id"])
        time.sleep(0.05)
    key = written.read_text().strip()
    try:
        assert runs.get(run["id"])["state"] == "running"
        found = as_another_user("grep -lsF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ", key)
    finally:
        with runs.api() as c:
            c.post(f"/api/v1/runs/{run['id']}/cancel")
    assert len(key) > 20
    assert found == ""


def test_a_home_in_a_private_folder_runs_agents_from_its_default_runs_folder(
    tmp_path: Path,
) -> None:
    """$CORRAL_HOME under a 0700 folder (pytest's, as /root is), runs_dir not set: runs are
    not refused, the reference agent (Corral's own Python, wherever it is installed) fixes
    the sample repository, and the runs folder is private to Corral."""
    assert any(not p.stat().st_mode & stat.S_IXOTH for p in tmp_path.parents)  # closed
    placeholder = make_repo(tmp_path / "placeholder", {"README": "hello\n"})
    with start_runs(tmp_path, tmp_path, placeholder, runs_dir=None) as live:
        folder = live.corral.app.executor.dir
        assert folder == (tmp_path / "home" / "runs").resolve()
        repo = sample.make_repo(tmp_path / "calc")
        run = live.submit(
            agent="corral", repo=str(repo), task="Fix the failing test in test_calc.py",
            model="sim-standard",
        )  # fmt: skip
        done = live.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        assert "+    return a + b" in live.artifact(run["id"], "diff.patch")
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
