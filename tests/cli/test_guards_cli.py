"""``corral incidents`` and ``corral guards`` driven through click against a live Corral
(CORRAL_URL, and the key in CORRAL_KEY)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from corral.cli import main
from corral.guards.incidents import Incident, IncidentService
from corral.guards.model import Finding, Subject
from corral.identity.service import DEFAULT_ORG_ID, IdentityService

if TYPE_CHECKING:
    from conftest import Corral, StartCorral


@dataclass
class Live:
    """A live Corral on SQLite; team payments (ada, bob, its admin lead, a run of ada's with
    a key of its own) and team search (carl)."""

    corral: Corral
    incidents: IncidentService
    ids: dict[str, str]
    keys: dict[str, str]

    def cli(self, who: str, *args: str, code: int = 0) -> Result:
        """``corral ARGS`` with ``who``'s key; the exit status must be ``code``."""
        env = {"CORRAL_URL": self.corral.url, "CORRAL_KEY": self.keys[who], "CORRAL_ADMIN_KEY": ""}
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    def json(self, who: str, *args: str) -> Any:
        """Run with --json; the output must be JSON and nothing else."""
        return json.loads(self.cli(who, *args, "--json").stdout)

    def fire(self, team: str, owner: str, subject: Subject, n: int = 8) -> Incident:
        finding = Finding(
            detector="repeated_request",
            message=f"the same request was sent {n} times in a row",
            numbers={"repeats": n, "threshold": 8},
            span_ids=("aa" * 8,),
        )
        incident, _ = self.incidents.record_finding(
            subject=subject, org_id=DEFAULT_ORG_ID, team_id=self.ids[team],
            owner_id=self.ids[owner], run_id=subject.id if subject.kind == "run" else None,
            key_id=subject.id if subject.kind == "key" else "key_of_run", finding=finding,
            action="sequester",
        )  # fmt: skip
        return incident


@pytest.fixture
def live(tmp_path: Path, start_corral: StartCorral) -> Iterator[Live]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with start_corral(tmp_path / "home", url, sim_url="http://127.0.0.1:9") as corral:
        app = corral.app
        identity = IdentityService(app.store, app.clock)
        ids: dict[str, str] = {}
        keys = {"admin": corral.admin_key}
        for team_name, people in (("payments", ("ada", "bob", "lead")), ("search", ("carl",))):
            team = identity.create_team(team_name)
            ids[team_name] = team.id
            for person in people:
                user = identity.create_user(person, team.id)
                ids[person] = user.id
                role = "team_admin" if person == "lead" else "virtual"
                key, keys[person] = identity.create_key(team.id, user.id, role=role)
                ids[f"{person}_key"] = key.id
        _, keys["run"] = identity.create_key(
            ids["payments"], ids["ada"], run_id="run_ada", parent=ids["ada_key"]
        )
        yield Live(corral, IncidentService(app.store, app.clock), ids, keys)


def test_incidents_are_listed_and_shown(live: Live) -> None:
    """list prints the team's incidents as a table (--json: the API's answer); show prints
    the owner, the evidence with its numbers and spans, and the timeline."""
    mine = live.fire("payments", "ada", Subject("run", "run_ada"), n=8)
    live.fire("payments", "ada", Subject("run", "run_ada"), n=9)
    laptop = live.fire("payments", "bob", Subject("key", live.ids["bob_key"]))
    theirs = live.fire("search", "carl", Subject("run", "run_carl"))

    table = live.cli("bob", "incidents", "list").stdout
    for text in (mine.id, laptop.id, "repeated_request", "sequester", "run run_ada", "ada"):
        assert text in table, text
    assert theirs.id not in table
    listed = live.json("bob", "incidents", "list")
    api = live.corral.get("/api/v1/incidents", live.keys["bob"]).json()
    assert listed == api
    assert [i["id"] for i in listed["incidents"]] == [laptop.id, mine.id]
    only_runs = live.json("admin", "incidents", "list", "--run", "run_ada", "--state", "open")
    assert [i["id"] for i in only_runs["incidents"]] == [mine.id]
    search = live.json("admin", "incidents", "list", "--team", "search")
    assert [i["id"] for i in search["incidents"]] == [theirs.id]

    paged = live.cli("bob", "incidents", "list", "--limit", "1")
    assert f"More: corral incidents list --before {laptop.id}" in paged.stderr
    rest = live.json("bob", "incidents", "list", "--limit", "1", "--before", laptop.id)
    assert [i["id"] for i in rest["incidents"]] == [mine.id]

    shown = live.cli("ada", "incidents", "show", mine.id).stdout
    for text in (
        f"incident  {mine.id}",
        "owner  ada",
        "team  payments",
        "about  run run_ada",
        "the same request was sent 8 times in a row",
        "repeats=9, threshold=8",
        "aa" * 8,
        "guard:repeated_request",
        "opened",
        "fired",
    ):
        assert text in shown, text
    assert (
        live.json("ada", "incidents", "show", mine.id)
        == live.corral.get(f"/api/v1/incidents/{mine.id}", live.keys["ada"]).json()
    )


