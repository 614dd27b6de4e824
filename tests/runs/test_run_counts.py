"""Runs counted by team and state, as the status page shows them: counts only, each run
once, in the state it is in now. On SQLite and PostgreSQL."""

from __future__ import annotations

from corral.clock import ManualClock
from corral.identity.keys import KeyInfo
from corral.identity.service import DEFAULT_ORG_ID, IdentityService
from corral.runs.service import RunRequest, RunService
from corral.store import Store

ADMIN = KeyInfo(
    key_id="key_admin", role="admin", org_id=DEFAULT_ORG_ID, team_id=None, user_id=None,
    run_id=None, name=None, allowed_models=None, expires_at=None, revoked_at=None,
)  # fmt: skip


def _queue(runs: RunService, team: str, owner: str) -> str:
    req = RunRequest(team=team, owner=owner, profile="command", repo="/repo", task="a run")
    run = runs.new_run(
        req, ADMIN, source="/repo", model="m", allowed=["m"], timeout_s=60, sandbox="none"
    )
    return run.id


def test_counts_by_team_and_state(store: Store) -> None:
    clock = ManualClock()
    identity = IdentityService(store, clock)
    identity.ensure_default_org()
    runs = RunService(store, clock, identity)
    assert runs.counts() == {}
    pay, search = identity.create_team("payments"), identity.create_team("search")
    identity.create_user("ada", pay.id)
    identity.create_user("bob", search.id)
    first, _, third = (_queue(runs, "payments", "ada") for _ in range(3))
    _queue(runs, "search", "bob")
    runs.transition(first, "cancelled", actor="admin")
    runs.transition(third, "cancelled", actor="admin")
    assert runs.counts() == {
        (pay.id, "queued"): 1,
        (pay.id, "cancelled"): 2,
        (search.id, "queued"): 1,
    }
