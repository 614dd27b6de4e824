"""Review gates end to end: real runs in the sandbox on a repository with a CODEOWNERS file,
reviewed over the API (and the CLI) by the people of a live Corral.

Who approves: the run's requester owns every path and still needs another owner; the run's
own key, and any run's key, are refused by every approve route; a team owner is satisfied
by any member. Delivery is refused (409, naming what is missing) until the gate passes.
Request changes: a follow-up run continues the change, its diff replaces it, the approvals
given are dismissed, and the history keeps both revisions.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corral.cli.review import review as review_cli
from tests.review import live
from tests.runs.conftest import Runs, make_repo, shared_dir, start_runs

__all__ = ["shared_dir"]  # the fixture, shared with tests/runs

CODEOWNERS = """\
# everything: ada and bob
*           @ada @bob
/docs/      @org/docs
!secret.txt @ada
/legal/     @nobody
"""


@pytest.fixture
def gated(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    repo = make_repo(
        shared_dir / "repo",
        {"README": "hello\n", "calc.py": "def add(a, b):\n    return a - b\n"},
    )
    (repo / ".github").mkdir()
    (repo / ".github" / "CODEOWNERS").write_text(CODEOWNERS)
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("# guide\n")
    git = ["git", "-C", str(repo), "-c", "user.name=ada", "-c", "user.email=ada@example.com"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "owners"], check=True)
    with start_runs(shared_dir, tmp_path, repo) as live:
        yield live


def _person(runs: Runs, name: str, team: str | None = None) -> tuple[str, str]:
    """A person in ``team`` (default: payments) and their key."""
    team_id = runs.team_id if team is None else runs.identity.create_team(team).id
    user = runs.identity.create_user(name, team_id)
    _, key = runs.identity.create_key(team_id, user.id, name=f"{name}-laptop")
    return user.id, key


def _post(runs: Runs, key: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with runs.api(key) as c:
        return c.post(f"/api/v1/reviews/{path}", json=body or {})


def test_the_requester_who_owns_every_path_still_needs_another_owner(gated: Runs) -> None:
    """ada asks for the run and owns every path: her approval is recorded but does not
    count; bob (the other owner of ``*``) approves and the gate passes; delivery was refused
    until then, naming what was missing."""
    runs = gated
    bob, bob_key = _person(runs, "bob")
    run = runs.submit(command=["sh", "-c", "echo fixed > README"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    review = live.review(runs, run["id"])
    assert review["state"] == "open"
    assert review["owners"] == [{"path": "README", "owners": ["@ada", "@bob"], "approved_by": []}]
    assert "README needs an approval from one of @ada, @bob" in review["missing"]

    mine = _post(runs, runs.key, f"{run['id']}/approve", {"comment": "lgtm (mine)"})
    assert mine.status_code == 200, mine.text
    assert mine.json()["passed"] is False
    assert mine.json()["authors_approved"] == [f"user:{runs.user_id}"]
    assert [a["action"] for a in mine.json()["actions"]] == ["approve"]
    assert mine.json()["approvals"] == 0
    with runs.api() as c:
        refused = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"patch": True})
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "cannot be delivered until its review gate passes" in message
    assert "README needs an approval from one of @ada, @bob" in message

    theirs = _post(runs, bob_key, f"{run['id']}/approve")
    assert theirs.status_code == 200, theirs.text
    done = theirs.json()
    assert (done["passed"], done["state"], done["approvals"]) == (True, "approved", 1)
    assert done["owners"][0]["approved_by"] == [f"user:{bob}"]
    assert runs.get(run["id"])["state"] == "approved"
    with runs.api() as c:
        delivered = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"patch": True})
    assert delivered.status_code == 200, delivered.text
    assert "+fixed" in delivered.json()["patch"]


RUN_KEY_WAITS = """
import os, pathlib, time
pathlib.Path("/artifacts/key").write_text(os.environ["OPENAI_API_KEY"])
pathlib.Path("README").write_text("fixed\\n")
for _ in range(600):
    if pathlib.Path("/scratch/go").exists():
        break
    time.sleep(0.05)
