"""After-run steps, the launcher's stats and the artifact store, in a live Corral.

The executor's ``steps`` is the plain list an extension appends to (the lead wires
entry points to it); these tests append to it as an extension would."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from corral.runs.artifacts import LocalArtifactStore
from corral.runs.outputs import Folder, Unreadable
from corral.runs.steps import StepContext
from tests.runs.conftest import Runs


class Review:
    """Runs after the diff and the report: sees what they left, adds an artifact and a note."""

    name = "review"

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bytes]] = []

    async def run(self, ctx: StepContext) -> None:
        with ctx.store.open(ctx.run.id, "report.md") as report:
            text = report.read_at(0, 1000)
        self.seen.append((ctx.run.id, "diff" in ctx.facts, text))
        ctx.store.put(ctx.run.id, "artifacts/review.md", b"looks fine\n")
        ctx.note("reviewed by the review step")


class Explode:
    name = "explode"

    async def run(self, ctx: StepContext) -> None:
        raise RuntimeError("the reviewer is unavailable")


def test_steps_run_in_order_after_the_diff_and_report_and_may_add_notes(runs: Runs) -> None:
    review = Review()
    runs.corral.app.executor.steps.append(review)
    run = runs.submit(command=["sh", "-c", "echo done > /artifacts/report.md; echo x > README"])
    done = runs.wait(run["id"])
    assert done["state"] == "awaiting_review", done
    assert done["reason"] == "the agent finished: 1 file changed; reviewed by the review step"
    assert review.seen == [(run["id"], True, b"done\n")]
    assert runs.artifact(run["id"], "artifacts/review.md") == "looks fine\n"


def test_a_step_that_raises_fails_the_run_naming_it_and_ends_the_list(runs: Runs) -> None:
    review = Review()
    runs.corral.app.executor.steps.extend([Explode(), review])
    run = runs.submit(command=["sh", "-c", "echo x > README"])
    done = runs.wait(run["id"])
    assert done["state"] == "failed", done
    assert done["reason"] == "the after-run step 'explode' failed: the reviewer is unavailable"
    assert review.seen == [], "the steps after the failing one did not run"
    assert "-hello\n+x\n" in runs.artifact(run["id"], "diff.patch"), "the steps before it did"


def test_the_launcher_measures_a_live_run(runs: Runs) -> None:
    """Memory, processes and CPU time of a live run, from its cgroups (what guards read)."""
    run = runs.submit(
        command=["sh", "-c", "touch /artifacts/up; while [ ! -e /scratch/go ]; do :; done"]
    )
    root = runs.dir / "runs" / run["id"]
    deadline = time.monotonic() + 30
    while not (root / "artifacts" / "up").exists():
        assert time.monotonic() < deadline, runs.get(run["id"])
        time.sleep(0.05)
    time.sleep(0.3)  # the busy loop accrues CPU time
    stats = runs.corral.app.executor.launcher.stats(run["id"])
    (root / "scratch" / "go").touch()
    assert stats.memory_bytes is not None, stats
    assert stats.memory_bytes > 0, stats
    assert stats.processes is not None, stats
    assert stats.processes >= 2, stats  # bwrap's init, sh
    assert stats.cpu_seconds is not None, stats
    assert stats.cpu_seconds > 0.1, stats
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    assert runs.corral.app.executor.launcher.stats(run["id"]).memory_bytes is None  # released


def test_the_local_store_is_private_and_takes_plain_names_only(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    store.put("run_a", "artifacts/notes/n.md", b"n\n")
    assert stat.S_IMODE(os.stat(tmp_path / "artifacts").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "artifacts" / "run_a").st_mode) == 0o700
    with store.open("run_a", "artifacts/notes/n.md") as opened:
        assert opened.read_at(0, 10) == b"n\n"
    assert store.list("run_a", "artifacts") == [("notes/n.md", 2)]
    for name in ("../run_b/x", "/etc/passwd", "artifacts/../../x", ""):
        with pytest.raises(Unreadable):
            store.put("run_a", name, b"x")
        with pytest.raises(Unreadable):
            store.open("run_a", name)
    with pytest.raises(Unreadable):
        store.open("../etc", "passwd")


def test_collect_copies_regular_files_only_within_its_budget(tmp_path: Path) -> None:
    """Links, pipes and files past the budget are left out, and named; a download of a link
    says it was one."""
    run = tmp_path / "run"
    (run / "artifacts" / "sub").mkdir(parents=True)
    (run / "artifacts" / "a.txt").write_bytes(b"a" * 10)
    (run / "artifacts" / "sub" / "b.txt").write_bytes(b"b" * 10)
    (run / "artifacts" / "big.bin").write_bytes(b"c" * 100)
    (run / "artifacts" / "shadow").symlink_to("/etc/shadow")
    os.mkfifo(run / "artifacts" / "pipe")
    store = LocalArtifactStore(tmp_path / "store")
    with Folder(run) as folder:
        got = store.collect("run_x", folder, "artifacts", "artifacts", budget=50)
    assert (got.files, got.bytes, got.left_out) == (2, 20, ["big.bin"])
    assert got.not_files == {
        "artifacts/shadow": "a symbolic link",
        "artifacts/pipe": "a named pipe",
    }
    assert store.list("run_x", "artifacts") == [("a.txt", 10), ("sub/b.txt", 10)]
    with pytest.raises(Unreadable) as refused:
        store.open("run_x", "artifacts/shadow")
    assert refused.value.what == "a symbolic link"
