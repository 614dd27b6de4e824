"""A run never widens what the key that submits it may do: its models are the key's, its
owner is the key's user unless a team admin (or the organisation admin) names another, and
its key lives within the requester's key — charged to its budgets, revoked and expired with
it. Each test is an attack a person's key could make; on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.identity.keys import KeyInfo
from corral.identity.service import IdentityService
from corral.runs import sample
from corral.runs.service import RunRequest
from corral.store.schema import keys
from tests.conftest import run_corral
from tests.runs.conftest import QUICK, Runs, make_repo, need_sandbox
from tests.runs.test_runs import script


@dataclass
class Team:
    """Team payments: ada's key may call sim-economy only; bob is her teammate; lead holds
    the team's admin key. ``runs`` reads with the organisation admin key."""

    runs: Runs
    ada: str  # ada's key, limited to sim-economy
    ada_key_id: str
    bob_id: str
    lead: str  # the team admin key

    def post(self, key: str, **body: Any) -> httpx.Response:
        body = {"agent": "command", "repo": str(self.runs.repo), "task": "a run", **body}
        with self.runs.api(key) as c:
            return c.post("/api/v1/runs", json={"command": ["true"], **body})

    def key_info(self) -> KeyInfo:
        """ada's key as the API authenticated it (what ``RunService`` is handed)."""
        with self.runs.corral.app.store.connect() as conn:
            row = conn.execute(select(keys).where(keys.c.id == self.ada_key_id)).one()
        return KeyInfo.from_row(row)

    def queue(self, key: KeyInfo, body: str, models: list[str]) -> str:
        """Queue a run as ``key`` straight through the service (no API checks), as a run
        queued before submissions were checked, or before its key was revoked, would be."""
        app = self.runs.corral.app
        req = RunRequest(team=None, profile="command", repo=str(self.runs.repo), task="a run",
                         command=script(body), model=models[0])  # fmt: skip
        run = app.runs.new_run(
            req, key, source=str(self.runs.repo), model=models[0], allowed=models,
            timeout_s=60, sandbox=app.executor.sandbox_label,
        )  # fmt: skip
        return run.id


@contextlib.contextmanager
def _corral(store_url: str, home: Path, shared: Path) -> Iterator[Runs]:
    settings = {**QUICK, "runs_dir": shared / "runs", "sim_script": sample.SCRIPT}
    with run_corral(home, store_url, **settings) as corral:
        assert corral.app.executor.refusal is None, corral.app.executor.refusal
        identity = IdentityService(corral.app.store, corral.app.clock)
        yield Runs(corral, identity, corral.admin_key, "", "", shared / "repo", shared)


def _team(runs: Runs) -> Team:
    identity = runs.identity
    team = identity.create_team("payments")
    ada = identity.create_user("ada", team.id)
    bob = identity.create_user("bob", team.id)
    lead = identity.create_user("lead", team.id)
    key, raw = identity.create_key(
        team.id, ada.id, name="ada-economy", models=["sim-economy"],
        expires_at=runs.corral.app.clock.now() + 600,
    )  # fmt: skip
    _, lead_raw = identity.create_key(team.id, lead.id, name="lead", role="team_admin")
    runs.user_id, runs.team_id = ada.id, team.id
    return Team(runs, raw, key.id, bob.id, lead_raw)


@pytest.fixture
def team(store_url: str, shared_dir: Path, tmp_path: Path) -> Iterator[Team]:
    need_sandbox()
    make_repo(shared_dir / "repo", {"README": "hello\n"})
    with _corral(store_url, tmp_path / "home", shared_dir) as runs:
        yield _team(runs)


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"]["message"])


# -- submitting ---------------------------------------------------------------------------