"""


def test_a_runs_key_is_refused_by_every_approve_route(gated: Runs) -> None:
    """While the run runs, its own key may not approve it (nor reject, comment or request
    changes), over the API and the CLI; nor may any run's key approve another run; once
    the run ended its key is revoked."""
    runs = gated
    first = runs.submit(command=["sh", "-c", "echo one > README"])
    assert runs.wait(first["id"])["state"] == "awaiting_review"
    run = runs.submit(command=["/usr/bin/python3", "-c", RUN_KEY_WAITS])
    key_file = runs.dir / "runs" / run["id"] / "artifacts" / "key"  # the live folder
    deadline = time.monotonic() + 60
    while not key_file.exists():
        assert time.monotonic() < deadline, runs.get(run["id"])
        time.sleep(0.05)
    run_key = key_file.read_text()
    for target in (run["id"], first["id"]):
        for path, body in (
            ("approve", {}), ("reject", {}), ("comments", {"text": "fine"}),
            ("request-changes", {"comment": "redo"}),
        ):  # fmt: skip
            r = _post(runs, run_key, f"{target}/{path}", body)
            assert r.status_code == 403, (path, r.text)
            assert "a run's key may not" in r.json()["error"]["message"]
    cli = subprocess.run(
        [str(Path(".venv/bin/corral").resolve()), "review", "approve", first["id"]],
        env={"CORRAL_URL": runs.corral.url, "CORRAL_KEY": run_key, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode != 0
    assert "a run's key may not approve" in cli.stderr
    (runs.dir / "runs" / run["id"] / "scratch" / "go").write_text("")
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    after = _post(runs, run_key, f"{run['id']}/approve")
    assert after.status_code == 401  # its key is gone with its run
    assert live.review(runs, first["id"])["approvals"] == 0


FIX_AGAIN = """
import os, pathlib
task = os.environ.get("CORRAL_TASK", "")
calc = pathlib.Path("calc.py")
if "Make these changes" in task:
    calc.write_text(calc.read_text() + "\\n\\ndef sub(a, b):\\n    return a - b\\n")
    print("added sub as asked")
else:
    calc.write_text(calc.read_text().replace("a - b", "a + b"))
    print("fixed add")
"""


def test_request_changes_continues_the_change_and_dismisses_approvals(gated: Runs) -> None:
    """bob approves, then carol asks for changes with a line comment: a follow-up run
    starts from the change (the fix is there), its diff (fix + the asked change) replaces
    the change under review, bob's approval is dismissed, the first run is rejected as
    superseded, and the review's history keeps both revisions and their diffs."""
    runs = gated
    bob, bob_key = _person(runs, "bob")
    _, carol_key = _person(runs, "carol")
    run = runs.submit(command=["/usr/bin/python3", "-c", FIX_AGAIN])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    assert _post(runs, bob_key, f"{run['id']}/approve").json()["approvals"] == 1
    commented = _post(runs, carol_key, f"{run['id']}/comments",
                      {"text": "add sub() too", "path": "calc.py", "line": 2})  # fmt: skip
    assert commented.status_code == 200, commented.text
    elsewhere = _post(runs, carol_key, f"{run['id']}/comments",
                      {"text": "?", "path": "nope.py", "line": 1})  # fmt: skip
    assert elsewhere.status_code == 400
    assert "not a path this change touches" in elsewhere.json()["error"]["message"]
    asked = _post(runs, carol_key, f"{run['id']}/request-changes", {"comment": "add sub()"})
    assert asked.status_code == 201, asked.text
    follow = asked.json()["follow_up"]
    assert asked.json()["review"]["state"] == "changes_requested"
    assert "is making them" in asked.json()["review"]["missing"][-1]
    with runs.api() as c:
        blocked = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"patch": True})
    assert blocked.status_code == 409

    second = runs.wait(follow)
    assert second["state"] == "awaiting_review", second
    assert second["handoff_from"] == run["id"]
    assert "add sub()" in second["task"]
    assert "- calc.py:2: add sub() too" in second["task"]  # the line comment handed over
    review = live.review(runs, follow)
    assert (review["id"], review["run_id"], review["revision"]) == (run["id"], follow, 2)
    assert review["approvals"] == 0
    approvals = [a for a in review["actions"] if a["action"] == "approve"]
    assert [(a["actor"], a["dismissed"], a["revision"]) for a in approvals] == [
        (f"user:{bob}", True, 1)
    ]
    assert [r["run_id"] for r in review["revisions"]] == [run["id"], follow]
    assert runs.get(run["id"])["state"] == "rejected"
    assert "superseded by run " + follow in runs.get(run["id"])["reason"]
    patch = review["diff"]
    assert "+    return a + b" in patch
    assert "+def sub(a, b):" in patch
    first_patch = runs.artifact(run["id"], "diff.patch")
    assert "+def sub" not in first_patch
    assert "+    return a + b" in first_patch
    assert review["revisions"][0]["diff"]["files"] == 1, review["revisions"]
    # the superseded run is not delivered, nor approved
    stale = _post(runs, bob_key, f"{run['id']}/approve")
    assert stale.status_code == 409
    assert f"superseded by run {follow}" in stale.json()["error"]["message"]
    assert _post(runs, bob_key, f"{follow}/approve").json()["passed"] is True
    with runs.api() as c:
        done = c.post(f"/api/v1/runs/{follow}/deliver", json={"patch": True})
    assert done.status_code == 200, done.text


