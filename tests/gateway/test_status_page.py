"""The status page: figures naming no tenant for anyone, teams and spend for the org admin;
HEAD / answers 200 for agents that probe it."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import ADMIN_KEY, Running


def _call(corral: Running) -> None:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(
        corral.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {corral.key}"},
    ).raise_for_status()
    corral.records()


def test_the_page_without_the_admin_key_names_no_team_and_no_spend(corral: Running) -> None:
    """Unauthenticated, or with a key that only calls models: counts, no team, no cost, no
    store location (before: every team's name and spend, to anyone on the port)."""
    _call(corral)
    for headers in ({}, {"authorization": f"Bearer {corral.key}"}):
        page = httpx.get(corral.url + "/", headers=headers)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "payments" not in page.text
        assert "cost (USD)" not in page.text
        assert "Usage by model" not in page.text
        assert corral.app.store.describe() not in page.text
        assert "<h2>Requests, last 24 hours</h2><p>1</p>" in page.text
        assert corral.key not in page.text
    assert httpx.head(corral.url + "/").status_code == 200
    assert httpx.get(corral.url + "/nope").status_code == 404


def test_the_admin_key_shows_usage_by_team_and_model(corral: Running) -> None:
    _call(corral)
    page = httpx.get(corral.url + "/", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert page.status_code == 200
    assert "payments" in page.text
    assert "Usage by model" in page.text
    assert "sim-economy" in page.text
    assert "cost (USD)" in page.text
    assert corral.key not in page.text


def test_a_wrong_key_is_told_so(corral: Running) -> None:
    page = httpx.get(corral.url + "/", headers={"authorization": "Bearer sk-corral-nope"})
    assert page.status_code == 401
    assert "payments" not in page.text
