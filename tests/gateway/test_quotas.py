"""Budgets, limits and admission through the real gateway (one process, both stores).

Budgets here come from the config file (``budgets=[...]`` settings) so these
tests need no admin API; they apply once the team they name exists, at the
next reload (every 0.1 s here).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from corral.quota.rules import RuleSet
from tests.gateway.conftest import Running
from tests.gateway.conftest import gateway_corral as _gateway_corral

FAST = {"quota_refresh_interval": 0.1}

# These tests send the same request again and again on purpose (budgets, limits, fallback):
# guards would rightly stop such a key, so they are off here (tests/guards tests them).
gateway_corral = functools.partial(_gateway_corral, guards={"enabled": False})


def wait_rules(running: Running, budgets: int = 0, rates: int = 0) -> RuleSet:
    """Wait (bounded) until the gateway has loaded this many budget and rate rules."""
    deadline = time.monotonic() + 10
    while True:
        rules = running.app.quotas.ruleset
        if len(rules.budgets) >= budgets and len(rules.rates) >= rates:
            return rules
        assert time.monotonic() < deadline, "the rules never loaded"
        time.sleep(0.02)


@contextlib.contextmanager
def limited(tmp_path: Path, store_url: str, **settings: Any) -> Iterator[Running]:
    with gateway_corral(tmp_path / "home", store_url, **FAST, **settings) as running:
        wait_rules(
            running,
            budgets=sum(
                (b.get("usd") is not None) + (b.get("tokens") is not None)
                for b in settings.get("budgets", [])
            ),
            rates=len(settings.get("limits", [])),
        )
        yield running


def chat(running: Running, content: str = "hello", **extra: Any) -> httpx.Response:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": content}], **extra}
    headers = {"authorization": f"Bearer {running.key}"}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_budget_exhausted_is_402_in_each_protocol_naming_the_scope(
    tmp_path: Path, store_url: str
) -> None:
    budgets = [{"team": "payments", "tokens": 400, "window": "day"}]
    with limited(tmp_path, store_url, budgets=budgets) as running:
        admitted = 0
        while True:
            r = chat(running, max_tokens=50)
            if r.status_code != 200:
                break
            admitted += 1
            assert admitted < 50, "the budget never ran out"
        assert admitted >= 1
        assert r.status_code == 402
        error = r.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["type"] == "insufficient_quota"
        assert "team payments: daily token budget 400" in error["message"]
        assert "resets at" in error["message"]
        assert int(r.headers["retry-after"]) > 0

        client = running.track(openai.OpenAI(base_url=running.url + "/v1", api_key=running.key))
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model="sim-economy", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert caught.value.status_code == 402
        assert "team payments" in caught.value.message

        ac = running.track(anthropic.Anthropic(base_url=running.url, api_key=running.key))
        with pytest.raises(anthropic.APIStatusError) as refused:
            ac.messages.create(
                model="sim-economy", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 402
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["error"]["type"] == "billing_error"

        rows = running.records(wait_for=admitted + 3)
        refused_rows = [row for row in rows if row.status == "refused"]
        assert len(refused_rows) == 3
        for row in refused_rows:
            assert row.http_status == 402
            assert row.cost_nusd == 0
            decision = row.attributes["admission"]
            assert decision["decision"] == "refused"
            assert decision["check"] == "budget"
            assert decision["scope"] == f"team:{running.team_id}"
        ok = [row for row in rows if row.status == "ok"]
        spent = sum(
            r.input_tokens + r.cached_input_tokens + r.output_tokens + r.reasoning_tokens
            for r in ok
        )
        assert spent <= 400, "recorded spend overshot the token budget"
        for row in ok:
            assert row.attributes["admission"]["decision"] == "admitted"
            assert row.attributes["admission"]["lease"]


def test_output_cap_is_set_and_clamped_to_what_is_left(tmp_path: Path, store_url: str) -> None:
    # sim-economy output costs 2 USD/M: USD 0.0002 buys at most 100 output tokens.
    budgets = [{"user": "ada", "usd": 0.0002, "window": "month"}]
    long = "Write a very long essay about budgets. " * 3
    with limited(tmp_path, store_url, budgets=budgets) as running:
        r = chat(running, long)  # no max_tokens: Corral sets one, clamped to the budget
        assert r.status_code == 200, r.text
        (row,) = running.records()
        decision = row.attributes["admission"]
        assert decision["max_output"] < 100
        assert row.output_tokens + row.reasoning_tokens <= decision["max_output"]
        assert row.cost_nusd <= decision["reserved_nusd"] <= 200_000


def test_reservations_return_after_refusal_failure_and_settle(
    tmp_path: Path, store_url: str
) -> None:
    budgets = [{"team": "payments", "usd": 1.0, "window": "day"}]
    with limited(tmp_path, store_url, budgets=budgets) as running:
        assert chat(running, max_tokens=20).status_code == 200
        # An upstream failure settles at zero.
        headers = {"authorization": f"Bearer {running.key}", "x-sim-fault": "500"}
        body = {"model": "sim-economy", "messages": [{"role": "user", "content": "x"}]}
        r = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 500
        server = running.corral.server
        (budget,) = server.call(running.app.quotas.budget_status())
        deadline = time.monotonic() + 5
        while budget["reserved"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            (budget,) = server.call(running.app.quotas.budget_status())
        assert budget["reserved"] == 0
        rows = running.records(wait_for=2)
        assert budget["spent"] == pytest.approx(sum(r.cost_nusd for r in rows) / 1e9)


def test_degrade_to_the_cheaper_tier_then_refuse(tmp_path: Path, store_url: str) -> None:
    budgets = [{"team": "payments", "usd": 0.002, "window": "day", "soft_fraction": 0.3}]
    with limited(tmp_path, store_url, budgets=budgets) as running:
        client = running.track(httpx.Client(base_url=running.url, timeout=30))
        headers = {"authorization": f"Bearer {running.key}"}
        body = {
            "model": "sim-frontier",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "Say something long."}],
        }
        seen: list[httpx.Response] = []
        for _ in range(60):
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            seen.append(r)
            if r.status_code != 200:
                break
        degraded = [r for r in seen if "x-corral-degraded-to" in r.headers]
        assert degraded, "the soft limit never degraded a request"
        first = degraded[0]
        assert first.headers["x-corral-degraded-to"] == "sim-standard"
        assert "soft limit 30%" in first.headers["x-corral-soft-limit"]
        assert first.json()["model"] == "sim-standard"
        assert seen[0].headers.get("x-corral-degraded-to") is None
        # A request that refuses to be degraded keeps its model.
        r = client.post(
            "/v1/chat/completions", json=body, headers={**headers, "x-corral-degrade": "never"}
        )
        assert r.status_code in (200, 402)
        if r.status_code == 200:
            assert "x-corral-degraded-to" not in r.headers
            assert "x-corral-soft-limit" in r.headers
        # The hard limit then refuses.
        assert seen[-1].status_code == 402
        rows = running.records(wait_for=len(seen))
        decisions = [row.attributes["admission"]["decision"] for row in rows]
        assert "degraded" in decisions
        assert decisions[-1] == "refused"
        degraded_rows = [r for r in rows if r.attributes["admission"]["decision"] == "degraded"]
        assert all(r.model_requested == "sim-frontier" for r in degraded_rows)
        assert all(r.model_served == "sim-standard" for r in degraded_rows)
        assert all(
            r.attributes["admission"]["degraded_from"] == "sim-frontier" for r in degraded_rows
        )


def test_rpm_and_concurrency_refuse_with_retry_after(tmp_path: Path, store_url: str) -> None:
    # The key's id is known only once it exists: set the limits through the rules.
    with limited(tmp_path, store_url) as running:
        rules = running.app.quotas.rules
        rules.set_limits(rules.level("key", running.key_id), {"rpm": 3})
        rules.set_limits(rules.level("team", "payments"), {"concurrency": 2})
        wait_rules(running, rates=2)
        codes = [chat(running, max_tokens=5).status_code for _ in range(4)]
        assert codes[:3] == [200, 200, 200]
        r = chat(running, max_tokens=5)
        assert r.status_code == 429
        assert "requests per minute" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60

        rules.set_limits(rules.level("key", running.key_id), {"rpm": None})
        deadline = time.monotonic() + 10
        while ("key", running.key_id) in running.app.quotas.ruleset.limits:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        async def burst() -> list[int]:
            headers = {"authorization": f"Bearer {running.key}", "x-sim-tps": "50"}
            body = {
                "model": "sim-economy",
                "max_tokens": 25,
                "messages": [{"role": "user", "content": "count slowly"}],
            }
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as c:
                rs = await asyncio.gather(
                    *(c.post("/v1/chat/completions", json=body, headers=headers) for _ in range(6))
                )
            for r in rs:
                if r.status_code == 429:
                    assert "2 concurrent requests already running" in r.json()["error"]["message"]
            return [r.status_code for r in rs]

        codes = asyncio.run(burst())
        assert codes.count(200) == 2, codes
        assert codes.count(429) == 4, codes


def test_a_stream_longer_than_its_lease_keeps_its_reservation(
    tmp_path: Path, store_url: str
) -> None:
    budgets = [{"team": "payments", "usd": 1.0, "window": "day"}]
    with limited(tmp_path, store_url, budgets=budgets, quota_lease_ttl=1.0) as running:
        server, quotas = running.corral.server, running.app.quotas
        headers = {"authorization": f"Bearer {running.key}", "x-sim-tps": "15"}
        body = {
            "model": "sim-economy",
            "max_tokens": 45,
            "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about leases."}],
        }
        started = time.monotonic()
        held: list[float] = []
        with (
            httpx.Client(base_url=running.url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r,
        ):
            assert r.status_code == 200
            for _ in r.iter_raw():
                if time.monotonic() - started > 2.0 and not held:
                    (status,) = server.call(quotas.budget_status())
                    held.append(status["reserved"])
        assert time.monotonic() - started > 2.0, "the stream was too short to outlive its lease"
        assert held, "the stream ended before its lease would have"
        assert held[0] > 0, "the reservation lapsed while the stream was running"
        (row,) = running.records()
        deadline = time.monotonic() + 5
        (status,) = server.call(quotas.budget_status())
        while status["reserved"] and time.monotonic() < deadline:
            time.sleep(0.05)
            (status,) = server.call(quotas.budget_status())
        assert status["reserved"] == 0
        assert round(status["spent"] * 1e9) == row.cost_nusd
