"""Reviewer agents on the simulator, and the evidence check of a real trajectory.

The reference agent fixes the sample repository's failing test (a scripted model); two
reviewer agents review the change, each a run of its own under its own service account: a
code reviewer that approves, and a code-owner agent (CODEOWNERS names its account for
calc.py) that asks for changes. Their calls and cost are on the review, not the writer's
run; "changes requested" holds delivery and hands the comments to a follow-up run. The
writer's report claims the tests pass: its own trajectory supports it, with the span ids.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.runs import sample
from tests.review import live
from tests.runs.conftest import Runs, shared_dir, start_runs

__all__ = ["shared_dir"]  # the fixture, shared with tests/runs

REVIEWERS_SCRIPT = """
[[conversations]]
name = "code-review"
match = "(?i)^you are code-review, a reviewer agent"

[[conversations.turns]]
text = "Reading the change."
tool_calls = [{ name = "run", arguments = { command = "git diff --stat" } }]

[[conversations.turns]]
text = "The fix is right and small.\\nVERDICT: approve"

[[conversations]]
name = "owners"
match = "(?i)^you are owners, a reviewer agent"

[[conversations.turns]]
text = "calc.py:2: say why add() was wrong in a comment\\nVERDICT: changes_requested"
"""

CODEOWNERS = "*  @bob\ncalc.py  @reviewer-owners @bob\n"


@pytest.fixture
def reviewed(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    repo = sample.make_repo(shared_dir / "calc")
    (repo / "CODEOWNERS").write_text(CODEOWNERS)
    git = ["git", "-C", str(repo), "-c", "user.name=ada", "-c", "user.email=ada@example.com"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "owners"], check=True)
    script = tmp_path / "script.toml"
    script.write_text(REVIEWERS_SCRIPT + "\n" + sample.SCRIPT.read_text())
    review = {
        "interval": 0.2,
        "reviewers": [
            {"name": "code-review", "model": "sim-standard"},
            {"name": "owners", "reviews": "owned", "model": "sim-standard", "budget_usd": 2.0},
        ],
    }
    with start_runs(shared_dir, tmp_path, repo, sim_script=script, review=review) as live:
        live.identity.create_user("bob", live.team_id)
        yield live


def test_two_reviewer_agents_review_as_their_own_identities(reviewed: Runs) -> None:
    runs = reviewed
    run = runs.submit(agent="corral", task="Fix the failing test in test_calc.py",
                      model="sim-standard")  # fmt: skip
    writer = runs.wait(run["id"])
    assert writer["state"] == "awaiting_review", writer
    writer_calls = writer["llm_calls"]

    def finished(review: dict[str, Any]) -> bool:
        verdicts = {v["reviewer"]: v["verdict"] for v in review["reviewers"]}
        return len(verdicts) == 2 and "pending" not in verdicts.values()

    review = live.until(runs, run["id"], finished)
    by = {v["reviewer"]: v for v in review["reviewers"]}
    assert by["code-review"]["verdict"] == "approve"
    assert by["owners"]["verdict"] == "changes_requested"
    assert by["owners"]["comments"] == [
        {"path": "calc.py", "line": 2, "text": "say why add() was wrong in a comment"}
    ]
    assert (by["code-review"]["identity"], by["owners"]["identity"]) == (
        "reviewer-code-review", "reviewer-owners",
    )  # fmt: skip
    for verdict in by.values():  # each its own run, as its own service account
        with runs.api(runs.corral.admin_key) as c:  # not ada's: she neither asked nor owns it
            reviewer_run = c.get(f"/api/v1/runs/{verdict['run_id']}").json()
        assert reviewer_run["owner"] == verdict["identity"]
        assert reviewer_run["requester"] is None
        assert verdict["llm_calls"] >= 1
        assert verdict["cost_usd"] > 0
        assert reviewer_run["cost_usd"] == pytest.approx(verdict["cost_usd"])
    assert review["reviewers_cost_usd"] == pytest.approx(
        by["code-review"]["cost_usd"] + by["owners"]["cost_usd"]
    )
    accounts = {u.name: u for u in runs.identity.list_users(team_id=runs.team_id)}
    assert accounts["reviewer-owners"].kind == accounts["reviewer-code-review"].kind == "service"
    assert runs.get(run["id"])["llm_calls"] == writer_calls  # never metered to the writer

    assert review["passed"] is False
    assert any("owners requested changes" in m or "is making them" in m
               for m in review["missing"])  # fmt: skip
    with runs.api() as c:
        refused = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"patch": True})
    assert refused.status_code == 409
    # the owner agent's comments went to a follow-up run continuing the change
    review = live.until(runs, run["id"], lambda r: r["pending_run"] or r["revision"] > 1)
    follow = review["pending_run"] or review["run_id"]
    task = runs.get(follow)["task"]
    assert "calc.py:2: say why add() was wrong in a comment (owners)" in task


def test_the_evidence_check_reads_the_writers_trajectory(reviewed: Runs) -> None:
    """The reference agent's report says `python3 test_calc.py` passes; its trajectory ran
    that command after its last edit and it passed: supported, with the span id; the
    "tests after the last edit" check passes on the same span."""
    runs = reviewed
    run = runs.submit(agent="corral", task="Fix the failing test in test_calc.py",
                      model="sim-standard")  # fmt: skip
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    review = live.until(runs, run["id"], lambda r: r["evidence"].get("steps", 0) >= 4)
    proof = review["evidence"]
    assert proof["trajectory"] is True
    claims = {c["kind"]: c for c in proof["claims"]}
    assert claims["tests_pass"]["verdict"] == "supported", claims["tests_pass"]["reason"]
    assert len(claims["tests_pass"]["span_ids"]) >= 1
    tests = next(c for c in review["checks"] if c["name"] == "tests_after_edit")
    assert tests["passed"] is True, tests
    assert tests["span_ids"] == claims["tests_pass"]["span_ids"][-1:]
