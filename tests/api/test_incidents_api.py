"""``/api/v1/incidents`` and ``/api/v1/guards`` on a live Corral, on SQLite and PostgreSQL:
what each key sees, who may act, and that another team's incident is 404 everywhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from corral.guards.incidents import Incident, IncidentService
from corral.guards.model import Finding, Subject
from corral.identity.service import DEFAULT_ORG_ID, IdentityService

if TYPE_CHECKING:
    from conftest import Corral


@dataclass
class World:
    """Team payments (ada owns incidents there; bob is a teammate; lead its admin; ada's run
    has a key of its own) and team search (carl, with an incident of his own)."""

    corral: Corral
    incidents: IncidentService
    ids: dict[str, str]  # user name -> user id
    keys: dict[str, str]  # ada, bob, lead, run, carl, search_lead, admin -> secret

    def fire(self, team: str, owner: str, subject: Subject, n: int = 8) -> Incident:
        run_id = subject.id if subject.kind == "run" else None
        key_id = subject.id if subject.kind == "key" else "key_of_run"
        finding = Finding(
            detector="repeated_request",
            message=f"the same request was sent {n} times in a row",
            numbers={"repeats": n, "threshold": 8},
            span_ids=("aa" * 8, "bb" * 8),
        )
        incident, _ = self.incidents.record_finding(
            subject=subject, org_id=DEFAULT_ORG_ID, team_id=self.ids[team],
            owner_id=self.ids[owner], run_id=run_id, key_id=key_id, finding=finding,
            action="sequester",
        )  # fmt: skip
        return incident

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> Any:
        with self.corral.client(self.keys[who]) as c:
            return c.request(method, f"/api/v1{path}", **kwargs)


@pytest.fixture
def world(corral: Corral) -> World:
    app = corral.app
    identity = IdentityService(app.store, app.clock)
    ids: dict[str, str] = {}
    keys: dict[str, str] = {"admin": corral.admin_key}
    for team_name, people in (("payments", ("ada", "bob", "lead")), ("search", ("carl", "sl"))):
        team = identity.create_team(team_name)
        ids[team_name] = team.id
        for person in people:
            user = identity.create_user(person, team.id)
            ids[person] = user.id
            role = "team_admin" if person in ("lead", "sl") else "virtual"
            key, keys[person] = identity.create_key(team.id, user.id, role=role)
            ids[f"{person}_key"] = key.id
    _, keys["run"] = identity.create_key(
        ids["payments"], ids["ada"], run_id="run_ada", parent=ids["ada_key"]
    )
    return World(corral, IncidentService(app.store, app.clock), ids, keys)


ROUTES = (
    ("GET", "/incidents/{id}", None),
    ("POST", "/incidents/{id}/ack", {"comment": "looking"}),
    ("POST", "/incidents/{id}/release", None),
    ("POST", "/incidents/{id}/kill", {"comment": "stop"}),
)


def test_a_team_sees_its_own_incidents(world: World) -> None:
    """A person's key lists its team's incidents (a teammate's included) and not another
    team's; the admin lists all, or one team's; the answer names teams and owners."""
    mine = world.fire("payments", "ada", Subject("run", "run_ada"))
    teammate = world.fire("payments", "bob", Subject("key", world.ids["bob_key"]))
    other = world.fire("search", "carl", Subject("run", "run_carl"))

    listed = world.call("bob", "GET", "/incidents")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [i["id"] for i in body["incidents"]] == [teammate.id, mine.id]
    assert body["next_before"] is None
    assert other.id not in listed.text
    first = body["incidents"][1]
    assert (first["team"], first["owner"], first["state"]) == ("payments", "ada", "open")
    assert first["evidence"][0]["numbers"] == {"repeats": 8, "threshold": 8}
    assert first["evidence"][0]["at"].endswith("Z")
    assert first["events"] == []  # the timeline is on a single incident

    everything = world.call("admin", "GET", "/incidents").json()["incidents"]
    assert {i["id"] for i in everything} == {mine.id, teammate.id, other.id}
    only_search = world.call("admin", "GET", "/incidents", params={"team": "search"}).json()
    assert [i["id"] for i in only_search["incidents"]] == [other.id]
    by_run = world.call("lead", "GET", "/incidents", params={"run": "run_ada"}).json()
    assert [i["id"] for i in by_run["incidents"]] == [mine.id]
    released = world.call("ada", "GET", "/incidents", params={"state": "released"}).json()
    assert released["incidents"] == []

    shown = world.call("ada", "GET", f"/incidents/{mine.id}")
    assert shown.status_code == 200, shown.text
    [opened] = shown.json()["events"]
    assert (opened["kind"], opened["actor"], opened["actor_name"]) == (
        "opened", "guard:repeated_request", "guard:repeated_request",
    )  # fmt: skip
    assert opened["data"]["span_ids"] == ["aa" * 8, "bb" * 8]


def test_listing_pages_and_refuses_a_bad_state(world: World) -> None:
    made = [world.fire("payments", "ada", Subject("run", f"run_{i}")) for i in range(5)]
    seen: list[str] = []
    before = None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = world.call("ada", "GET", "/incidents", params=params).json()
        seen += [i["id"] for i in page["incidents"]]
        before = page["next_before"]
        if before is None:
            break
    assert sorted(seen) == sorted(i.id for i in made)
    assert len(seen) == 5

    bad = world.call("ada", "GET", "/incidents", params={"state": "closed"})
    assert bad.status_code == 400
    assert "open, acknowledged, released, killed" in bad.json()["error"]["message"]


def test_another_teams_incident_is_404_on_every_route(world: World) -> None:
    """carl (team search), and search's admin, replay payments' incident id on every route:
    each answer is exactly that for an id that does not exist."""
    theirs = world.fire("payments", "ada", Subject("run", "run_ada"))
    for who in ("carl", "sl"):
        for method, path, body in ROUTES:
            foreign = world.call(who, method, path.format(id=theirs.id), json=body)
            missing = world.call(who, method, path.format(id="inc_000000000000"), json=body)
            assert foreign.status_code == 404, (who, path, foreign.text)
            assert foreign.json() == missing.json() | {
                "error": {**missing.json()["error"], "message": f"incident {theirs.id} not found"}
            }
        as_cursor = world.call(who, "GET", "/incidents", params={"before": theirs.id})
        assert as_cursor.status_code == 404
        assert as_cursor.json()["error"]["message"].startswith(f"incident {theirs.id} not found")
        other_team = world.call(who, "GET", "/incidents", params={"team": "payments"})
        assert other_team.status_code == 404
        assert world.call(who, "GET", "/guards", params={"team": "payments"}).status_code == 404
    assert world.incidents.get(theirs.id).state == "open"


def test_a_run_key_may_do_none_of_it(world: World) -> None:
    incident = world.fire("payments", "ada", Subject("run", "run_ada"))
    routes = [(m, p.format(id=incident.id), b) for m, p, b in ROUTES]
    routes += [
        ("GET", "/incidents", None),
        ("GET", "/guards", None),
        ("GET", "/guards/kill-switches", None),
        ("POST", "/guards/kill-switch", {"on": True, "team": "payments"}),
    ]
    for method, path, body in routes:
        refused = world.call("run", method, path, json=body)
        assert refused.status_code == 403, (path, refused.text)
        assert "a run's own key may not" in refused.json()["error"]["message"]
    assert world.incidents.get(incident.id).state == "open"


def test_a_teammate_who_does_not_own_it_may_not_act(world: World) -> None:
    """bob sees ada's incident but may not acknowledge, release or kill it: 403 naming who
    may; nothing changes."""
    incident = world.fire("payments", "ada", Subject("run", "run_ada"))
    for _, path, body in ROUTES[1:]:
        refused = world.call("bob", "POST", path.format(id=incident.id), json=body)
        assert refused.status_code == 403, refused.text
        message = refused.json()["error"]["message"]
        assert "owner, its team's admin or the organisation admin" in message
        assert incident.id in message
    assert world.incidents.get(incident.id).state == "open"
    assert len(world.incidents.get(incident.id).events) == 1
    nul = world.call("ada", "POST", f"/incidents/{incident.id}/ack", json={"comment": "a\x00b"})
    assert nul.status_code == 400, nul.text
    assert "comment may not contain NUL" in nul.json()["error"]["message"]
    extra = world.call("ada", "POST", f"/incidents/{incident.id}/ack", json={"note": "x"})
    assert extra.status_code == 400, extra.text


def test_kill_switch_rights(world: World) -> None:
    """Only admins flip switches: a person's key may not, a team admin only its own team's
    (another team is 404), never the organisation's."""
    cases = [
        ("ada", {"on": True, "team": "payments"}, 403, "team's admin key"),
        ("lead", {"on": True}, 403, "organisation admin key"),
        ("lead", {"on": True, "team": None}, 403, "organisation admin key"),
        ("lead", {"on": True, "team": "search"}, 404, "team 'search' not found"),
        ("admin", {"on": True, "team": "nowhere"}, 404, "team 'nowhere' not found"),
        ("admin", {"on": "maybe"}, 400, "on"),
        ("admin", {"team": "payments"}, 400, "on"),
    ]
    for who, body, status, text in cases:
        answer = world.call(who, "POST", "/guards/kill-switch", json=body)
        assert answer.status_code == status, (who, body, answer.text)
        assert text in answer.json()["error"]["message"], answer.text


def _until(check: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_owner_acknowledges_and_the_team_admin_releases_a_suspended_key(
    world: World,
) -> None:
    """A person's key a guard suspended (as the engine does, through the identity service):
    its owner acknowledges the incident (with another key of theirs), the team's admin
    releases it, and the key works again; a closed incident moves no more (409)."""
    app = world.corral.app
    identity = IdentityService(app.store, app.clock)
    laptop = world.ids["bob_key"]
    incident = world.fire("payments", "bob", Subject("key", laptop))
    assert identity.suspend_key(laptop, incident.id)
    _until(lambda: world.call("bob", "GET", "/me").status_code == 403, "the key is never refused")
    assert incident.id in world.call("bob", "GET", "/me").json()["error"]["message"]
    _, world.keys["bob2"] = identity.create_key(world.ids["payments"], world.ids["bob"])

    acked = world.call("bob2", "POST", f"/incidents/{incident.id}/ack", json={"comment": "mine"})
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged"
    ack = acked.json()["events"][-1]
    assert (ack["kind"], ack["actor"], ack["actor_name"], ack["detail"]) == (
        "ack", f"user:{world.ids['bob']}", "bob", "mine",
    )  # fmt: skip

    released = world.call("lead", "POST", f"/incidents/{incident.id}/release")
    assert released.status_code == 200, released.text
    body = released.json()
    assert body["state"] == "released"
    assert body["closed_at"] is not None
    kinds = [(e["kind"], e["actor_name"]) for e in body["events"]]
    assert kinds[:3] == [
        ("opened", "guard:repeated_request"), ("ack", "bob"), ("release", "lead"),
    ]  # fmt: skip
    assert any(
        e["kind"] == "action" and f"key {laptop} restored" in (e["detail"] or "")
        for e in body["events"]
    ), body["events"]
    _until(lambda: world.call("bob", "GET", "/me").status_code == 200, "the key stays refused")

    for verb in ("ack", "release", "kill"):
        again = world.call("admin", "POST", f"/incidents/{incident.id}/{verb}")
        assert again.status_code == 409, again.text
        assert f"incident {incident.id} is released" in again.json()["error"]["message"]


def test_the_admin_kills_a_keys_incident(world: World) -> None:
    """Killing a key's incident keeps the key suspended for good."""
    carl_key = world.ids["carl_key"]
    incident = world.fire("search", "carl", Subject("key", carl_key))
    killed = world.call("admin", "POST", f"/incidents/{incident.id}/kill", json={"comment": "no"})
    assert killed.status_code == 200, killed.text
    assert killed.json()["state"] == "killed"
    assert ("kill", "admin", "no") in [
        (e["kind"], e["actor"], e["detail"]) for e in killed.json()["events"]
    ]
    _until(lambda: world.call("carl", "GET", "/me").status_code == 403, "the key still works")
    assert "suspended" in world.call("carl", "GET", "/me").json()["error"]["message"]


def _chat(world: World, who: str) -> Any:
    with world.corral.client(world.keys[who]) as c:
        return c.post(
            "/v1/chat/completions",
            json={"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]},
        )


def test_kill_switches_stop_a_team_and_are_undone(world: World) -> None:
    """payments' admin stops payments: its keys are refused at the gateway, search's are
    not; each team sees the organisation's switch and its own; off undoes it."""
    on = world.call("lead", "POST", "/guards/kill-switch",
                    json={"on": True, "team": "payments", "comment": "runaway"})  # fmt: skip
    assert on.status_code == 200, on.text
    [switch] = on.json()["switches"]
    assert (switch["team"], switch["actor"], switch["comment"]) == (
        "payments", f"user:{world.ids['lead']}", "runaway",
    )  # fmt: skip
    stopped = _chat(world, "ada")
    assert stopped.status_code == 403, stopped.text
    assert "traffic_stopped" in stopped.text
    assert "traffic_stopped" not in _chat(world, "carl").text

    assert [s["team"] for s in world.call("ada", "GET", "/guards/kill-switches").json()[
        "switches"]] == ["payments"]  # fmt: skip
    assert world.call("carl", "GET", "/guards/kill-switches").json()["switches"] == []
    org = world.call("admin", "POST", "/guards/kill-switch", json={"on": True})
    assert {s["team_id"] for s in org.json()["switches"]} == {None, world.ids["payments"]}
    assert [s["team_id"] for s in world.call("carl", "GET", "/guards/kill-switches").json()[
        "switches"]] == [None]  # fmt: skip
    assert "traffic_stopped" in _chat(world, "carl").text

    world.call("admin", "POST", "/guards/kill-switch", json={"on": False})
    off = world.call("lead", "POST", "/guards/kill-switch", json={"on": False, "team": "payments"})
    assert off.status_code == 200, off.text
    assert off.json()["switches"] == []
    assert "traffic_stopped" not in _chat(world, "ada").text


def test_the_effective_detectors(world: World) -> None:
    """The admin reads the defaults, or a team's; a team's key reads its own team's."""
    defaults = world.call("admin", "GET", "/guards")
    assert defaults.status_code == 200, defaults.text
    assert defaults.json()["team"] is None
    detectors = defaults.json()["detectors"]
    assert detectors
    for d in detectors:
        assert d["thresholds"], d
        assert d["actions"], d
        assert set(d["overridden"]) <= set(d["thresholds"])
    own = world.call("ada", "GET", "/guards").json()
    assert own["team"] == "payments"
    assert [d["name"] for d in own["detectors"]] == [d["name"] for d in detectors]
    named = world.call("admin", "GET", "/guards", params={"team": "search"}).json()
    assert named["team"] == "search"
