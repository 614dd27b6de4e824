"""Guards on the gateway, with two Corral servers sharing one store: a person's key
hammering one request is suspended with an incident that person owns, refused by both
servers within a second, and released by the team admin (acceptance 3); a team's kill
switch refuses its keys on both within a second, leaves the other team alone, and is undone
by ``off`` (acceptance 4, the gateway half; the runs half is in test_runaway_fleet.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.identity.service import IdentityService
from corral.testing import ServerThread
from tests.conftest import Corral, run_corral
from tests.guards.test_webhooks import HANG, Receiver

CHAT = {"model": "sim-standard", "messages": [{"role": "user", "content": "status?"}]}
FAST = {"key_refresh_interval": 0.1, "record_flush_interval": 0.05}


@dataclass
class Pair:
    """Two servers on one store; team payments (ada, her key; lead, a team admin key) and
    team search (bob, his key)."""

    first: Corral
    second: Corral
    ada: str
    ada_key_id: str
    ada_id: str
    lead: str
    bob: str


@pytest.fixture
def pair(tmp_path: Path, store_url: str) -> Iterator[Pair]:
    with run_corral(tmp_path / "one", store_url, **FAST) as first:
        sim = first.app.sim
        assert sim is not None
        with run_corral(tmp_path / "two", store_url, sim_url=sim.url, **FAST) as second:
            identity = IdentityService(first.app.store, first.app.clock)
            payments, search = identity.create_team("payments"), identity.create_team("search")
            ada = identity.create_user("ada", payments.id)
            lead = identity.create_user("lead", payments.id)
            bob = identity.create_user("bob", search.id)
            ada_key, ada_raw = identity.create_key(payments.id, ada.id, name="ada-laptop")
            _, lead_raw = identity.create_key(payments.id, lead.id, role="team_admin")
            _, bob_raw = identity.create_key(search.id, bob.id)
            yield Pair(first, second, ada_raw, ada_key.id, ada.id, lead_raw, bob_raw)


def _chat(corral: Corral, key: str, content: str = "status?") -> httpx.Response:
    body = {**CHAT, "messages": [{"role": "user", "content": content}]}
    with httpx.Client(base_url=corral.url, timeout=30) as c:
        return c.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json=body)  # fmt: skip


def _within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until ``check`` held (asserting it did within ``seconds``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - start


def _api(corral: Corral, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(base_url=corral.url, timeout=30) as c:
        return c.request(method, path, headers={"authorization": f"Bearer {key}"}, **kwargs)


def test_a_person_hammering_one_request_is_suspended_everywhere_and_released(
    pair: Pair,
) -> None:
    client = openai.OpenAI(base_url=pair.first.url + "/v1", api_key=pair.ada, max_retries=0)
    refused: openai.PermissionDeniedError | None = None
    sent = 0
    deadline = time.monotonic() + 20
    while refused is None and time.monotonic() < deadline:
        try:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            sent += 1
        except openai.PermissionDeniedError as exc:
            refused = exc
    client.close()
    assert refused is not None, f"never suspended after {sent} calls"
    assert 5 <= sent <= 7, sent  # the threshold is 5; a call or two may be in flight
    assert "suspended by incident inc_" in refused.message
    # the other server refuses the key too, within a second of the first refusal
    _within(1.0, lambda: _chat(pair.second, pair.ada, "something else").status_code == 403)
    answer = _chat(pair.second, pair.ada, "and another")
    assert answer.json()["error"]["code"] == "key_suspended"
    # Anthropic's shape for the same refusal
    sdk = anthropic.Anthropic(base_url=pair.second.url, api_key=pair.ada, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError, match="suspended by incident inc_"):
        sdk.messages.create(model="sim-standard", max_tokens=16,
                            messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    sdk.close()
    # the incident: owned by ada, naming the detector and its evidence, seen by her team
    listed = _api(pair.first, pair.lead, "GET", "/api/v1/incidents").json()["incidents"]
    assert len(listed) == 1
    incident = _api(pair.first, pair.lead, "GET", f"/api/v1/incidents/{listed[0]['id']}").json()
    assert incident["detector"] == "repeated_request"
    assert incident["owner_id"] == pair.ada_id
    assert incident["key_id"] == pair.ada_key_id
    assert incident["subject"] == "key"
    evidence = incident["evidence"][0]
    assert evidence["numbers"]["count"] == evidence["numbers"]["threshold"] == 5
    assert len(evidence["span_ids"]) == 5
    assert incident["action"] == "sequester"
    # bob (another team) does not see it
    assert (
        _api(pair.first, pair.bob, "GET", f"/api/v1/incidents/{incident['id']}").status_code == 404
    )
    # the team admin releases it: both servers take the key again within a second
    released = _api(pair.second, pair.lead, "POST", f"/api/v1/incidents/{incident['id']}/release",
                    json={"comment": "fixed her script"})  # fmt: skip
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "released"
    for corral in (pair.first, pair.second):
        _within(1.0, _answers(corral, pair.ada, 200))
    shown = _api(pair.first, pair.lead, "GET", f"/api/v1/incidents/{incident['id']}").json()
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[0] == "opened", kinds
    assert {"action", "release"} <= set(kinds), kinds


def _answers(corral: Corral, key: str, status: int) -> Callable[[], bool]:
    return lambda: _chat(corral, key, "one more").status_code == status


def test_a_healthy_session_is_never_suspended(pair: Pair) -> None:
    """A person chatting (different requests, a question asked again, a retry or two) opens
    no incident: every call judged, no detector crossed."""
    asked = [f"question {n % 12}" for n in range(30)] + ["retry"] * 3
    for content in asked:
        assert _chat(pair.first, pair.ada, content).status_code == 200
    _within(5.0, lambda: _guard_metric(pair.first, "corral_guard_signals_judged_total") >= 33)
    assert _guard_metric(pair.first, "corral_guard_findings_total") == 0
    listed = _api(pair.first, pair.lead, "GET", "/api/v1/incidents").json()["incidents"]
    assert listed == []


def _guard_metric(corral: Corral, name: str) -> float:
    """The sum of ``name`` over its labels, from the server's /metrics."""
    text = corral.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_the_kill_switch_stops_one_team_on_both_servers_and_off_undoes_it(pair: Pair) -> None:
    assert _chat(pair.first, pair.ada).status_code == 200
    on = _api(pair.first, pair.lead, "POST", "/api/v1/guards/kill-switch",
              json={"on": True, "team": "payments", "comment": "runaway spend"})  # fmt: skip
    assert on.status_code == 200, on.text
    for corral in (pair.first, pair.second):
        _within(1.0, _answers(corral, pair.ada, 403))
    stopped = _chat(pair.second, pair.ada, "y").json()["error"]
    assert stopped["code"] == "traffic_stopped"
    assert "payments" in stopped["message"]
    assert _chat(pair.second, pair.bob, "z").status_code == 200  # the other team goes on
    # a person's key may not touch the switch; the other team's admin neither
    denied = _api(pair.first, pair.ada, "POST", "/api/v1/guards/kill-switch",
                  json={"on": False, "team": "payments"})  # fmt: skip
    assert denied.status_code == 403
    off = _api(pair.second, pair.lead, "POST", "/api/v1/guards/kill-switch",
               json={"on": False, "team": "payments"})  # fmt: skip
    assert off.status_code == 200, off.text
    for corral in (pair.first, pair.second):
        _within(1.0, _answers(corral, pair.ada, 200))


