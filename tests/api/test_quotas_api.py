"""Budgets and rate limits through the admin API, against a running Corral on both stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select

from corral.clock import ManualClock
from corral.store.schema import budgets as budgets_table
from corral.store.schema import spans

if TYPE_CHECKING:
    from conftest import Corral

StartCorral = Callable[..., AbstractContextManager["Corral"]]
NO_SIM = "http://127.0.0.1:9"


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    return dict(body["error"])


def _people(c: httpx.Client) -> dict[str, Any]:
    """Teams payments and search; alice and carol in payments, bob in search; a key each."""
    out: dict[str, Any] = {}
    for team in ("payments", "search"):
        out[team] = _ok(c.post("/api/v1/teams", json={"name": team}), 201)
    for name, team in (("alice", "payments"), ("carol", "payments"), ("bob", "search")):
        out[name] = _ok(c.post("/api/v1/users", json={"name": name, "team": team}), 201)
        key = c.post("/api/v1/keys", json={"team": team, "user": name, "name": name})
        out[f"{name}_key"] = _ok(key, 201)
    return out


def _budget(
    c: httpx.Client, scope: dict[str, Any], resource: str, limit: Any, **extra: Any
) -> httpx.Response:
    body = {"scope": scope, "resource": resource, "limit": limit, **extra}
    return c.put("/api/v1/budgets", json=body)


def _scopes(listing: dict[str, Any], part: str = "budgets") -> list[tuple[str, str]]:
    return [(row["scope"]["kind"], row["scope"]["name"]) for row in listing[part]]


@pytest.fixture
def clocked(store_url: str, tmp_path: Path, start_corral: StartCorral) -> Iterator[Corral]:
    """A Corral on a manual clock (2027-01-15 08:00 UTC)."""
    clock = ManualClock()
    with start_corral(tmp_path / "home", store_url, clock=clock, sim_url=NO_SIM) as running:
        yield running


def test_budgets_of_each_scope_are_set_shown_replaced_and_removed(clocked: Corral) -> None:
    corral = clocked
    with corral.client() as c:
        people = _people(c)
        now_ns = int(corral.app.clock.now() * 1e9)
        chain = {
            "team_id": people["payments"]["id"],
            "user_id": people["alice"]["id"],
            "key_id": people["alice_key"]["id"],
        }
        calls = [
            {"span_id": f"{i:016x}", "trace_id": f"{i:032x}", "kind": "llm_request",
             "name": "chat", "status": "ok", "start_ns": now_ns - i * 10**9, "end_ns": now_ns,
             "input_tokens": 100, "output_tokens": 20, "cost_nusd": 250_000_000, **chain}
            for i in (1, 2)
        ]  # fmt: skip
        with corral.app.store.begin() as conn:
            conn.execute(spans.insert(), calls)

        team = _ok(_budget(c, {"kind": "team", "ref": "payments"}, "usd", 12.5, soft_fraction=0.8))
        assert team["scope"] == {"kind": "team", "id": people["payments"]["id"], "name": "payments"}
        assert (team["resource"], team["window"], team["source"]) == ("usd", "day", "store")
        assert (team["limit"], team["spent"], team["reserved"]) == (12.5, 0.5, 0)
        assert team["remaining"] == 12.0
        assert team["soft_fraction"] == 0.8
        assert team["window_id"] == "day:2027-01-15"
        assert team["resets_at"] == "2027-01-16T00:00:00Z"
        assert team["updated_at"].startswith("2027-01-15T08:00:00")

        user_scope = {"kind": "user", "ref": "alice", "team": "payments"}
        user = _ok(_budget(c, user_scope, "tokens", 1000, window="total"))
        assert (user["scope"]["name"], user["limit"], user["spent"]) == ("alice", 1000, 240)
        assert (user["remaining"], user["resets_at"]) == (760, None)
        key_id = people["alice_key"]["id"]
        key = _ok(_budget(c, {"kind": "key", "ref": key_id}, "usd", 3, window="month"))
        assert (key["scope"]["id"], key["resets_at"]) == (key_id, "2027-02-01T00:00:00Z")
        org = _ok(_budget(c, {"kind": "org"}, "tokens", 10**9, window="hour"))
        assert org["scope"] == {"kind": "org", "id": "org_default", "name": "organisation"}

        listing = _ok(c.get("/api/v1/budgets"))
        assert _scopes(listing) == [
            ("org", "organisation"),
            ("team", "payments"),
            ("user", "alice"),
            ("key", "alice"),
        ]
        assert listing["limits"] == []
        # A team comes with the levels inside it (its users, keys and live runs).
        in_team = _ok(c.get("/api/v1/budgets", params={"team": "payments"}))["budgets"]
        assert in_team == [team, user, key]
        by_user = c.get("/api/v1/budgets", params={"team": "payments", "user": "alice"})
        assert _ok(by_user)["budgets"] == [user]
        assert _ok(c.get("/api/v1/budgets", params={"key": key_id}))["budgets"] == [key]
        assert _ok(c.get("/api/v1/budgets", params={"org": "true"}))["budgets"] == [org]
        both = c.get("/api/v1/budgets", params={"team": "payments", "key": key_id})
        assert "name one scope" in _error(both, 400)["message"]

        again = _ok(_budget(c, {"kind": "team", "ref": people["payments"]["id"]}, "usd", 20))
        assert (again["id"], again["limit"], again["soft_fraction"]) == (team["id"], 20.0, None)
        assert len(_ok(c.get("/api/v1/budgets"))["budgets"]) == 4

        gone = c.delete(
            "/api/v1/budgets", params={"team": "payments", "resource": "usd", "window": "day"}
        )
        assert _ok(gone, 204) is None
        twice = c.delete("/api/v1/budgets", params={"team": "payments", "resource": "usd"})
        assert "has no daily USD budget" in _error(twice, 404)["message"]
        unnamed = c.delete("/api/v1/budgets", params={"resource": "usd"})
        assert "name the budget's scope" in _error(unnamed, 400)["message"]
        remove_user = {"team": "payments", "user": "alice", "resource": "tokens", "window": "total"}
        _ok(c.delete("/api/v1/budgets", params=remove_user), 204)
        assert _scopes(_ok(c.get("/api/v1/budgets"))) == [("org", "organisation"), ("key", "alice")]
    # This process applies a write at once, without waiting for the periodic reload.
    assert {lv.kind for lv, _ in corral.app.quotas.ruleset.limits.values()} == {"org", "key"}


def test_usd_limits_are_stored_exactly_and_bad_limits_refused(corral: Corral) -> None:
    team = {"kind": "team", "ref": "payments"}
    with corral.client() as c:
        _people(c)
        for usd, nano in [(0.1, 100_000_000), (12.345678901, 12_345_678_901), (1e-9, 1)]:
            status = _ok(_budget(c, team, "usd", usd))
            assert status["limit"] == usd
            with corral.app.store.connect() as conn:
                stored = conn.execute(select(budgets_table.c.amount)).scalar_one()
            assert stored == nano
        assert _ok(_budget(c, team, "tokens", 5000.0))["limit"] == 5000

        too_fine = _error(_budget(c, team, "usd", 0.0000000001), 400)
        assert "at most 9 decimals" in too_fine["message"]
        assert "whole number" in _error(_budget(c, team, "tokens", 10.5), 400)["message"]
        assert "at most" in _error(_budget(c, team, "usd", 1e7), 400)["message"]
        assert "at most" in _error(_budget(c, team, "tokens", 2**53), 400)["message"]
        for bad in [-1, True, "5", None]:
            _error(_budget(c, team, "usd", bad), 400)
        nan = '{"scope": {"kind": "team", "ref": "payments"}, "resource": "usd", "limit": NaN}'
        headers = {"content-type": "application/json"}
        _error(c.put("/api/v1/budgets", content=nan, headers=headers), 400)
        _error(_budget(c, team, "euros", 5), 400)
        _error(_budget(c, team, "usd", 5, window="week"), 400)
        for soft in (0, 1.5):
            _error(_budget(c, team, "usd", 5, soft_fraction=soft), 400)

        assert "name the team" in _error(_budget(c, {"kind": "team"}, "usd", 1), 400)["message"]
        with_team = {"kind": "team", "ref": "payments", "team": "search"}
        assert "kind 'user' only" in _error(_budget(c, with_team, "usd", 1), 400)["message"]
        assert "no ref" in _error(_budget(c, {"kind": "org", "ref": "x"}, "usd", 1), 400)["message"]
        _error(_budget(c, {"kind": "team", "ref": "nope"}, "usd", 1), 404)
        _error(_budget(c, {"kind": "user", "ref": "bob", "team": "payments"}, "usd", 1), 404)
        admin_key = {"kind": "key", "ref": "key_admin"}
        assert "admin key" in _error(_budget(c, admin_key, "usd", 1), 400)["message"]


def test_config_budgets_are_shown_and_read_only(
    store_url: str, tmp_path: Path, start_corral: StartCorral
) -> None:
    config = [{"team": "payments", "usd": 5, "soft_fraction": 0.5}]
    with (
        start_corral(
            tmp_path / "home",
            store_url,
            sim_url=NO_SIM,
            budgets=config,
            quota_refresh_interval=0.05,
        ) as corral,
        corral.client() as c,
    ):
        _people(c)  # the config names the team before it exists; the next reload finds it
        deadline = time.monotonic() + 10
        while not (listing := _ok(c.get("/api/v1/budgets")))["budgets"]:
            assert time.monotonic() < deadline, "the config budget never applied"
            time.sleep(0.02)
        [budget] = listing["budgets"]
        assert (budget["source"], budget["limit"], budget["soft_fraction"]) == ("config", 5.0, 0.5)
        assert budget["updated_at"] is None

        team = {"kind": "team", "ref": "payments"}
        refused = _error(_budget(c, team, "usd", 50), 409)
        assert refused["type"] == "conflict_error"
        assert "set in the config file" in refused["message"]
        delete = {"team": "payments", "resource": "usd", "window": "day"}
        _error(c.delete("/api/v1/budgets", params=delete), 409)
        # Another resource or window of the same team is the API's to set.
        assert _ok(_budget(c, team, "tokens", 100))["source"] == "store"
        assert _ok(_budget(c, team, "usd", 100, window="month"))["source"] == "store"
        sources = [(b["source"], b["window"]) for b in _ok(c.get("/api/v1/budgets"))["budgets"]]
        assert sorted(sources) == [("config", "day"), ("store", "day"), ("store", "month")]


def test_an_ambiguous_config_name_applies_to_nobody_and_blocks_nobody(
    store_url: str, tmp_path: Path, start_corral: StartCorral
) -> None:
    config = [{"user": "alice", "usd": 5}]
    with (
        start_corral(tmp_path / "home", store_url, sim_url=NO_SIM, budgets=config) as corral,
        corral.client() as c,
    ):
        _people(c)
        _ok(c.post("/api/v1/users", json={"name": "alice", "team": "search"}), 201)
        for team in ("payments", "search"):
            scope = {"kind": "user", "ref": "alice", "team": team}
            assert _ok(_budget(c, scope, "usd", 7))["source"] == "store"


def test_who_may_read_and_write_budgets(corral: Corral) -> None:
    with corral.client() as admin:
        people = _people(admin)
        lead = admin.post(
            "/api/v1/keys", json={"team": "payments", "user": "carol", "role": "team_admin"}
        )
        lead_key = _ok(lead, 201)["key"]
        _ok(_budget(admin, {"kind": "org"}, "usd", 100))
        for team in ("payments", "search"):
            _ok(_budget(admin, {"kind": "team", "ref": team}, "usd", 10))
            limits = {"scope": {"kind": "team", "ref": team}, "rpm": 6}
            _ok(admin.put("/api/v1/limits", json=limits))
        for name in ("alice", "carol", "bob"):
            _ok(_budget(admin, {"kind": "user", "ref": name}, "tokens", 1000))
            _ok(_budget(admin, {"kind": "key", "ref": people[f"{name}_key"]["id"]}, "usd", 1))
        bob_key_id = people["bob_key"]["id"]

    with corral.client(lead_key) as c:
        seen = _ok(c.get("/api/v1/budgets"))
        assert _scopes(seen) == [
            ("team", "payments"),
            ("user", "alice"),
            ("user", "carol"),
            ("key", "alice"),
            ("key", "carol"),
        ]
        assert _scopes(seen, "limits") == [("team", "payments")]
        assert _scopes(_ok(c.get("/api/v1/budgets", params={"user": "alice"}))) == [
            ("user", "alice")
        ]
        for params in ({"team": "search"}, {"key": bob_key_id}, {"org": "true"}):
            assert _error(c.get("/api/v1/budgets", params=params), 403)["type"] == (
                "permission_error"
            )
        _error(c.get("/api/v1/budgets", params={"user": "bob"}), 404)  # looked up in payments
        writes = [
            _budget(c, {"kind": "team", "ref": "payments"}, "usd", 1000),
            c.delete("/api/v1/budgets", params={"team": "payments", "resource": "usd"}),
            c.put("/api/v1/limits", json={"scope": {"kind": "team", "ref": "payments"}, "rpm": 1}),
        ]
        for r in writes:
            assert "only the organisation admin" in _error(r, 403)["message"]

    alice_key = people["alice_key"]["key"]
    with corral.client(alice_key) as c:
        mine = _ok(c.get("/api/v1/budgets"))
        assert _scopes(mine) == [("team", "payments"), ("user", "alice"), ("key", "alice")]
        assert _scopes(_ok(c.get("/api/v1/budgets", params={"user": "alice"}))) == [
            ("user", "alice")
        ]
        for params in ({"team": "search"}, {"user": "carol"}, {"org": "true"}):
            _error(c.get("/api/v1/budgets", params=params), 403)
        _error(_budget(c, {"kind": "key", "ref": people["alice_key"]["id"]}, "usd", 99), 403)

    bob = _ok(corral.get("/api/v1/budgets", people["bob_key"]["key"]))
    assert _scopes(bob) == [("team", "search"), ("user", "bob"), ("key", "bob")]
    assert _scopes(bob, "limits") == [("team", "search")]


def test_limits_change_only_the_fields_given(corral: Corral) -> None:
    scope = {"kind": "team", "ref": "payments"}
    with corral.client() as c:
        people = _people(c)
        team_id = people["payments"]["id"]

        def put(**fields: Any) -> dict[str, Any]:
            return dict(_ok(c.put("/api/v1/limits", json={"scope": scope, **fields})))

        first = put(rpm=60)
        assert (first["rpm"], first["tpm"], first["concurrency"]) == (60, None, None)
        assert first["scope"] == {"kind": "team", "id": team_id, "name": "payments"}
        assert first["source"] == "store"
        assert first["updated_at"] is not None
        assert corral.app.quotas.ruleset.limits["team", team_id][1].rpm == 60  # applied at once
        both = put(tpm=5000, concurrency=4)
        assert (both["rpm"], both["tpm"], both["concurrency"]) == (60, 5000, 4)
        cleared = put(rpm=None)
        assert (cleared["rpm"], cleared["tpm"], cleared["concurrency"]) == (None, 5000, 4)
        [listed] = _ok(c.get("/api/v1/budgets", params={"team": "payments"}))["limits"]
        assert {k: listed[k] for k in ("rpm", "tpm", "concurrency")} == {
            "rpm": None,
            "tpm": 5000,
            "concurrency": 4,
        }

        nothing = c.put("/api/v1/limits", json={"scope": scope})
        assert "at least one of rpm" in _error(nothing, 400)["message"]
        _error(c.put("/api/v1/limits", json={"scope": scope, "rpm": -1}), 400)
        _error(c.put("/api/v1/limits", json={"scope": scope, "rpm": 2**31}), 400)
        _error(c.put("/api/v1/limits", json={"scope": scope, "burst": 3}), 400)

        none = put(tpm=None, concurrency=None)
        assert (none["rpm"], none["tpm"], none["concurrency"]) == (None, None, None)
        assert _ok(c.get("/api/v1/budgets"))["limits"] == []
        assert ("team", team_id) not in corral.app.quotas.ruleset.limits


def test_routes_are_in_the_openapi_document(corral: Corral) -> None:
    paths = httpx.get(f"{corral.url}/api/v1/openapi.json").json()["paths"]
    assert set(paths["/api/v1/budgets"]) == {"get", "put", "delete"}
    assert set(paths["/api/v1/limits"]) == {"put"}