def test_a_key_limited_to_one_model_cannot_submit_a_run_on_another(team: Team) -> None:
    """ada's key may call sim-economy only: a run on sim-frontier, or one that allows it
    besides, is refused with 403 naming the model and what the key may call; nothing is
    queued. Without a model her run gets one she may call."""
    for body in ({"model": "sim-frontier"},
                 {"model": "sim-economy", "allow_models": ["sim-frontier"]}):  # fmt: skip
        r = team.post(team.ada, **body)
        message = _error(r, 403)
        assert r.json()["error"]["type"] == "model_not_allowed"
        assert "'sim-frontier'" in message
        assert "allowed: sim-economy" in message
    with team.runs.api() as c:
        assert c.get("/api/v1/runs").json()["runs"] == []
    r = team.post(team.ada)
    assert r.status_code == 201, r.text
    assert (r.json()["model"], r.json()["allowed_models"]) == ("sim-economy", ["sim-economy"])


def test_a_person_cannot_make_a_teammate_the_owner(team: Team) -> None:
    """A person's key owns its runs: naming bob (who would be billed) is 403 saying what is
    needed, as is another team; naming herself is fine. bob's team admin may name him."""
    message = _error(team.post(team.ada, owner="bob"), 403)
    assert "payments's admin key or the organisation admin key" in message
    assert "ada" in message
    _error(team.post(team.ada, owner="nobody-at-all"), 403)  # no lookup: no existence leak
    team.runs.identity.create_team("other")
    assert "own team (payments)" in _error(team.post(team.ada, team="other"), 403)
    mine = team.post(team.ada, owner="ada")
    assert mine.status_code == 201, mine.text
    assert (mine.json()["owner"], mine.json()["requester"]) == ("ada", "ada")
    led = team.post(team.lead, owner="bob")
    assert led.status_code == 201, led.text
    assert (led.json()["owner"], led.json()["requester"]) == ("bob", "lead")


def test_the_organisation_admin_names_the_team_and_owner(team: Team) -> None:
    """The organisation admin key speaks for no user and belongs to no team: a run it
    submits names both, and a clear 400 says so when it does not."""
    admin = team.runs.corral.admin_key
    assert "name the run's team" in _error(team.post(admin), 400)
    message = _error(team.post(admin, team="payments"), 400)
    assert "name the run's owner" in message
    assert "--owner" in message
    r = team.post(admin, team="payments", owner="bob")
    assert r.status_code == 201, r.text
    assert (r.json()["owner"], r.json()["requester"]) == ("bob", None)


# -- the run's key lives within the requester's ---------------------------------------------

SPEND = """
import pathlib
codes = []
for _ in range(300):
    status, answer = call("sim-economy", 256)
    codes.append(status)
    if status != 200:
        pathlib.Path("/artifacts/refusal.json").write_text(json.dumps([status, answer]))
        break
print(len(codes), "calls")
"""


def _set_key_budget(team: Team, usd: float) -> None:
    with team.runs.api() as c:
        r = c.put("/api/v1/budgets", json={
            "scope": {"kind": "key", "ref": team.ada_key_id}, "resource": "usd",
            "window": "month", "limit": usd,
        })  # fmt: skip
    assert r.status_code == 200, r.text


def _key_spent(runs: Runs, key_id: str) -> float:
    with runs.api() as c:
        budgets = c.get("/api/v1/budgets").json()["budgets"]
    [spent] = [b["spent"] for b in budgets if b["scope"] == {"kind": "key", "id": key_id,
                                                              "name": "ada-economy"}]  # fmt: skip
    return float(spent)


