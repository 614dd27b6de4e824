"""`corral runs` driven through click against a live Corral whose local executor runs the
agents (the `command` profile, tiny shell commands) in the real bubblewrap sandbox.

These need root and bubblewrap, as the sandbox tests do; without them they skip, except
under CI=true where that is a failure.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from tests.conftest import NO_SIM, Corral, StartCorral
from tests.sandboxing import make_repo, need_sandbox, shared_folder

from corral.cli.review import review
from corral.cli.runs import runs
from corral.identity.service import IdentityService

FIX = "sh -c 'echo fixed > README; echo done; echo oops >&2'"


@pytest.fixture(autouse=True)
def _needs_bubblewrap_and_root() -> None:
    need_sandbox()


@dataclass
class Live:
    """A live Corral executing runs, a fixture repository, and ada's key in team payments."""

    corral: Corral
    repo: Path
    key: str

    def cli(self, *args: str, code: int = 0) -> Result:
        """Run ``corral runs ARGS`` with ada's key; the exit status must be ``code``."""
        env = {"CORRAL_URL": self.corral.url, "CORRAL_KEY": self.key}
        result = CliRunner().invoke(runs, list(args), env=env)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    def review(self, *args: str, code: int = 0) -> Result:
        """Run ``corral review ARGS`` with the organisation admin's key (not the author)."""
        env = {"CORRAL_URL": self.corral.url, "CORRAL_KEY": self.corral.admin_key}
        result = CliRunner().invoke(review, list(args), env=env)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        """Run with --json; the output must be JSON and nothing else."""
        return json.loads(self.cli(*args, "--json").stdout)

    def submit(self, command: str, *more: str, code: int = 0) -> Result:
        base = ["submit", "--agent", "command", "--repo", str(self.repo), "--task", "fix README"]
        return self.cli(*base, "--command", command, *more, code=code)

    def git(self, *args: str) -> str:
        found = subprocess.run(
            ["git", "-C", str(self.repo), *args], capture_output=True, text=True, check=True
        )
        return found.stdout


@pytest.fixture
def live(start_corral: StartCorral, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """Runs folder and repository under /var/tmp (mode 0711: the run's uid traverses it)."""
    with shared_folder("corral-cli-runs-") as root:
        repo = make_repo(root / "repo", {"README": "broken\n"})
        monkeypatch.chdir(root)
        settings = {"runs_dir": root / "runs", "run_grace": 2, "run_heartbeat_interval": 0.2}
        with start_corral(root / "home", f"sqlite:///{root / 'c.db'}", sim_url=NO_SIM,
                          **settings) as corral:  # fmt: skip
            identity = IdentityService(corral.app.store, corral.app.clock)
            team = identity.create_team("payments")
            ada = identity.create_user("ada", team.id)
            yield Live(corral, repo, identity.create_key(team.id, ada.id)[1])


def _until_state(live: Live, run_id: str, state: str) -> None:
    deadline = time.monotonic() + 20
    while live.json("show", run_id)["state"] != state:
        assert time.monotonic() < deadline, f"{run_id} never became {state}"
        time.sleep(0.1)


def test_a_run_is_submitted_waited_on_and_read_back(live: Live) -> None:
    """submit --wait prints only the id and exits 0; list, show, logs and artifacts read the
    run, its history, its output and its diff; --json is the API's answer."""
    done = live.cli("submit", "--agent", "command", "--repo", "repo", "--task", "fix README",
                    "--command", FIX, "--wait")  # fmt: skip
    run_id = done.stdout.strip()
    assert run_id.startswith("run_")
    assert done.stdout == run_id + "\n"
    assert "running: started command" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"{run_id} awaiting review: ")

    table = live.cli("list").stdout
    assert run_id in table
    assert "awaiting_review" in table
    [listed] = live.json("list", "--state", "awaiting_review")["runs"]
    assert listed["repo"] == str(live.repo)  # the relative --repo was made absolute
    assert live.json("list", "--state", "failed") == {"runs": []}

    shown = live.cli("show", run_id).stdout
    for text in [
        "queued → admitted",
        "running → awaiting_review",
        "sh -c 'echo fixed",
        f"corral trace {listed['trace_id']}",
        "diff.patch",
        "LLM calls  0, $0.0000",
    ]:
        assert text in shown, text  # fmt: skip
    as_json = live.json("show", run_id)
    api = live.corral.get(f"/api/v1/runs/{run_id}", live.key).json()
    assert as_json == {**api, "artifacts": as_json["artifacts"]}
    assert [e["to_state"] for e in api["events"]] == [
        "queued", "admitted", "running", "awaiting_review",
    ]  # fmt: skip

    assert live.cli("logs", run_id).stdout == "done\n"
    assert live.cli("logs", run_id, "--stderr").stdout == "oops\n"
    (piece,) = [json.loads(line) for line in live.cli("logs", run_id, "--json").stdout.splitlines()]
    assert piece == {
        "run": run_id, "stream": "stdout", "offset": 0, "next_offset": 5,
        "state": "awaiting_review", "text": "done\n",
    }  # fmt: skip
    names = [a["path"] for a in live.json("artifacts", run_id)["artifacts"]]
    assert {"diff.patch", "report.md", "stdout.log"} <= set(names)
    patch = live.cli("artifacts", run_id, "diff.patch").stdout
    assert "-broken\n+fixed" in patch
    live.cli("artifacts", run_id, "--out", "all")
    assert (live.repo.parent / "all" / "diff.patch").read_text() == patch


