"""Browser checks: a change to a small web app gets screenshots of two named pages on its
review, captured by headless Chromium (Debian's, through Playwright's executable_path)
from the app started in the sandbox on the changed workspace; a reviewer agent running
after the check finds them handed to it."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from corral.store.schema import review_verdicts, spans
from tests.review import live
from tests.runs.conftest import Runs, make_repo, shared_dir, start_runs

__all__ = ["shared_dir"]  # the fixture, shared with tests/runs

PAGES = {
    "index.html": "<html><head><title>Shop</title></head><body><h1>Shop</h1></body></html>\n",
    "about.html": "<html><head><title>About</title></head><body><p>About us</p></body></html>\n",
    "server.py": "print('not web code')\n",
}
WEB = {
    "paths": ["*.html"],
    "command": ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"],
    "port": 8000,
    "pages": [{"name": "home", "path": "/"}, {"name": "about", "path": "/about.html"}],
    "width": 1024,
    "height": 700,
}
LOOKS = ["sh", "-c", 'ls "$CORRAL_HANDOFF/screenshots"; echo "VERDICT: approve"']
EYES = """
[[conversations]]
name = "eyes"
match = "(?i)^you are eyes, a reviewer agent"

[[conversations.turns]]
text = "The pages render.\\nVERDICT: approve"
"""


@pytest.fixture
def web(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    repo = make_repo(shared_dir / "shop", PAGES)
    review = {
        "interval": 0.2,
        "web": WEB,
        "reviewers": [
            {"name": "looks", "profile": "command", "command": LOOKS},
            {"name": "eyes", "model": "sim-standard"},  # the reference agent
        ],
    }
    script = tmp_path / "script.toml"
    script.write_text(EYES)
    with start_runs(shared_dir, tmp_path, repo, review=review, sim_script=script) as live:
        yield live


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_web_change_gets_screenshots_of_its_named_pages(web: Runs) -> None:
    runs = web
    command = ["sh", "-c", "sed -i 's/Shop</Our shop</g' index.html"]
    run = runs.submit(command=command)
    assert runs.wait(run["id"])["state"] == "awaiting_review"

    def checked(review: dict[str, Any]) -> bool:
        verdicts = {v["reviewer"]: v["verdict"] for v in review["reviewers"]}
        return len(verdicts) == 3 and "pending" not in verdicts.values()

    review = live.until(runs, run["id"], checked)
    by = {v["reviewer"]: v for v in review["reviewers"]}
    assert by["web"]["verdict"] == "approve", (by["web"]["summary"], by["web"]["comments"])
    assert by["web"]["summary"] == "2 pages captured"
    pages = [c["text"] for c in by["web"]["comments"]]  # served from the changed workspace
    assert pages == ["home: HTTP 200, titled 'Our shop'", "about: HTTP 200, titled 'About'"]
    shots = {s["name"]: s for s in review["screenshots"]}
    assert set(shots) == {"home", "about"}
    with runs.api() as c:
        for name in ("home", "about"):
            got = c.get(shots[name]["url"])
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "image/png"
            assert _png_size(got.content) == (1024, 700)
        missing = c.get(f"/api/v1/reviews/{run['id']}/screenshots/nope.png")
        assert missing.status_code == 404
    # the reviewer agent ran after the check, with the screenshots handed to it
    assert by["looks"]["verdict"] == "approve"
    assert "home.png" in by["looks"]["summary"]
    assert "about.png" in by["looks"]["summary"]
    # the reference agent showed them to its model with the task: the gateway's record of
    # its call holds both images
    assert by["eyes"]["verdict"] == "approve", by["eyes"]
    app = runs.corral.app
    with app.store.connect() as conn:
        blobs = [
            row.request_blob
            for row in conn.execute(
                select(spans.c.request_blob).where(
                    spans.c.run_id == by["eyes"]["run_id"], spans.c.kind == "llm_request",
                    spans.c.source == "gateway",
                )
            )
        ]  # fmt: skip
    assert blobs
    asked = json.loads(app.blobs.get(blobs[0]) or b"{}")
    opening = asked["messages"][1]["content"]
    images = [p for p in opening if p.get("type") == "image_url"]
    assert len(images) == 2
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)


def test_a_change_that_touches_no_web_code_gets_no_browser_check(web: Runs) -> None:
    runs = web
    run = runs.submit(command=["sh", "-c", "echo \"print('x')\" > server.py"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    review = live.until(runs, run["id"], lambda r: any(v["verdict"] != "pending"
                                                   for v in r["reviewers"]))  # fmt: skip
    assert sorted(v["reviewer"] for v in review["reviewers"]) == ["eyes", "looks"]
    assert review["screenshots"] == []


def test_a_claim_whose_run_was_never_made_is_taken_over(web: Runs) -> None:
    """A server claims a reviewer for a revision and stops before making its run: after two
    minutes another server's look takes the claim over and makes the run, once."""
    runs = web
    run = runs.submit(command=["sh", "-c", "echo \"print('y')\" > server.py"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    review = live.until(runs, run["id"], lambda r: len(r["reviewers"]) == 2
                    and all(v["verdict"] != "pending" for v in r["reviewers"]))  # fmt: skip
    first = next(v["run_id"] for v in review["reviewers"] if v["reviewer"] == "looks")
    app = runs.corral.app
    stale = review_verdicts.c.reviewer == "looks"
    with app.store.begin() as conn:  # as the stopped server left it
        conn.execute(
            review_verdicts.update().where(stale)
            .values(verdict="pending", run_id=None, updated_at=time.time() - 300)
        )  # fmt: skip
    again = live.until(runs, run["id"], lambda r: any(
        v["reviewer"] == "looks" and v["verdict"] == "approve" for v in r["reviewers"]
    ))  # fmt: skip
    second = next(v["run_id"] for v in again["reviewers"] if v["reviewer"] == "looks")
    assert second not in (None, first)
    with runs.api(runs.corral.admin_key) as c:  # its run was made, once
        assert c.get(f"/api/v1/runs/{second}").json()["state"] == "delivered"
        listed = c.get("/api/v1/runs", params={"limit": 100}).json()["runs"]
    reviews_by_looks = [r for r in listed if r["owner"] == "reviewer-looks"]
    assert len(reviews_by_looks) == 2  # the first, and the one made for the stale claim