def test_a_warning_reaches_the_caller_before_the_ladder_suspends(
    tmp_path: Path, store_url: str
) -> None:
    """A ladder of warn then sequester: the first firing puts ``x-corral-guard-warning`` on
    the caller's responses (and keeps serving), the second suspends the key."""
    guards = {"detectors": {"repeated_request": {"actions": ["warn", "sequester"]}}}
    with run_corral(tmp_path / "home", store_url, guards=guards, **FAST) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        team = identity.create_team("payments")
        ada = identity.create_user("ada", team.id)
        _, key = identity.create_key(team.id, ada.id)
        warned: list[str] = []
        statuses: list[int] = []
        for _ in range(40):
            answer = _chat(corral, key)
            statuses.append(answer.status_code)
            if "x-corral-guard-warning" in answer.headers:
                warned.append(answer.headers["x-corral-guard-warning"])
            if answer.status_code == 403:
                break
            time.sleep(0.02)
        assert warned, statuses
        assert warned[0].startswith("inc_"), warned
        assert "sent 5 times" in warned[0], warned
        assert statuses[-1] == 403, statuses
        assert 10 <= len(statuses) <= 14, statuses  # five more identical calls after the warning
        incidents = corral.get("/api/v1/incidents").json()["incidents"]
        assert len(incidents) == 1
        assert incidents[0]["action"] == "sequester"


