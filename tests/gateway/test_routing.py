"""Fallback across deployments, context-window skips, circuit breakers, attempt records.

The primary deployment is the simulator with a fault in its upstream model
name (``sim-frontier+fault=429``), so only that deployment fails; the
fallback is a healthy simulator model. A dead provider (nothing listening)
stands for connection errors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from corral.cli import main
from corral.settings import ModelConfig, ProviderConfig
from corral.sim.config import SimConfig
from corral.sim.testing import running_sim
from corral.store.schema import spans
from tests.gateway.conftest import Running
from tests.gateway.conftest import gateway_corral as _gateway_corral
from tests.services import free_port

# These tests send the same request again and again on purpose (budgets, limits, fallback):
# guards would rightly stop such a key, so they are off here (tests/guards tests them).
gateway_corral = functools.partial(_gateway_corral, guards={"enabled": False})

PROTOCOLS = ("chat", "responses", "messages")


def model(name: str, upstream: str, *, provider: str = "sim", **extra: Any) -> ModelConfig:
    return ModelConfig(
        name=name,
        provider=provider,
        upstream_model=upstream,
        input_price=1.0,
        output_price=2.0,
        **extra,
    )


@contextlib.contextmanager
def routed(tmp_path: Path, primary_upstream: str, **settings: Any) -> Iterator[Running]:
    """A gateway whose model ``m`` fails as ``primary_upstream`` says and falls back to ``b``."""
    with running_sim(SimConfig(seed=1, fault_timeout_s=20)) as sim:
        providers = [
            ProviderConfig(name="sim", kind="sim", base_url=sim.url),
            ProviderConfig(name="dead", kind="sim", base_url=f"http://127.0.0.1:{free_port()}"),
        ]
        provider = "dead" if primary_upstream == "dead" else "sim"
        upstream = "sim-frontier" if provider == "dead" else primary_upstream
        models = [
            model("m", upstream, provider=provider, fallbacks=["b"]),
            model("b", "sim-economy", context_window=settings.pop("fallback_window", 200_000)),
        ]
        options = {"upstream_first_byte_timeout": 1.0, "route_deadline": 15.0, **settings}
        with gateway_corral(
            tmp_path / "home",
            f"sqlite:///{tmp_path / 'c.db'}",
            providers=providers,
            models=models,
            **options,
        ) as running:
            yield running


def call(
    running: Running, protocol: str, *, stream: bool, content: str = "hello"
) -> httpx.Response:
    headers = {"authorization": f"Bearer {running.key}", "anthropic-version": "2023-06-01"}
    messages = [{"role": "user", "content": content}]
    if protocol == "chat":
        path, body = "/v1/chat/completions", {"messages": messages, "max_tokens": 20}
    elif protocol == "responses":
        path, body = "/v1/responses", {"input": content, "max_output_tokens": 20}
    else:
        path, body = "/v1/messages", {"messages": messages, "max_tokens": 20}
    body.update(model="m", stream=stream)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        r = client.post(path, json=body, headers=headers)
        r.read()
        return r


def attempts_of(running: Running, request_id: str) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        with running.app.store.connect() as conn:
            rows = conn.execute(
                select(spans)
                .where(spans.c.request_id == request_id, spans.c.kind == "attempt")
                .order_by(spans.c.attempt)
            ).fetchall()
        if len(rows) >= 2 or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


# How each protocol's stream ends (max_tokens 20 cuts the answer: Responses says "incomplete").
TERMINAL = {
    "chat": b"data: [DONE]",
    "responses": b"event: response.incomplete",
    "messages": b"event: message_stop",
}

FAULTS = {
    "429": "rate_limited",
    "500": "server_error",
    "529": "overloaded",
    "timeout": "timeout",
    "context": "context_window_exceeded",
    "content_policy": "content_policy",
    "dead": "connection_error",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_error_class_falls_back_for_every_protocol(tmp_path: Path, fault: str) -> None:
    # retry_after=0: a 429/529 that asks for a pause would cool the primary, and the next
    # requests would skip it (tested on its own below)
    upstream = "dead" if fault == "dead" else f"sim-frontier+fault={fault}+retry_after=0"
    with routed(tmp_path, upstream, breaker_min_attempts=100) as running:  # keep it closed
        for protocol in PROTOCOLS:
            for stream in (False, True):
                started = time.monotonic()
                r = call(running, protocol, stream=stream)
                assert r.status_code == 200, (protocol, stream, r.text[:300])
                assert time.monotonic() - started < 10, "waited past the deadline"
                assert r.headers["x-corral-route"] == "sim/sim-economy"
                assert r.headers["x-corral-attempts"] == "2"
                assert FAULTS[fault] in r.headers["x-corral-fallback-from"]
                if stream:
                    assert TERMINAL[protocol] in r.content, "the stream did not end normally"
                rows = attempts_of(running, r.headers["x-corral-request-id"])
                assert [a.attempt for a in rows] == [1, 2]
                assert rows[0].status == "error"
                assert rows[0].error_class == FAULTS[fault]
                assert rows[0].cost_nusd == 0
                assert rows[1].status == "ok"
                assert rows[1].deployment == "sim/sim-economy"
                assert rows[1].cost_nusd > 0
        requests = running.records(wait_for=6)
        assert len(requests) == 6
        for request in requests:
            assert request.deployment == "sim/sim-economy"
            assert request.attributes["route"]["attempts"] == 2
            assert request.attributes["route"]["failed"][0][1] == FAULTS[fault]


def test_a_request_larger_than_the_fallbacks_window_never_goes_there(tmp_path: Path) -> None:
    with routed(tmp_path, "sim-frontier+fault=500", fallback_window=300) as running:
        r = call(running, "chat", stream=False, content="word " * 200)
        assert r.status_code == 500, r.text  # the primary's own answer: nowhere else to go
        (request,) = running.records()
        skipped = request.attributes["route"]["skipped"]
        assert any(d == "sim/sim-economy" and "context window 300" in why for d, why in skipped)
        with running.app.store.connect() as conn:
            tried = conn.execute(
                select(spans.c.deployment).where(spans.c.kind == "attempt")
            ).fetchall()
        assert [t.deployment for t in tried] == ["sim/sim-frontier+fault=500"]
        # The primary has the room: its own error (500) is what the client gets.


def test_the_primary_decides_for_itself_and_a_context_error_rules_out_smaller_windows(
    tmp_path: Path,
) -> None:
    # The estimate (~550 tokens) exceeds the primary's window of 300, but only the provider
    # knows: the primary is tried, and here it serves the request.
    with running_sim(SimConfig(seed=1)) as sim:
        providers = [ProviderConfig(name="sim", kind="sim", base_url=sim.url)]
        models = [model("m", "sim-frontier", context_window=300)]
        with gateway_corral(
            tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", providers=providers, models=models
        ) as running:
            assert call(running, "chat", stream=False, content="word " * 200).status_code == 200
    # A primary that answers "context window exceeded" proves the request is larger than its
    # window (128k): a fallback no larger is not tried.
    with routed(tmp_path, "sim-frontier+fault=context", fallback_window=128_000) as running:
        r = call(running, "chat", stream=False)
        assert r.status_code == 400
        assert "x-corral-attempts" not in r.headers
        (request,) = running.records()
        assert request.error_class == "context_window_exceeded"
        skipped = request.attributes["route"]["skipped"]
        assert any("already too small" in why for _, why in skipped)


def test_breaker_opens_then_recovers(tmp_path: Path) -> None:
    settings = {"breaker_min_attempts": 3, "breaker_cooldown": 1.0, "breaker_window": 30.0}
    with routed(tmp_path, "sim-frontier+fault=500", **settings) as running:
        for _ in range(3):
            assert call(running, "chat", stream=False).headers["x-corral-attempts"] == "2"
        status = running.app.breakers.status()
        assert status["sim/sim-frontier+fault=500"]["state"] == "open"
        admin = {"authorization": f"Bearer {running.corral.admin_key}"}
        metrics = httpx.get(f"{running.url}/metrics", headers=admin).text
        assert 'corral_breaker_state{deployment="sim/sim-frontier+fault=500"} 2.0' in metrics
        assert 'corral_breaker_opened_total{deployment="sim/sim-frontier+fault=500"} 1.0' in metrics
        r = call(running, "chat", stream=False)
        assert r.status_code == 200
        assert "x-corral-attempts" not in r.headers, "an open circuit was still tried"
        assert r.headers["x-corral-route"] == "sim/sim-economy"
        time.sleep(1.1)
        assert running.app.breakers.status()["sim/sim-frontier+fault=500"]["state"] == "half_open"
        r = call(running, "chat", stream=False)  # the probe fails: open again
        assert r.headers["x-corral-attempts"] == "2"
        assert running.app.breakers.status()["sim/sim-frontier+fault=500"]["state"] == "open"


def test_retry_after_cools_the_deployment(tmp_path: Path) -> None:
    with routed(tmp_path, "sim-frontier+fault=429+retry_after=1") as running:
        first = call(running, "chat", stream=False)
        assert first.headers["x-corral-attempts"] == "2"
        second = call(running, "chat", stream=False)
        assert second.status_code == 200
        assert "x-corral-attempts" not in second.headers, "the cooling deployment was tried"
        (request,) = [
            r
            for r in running.records(wait_for=2)
            if r.request_id == second.headers["x-corral-request-id"]
        ]
        assert ["sim/sim-frontier+fault=429+retry_after=1", "circuit open or cooling down"] in (
            [list(x) for x in request.attributes["route"]["skipped"]]
        )
        time.sleep(1.1)
        assert call(running, "chat", stream=False).headers["x-corral-attempts"] == "2"


def test_no_fallback_for_the_requests_own_errors(tmp_path: Path) -> None:
    with routed(tmp_path, "sim-frontier+fault=400") as running:
        r = call(running, "chat", stream=False)
        assert r.status_code == 400
        assert "x-corral-attempts" not in r.headers


def test_route_policy_sends_low_value_work_to_a_cheaper_tier(tmp_path: Path) -> None:
    policies = [
        {"task_class": "triage", "tier": "economy"},
        {"team": "payments", "priority": "low", "tier": "standard"},
        {"team": "payments", "allowed_tiers": ["standard", "economy"]},
    ]
    with gateway_corral(
        tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", route_policies=policies
    ) as running:

        def ask(model: str, **headers: str) -> httpx.Response:
            body = {
                "model": model,
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
            }
            headers = {"authorization": f"Bearer {running.key}", **headers}
            r = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
            return r

        triage = ask("sim-frontier", **{"x-corral-task-class": "triage"})
        assert triage.headers["x-corral-route"] == "sim/sim-economy"
        assert (
            "route policy 1 (task class triage): tier frontier -> economy"
            in (triage.headers["x-corral-route-reason"])
        )
        low = ask("sim-frontier", **{"x-corral-priority": "low"})
        assert low.headers["x-corral-route"] == "sim/sim-standard"
        capped = ask("sim-frontier")  # payments may not use frontier at all
        assert capped.headers["x-corral-route"] == "sim/sim-standard"
        assert "allowed" not in capped.headers["x-corral-route-reason"]
        plain = ask("sim-economy")
        assert plain.headers["x-corral-route"] == "sim/sim-economy"
        assert "x-corral-route-reason" not in plain.headers
        tier = ask("economy")  # a tier by name
        assert tier.headers["x-corral-route"] == "sim/sim-economy"
        rows = {r.request_id: r for r in running.records(wait_for=5)}
        row = rows[triage.headers["x-corral-request-id"]]
        assert row.model_requested == "sim-frontier"
        assert row.deployment == "sim/sim-economy"
        assert row.attributes["route"]["policy"].startswith("route policy 1")


def test_route_explain_and_breakers_through_the_api_and_cli(tmp_path: Path) -> None:
    policies = [{"task_class": "triage", "tier": "economy"}]
    with gateway_corral(
        tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", route_policies=policies
    ) as running:
        env = {"CORRAL_URL": running.url, "CORRAL_ADMIN_KEY": running.corral.admin_key}
        out = CliRunner().invoke(
            main,
            ["route", "explain", "--team", "payments", "--model", "sim-frontier", "--json"],
            env=env,
        )
        assert out.exit_code == 0, out.output

        found = json.loads(out.stdout)
        assert found["routed_to"] == "sim-frontier"
        assert [d["deployment"] for d in found["chain"]] == [
            "sim/sim-frontier",
            "sim/sim-standard",
            "sim/sim-economy",
        ]
        out = CliRunner().invoke(
            main,
            ["route", "explain", "--model", "sim-frontier", "--task-class", "triage"],
            env=env,
        )
        assert out.exit_code == 0, out.output
        assert "goes to economy: route policy 1 (task class triage)" in out.output
        assert "sim/sim-economy" in out.output
        missing = CliRunner().invoke(main, ["route", "explain", "--model", "nope"], env=env)
        assert missing.exit_code != 0
        assert "not in this gateway's catalog" in missing.output
        breakers = CliRunner().invoke(main, ["route", "breakers", "--json"], env=env)
        assert breakers.exit_code == 0, breakers.output
        assert json.loads(breakers.stdout) == {"breakers": {}}


@pytest.mark.parametrize("overflow", ["payg", "spill", "refuse"])
def test_reserved_capacity_is_used_first_then_the_contract_decides(
    tmp_path: Path, overflow: str
) -> None:
    """A provider with 3 reserved requests a minute at 50 % of catalog price; a fallback."""
    with running_sim(SimConfig(seed=1)) as sim:
        contract = {"reserved_rpm": 3, "reserved_price_factor": 0.5, "overflow": overflow}
        providers = [
            ProviderConfig(name="committed", kind="sim", base_url=sim.url, capacity=contract),
            ProviderConfig(name="payg", kind="sim", base_url=sim.url),
        ]
        models = [
            model("m", "sim-standard", provider="committed", fallbacks=["b"]),
            model("b", "sim-economy", provider="payg"),
        ]
        with gateway_corral(
            tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", providers=providers, models=models
        ) as running:
            clear_of_a_minute_boundary()
            answers = [call(running, "chat", stream=False) for _ in range(5)]
            routes = [r.headers.get("x-corral-route") for r in answers]
            assert routes[:3] == ["committed/sim-standard"] * 3
            if overflow == "payg":
                assert routes[3:] == ["committed/sim-standard"] * 2
            else:  # spill and refuse both move on when something else can serve
                assert routes[3:] == ["payg/sim-economy"] * 2
            rows = running.records("attempt", wait_for=5)
            sources = [(r.provider, r.cost_source) for r in rows]
            assert sources[:3] == [("committed", "contract")] * 3
            reserved, full = rows[0], rows[3]
            if overflow == "payg":
                assert full.cost_source == "computed"
                per_token = reserved.cost_nusd / (
                    reserved.input_tokens * 1 + reserved.output_tokens * 2
                )
                assert per_token == pytest.approx(500, rel=0.02)  # half of 1,000 nano-USD a unit

            env = {"CORRAL_URL": running.url, "CORRAL_ADMIN_KEY": running.corral.admin_key}
            out = CliRunner().invoke(main, ["capacity", "--json"], env=env)
            assert out.exit_code == 0, out.output
            (report,) = json.loads(out.stdout)["providers"]
            assert report["provider"] == "committed"
            hours = report["hours"]
            assert sum(h["reserved_attempts"] for h in hours) == 3
            assert sum(h["overflow_attempts"] for h in hours) == (2 if overflow == "payg" else 0)
            text = CliRunner().invoke(main, ["capacity"], env=env)
            assert "committed: reserved rpm 3" in text.output


def clear_of_a_minute_boundary(margin: float = 15.0) -> None:
    """Reserved capacity is counted per calendar minute: calls that straddle a minute would
    find it renewed. Start them with ``margin`` seconds of the minute left."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def test_a_contract_that_refuses_overflow_answers_429_when_nothing_else_can(
    tmp_path: Path,
) -> None:
    with running_sim(SimConfig(seed=1)) as sim:
        contract = {"reserved_rpm": 1, "overflow": "refuse"}
        providers = [
            ProviderConfig(name="committed", kind="sim", base_url=sim.url, capacity=contract)
        ]
        models = [model("m", "sim-standard", provider="committed")]
        with gateway_corral(
            tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", providers=providers, models=models
        ) as running:
            clear_of_a_minute_boundary()
            assert call(running, "chat", stream=False).status_code == 200
            refused = call(running, "messages", stream=False)
            assert refused.status_code == 429
            assert "refuses overflow" in refused.json()["error"]["message"]
            assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_route_policies_through_the_api_and_cli(tmp_path: Path) -> None:
    config = [{"team": "search", "allowed_tiers": ["economy"]}]  # not this key's team
    with gateway_corral(
        tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", route_policies=config
    ) as running:
        env = {"CORRAL_URL": running.url, "CORRAL_ADMIN_KEY": running.corral.admin_key}
        added = CliRunner().invoke(
            main, ["route", "add", "--task-class", "triage", "--tier", "economy", "--json"], env=env
        )
        assert added.exit_code == 0, added.output
        found = json.loads(added.stdout)
        rule_id = found["id"]
        assert [(p["number"], p["source"]) for p in found["policies"]] == [
            (1, "config"),
            (2, "store"),
        ]
        body = {
            "model": "sim-frontier",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        }
        headers = {"authorization": f"Bearer {running.key}", "x-corral-task-class": "triage"}
        r = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers)
        assert r.headers["x-corral-route"] == "sim/sim-economy"
        assert "route policy 2 (task class triage)" in r.headers["x-corral-route-reason"]

        bad = CliRunner().invoke(main, ["route", "add", "--tier", "premium"], env=env)
        assert bad.exit_code != 0
        assert "no such tier: premium" in bad.output
        listed = CliRunner().invoke(main, ["route", "policies"], env=env)
        assert "triage" in listed.output
        # A team admin may read, not write.
        with running.corral.client() as admin:
            lead = admin.post(
                "/api/v1/keys", json={"team": "payments", "user": "ada", "role": "team_admin"}
            ).json()["key"]
        refused = CliRunner().invoke(
            main, ["route", "remove", rule_id], env={**env, "CORRAL_ADMIN_KEY": lead}
        )
        assert refused.exit_code != 0
        removed = CliRunner().invoke(main, ["route", "remove", rule_id], env=env)
        assert removed.exit_code == 0, removed.output
        r = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers)
        assert r.headers["x-corral-route"] == "sim/sim-frontier"
        gone = CliRunner().invoke(main, ["route", "remove", rule_id], env=env)
        assert "no route policy" in gone.output
