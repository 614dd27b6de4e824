"""The admin commands driven through click against a live Corral (CORRAL_URL, and the key in
CORRAL_KEY or CORRAL_ADMIN_KEY)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from click.testing import CliRunner, Result

from corral.cli import main
from corral.store.schema import spans
from corral.traces import rollup

if TYPE_CHECKING:
    from conftest import Corral, StartCorral


@pytest.fixture
def server(tmp_path: Path, start_corral: StartCorral) -> Iterator[Corral]:
    """A live Corral on SQLite (the API tests cover both stores; these cover the CLI)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with start_corral(tmp_path / "home", url, sim_url="http://127.0.0.1:9") as running:
        yield running


def run(server: Corral, *args: str, key: str | None = None, ok: bool = True) -> Result:
    """``corral ARGS`` with ``key`` in CORRAL_KEY (it goes before the admin key, which is
    in CORRAL_ADMIN_KEY), or with the admin key alone."""
    env = {"CORRAL_URL": server.url, "CORRAL_KEY": key or "", "CORRAL_ADMIN_KEY": server.admin_key}
    result = CliRunner().invoke(main, list(args), env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def run_json(server: Corral, *args: str, key: str | None = None) -> Any:
    """Run with --json; the output must be JSON and nothing else."""
    return json.loads(run(server, *args, "--json", key=key).stdout)


def test_teams_users_and_keys_round_trip(server: Corral) -> None:
    team = run_json(server, "teams", "create", "payments")
    assert team["name"] == "payments"
    assert [t["id"] for t in run_json(server, "teams", "list")] == [team["id"]]
    assert run_json(server, "teams", "show", "payments") == team

    alice = run_json(server, "users", "create", "alice", "--team", "payments")
    bot = run_json(server, "users", "create", "ci-bot", "--team", team["id"], "--service")
    assert (alice["kind"], bot["kind"]) == ("user", "service")
    listed = run_json(server, "users", "list", "--team", "payments")
    assert {u["name"] for u in listed} == {"alice", "ci-bot"}

    created = run_json(
        server, "keys", "create", "--team", "payments", "--user", "alice", "--name", "laptop",
        "--models", "sim-economy,sim-standard", "--expires", "7d",
    )  # fmt: skip
    assert set(created) == {"id", "key"}
    assert created["key"].startswith("sk-corral-")
    [key] = run_json(server, "keys", "list", "--team", "payments", "--user", "alice")
    assert key["id"] == created["id"]
    assert key["allowed_models"] == ["sim-economy", "sim-standard"]
    assert key["expires_at"] is not None
    keys_output = run(server, "keys", "list").stdout
    assert created["id"] in keys_output
    assert created["key"] not in keys_output

    revoked = run_json(server, "keys", "revoke", created["id"])
    assert revoked["revoked_at"] is not None
    assert "revoked" in run(server, "keys", "list").stdout
    assert server.get("/api/v1/me", created["key"]).status_code == 401


def test_tables_for_people(server: Corral) -> None:
    assert "Created team payments" in run(server, "teams", "create", "payments").stdout
    run(server, "users", "create", "alice", "--team", "payments", "--email", "a@example.com")
    teams = run(server, "teams", "list").stdout
    assert "payments" in teams
    assert "team_" in teams
    users = run(server, "users", "list").stdout
    assert "a@example.com" in users
    models = run(server, "models", "list").stdout
    assert "sim-economy" in models
    assert "USD per 1M" in models
    providers = run(server, "providers", "list").stdout
    assert "sim" in providers


def test_a_new_key_alone_goes_to_stdout(server: Corral) -> None:
    """`KEY=$(corral keys create ...)` captures the key; the notes go to stderr."""
    run(server, "teams", "create", "payments")
    run(server, "users", "create", "alice", "--team", "payments")
    result = run(server, "keys", "create", "--team", "payments", "--user", "alice")
    key = result.stdout.strip()
    assert key.startswith("sk-corral-")
    assert "\n" not in key
    assert "Store it now" in result.stderr
    assert server.get("/api/v1/me", key).status_code == 200


def test_team_admin_key_from_the_cli(server: Corral) -> None:
    for team in ("payments", "search"):
        run(server, "teams", "create", team)
    run(server, "users", "create", "lead", "--team", "payments")
    created = run_json(
        server, "keys", "create", "--team", "payments", "--user", "lead", "--role", "team-admin"
    )
    lead = created["key"]
    assert [t["name"] for t in run_json(server, "teams", "list", key=lead)] == ["payments"]
    run(server, "users", "create", "carol", "--team", "payments", key=lead)
    refused = run(server, "users", "create", "eve", "--team", "search", key=lead, ok=False)
    assert refused.exit_code == 1
    assert "may not manage" in refused.output


def test_usage_json_rows(server: Corral) -> None:
    """Each row: the grouping value under the --by name, then requests, tokens and cost_usd."""
    team = run_json(server, "teams", "create", "payments")
    user = run_json(server, "users", "create", "alice", "--team", "payments")
    key = run_json(server, "keys", "create", "--team", "payments", "--user", "alice")
    now = time.time_ns()
    chain = {"team_id": team["id"], "user_id": user["id"], "key_id": key["id"]}
    rows = [
        {
            "span_id": f"{i:016x}",
            "trace_id": f"{i:032x}",
            "kind": "llm_request",
            "name": "chat",
            "status": "ok",
            "start_ns": now - i * 10**9,
            "end_ns": now,
            "model_requested": model,
            "input_tokens": 100,
            "cached_input_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 10,
            "reasoning_tokens": 0,
            "cost_nusd": 250_000,
            **chain,
        }
        for i, model in enumerate(["sim-economy", "sim-economy", "sim-standard"], start=1)
    ]
    with server.app.store.begin() as conn:  # rows and roll-ups together, as the writer does
        conn.execute(spans.insert(), rows)
        rollup.apply(conn, server.app.store.is_sqlite, rollup.contributions(rows))
    fields = {
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
    }
    for by, expected in [
        ("team", "payments"),
        ("user", "alice"),
        ("key", key["id"]),
        ("model", "sim-economy"),
    ]:
        out = run_json(server, "usage", "--by", by, "--since", "24h")
        assert isinstance(out, list)
        assert fields <= set(out[0])
        assert out[0][by] == expected or out[0].get(f"{by}_id") == expected
    [team_row] = run_json(server, "usage", "--by", "team")
    assert team_row["team"] == "payments"
    assert team_row["requests"] == 3
    assert team_row["input_tokens"] == 300
    assert team_row["cost_usd"] == pytest.approx(0.00075)
    by_model = {r["model"]: r["requests"] for r in run_json(server, "usage", "--by", "model")}
    assert by_model == {"sim-economy": 2, "sim-standard": 1}
    table = run(server, "usage", "--by", "model").stdout
    assert "sim-standard" in table
    assert "total" in table


def test_errors_are_one_line_and_exit_1(server: Corral) -> None:
    run(server, "teams", "create", "payments")
    dup = run(server, "teams", "create", "payments", ok=False)
    assert dup.exit_code == 1
    assert dup.output.strip() == (
        "Error: team 'payments' already exists (HTTP 409, conflict_error)"
    )
    args = ["keys", "create", "--team", "payments", "--user", "x", "--expires", "soon"]
    bad = run(server, *args, ok=False)
    assert bad.exit_code == 2  # a usage error, caught before any request
    assert "--expires" in bad.output
    missing = run(server, "teams", "show", "nope", "--json", ok=False)
    assert missing.exit_code == 1
    assert "team 'nope' not found" in missing.output


def test_without_a_key_the_message_says_which_variable(server: Corral) -> None:
    env = {"CORRAL_URL": server.url, "CORRAL_KEY": "", "CORRAL_ADMIN_KEY": ""}
    result = CliRunner().invoke(main, ["teams", "list"], env=env)
    assert result.exit_code == 1
    assert "CORRAL_ADMIN_KEY" in result.output


def test_unreachable_server_is_named() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = CliRunner().invoke(main, ["teams", "list"], env={"CORRAL_URL": url})
    assert result.exit_code == 1
    assert f"cannot reach Corral at {url}: is `corral serve` running?" in result.output


def test_usage_of_real_model_calls(tmp_path: Path, start_corral: StartCorral) -> None:
    """End to end: calls through the gateway (to the in-process simulator) show up in
    `corral usage`, with the tokens the upstream reported."""
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    with start_corral(tmp_path / "home", url) as server:
        run(server, "teams", "create", "payments")
        run(server, "users", "create", "alice", "--team", "payments")
        key = run_json(server, "keys", "create", "--team", "payments", "--user", "alice")["key"]
        ask = {"messages": [{"role": "user", "content": "Say hello to the platform team"}]}
        with httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as c:
            chat = c.post("/v1/chat/completions", json={"model": "sim-economy", **ask})
            msg = c.post("/v1/messages", json={"model": "sim-standard", "max_tokens": 64, **ask})
        assert chat.status_code == 200, chat.text
        assert msg.status_code == 200, msg.text
        chat_usage, msg_usage = chat.json()["usage"], msg.json()["usage"]

        deadline = time.monotonic() + 10
        rows = run_json(server, "usage", "--by", "model")
        while sum(r["requests"] for r in rows) < 2:  # records are written in batches
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
            rows = run_json(server, "usage", "--by", "model")
        by_model = {r["model"]: r for r in rows}
        economy, standard = by_model["sim-economy"], by_model["sim-standard"]
        assert _input(economy) == chat_usage["prompt_tokens"]
        assert (
            economy["output_tokens"] + economy["reasoning_tokens"]
            == (chat_usage["completion_tokens"])
        )
        assert standard["input_tokens"] == msg_usage["input_tokens"]
        assert standard["output_tokens"] == msg_usage["output_tokens"]
        assert economy["cost_usd"] > 0
        assert standard["cost_usd"] > 0
        [team] = run_json(server, "usage", "--by", "team")
        assert (team["team"], team["requests"]) == ("payments", 2)
        [user] = run_json(server, "usage", "--by", "user")
        assert user["user"] == "alice"
        [key_row] = run_json(server, "usage", "--by", "key")
        assert key_row["key"].startswith(key[:14])


def _input(row: dict[str, Any]) -> int:
    return int(row["input_tokens"] + row["cached_input_tokens"] + row["cache_write_tokens"])