def test_refusals_name_what_went_wrong(live: Live) -> None:
    """Another team's incident is not found; a teammate may not act on it; a run's key may
    do nothing; a person's key may not flip a kill switch; a bad --state is a usage error."""
    mine = live.fire("payments", "ada", Subject("run", "run_ada"))
    hidden = live.cli("carl", "incidents", "show", mine.id, code=1)
    assert f"incident {mine.id} not found (HTTP 404" in hidden.output
    for verb in ("ack", "release", "kill"):
        refused = live.cli("carl", "incidents", verb, mine.id, code=1)
        assert f"incident {mine.id} not found (HTTP 404" in refused.output
        teammate = live.cli("bob", "incidents", verb, mine.id, "--comment", "mine now", code=1)
        assert "only the incident's owner, its team's admin or the organisation admin" in (
            teammate.output
        )
        assert "(HTTP 403" in teammate.output
    assert "a run's own key may not" in live.cli("run", "incidents", "list", code=1).output
    switch = live.cli("bob", "guards", "kill-switch", "on", "--team", "payments", code=1)
    assert "team's admin key" in switch.output
    org = live.cli("lead", "guards", "kill-switch", "on", code=1)
    assert "organisation admin key" in org.output
    bad = live.cli("ada", "incidents", "list", "--state", "closed", code=2)
    assert "'closed' is not one of" in bad.output
    assert live.incidents.get(mine.id).state == "open"


def test_ack_release_and_kill(live: Live) -> None:
    """The owner acknowledges with a comment, the team's admin releases; the admin kills
    another team's key's incident; --json is the API's answer; a closed incident is a 409."""
    incident = live.fire("payments", "ada", Subject("key", live.ids["ada_key"]))
    acked = live.cli("ada", "incidents", "ack", incident.id, "--comment", "looking")
    assert acked.stdout.startswith(f"{incident.id} acknowledged: acknowledged.")
    released = live.json("lead", "incidents", "release", incident.id)
    assert released["state"] == "released"
    steps = [(e["kind"], e["actor_name"], e["detail"]) for e in released["events"]]
    assert ("ack", "ada", "looking") in steps
    assert ("release", "lead", None) in steps
    again = live.cli("ada", "incidents", "kill", incident.id, code=1)
    assert f"incident {incident.id} is released" in again.output
    assert "(HTTP 409" in again.output

    laptop = live.fire("search", "carl", Subject("key", live.ids["carl_key"]))
    killed = live.cli("admin", "incidents", "kill", laptop.id, "--comment", "leaked key")
    assert killed.stdout.startswith(f"{laptop.id} killed: killed.")
    assert f"key {live.ids['carl_key']} stays suspended" in killed.stdout
    shown = live.cli("admin", "incidents", "show", laptop.id).stdout
    assert "Actions taken" in shown
    assert "leaked key" in shown


def test_guards_show_and_the_kill_switch(live: Live) -> None:
    """guards show prints every detector with its thresholds and ladder; the team's admin
    switches its team off and on again, and the switch shows while it is on."""
    shown = live.cli("ada", "guards", "show").stdout
    api = live.corral.get("/api/v1/guards", live.keys["ada"]).json()
    assert "Detectors for team payments" in shown
    for detector in api["detectors"]:
        assert detector["name"] in shown
        first = next(iter(detector["thresholds"]))
        assert f"{first}=" in shown
    assert "Kill switches on: none." in shown
    as_json = live.json("admin", "guards", "show", "--team", "search")
    assert as_json["team"] == "search"
    assert as_json["switches"] == []

    on = live.cli("lead", "guards", "kill-switch", "on", "--team", "payments", "--comment", "loop")
    assert "Agent traffic of team payments is stopped." in on.stdout
    assert "loop" in on.stdout
    listed = live.json("ada", "guards", "show")["switches"]
    assert [(s["team"], s["comment"]) for s in listed] == [("payments", "loop")]
    assert live.json("carl", "guards", "show")["switches"] == []
    off = live.json("lead", "guards", "kill-switch", "off", "--team", "payments")
    assert off == {"switches": []}
    assert "Kill switches on: none." in live.cli("ada", "guards", "show").stdout


def test_the_commands_load_no_server_module(live: Live) -> None:
    """``corral incidents list`` and ``corral guards show`` run without importing the
    server (its store, web framework, settings), as every client command does."""
    from tests.cli.test_cli_client import SERVER_MODULES, imported

    env = {"CORRAL_URL": live.corral.url, "CORRAL_KEY": live.keys["ada"]}
    for argv in (["incidents", "list"], ["guards", "show", "--json"]):
        names, done = imported(argv, env)
        assert done.returncode == 0, done.stderr[-2000:]  # the command ran, and answered
        assert sorted(n for n in names if SERVER_MODULES.match(n)) == [], argv
