"""A browser check's report is written inside the sandbox, where the change's own app runs
(and may outlive the check): whatever it holds, the verdict the review keeps is bounded and
typed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from corral.review import browser
from corral.review.agents import ReviewerAgents
from corral.runs.artifacts import LocalArtifactStore
from corral.runs.model import Run


def _run(run_id: str, exit_code: int) -> Run:
    fields: dict[str, Any] = dict.fromkeys(Run.__slots__)
    return Run(**{**fields, "id": run_id, "exit_code": exit_code, "state": "awaiting_review"})


def _verdict(tmp_path: Path, report: bytes, exit_code: int = 0) -> Any:
    store = LocalArtifactStore(tmp_path / "artifacts")
    store.put("run_web", f"{browser.SCREENSHOTS}report.json", report)
    agents = ReviewerAgents(store=cast(Any, None), reviews=cast(Any, None), runs=cast(Any, None),
                            identity=cast(Any, None), artifacts=store)  # fmt: skip
    return agents._web_verdict(_run("run_web", exit_code))


def test_a_report_the_app_rewrote_is_cut_to_size(tmp_path: Path) -> None:
    huge = {"name": "n" * 10_000, "path": "/" + "p" * 10_000, "status": 200,
            "title": "t" * 150_000}  # fmt: skip
    small = {"name": "s", "path": "/", "status": 200, "title": "s"}
    pages = [huge, *[small] * 499]
    said = _verdict(tmp_path, json.dumps({"started": True, "pages": pages}).encode())
    assert said.verdict == "approve"
    assert len(said.comments) == 50
    (first, *_) = said.comments
    assert len(first["path"]) == 200
    assert len(first["text"]) < 300


def test_a_report_too_large_to_read_is_an_error(tmp_path: Path) -> None:
    """Past what is read of it (200 KB) a report is not parsed at all."""
    page = {"name": "home", "path": "/", "status": 200, "title": "t" * 1_000_000}
    said = _verdict(tmp_path, json.dumps({"started": True, "pages": [page]}).encode())
    assert said.verdict == "error"


def test_a_report_that_is_not_a_report_is_an_error(tmp_path: Path) -> None:
    for report in (b"\x00\xff not json", b"[1, 2]", b'{"pages": "x"}', b'{"pages": [1, null]}'):
        said = _verdict(tmp_path, report)
        assert said.verdict == "error", report
    forged = {"started": True, "pages": [{"name": "home", "path": "/", "status": "200"}]}
    said = _verdict(tmp_path, json.dumps(forged).encode())
    assert said.verdict == "error"  # a status that is not a number is no HTTP status
