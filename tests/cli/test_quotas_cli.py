"""`corral budgets`, `corral limits` and the budgets in `corral usage`, against a live Corral."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.cli.test_cli_admin import run, run_json

from corral.identity.service import IdentityService
from corral.quota import Level

if TYPE_CHECKING:
    from conftest import Corral, StartCorral


@pytest.fixture
def server(tmp_path: Path, start_corral: StartCorral) -> Iterator[Corral]:
    """A live Corral on SQLite with a team payments, its user alice and her key."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with start_corral(tmp_path / "home", url, sim_url="http://127.0.0.1:9") as running:
        run(running, "teams", "create", "payments")
        run(running, "users", "create", "alice", "--team", "payments")
        yield running


def _new_key(server: Corral, *extra: str) -> dict[str, Any]:
    args = ["keys", "create", "--team", "payments", "--user", "alice", *extra]
    return dict(run_json(server, *args))


def test_budgets_set_show_and_unset(server: Corral) -> None:
    out = run(server, "budgets", "set", "--team", "payments", "--usd", "12.5", "--soft-fraction",
              "0.8").stdout  # fmt: skip
    assert out.strip() == (
        "Set the daily USD budget of team payments to $12.5000 (soft limit 80%); $12.5000 left."
    )
    both = run_json(server, "budgets", "set", "--team", "payments", "--user", "alice",
                    "--usd", "0.000000001", "--tokens", "2000", "--window", "month")  # fmt: skip
    assert [(b["resource"], b["limit"], b["window"]) for b in both] == [
        ("usd", 1e-9, "month"),
        ("tokens", 2000, "month"),
    ]
    key = _new_key(server)
    run(server, "budgets", "set", "--key", key["id"], "--tokens", "10", "--window", "total")
    run(server, "limits", "set", "--team", "payments", "--rpm", "60")

    shown = run_json(server, "budgets", "show")
    assert set(shown) == {"budgets", "limits"}
    assert [(b["scope"]["kind"], b["resource"]) for b in shown["budgets"]] == [
        ("team", "usd"),
        ("user", "usd"),
        ("user", "tokens"),
        ("key", "tokens"),
    ]
    assert [r["rpm"] for r in shown["limits"]] == [60]
    table = run(server, "budgets", "show").stdout
    for text in ["Budgets", "team payments", "user alice", "$12.5000", "2,000", "80%", "store"]:
        assert text in table
    assert "never" in table  # the total budget does not reset
    assert "Rate limits" in table
    only_user = run_json(server, "budgets", "show", "--team", "payments", "--user", "alice")
    assert {b["scope"]["name"] for b in only_user["budgets"]} == {"alice"}
    assert only_user["limits"] == []

    gone = run(server, "budgets", "unset", "--team", "payments", "--user", "alice", "--usd",
               "--tokens", "--window", "month").stdout  # fmt: skip
    assert "Removed the monthly USD budget of user alice of team payments." in gone
    assert "Removed the monthly token budget" in gone
    run(server, "budgets", "unset", "--key", key["id"], "--tokens", "--window", "total")
    left = run_json(server, "budgets", "show")["budgets"]
    assert [b["scope"]["kind"] for b in left] == ["team"]
    missing = run(server, "budgets", "unset", "--team", "payments", "--tokens", ok=False)
    assert missing.exit_code == 1
    assert "team payments has no daily token budget (HTTP 404" in missing.output


def test_budgets_usage_errors(server: Corral) -> None:
    cases = [
        (["budgets", "set", "--team", "payments"], "give --usd, --tokens or both"),
        (["budgets", "set", "--usd", "1"], "name the scope"),
        (["budgets", "set", "--team", "payments", "--org", "--usd", "1"], "name one scope"),
        (["budgets", "set", "--team", "payments", "--usd", "-1"], "--usd"),
        (["budgets", "set", "--org", "--tokens", "1", "--soft-fraction", "0"], "--soft-fraction"),
        (["budgets", "unset", "--team", "payments"], "give --usd, --tokens or both"),
        (["limits", "set", "--team", "payments"], "give --rpm, --tpm or --concurrency"),
        (["budgets", "show", "--user", "alice", "--key", "k"], "name one scope"),
    ]
    for args, message in cases:
        result = run(server, *args, ok=False)
        assert result.exit_code == 2, args
        assert message in result.output, result.output
    unknown = run(server, "budgets", "set", "--team", "nope", "--usd", "1", ok=False)
    assert unknown.exit_code == 1
    assert unknown.output.strip() == "Error: team 'nope' not found (HTTP 404, not_found_error)"
    fine = run(server, "budgets", "set", "--team", "payments", "--usd", "0.0000000001", ok=False)
    assert fine.exit_code == 1
    assert "at most 9 decimals" in fine.output


def test_only_the_org_admin_sets_budgets(server: Corral) -> None:
    lead = _new_key(server, "--role", "team-admin")["key"]
    refused = run(server, "budgets", "set", "--team", "payments", "--usd", "5", key=lead, ok=False)
    assert refused.exit_code == 1
    assert "only the organisation admin key may set budgets and limits" in refused.output
    run(server, "budgets", "set", "--team", "payments", "--usd", "5")
    assert len(run_json(server, "budgets", "show", key=lead)["budgets"]) == 1


