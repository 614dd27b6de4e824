"""The CLI as a client: it starts without the server's modules, lists its commands from a
table that says what each command says of itself, and acts with any key from CORRAL_KEY
(else CORRAL_ADMIN_KEY), within what that key may see."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner
from tests.conftest import Corral, StartCorral
from tests.sandboxing import make_repo

from corral.cli import COMMANDS, main
from corral.identity.service import IdentityService

# What a client command must not load: the server, its store, web framework, settings,
# telemetry SDK; httpx too (its import alone is ~100 ms; the client is on urllib).
SERVER_MODULES = re.compile(
    r"^(fastapi|starlette|sqlalchemy|alembic|uvicorn|uvloop|httptools|pydantic|"
    r"pydantic_settings|pydantic_core|opentelemetry|redis|psycopg|prometheus_client|httpx|"
    r"corral\.(app|settings|store|gateway|quota|routing|runs|traces|identity|api|sim|web|"
    r"translate|metrics|agent|server))(\.|$)"
)
CLIENT_COMMANDS = [
    ["teams", "list"],
    ["usage", "--by", "team,model"],
    ["budgets", "show"],
    ["route", "policies"],
    ["runs", "list"],
    ["spans", "search", "--attr", "gen_ai.tool.name=Bash"],
    ["trace", "0123456789abcdef0123456789abcdef", "--json"],
]


def imported(
    argv: list[str], env: dict[str, str]
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules ``python -m corral ARGV`` imports, read from ``-X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "corral", *argv],
        env={**env, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names, done


@pytest.fixture
def server(tmp_path: Path, start_corral: StartCorral) -> Iterator[Corral]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with start_corral(tmp_path / "home", url, sim_url="http://127.0.0.1:9") as running:
        yield running


def test_help_and_client_commands_load_no_server_module(server: Corral) -> None:
    """`corral --help` and each client command (one of every command module) run without
    importing the server, its store, its web framework or its settings."""
    env = {"CORRAL_URL": server.url, "CORRAL_KEY": server.admin_key}
    names, done = imported(["--help"], env)
    assert done.returncode == 0, done.stderr
    assert "corral.cli" in names  # the probe sees imports at all
    assert sorted(n for n in names if SERVER_MODULES.match(n)) == []
    assert not any(n.startswith("corral.cli.") for n in names), "no command module for --help"
    for argv in CLIENT_COMMANDS:
        names, done = imported(argv, env)
        assert done.returncode in (0, 1), (argv, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr
        assert sorted(n for n in names if SERVER_MODULES.match(n)) == [], argv


def test_a_server_command_still_loads_its_server() -> None:
    """The check above can fail: `corral serve --help` imports the server it runs."""
    names, done = imported(["serve", "--help"], {})
    assert done.returncode == 0, done.stderr
    assert "corral.app" in names


def test_the_help_listing_says_what_each_command_says() -> None:
    """The table `corral --help` is listed from holds each command's own first sentence,
    so the listing is the one the commands would give once imported."""
    ctx = main.make_context("corral", ["--help"], resilient_parsing=True)
    for name, where in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, name
        for limit in (45, 1000):
            own = command.get_short_help_str(limit)
            listed = click.Command(name, help=where.summary).get_short_help_str(limit)
            assert listed == own, name
    assert main.list_commands(ctx) == sorted(COMMANDS)


def test_errors_name_the_variable_to_set(server: Corral) -> None:
    runner = CliRunner()
    env = {"CORRAL_URL": server.url, "CORRAL_KEY": "", "CORRAL_ADMIN_KEY": ""}
    none = runner.invoke(main, ["teams", "list"], env=env)
    assert none.exit_code == 1
    assert "set CORRAL_KEY to your key (or CORRAL_ADMIN_KEY" in none.output
    env["CORRAL_ADMIN_KEY"] = server.admin_key
    assert runner.invoke(main, ["teams", "list"], env=env).exit_code == 0
    env["CORRAL_KEY"] = "sk-corral-nope-0123456789"  # goes before the admin key
    wrong = runner.invoke(main, ["teams", "list"], env=env)
    assert wrong.exit_code == 1
    assert "(HTTP 401" in wrong.output
    assert "the key used is the one in CORRAL_KEY" in wrong.output
    bad_url = runner.invoke(main, ["teams", "list"], env={"CORRAL_URL": "file:///etc/passwd"})
    assert bad_url.exit_code == 1
    assert "CORRAL_URL must be an http:// or https:// URL" in bad_url.output


# -- each key sees its own -------------------------------------------------------------


@dataclass
class Org:
    corral: Corral
    keys: dict[str, str]  # ada, bob (payments), carol (search), lead (payments' team admin)
    ids: dict[str, str]  # user ids and key ids by the same names

    def cli(self, who: str, *args: str, admin_too: bool = True) -> Any:
        """``corral ARGS --json`` with ``who``'s key in CORRAL_KEY (and the admin key in
        CORRAL_ADMIN_KEY, which CORRAL_KEY goes before)."""
        env = {"CORRAL_URL": self.corral.url, "CORRAL_KEY": self.keys[who]}
        env["CORRAL_ADMIN_KEY"] = self.corral.admin_key if admin_too else ""
        result = CliRunner().invoke(main, [*args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def org(tmp_path: Path, start_corral: StartCorral) -> Iterator[Org]:
    """Two teams, three people and a team admin, each with a queued run and a model call
    (run_slots 0: the runs stay queued, no sandbox needed)."""
    repo = make_repo(tmp_path / "repo", {"README": "hi\n"})
    settings = {"run_slots": 0, "unsafe_no_sandbox": True}
    with start_corral(tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", **settings) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        payments, search = identity.create_team("payments"), identity.create_team("search")
        keys: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name, team, role in [
            ("ada", payments, "virtual"), ("bob", payments, "virtual"),
            ("carol", search, "virtual"), ("lead", payments, "team_admin"),
        ]:  # fmt: skip
            user = identity.create_user(name, team.id)
            key, raw = identity.create_key(team.id, user.id, role=role)
            keys[name], ids[name], ids[f"{name}-key"] = raw, user.id, key.id
        for name in ("ada", "bob", "carol"):
            auth = {"authorization": f"Bearer {keys[name]}"}
            with httpx.Client(base_url=corral.url, headers=auth, timeout=30) as c:
                body = {"agent": "command", "command": "true", "repo": str(repo), "task": "t"}
                assert c.post("/api/v1/runs", json=body).status_code == 201
                ask = {"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]}
                assert c.post("/v1/chat/completions", json=ask).status_code == 200
        yield Org(corral, keys, ids)


def _spans(org: Org, who: str) -> list[dict[str, Any]]:
    """``who``'s view of the gateway's model calls (records are written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        found: list[dict[str, Any]] = org.cli(who, "spans", "search", "--kind", "llm_request")[
            "spans"
        ]
        everyone = org.cli("admin", "spans", "search", "--kind", "llm_request")["spans"]
        if len(everyone) >= 3 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_persons_key_lists_only_their_runs_and_spans(org: Org) -> None:
    """With ada's key in CORRAL_KEY (the admin key in CORRAL_ADMIN_KEY too), the same
    commands answer with ada's runs and model calls only; a team admin's key with the
    team's; the admin key with everyone's."""
    org.keys["admin"] = org.corral.admin_key
    owners = {n: {r["owner"] for r in org.cli(n, "runs", "list")["runs"]} for n in org.keys}
    assert owners == {
        "ada": {"ada"},
        "bob": {"bob"},
        "carol": {"carol"},
        "lead": {"ada", "bob"},
        "admin": {"ada", "bob", "carol"},
    }
    users = {name: {s["user_id"] for s in _spans(org, name)} for name in ("ada", "lead", "admin")}
    assert users == {
        "ada": {org.ids["ada"]},
        "lead": {org.ids["ada"], org.ids["bob"]},
        "admin": {org.ids["ada"], org.ids["bob"], org.ids["carol"]},
    }
    alone = org.cli("ada", "runs", "list", admin_too=False)["runs"]
    assert [r["owner"] for r in alone] == ["ada"]


def test_the_directory_commands_answer_within_a_persons_key(org: Org) -> None:
    """`corral teams list`, `users list` and `keys list` with a person's key answer with
    that person's team, that person and their keys; a team admin's with the team's."""
    teams = {who: [t["name"] for t in org.cli(who, "teams", "list")] for who in ("ada", "lead")}
    assert teams == {"ada": ["payments"], "lead": ["payments"]}
    assert [u["name"] for u in org.cli("carol", "users", "list")] == ["carol"]
    assert {u["name"] for u in org.cli("lead", "users", "list")} >= {"ada", "bob"}
    mine = org.cli("ada", "keys", "list")
    assert {k["user"] for k in mine} == {"ada"}
    assert {k["user"] for k in org.cli("lead", "keys", "list")} >= {"ada", "bob"}
    assert org.cli("ada", "models", "list")