def test_a_team_owner_from_another_team_reviews_and_problems_are_reported(gated: Runs) -> None:
    """docs/ is owned by the team docs (another team): the last matching pattern wins over
    ``*``, any member of docs may see the review and approve it, and that approval satisfies
    the owner and counts; the file's syntax error and unknown owner are on the review with
    their lines; the CLI shows it all."""
    runs = gated
    _person(runs, "bob")
    dora, dora_key = _person(runs, "dora", team="docs")
    _, eve_key = _person(runs, "eve", team="search")
    run = runs.submit(command=["sh", "-c", "echo more >> docs/guide.md"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    review = live.review(runs, run["id"], dora_key)  # a code owner of another team sees it
    assert review["owners"] == [
        {"path": "docs/guide.md", "owners": ["@org/docs"], "approved_by": []}
    ]
    problems = {(p["line"], p["kind"]) for p in review["codeowners"]["problems"]}
    assert problems == {(4, "syntax"), (5, "unknown_owner")}
    unknown = next(p for p in review["codeowners"]["problems"] if p["kind"] == "unknown_owner")
    assert unknown["owner"] == "@nobody"
    with runs.api(eve_key) as c:  # neither the team's nor an owner: not hers to see
        assert c.get(f"/api/v1/reviews/{run['id']}").status_code == 404
    asked = _post(runs, dora_key, f"{run['id']}/request-changes", {"comment": "more"})
    assert asked.status_code == 403  # another team's owner comments; it does not spend theirs
    assert "only the run's own team" in asked.json()["error"]["message"]
    done = _post(runs, dora_key, f"{run['id']}/approve").json()
    assert done["passed"] is True, done["missing"]
    assert done["owners"][0]["approved_by"] == [f"user:{dora}"]

    env = {"CORRAL_URL": runs.corral.url, "CORRAL_KEY": runs.key}
    shown = CliRunner().invoke(review_cli, ["show", run["id"], "--no-diff"], env=env)
    assert shown.exit_code == 0, shown.output
    for text in ("The gate passes", "docs/guide.md", "@org/docs", "unknown owner", "Checks"):
        assert text in shown.stdout, shown.stdout
    listed = CliRunner().invoke(review_cli, ["list", "--json"], env=env)
    assert [r["run_id"] for r in json.loads(listed.stdout)["reviews"]] == [run["id"]]
