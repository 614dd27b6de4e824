"""The status page shows per-team usage; HEAD / answers 200 for agents that probe it."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import Running


def test_status_page_shows_team_usage(corral: Running) -> None:
    body = {"model": "sim-economy", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(
        corral.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {corral.key}"},
    ).raise_for_status()
    corral.records()
    page = httpx.get(corral.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "payments" in page.text
    assert "sim-economy" in page.text
    assert corral.key not in page.text
    assert httpx.head(corral.url + "/").status_code == 200
    assert httpx.get(corral.url + "/nope").status_code == 404
