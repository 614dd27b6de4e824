"""Acceptance 1: the reference agent, driven by a scripted model, fixes a failing test in
the sample repository inside the sandbox; the run ends awaiting review with a diff that makes
the test pass, a report, and a trajectory attributed to the run, its owner and its team."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from sqlalchemy import select

from corral.runs import sample
from corral.store.schema import spans
from corral.traces.spans import run_trace
from tests.runs.conftest import Runs


def test_the_reference_agent_fixes_a_failing_test_in_the_sandbox(runs: Runs) -> None:
    """Submit → awaiting review; the diff makes the test pass on the base; every LLM and
    tool call of the trajectory carries the run, its owner and its team."""
    repo = sample.make_repo(runs.dir / "calc")
    failing = subprocess.run(["python3", "test_calc.py"], cwd=repo, capture_output=True)
    assert failing.returncode != 0
    run = runs.submit(
        agent="corral",
        repo=str(repo),
        task="Fix the failing test in test_calc.py",
        model="sim-standard",
    )
    done = runs.wait(run["id"])
    assert done["state"] == "awaiting_review", done
    assert done["reason"] == "the agent finished: 1 file changed"

    patch = runs.artifact(run["id"], "diff.patch")
    assert "+    return a + b" in patch
    check = runs.dir / "check"
    subprocess.run(["git", "clone", "-q", str(repo), str(check)], check=True)
    subprocess.run(["git", "-C", str(check), "apply"], input=patch.encode(), check=True)
    passing = subprocess.run(["python3", "test_calc.py"], cwd=check, capture_output=True, text=True)
    assert passing.returncode == 0, passing.stderr
    assert "all tests pass" in passing.stdout

    report = runs.artifact(run["id"], "report.md")
    assert "completed" in report.lower()
    assert "Fixed add() in calc.py" in report
    assert "calc.py" in report

    rows = _trajectory(runs, run["id"])
    trace_id, root = run_trace(run["id"])
    kinds = [r.kind for r in rows]
    assert kinds.count("run") == 1
    assert kinds.count("tool") == 5  # run, read_file, search, edit_file, run
    gateway = [r for r in rows if r.kind == "llm_request" and r.source == "gateway"]
    agent_chats = [r for r in rows if r.kind == "llm_request" and r.source == "corral-agent"]
    assert len(gateway) == 5
    assert len(agent_chats) == 5
    assert {r.duplicate_of for r in agent_chats} == {r.span_id for r in gateway}
    (agent,) = [r for r in rows if r.kind == "agent"]
    assert agent.parent_span_id == root
    identity = (runs.team_id, runs.user_id, run["id"])
    for row in rows:
        assert row.trace_id == trace_id
        assert (row.team_id, row.owner_id, row.run_id) == identity, row
    with runs.api() as c:
        tree = c.get(f"/api/v1/traces/{trace_id}")
    assert tree.status_code == 200, tree.text
    assert runs.get(run["id"])["llm_calls"] == 5


def _trajectory(runs: Runs, run_id: str) -> list[Any]:
    """The run's stored spans, once the agent's own have arrived (bounded wait)."""
    deadline = time.monotonic() + 20
    while True:
        with runs.corral.app.store.connect() as conn:
            rows = conn.execute(select(spans).where(spans.c.run_id == run_id)).all()
        kinds = [r.kind for r in rows]
        if ("agent" in kinds and "run" in kinds) or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.1)