def test_incident_webhooks_are_delivered_retried_and_never_block_the_gateway(
    tmp_path: Path, store_url: str
) -> None:
    """Acceptance 5, end to end: the team's receiver hangs past the timeout on the first
    delivery and fails the next; the incident still arrives (retried, each attempt on its
    timeline), and the gateway answered everyone meanwhile. Another team's URL gets only
    its own incidents."""
    ours, theirs = Receiver(HANG, 500), Receiver()
    with ServerThread(ours.app) as our_hook, ServerThread(theirs.app) as their_hook:
        guards = {
            "webhook_url": f"{their_hook.url}/hook",
            "teams": [{"team": "payments", "webhook_url": f"{our_hook.url}/hook"}],
        }
        with run_corral(tmp_path / "home", store_url, guards=guards, **FAST) as corral:
            identity = IdentityService(corral.app.store, corral.app.clock)
            team = identity.create_team("payments")
            ada = identity.create_user("ada", team.id)
            _, key = identity.create_key(team.id, ada.id)
            _, other = identity.create_key(team.id, ada.id)
            while _chat(corral, key).status_code == 200:
                pass
            # the receiver hangs on the first delivery: the gateway does not wait for it
            started = time.monotonic()
            for n in range(20):
                assert _chat(corral, other, f"question {n}").status_code == 200
            assert time.monotonic() - started < 10
            assert len(ours.received) == 1
            # it times out (5 s), the second attempt gets a 500, the third a 200
            _within(20.0, lambda: len(ours.received) >= 3)
            ours.release.set()
            delivered = ours.received[-1].json()
            assert delivered["event"] == "incident.opened"
            incident = delivered["incident"]
            assert incident["detector"] == "repeated_request"
            assert incident["owner_id"] == ada.id
            assert ours.received[-1].headers["x-corral-event"] == "incident.opened"
            ids = {r.headers["x-corral-delivery"] for r in ours.received}
            assert len(ids) == 1  # one delivery, retried
            assert theirs.received == []
            shown = corral.get(f"/api/v1/incidents/{incident['id']}").json()
            attempts = [e["detail"] for e in shown["events"] if e["kind"] == "webhook"]
            assert len(attempts) == 3, attempts
            assert "delivered" in attempts[-1]


def test_an_error_storm_is_throttled_first_then_sequestered(tmp_path: Path, store_url: str) -> None:
    """A key ignoring its spent budget (a storm of 402s): the first firing throttles it
    (429 ``guard_throttled`` with Retry-After, naming the incident), the second suspends it."""
    guards = {"throttle_rpm": 600, "detectors": {"error_storm": {"thresholds": {"errors": 5}}}}
    with run_corral(tmp_path / "home", store_url, guards=guards, **FAST) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        team = identity.create_team("payments")
        ada = identity.create_user("ada", team.id)
        key, raw = identity.create_key(team.id, ada.id)
        with corral.client() as c:
            budget = {"scope": {"kind": "key", "ref": key.id}, "resource": "usd",
                      "window": "day", "limit": 0.000000001}  # fmt: skip
            assert c.put("/api/v1/budgets", json=budget).status_code == 200
        seen: list[int] = []
        throttled: httpx.Response | None = None
        for n in range(200):
            answer = _chat(corral, raw, f"attempt {n}")
            seen.append(answer.status_code)
            if answer.status_code == 429 and throttled is None:
                throttled = answer
            if answer.status_code == 403:
                break
        assert throttled is not None, seen
        assert seen[:5] == [402] * 5, seen
        error = throttled.json()["error"]
        assert error["code"] == "guard_throttled"
        assert "inc_" in error["message"]
        assert float(throttled.headers["retry-after"]) >= 0
        assert seen[-1] == 403, seen  # the storm went on under the throttle: suspended
        incidents = corral.get("/api/v1/incidents").json()["incidents"]
        assert len(incidents) == 1
        assert incidents[0]["action"] == "sequester"
        assert [e["action"] for e in incidents[0]["evidence"]] == ["throttle", "sequester"]