def test_a_runs_calls_are_charged_to_the_requesters_key_budget(
    store_url: str, shared_dir: Path, tmp_path: Path
) -> None:
    """ada's key has a small budget: her run's agent calls until refused with 402 naming
    her key, what it spent is her key's, and a restarted Corral still counts it so."""
    need_sandbox()
    make_repo(shared_dir / "repo", {"README": "hello\n"})
    with _corral(store_url, tmp_path / "home", shared_dir) as runs:
        team = _team(runs)
        _set_key_budget(team, 0.0004)
        run = runs.submit(team.ada, command=script(SPEND), model="sim-economy")
        done = runs.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        status, answer = json.loads(runs.artifact(run["id"], "artifacts/refusal.json"))
        assert status == 402, answer
        assert answer["error"]["code"] == "budget_exceeded"
        assert "key ada-economy" in answer["error"]["message"]
        spent = _key_spent(runs, team.ada_key_id)
        assert spent > 0.0003
        time.sleep(0.5)  # the run's calls reach the spans (record_flush_interval 0.05 s)
    with _corral(store_url, tmp_path / "home", shared_dir) as again:
        assert _key_spent(again, team.ada_key_id) == pytest.approx(spent, abs=1e-6)


CALLS = """
import pathlib
codes = [call("sim-economy")[0], call("sim-frontier")]
pathlib.Path("/artifacts/codes.json").write_text(json.dumps(codes))
"""


def test_a_run_key_cannot_call_a_model_the_requesters_key_cannot(team: Team) -> None:
    """A run queued with sim-frontier besides (as before submissions were checked) gets a
    key for sim-economy only — the intersection with ada's key — that expires no later than
    hers and names her key as its parent."""
    widened = replace(team.key_info(), allowed_models=None)
    run_id = team.queue(widened, CALLS, ["sim-economy", "sim-frontier"])
    done = team.runs.wait(run_id)
    assert done["state"] == "awaiting_review", done
    economy, (refused, error) = json.loads(team.runs.artifact(run_id, "artifacts/codes.json"))
    assert (economy, refused) == (200, 403), error
    assert "sim-frontier" in error["error"]["message"]
    with team.runs.corral.app.store.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(keys))}
    run_key = next(r for r in rows.values() if r.run_id == run_id)
    parent = rows[team.ada_key_id]
    assert run_key.parent_key_id == parent.id
    assert run_key.allowed_models == ["sim-economy"]
    assert run_key.expires_at <= parent.expires_at


WAIT_FOR_REVOCATION = """
import pathlib, time
codes = [call("sim-economy")[0]]
pathlib.Path("/artifacts/started").write_text("yes")
deadline = time.time() + 30
while time.time() < deadline:
    status, answer = call("sim-economy")
    if status != 200:
        pathlib.Path("/artifacts/refusal.json").write_text(json.dumps([codes, status, answer]))
        break
    time.sleep(0.05)
"""


def test_revoking_the_requesters_key_stops_its_live_run_key(team: Team) -> None:
    """ada's key revoked while her run is live: the run's key is refused (401) within the
    key refresh interval, not at the end of the run's wall clock."""
    run = team.runs.submit(team.ada, command=script(WAIT_FOR_REVOCATION), model="sim-economy")
    started = team.runs.dir / "runs" / run["id"] / "artifacts" / "started"
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, team.runs.get(run["id"])
        time.sleep(0.05)
    with team.runs.api() as c:
        r = c.post(f"/api/v1/keys/{team.ada_key_id}/revoke")
    assert r.status_code == 200, r.text
    team.runs.wait(run["id"])
    codes, status, answer = json.loads(team.runs.artifact(run["id"], "artifacts/refusal.json"))
    assert (codes, status) == ([200], 401), answer
    assert "revoked" in answer["error"]["message"]


def test_a_run_queued_by_a_key_revoked_since_fails_saying_why(team: Team) -> None:
    """ada's key revoked while her run waits in the queue: the run fails when admitted, its
    reason naming her key, and no key is minted for it."""
    info = team.key_info()
    team.runs.identity.revoke_key(team.ada_key_id)
    run_id = team.queue(info, "print('never')", ["sim-economy"])
    done = team.runs.wait(run_id)
    assert done["state"] == "failed", done
    assert f"the parent key {team.ada_key_id} has been revoked" in done["reason"]
    with team.runs.corral.app.store.connect() as conn:
        assert conn.execute(select(keys.c.id).where(keys.c.run_id == run_id)).all() == []