def test_config_budgets_cannot_be_unset(tmp_path: Path, start_corral: StartCorral) -> None:
    url = f"sqlite:///{tmp_path / 'config.db'}"
    budgets = [{"org": True, "tokens": 1_000_000}]
    with start_corral(
        tmp_path / "home", url, sim_url="http://127.0.0.1:9", budgets=budgets
    ) as server:
        assert "config" in run(server, "budgets", "show", "--org").stdout
        refused = run(server, "budgets", "unset", "--org", "--tokens", ok=False)
        assert refused.exit_code == 1
        assert "set in the config file; change it there (HTTP 409" in refused.output


def test_limits_set_clear_and_show(server: Corral) -> None:
    out = run(server, "limits", "set", "--team", "payments", "--rpm", "60", "--concurrency", "4")
    assert out.stdout.strip() == "Limits of team payments: rpm 60, concurrency 4."
    status = run_json(server, "limits", "set", "--team", "payments", "--tpm", "9000")
    assert (status["rpm"], status["tpm"], status["concurrency"]) == (60, 9000, 4)
    cleared = run(server, "limits", "clear", "--team", "payments", "--rpm").stdout
    assert cleared.strip() == "Limits of team payments: tpm 9000, concurrency 4."
    [shown] = run_json(server, "limits", "show", "--team", "payments")["limits"]
    assert (shown["rpm"], shown["tpm"], shown["concurrency"]) == (None, 9000, 4)
    table = run(server, "limits", "show").stdout
    assert "Rate limits" in table
    assert "9000" in table
    assert "Budgets" not in table
    everything = run(server, "limits", "clear", "--team", "payments").stdout
    assert everything.strip() == "Team payments has no limits set through the API now."
    assert run_json(server, "limits", "show") == {"limits": []}
    assert run(server, "limits", "show").stdout.strip() == "Rate limits: none."


def test_usage_shows_what_is_left_of_the_budgets(server: Corral) -> None:
    run(server, "teams", "create", "search")
    run(server, "budgets", "set", "--team", "payments", "--usd", "50")
    run(server, "budgets", "set", "--team", "search", "--tokens", "5000", "--window", "hour")
    report = run(server, "usage").stdout
    assert "Budgets" in report
    assert "remaining" in report
    assert "$50.0000" in report
    assert "team search" in report
    only = run(server, "usage", "--team", "payments").stdout
    assert "team payments" in only
    assert "team search" not in only
    assert isinstance(run_json(server, "usage"), list)  # --json prints the usage rows as before


def test_budgets_show_of_a_team_shows_the_limits_set_inside_it(server: Corral) -> None:
    """`corral budgets show --team payments` lists the team's budgets with those of its
    users, keys and live runs, grouped by scope, and nothing of another team's; a person's
    key sees the team's, its own user's and its own; a finished run's budget is left out."""
    run(server, "users", "create", "bob", "--team", "payments")
    run(server, "teams", "create", "search")
    run(server, "users", "create", "carol", "--team", "search")
    alice_key = _new_key(server)
    identity = IdentityService(server.app.store, server.app.clock)
    identity.create_key("payments", "alice", run_id="run_live")  # as a run mints its key
    ended, _ = identity.create_key("payments", "alice", run_id="run_ended")
    identity.revoke_key(ended.id)
    rules = server.app.quotas.rules
    for run_id in ("run_live", "run_ended"):
        rules.set_budget(Level("run", run_id, run_id), "usd", "total", 10**9)
    run(server, "budgets", "set", "--team", "payments", "--usd", "50")
    run(server, "budgets", "set", "--team", "payments", "--user", "bob", "--usd", "5")
    run(server, "budgets", "set", "--key", alice_key["id"], "--tokens", "1000")
    run(server, "budgets", "set", "--team", "search", "--user", "carol", "--usd", "7")
    run(server, "limits", "set", "--team", "payments", "--user", "alice", "--rpm", "60")
    run(server, "limits", "set", "--team", "search", "--user", "carol", "--rpm", "30")

    deadline = time.monotonic() + 10  # run budgets written beside the API: the next reload
    while True:
        shown = run_json(server, "budgets", "show", "--team", "payments")
        if any(b["scope"]["kind"] == "run" for b in shown["budgets"]):
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    named = {"team": "name", "user": "name", "key": "id", "run": "id"}
    assert [
        (b["scope"]["kind"], b["scope"][named[b["scope"]["kind"]]]) for b in shown["budgets"]
    ] == [
        ("team", "payments"),
        ("user", "bob"),
        ("key", alice_key["id"]),
        ("run", "run_live"),
    ]
    assert [(r["scope"]["kind"], r["scope"]["name"]) for r in shown["limits"]] == [
        ("user", "alice")
    ]
    table = run(server, "budgets", "show", "--team", "payments").stdout
    assert "Budgets of team payments and its users, keys and runs" in table
    for text in ["team payments", "user bob", "run run_live", "user alice"]:
        assert text in table, text
    assert "carol" not in table
    assert "run_ended" not in table

    mine = run_json(server, "budgets", "show", "--team", "payments", key=alice_key["key"])
    assert {b["scope"]["kind"] for b in mine["budgets"]} == {"team", "key"}  # not bob's
    assert [r["scope"]["name"] for r in mine["limits"]] == ["alice"]
