"""The admin API over real HTTP against a running Corral, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from corral.clock import ManualClock
from corral.store.schema import spans
from corral.traces import rollup

if TYPE_CHECKING:
    from conftest import Corral

StartCorral = Callable[..., AbstractContextManager["Corral"]]


def _team(c: httpx.Client, name: str) -> dict[str, Any]:
    r = c.post("/api/v1/teams", json={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _user(c: httpx.Client, name: str, team: str, kind: str = "user") -> dict[str, Any]:
    r = c.post("/api/v1/users", json={"name": name, "team": team, "kind": kind})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _key(c: httpx.Client, team: str, user: str, **extra: Any) -> dict[str, Any]:
    r = c.post("/api/v1/keys", json={"team": team, "user": user, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    return dict(body["error"])


def test_openapi_document_and_docs_page_are_served(corral: Corral) -> None:
    doc = httpx.get(f"{corral.url}/api/v1/openapi.json").json()
    assert doc["info"]["title"] == "Corral admin API"
    for path in ["/api/v1/teams", "/api/v1/users", "/api/v1/keys", "/api/v1/usage"]:
        assert path in doc["paths"]
    assert {"/api/v1/providers", "/api/v1/models", "/api/v1/keys/{key_id}/revoke"} <= set(
        doc["paths"]
    )
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # our error shape only
    page = httpx.get(f"{corral.url}/api/v1/docs")
    assert page.status_code == 200
    assert "swagger" in page.text.lower()


def test_a_valid_key_is_required(corral: Corral) -> None:
    """No key, an unknown key, or a non-bearer scheme: 401 in the error shape."""
    assert "no API key" in _error(httpx.get(f"{corral.url}/api/v1/me"), 401)["message"]
    err = _error(corral.get("/api/v1/teams", "sk-corral-nope"), 401)
    assert err["type"] == "authentication_error"
    basic = httpx.get(f"{corral.url}/api/v1/me", headers={"authorization": "Basic abc"})
    _error(basic, 401)
    by_header = httpx.get(f"{corral.url}/api/v1/me", headers={"x-api-key": corral.admin_key})
    assert by_header.status_code == 200
    assert by_header.json()["key"]["role"] == "admin"


def test_admin_manages_teams_users_and_keys(corral: Corral) -> None:
    with corral.client() as c:
        team = _team(c, "payments")
        assert team["id"].startswith("team_")
        assert _error(c.post("/api/v1/teams", json={"name": "payments"}), 409)["type"] == (
            "conflict_error"
        )
        assert c.get("/api/v1/teams/payments").json() == team
        assert c.get(f"/api/v1/teams/{team['id']}").json() == team
        assert [t["name"] for t in c.get("/api/v1/teams").json()] == ["payments"]

        alice = _user(c, "alice", "payments")
        bot = _user(c, "deploy-bot", team["id"], kind="service")
        assert (alice["team"], bot["kind"]) == ("payments", "service")
        assert len(c.get("/api/v1/users", params={"team": "payments"}).json()) == 2
        assert c.get(f"/api/v1/users/{alice['id']}").json() == alice

        created = _key(c, "payments", "alice", name="laptop", models=["sim-economy"])
        assert created["key"].startswith("sk-corral-")
        assert created["prefix"] == created["key"][:14]
        assert (created["team"], created["user"], created["role"]) == (
            "payments",
            "alice",
            "virtual",
        )
        assert created["allowed_models"] == ["sim-economy"]
        listed = c.get("/api/v1/keys", params={"team": "payments"}).json()
        assert [k["id"] for k in listed] == [created["id"]]
        assert "key" not in listed[0]
        assert "key_hash" not in listed[0]
        assert created["key"] not in c.get("/api/v1/keys").text
        assert c.get("/api/v1/keys", params={"user": "deploy-bot"}).json() == []

    me = corral.get("/api/v1/me", created["key"]).json()
    assert me["key"]["id"] == created["id"]
    assert me["team"]["name"] == "payments"
    assert me["user"]["name"] == "alice"


def test_team_admin_keys_manage_only_their_own_team(corral: Corral) -> None:
    with corral.client() as admin:
        _team(admin, "payments")
        _team(admin, "search")
        _user(admin, "lead", "payments")
        _user(admin, "bob", "search")
        other = _key(admin, "search", "bob")
        own = _key(admin, "payments", "lead")
        team_admin = _key(admin, "payments", "lead", role="team_admin")["key"]

    with corral.client(team_admin) as c:
        assert _user(c, "carol", "payments")["team"] == "payments"
        assert _key(c, "payments", "carol")["user"] == "carol"
        assert [t["name"] for t in c.get("/api/v1/teams").json()] == ["payments"]
        assert {u["team"] for u in c.get("/api/v1/users").json()} == {"payments"}
        assert {k["team"] for k in c.get("/api/v1/keys").json()} == {"payments"}
        assert c.get("/api/v1/usage", params={"team": "payments"}).status_code == 200
        assert c.post(f"/api/v1/keys/{own['id']}/revoke").json()["revoked_at"] is not None

        refused = [
            c.post("/api/v1/teams", json={"name": "mine"}),
            c.get("/api/v1/teams/search"),
            c.post("/api/v1/users", json={"name": "eve", "team": "search"}),
            c.get("/api/v1/users", params={"team": "search"}),
            c.post("/api/v1/keys", json={"team": "search", "user": "bob"}),
            c.get("/api/v1/keys", params={"team": "search"}),
            c.get(f"/api/v1/keys/{other['id']}"),
            c.post(f"/api/v1/keys/{other['id']}/revoke"),
            c.delete(f"/api/v1/keys/{other['id']}"),
            c.get("/api/v1/usage", params={"team": "search"}),
        ]
        for r in refused:
            assert _error(r, 403)["type"] == "permission_error", r.request.url
        _error(c.get("/api/v1/keys/key_admin"), 404)  # the org key is not theirs to see

    with corral.client() as admin:
        assert admin.get(f"/api/v1/keys/{other['id']}").json()["revoked_at"] is None


def test_virtual_keys_read_only_themselves(corral: Corral) -> None:
    """A person's key reads its own team, itself, its own keys and the models it may call;
    a teammate, another team and every change are refused or absent."""
    with corral.client() as admin:
        _team(admin, "payments")
        _team(admin, "search")
        _user(admin, "alice", "payments")
        _user(admin, "bob", "payments")
        key = _key(admin, "payments", "alice")
        _key(admin, "payments", "bob")
        r = admin.post(
            "/api/v1/keys",
            json={"team": "payments", "user": "alice", "models": ["sim-economy"]},
        )
        narrow = r.json()
    with corral.client(key["key"]) as c:
        assert c.get("/api/v1/me").json()["user"]["name"] == "alice"
        assert c.get(f"/api/v1/keys/{key['id']}").json()["id"] == key["id"]
        assert c.get("/api/v1/usage", params={"by": "model"}).status_code == 200
        assert [t["name"] for t in c.get("/api/v1/teams").json()] == ["payments"]
        assert c.get("/api/v1/teams/payments").json()["name"] == "payments"
        assert [u["name"] for u in c.get("/api/v1/users").json()] == ["alice"]
        keys = c.get("/api/v1/keys").json()
        assert {k["id"] for k in keys} == {key["id"], narrow["id"]}
        assert len(c.get("/api/v1/models").json()) == len(corral.app.catalog.models)
        for r in [c.get("/api/v1/teams/search"), c.get("/api/v1/users/bob")]:
            _error(r, 404)
        _error(c.get("/api/v1/keys", params={"user": "bob"}), 404)
        for r in [
            c.post("/api/v1/teams", json={"name": "x"}),
            c.post("/api/v1/keys", json={"team": "payments", "user": "alice"}),
            c.get("/api/v1/providers"),
            c.post(f"/api/v1/keys/{key['id']}/revoke"),
        ]:
            _error(r, 403)
    with corral.client(narrow["key"]) as c:
        assert [m["name"] for m in c.get("/api/v1/models").json()] == ["sim-economy"]


def test_revoked_key_is_refused_at_once_by_this_process(corral: Corral) -> None:
    with corral.client() as admin:
        _team(admin, "payments")
        _user(admin, "alice", "payments")
        first = _key(admin, "payments", "alice")
        second = _key(admin, "payments", "alice")
        assert corral.get("/api/v1/me", first["key"]).status_code == 200  # now cached
        assert admin.post(f"/api/v1/keys/{first['id']}/revoke").status_code == 200
        assert admin.delete(f"/api/v1/keys/{second['id']}").json()["revoked_at"] is not None
        err = _error(admin.post("/api/v1/keys/key_admin/revoke"), 403)
        assert "CORRAL_ADMIN_KEY" in err["message"]
        _error(admin.post("/api/v1/keys/key_nope/revoke"), 404)
    for key in (first, second):
        assert "revoked" in _error(corral.get("/api/v1/me", key["key"]), 401)["message"]


def test_errors_name_what_to_fix(corral: Corral) -> None:
    with corral.client() as c:
        _team(c, "payments")
        _user(c, "alice", "payments")
        err = _error(c.post("/api/v1/teams", json={"name": "has space"}), 400)
        assert "'name'" in err["message"]
        err = _error(c.post("/api/v1/teams", json={"name": "ok", "colour": "red"}), 400)
        assert "'colour'" in err["message"]
        bad_json = c.post(
            "/api/v1/teams", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert "not valid JSON" in _error(bad_json, 400)["message"]
        err = _error(c.get("/api/v1/usage", params={"by": "colour"}), 400)
        assert "'by'" in err["message"]
        assert "since" in _error(c.get("/api/v1/usage", params={"since": "soon"}), 400)["message"]
        err = _error(c.post("/api/v1/keys", json={"team": "payments", "user": "alice",
                                                   "models": ["gpt-nope"]}), 400)  # fmt: skip
        assert "gpt-nope" in err["message"]
        both = {"expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"}
        _error(c.post("/api/v1/keys", json={"team": "payments", "user": "alice", **both}), 400)
        _error(c.post("/api/v1/keys", json={"team": "nope", "user": "alice"}), 404)
        assert _error(c.get("/api/v1/nothing"), 404)["type"] == "not_found_error"
        assert _error(c.put("/api/v1/teams"), 405)["type"] == "method_not_allowed"
        _error(c.get("/api/v1/teams/a%00b"), 404)


def test_providers_and_models_come_from_the_catalog(corral: Corral) -> None:
    with corral.client() as c:
        [provider] = c.get("/api/v1/providers").json()
        assert provider == {
            "name": "sim",
            "kind": "sim",
            "base_url": corral.app.settings.sim_url,
            "protocols": ["chat", "gemini", "messages", "responses"],
            "api_key_env": None,
            "api_key_set": False,
        }
        models = {m["name"]: m for m in c.get("/api/v1/models").json()}
    economy = models["sim-economy"]
    assert economy["prices"] == {
        "input": 0.25,
        "cached_input": 0.025,
        "cache_write": 0.25,
        "output": 2.0,
        "reasoning": 2.0,
    }
    assert economy["context_window"] == 128_000
    assert economy["price_version"] == corral.app.catalog.price_version


def test_usage_rows_are_keyed_by_the_grouping(corral: Corral) -> None:
    """Usage JSON: one row per group with the group under its own name, tokens and cost."""
    with corral.client() as c:
        team = _team(c, "payments")
        user = _user(c, "alice", "payments")
        key = _key(c, "payments", "alice", name="laptop")
    now_ns = time.time_ns()
    row = {
        "span_id": "00000000000000a1",
        "trace_id": "0" * 32,
        "kind": "llm_request",
        "name": "chat",
        "status": "ok",
        "start_ns": now_ns - 10**9,
        "end_ns": now_ns,
        "team_id": team["id"],
        "user_id": user["id"],
        "key_id": key["id"],
        "model_requested": "sim-economy",
        "input_tokens": 100,
        "cached_input_tokens": 10,
        "cache_write_tokens": 5,
        "output_tokens": 20,
        "reasoning_tokens": 3,
        "cost_nusd": 123_456,
    }
    with corral.app.store.begin() as conn:  # the row and its roll-up, as the writer does
        conn.execute(spans.insert().values(**row))
        rollup.apply(conn, corral.app.store.is_sqlite, rollup.contributions([row]))
    totals = {
        "requests": 1,
        "input_tokens": 100,
        "cached_input_tokens": 10,
        "cache_write_tokens": 5,
        "output_tokens": 20,
        "reasoning_tokens": 3,
        "cost_usd": 0.000123456,
        "errors": 0,
        "error_rate": 0.0,
        "cancelled": 0,
        "refused": 0,
        # one call of 1 s: its log-spaced bucket's value, within 4 % of it
        "latency_p50_ms": 992.0,
        "latency_p95_ms": 992.0,
        "latency_p99_ms": 992.0,
        "reported": dict.fromkeys(("requests", *rollup.TOKEN_COLUMNS, "cost_usd"), 0),
    }
    expected = {
        "team": {"team": "payments", "team_id": team["id"]},
        "user": {"user": "alice", "user_id": user["id"]},
        "key": {"key": "laptop", "key_id": key["id"]},
        "model": {"model": "sim-economy"},
    }
    with corral.client() as c:
        for by, group in expected.items():
            body = c.get("/api/v1/usage", params={"by": by, "since": "1h"}).json()
            assert body["by"] == by
            assert body["rows"] == [{**group, **totals}]
        assert c.get("/api/v1/usage", params={"since": "2000-01-01"}).json()["rows"]
        future = c.get("/api/v1/usage", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["rows"] == []
    mine = corral.get("/api/v1/usage", key["key"], params={"by": "key"}).json()
    assert [r["key_id"] for r in mine["rows"]] == [key["id"]]


def test_keys_expire_by_the_injected_clock(
    store_url: str, tmp_path: Path, start_corral: StartCorral
) -> None:
    """expires_in is counted on the server's clock; past it the key is refused."""
    clock = ManualClock()
    sim_url = "http://127.0.0.1:9"
    with start_corral(tmp_path / "home", store_url, clock=clock, sim_url=sim_url) as corral:
        with corral.client() as c:
            _team(c, "payments")
            _user(c, "alice", "payments")
            key = _key(c, "payments", "alice", expires_in="1h")
        assert key["expires_at"].startswith("2027-01-15T09:00:00")
        assert corral.get("/api/v1/me", key["key"]).status_code == 200
        clock.advance(3601)
        assert "expired" in _error(corral.get("/api/v1/me", key["key"]), 401)["message"]


def test_revocation_reaches_another_process_within_one_second(
    corral: Corral, store_url: str, tmp_path: Path, start_corral: StartCorral
) -> None:
    """Two Corral processes on one database: revoke on one, the other refuses within 1 s."""
    with corral.client() as admin:
        _team(admin, "payments")
        _user(admin, "alice", "payments")
        key = _key(admin, "payments", "alice")
        sim_url = corral.app.settings.sim_url
        with start_corral(tmp_path / "other", store_url, sim_url=sim_url) as other:
            as_key = {"x-api-key": key["key"]}
            assert httpx.get(f"{other.url}/api/v1/me", headers=as_key).status_code == 200
            assert admin.post(f"/api/v1/keys/{key['id']}/revoke").status_code == 200
            revoked_at = time.monotonic()
            while httpx.get(f"{other.url}/api/v1/me", headers=as_key).status_code == 200:
                assert time.monotonic() - revoked_at < 1.0, "still accepted after 1 s"
                time.sleep(0.02)
