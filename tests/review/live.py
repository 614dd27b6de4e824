"""Reading a live Corral's reviews in tests: one review, and waiting for one to reach a
state (bounded)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.runs.conftest import Runs


def review(runs: Runs, run_id: str, key: str | None = None) -> dict[str, Any]:
    """``GET /api/v1/reviews/RUN`` as ``key`` (default: ada's), which must answer 200."""
    with runs.api(key) as c:
        r = c.get(f"/api/v1/reviews/{run_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def until(
    runs: Runs, run_id: str, done: Callable[[dict[str, Any]], Any], limit: float = 120
) -> dict[str, Any]:
    """The review once ``done`` says so, read every 0.2 s for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        found = review(runs, run_id)
        if done(found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
