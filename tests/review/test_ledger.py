"""The autonomy ledger's counts equal the actions actually taken in a scripted fleet.

Six runs of two agents for two owners: one delivered with only the final approval (the
autonomous one), one commented on and then delivered, one with changes requested (its
follow-up delivered: still one run of the ledger, with its interventions), one rejected,
one cancelled, one left awaiting review. Every human action is taken through the API; the
ledger is read through the API and the CLI, grouped by team, agent and owner.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from click.testing import CliRunner

from corral.cli.review import ledger
from tests.runs.conftest import Runs, runs, shared_dir

__all__ = ["runs", "shared_dir"]  # the fixtures, shared with tests/runs

EDIT = ["sh", "-c", "echo changed > README"]
WAITS = ["sh", "-c", "sleep 30"]


def _post(runs: Runs, key: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with runs.api(key) as c:
        r = c.post(path, json=body or {})
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_the_ledger_counts_what_people_did(runs: Runs) -> None:
    admin = runs.corral.admin_key
    bob = runs.identity.create_user("bob", runs.team_id)
    _, bob_key = runs.identity.create_key(runs.team_id, bob.id)
    taken: Counter[str] = Counter()

    def act(key: str, run_id: str, path: str, body: dict[str, Any] | None = None) -> Any:
        taken[path.split("/")[-1]] += 1
        return _post(runs, key, f"/api/v1/reviews/{run_id}/{path}", body)

    def deliver(run_id: str) -> None:
        taken["deliver"] += 1
        _post(runs, runs.key, f"/api/v1/runs/{run_id}/deliver", {"patch": True})

    submitted = {
        name: runs.submit(command=EDIT, **extra)["id"]
        for name, extra in (
            ("autonomous", {}), ("commented", {}), ("changed", {}), ("rejected", {}),
            ("waiting", {}),
        )
    }  # fmt: skip
    cancelled = runs.submit(command=WAITS)["id"]
    for run_id in submitted.values():
        assert runs.wait(run_id)["state"] == "awaiting_review"

    act(admin, submitted["autonomous"], "approve")
    deliver(submitted["autonomous"])

    act(bob_key, submitted["commented"], "comments", {"text": "nit: wording"})
    act(admin, submitted["commented"], "approve")
    deliver(submitted["commented"])

    act(bob_key, submitted["changed"], "approve")  # dismissed by the new revision
    follow = act(bob_key, submitted["changed"], "request-changes", {"comment": "again"})
    follow_id = follow["follow_up"]
    assert runs.wait(follow_id)["state"] == "awaiting_review"
    act(admin, follow_id, "approve")
    deliver(follow_id)

    act(bob_key, submitted["rejected"], "reject", {"comment": "no"})

    taken["cancel"] += 1
    _post(runs, runs.key, f"/api/v1/runs/{cancelled}/cancel")
    runs.wait(cancelled, leave=("queued", "admitted", "running"))

    with runs.api(admin) as c:
        found = c.get("/api/v1/ledger", params={"by": "team,agent"}).json()
    (row,) = found["rows"]
    assert row["group"] == {"team": "payments", "agent": "command"}
    assert row["runs"] == 6  # the follow-up counts with the run whose review it continues
    assert row["delivered"] == 3
    assert row["autonomous"] == 1  # delivered with the final approval and nothing else
    assert row["autonomy_rate"] == round(1 / 3, 4)
    names = {"approve": "approve", "comments": "comment", "request-changes": "request_changes",
             "reject": "reject", "deliver": "deliver", "cancel": "cancel"}  # fmt: skip
    assert row["actions"] == {names[k]: v for k, v in taken.items() if v}
    # interventions: every action but the final approvals and the deliveries
    final_approvals = 3
    interventions = sum(taken.values()) - taken["deliver"] - final_approvals
    assert row["interventions"] == interventions
    assert row["interventions_per_run"] == round(interventions / 6, 4)

    with runs.api(admin) as c:
        by_owner = c.get("/api/v1/ledger", params={"by": "owner"}).json()["rows"]
    assert [(r["group"]["owner"], r["runs"]) for r in by_owner] == [("ada", 6)]
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    with runs.api(admin) as c:
        later = c.get("/api/v1/ledger", params={"since": since}).json()["rows"]
    assert later == []
    cli = CliRunner().invoke(
        ledger, ["--by", "team,agent", "--json"],
        env={"CORRAL_URL": runs.corral.url, "CORRAL_KEY": admin},
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["rows"] == found["rows"]
    with runs.api() as c:  # a person of the team reads its ledger; not with a run key
        assert c.get("/api/v1/ledger").json()["rows"][0]["runs"] == 6