def test_delivery_as_a_branch_and_as_a_patch(live: Live) -> None:
    """deliver --branch makes the branch without touching the checkout; deliver --patch
    writes a patch that applies to the base."""
    first = live.submit(FIX, "--wait").stdout.strip()
    second = live.submit(FIX, "--wait").stdout.strip()
    gated = live.cli("deliver", first, "--branch", "fix-readme", code=1)
    assert "cannot be delivered until its review gate passes" in gated.stderr
    for run_id in (first, second):  # someone other than its author approves it
        live.review("approve", run_id, "--comment", "good")

    out = live.cli("deliver", first, "--branch", "fix-readme").stdout
    assert out.startswith(f"Delivered {first} as branch fix-readme (")
    assert live.git("status", "--porcelain") == ""
    assert (live.repo / "README").read_text() == "broken\n"
    assert live.git("show", "fix-readme:README") == "fixed\n"
    assert live.json("show", first)["state"] == "delivered"

    delivered = live.cli("deliver", second, "--patch", "fix.patch").stdout
    assert "as a patch" in delivered
    patch = live.repo.parent / "fix.patch"
    live.git("apply", "--check", str(patch))
    again = live.cli("deliver", second, "--patch", "-", code=1)
    assert "only a run awaiting review or approved can be delivered" in again.stderr


def test_a_long_run_is_cancelled_and_a_failing_one_exits_1(live: Live) -> None:
    """cancel stops a sleeping run within the grace; logs --follow prints a run's output as
    it comes until it ends; submit --wait of a failing run exits 1 saying why."""
    sleeper = live.submit("sleep 60").stdout.strip()
    _until_state(live, sleeper, "running")
    started = time.monotonic()
    out = live.cli("cancel", sleeper).stdout
    assert time.monotonic() - started < 2 + 3
    assert out.startswith(f"{sleeper} cancelled")
    assert live.json("show", sleeper)["state"] == "cancelled"

    slow = live.submit("sh -c 'echo one; sleep 1; echo two; exit 3'").stdout.strip()
    assert live.cli("logs", slow, "--follow").stdout == "one\ntwo\n"
    assert live.json("show", slow)["state"] == "failed"
    failed = live.submit("false", "--wait", code=1)
    assert failed.stderr.splitlines()[-1].startswith(f"{failed.stdout.strip()} failed")


def test_mistakes_give_one_clear_line(live: Live, tmp_path: Path) -> None:
    """Unknown profile, missing repository, unknown run: exit 1 and one line; two tasks or
    none, two delivery targets or none: click's usage error."""
    task_file = tmp_path / "task.md"
    task_file.write_text("fix it\n")
    base = ["submit", "--repo", str(live.repo)]
    for args, code, words in [
        ([*base, "--agent", "nope", "--task", "x"], 1, "unknown agent profile 'nope'"),
        (["submit", "--agent", "command", "--command", "true", "--task", "x", "--repo",
          "missing"], 1, "no such folder on the server"),
        ([*base, "--agent", "command", "--task", "x", "--task-file", str(task_file)], 2,
         "exactly one of --task TEXT or --task-file FILE"),
        ([*base, "--agent", "command"], 2, "exactly one of --task TEXT or --task-file FILE"),
        (["show", "run_nothere"], 1, "not found (HTTP 404"),
        (["deliver", "run_x", "--branch", "b", "--patch", "-"], 2, "exactly one of --branch"),
    ]:  # fmt: skip
        bad = live.cli(*args, code=code)
        assert words in bad.stderr, (args, bad.stderr)
        if code == 1:
            assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
