"""A team admin sees its own team's route policies and is never told another team's key names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from conftest import Corral


def _made(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return dict(response.json())


def _two_teams(corral: Corral) -> tuple[str, dict[str, Any]]:
    """payments (with a team admin key, returned) and search (with a named key, returned)."""
    with corral.client() as c:
        for team, user in (("payments", "lead"), ("search", "bob")):
            _made(c.post("/api/v1/teams", json={"name": team}))
            _made(c.post("/api/v1/users", json={"name": user, "team": team}))
        lead = _made(
            c.post("/api/v1/keys", json={"team": "payments", "user": "lead", "role": "team_admin"})
        )
        secret = _made(
            c.post(
                "/api/v1/keys", json={"team": "search", "user": "bob", "name": "search-prod-bot"}
            )
        )
    return lead["key"], secret


def test_a_team_admin_lists_only_its_teams_route_policies(corral: Corral) -> None:
    lead, _ = _two_teams(corral)
    with corral.client() as c:
        for rule in (
            {"team": "payments", "tier": "economy"},
            {"team": "search", "task_class": "search-reindex-secret", "tier": "economy"},
            {"task_class": "batch", "tier": "economy"},
        ):
            _made(c.post("/api/v1/route/policies", json=rule))
        assert len(c.get("/api/v1/route/policies").json()["policies"]) == 3  # the org admin
    with corral.client(lead) as c:
        listed = c.get("/api/v1/route/policies")
    assert listed.status_code == 200, listed.text
    assert {p["team"] for p in listed.json()["policies"]} == {None, "payments"}
    assert "search" not in listed.text
    assert "search-reindex-secret" not in listed.text
    assert {p["task_class"] for p in listed.json()["policies"]} == {None, "batch"}


def test_an_error_never_names_another_teams_key(corral: Corral) -> None:
    """A team admin asking for another team's key's budgets is refused without being told
    that key's name or prefix (before: "may not read the budgets and limits of key <name>")."""
    lead, secret = _two_teams(corral)
    with corral.client(lead) as c:
        for params in ({"key": secret["id"]}, {"user": "bob", "team": "search"}):
            refused = c.get("/api/v1/budgets", params=params)
            assert refused.status_code in (403, 404), refused.text
            assert "search-prod-bot" not in refused.text
            assert secret["prefix"] not in refused.text
