"""A run's sandbox frozen and thawed with the v1 freezer cgroup, against the real kernel.

A frozen run gets no CPU but keeps its processes; it is thawed where it stopped; and it can
always be killed: whatever kills a run thaws it after SIGKILL (a frozen process keeps the
signal pending until thawed). Needs root and bubblewrap, like ``test_sandbox``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.runs import Limits, Sandbox
from corral.runs import sandbox as sandboxes
from corral.runs.sandbox import FreezeFailed
from tests.sandboxing import need_sandbox

BUSY = ["/bin/sh", "-c", "while :; do :; done"]


@pytest.fixture(autouse=True)
def _needs_bubblewrap_and_root() -> None:
    need_sandbox()
    if sandboxes.freezer_missing():
        pytest.skip(sandboxes.NO_FREEZER)


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    workspace, scratch = tmp_path / "workspace", tmp_path / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    for path in (workspace, scratch):
        os.chown(path, sandboxes.NOBODY, sandboxes.NOBODY)
    return Sandbox(workspace, scratch, limits=Limits(wall_seconds=30))


@contextlib.contextmanager
def busy(box: Sandbox) -> Iterator[tuple[subprocess.Popen[bytes], list[Path]]]:
    """A sandboxed busy loop in its cgroups; killed and its cgroups removed afterwards."""
    with box.cgroups() as groups:
        proc = box.spawn(BUSY, groups, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _until(lambda: (sandboxes.usage(groups).cpu_seconds or 0) > 0.05, "never ran")
            yield proc, groups
        finally:
            sandboxes.signal_tree(groups, proc.pid, signal.SIGKILL)
            proc.wait(10)


def _until(check: Callable[[], object], what: str, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _cpu(groups: list[Path]) -> float:
    cpu = sandboxes.usage(groups).cpu_seconds
    assert cpu is not None, "no cpuacct cgroup measured the run"
    return cpu


def _group(groups: list[Path], controller: str) -> Path:
    return next(g for g in groups if g.parent.name == controller)


def test_a_frozen_run_uses_no_cpu_and_thawed_it_goes_on(box: Sandbox) -> None:
    """Frozen: the freezer reads FROZEN, the busy loop's CPU time stands still for most of a
    second and its process still exists; thawed, its CPU time grows again."""
    with busy(box) as (proc, groups):
        sandboxes.freeze(groups)
        assert (_group(groups, "freezer") / "freezer.state").read_text().strip() == "FROZEN"
        assert sandboxes.usage(groups).frozen
        before = _cpu(groups)
        time.sleep(0.8)
        assert _cpu(groups) - before < 0.01
        assert proc.poll() is None
        assert Path(f"/proc/{proc.pid}").exists()
        sandboxes.thaw(groups)
        assert not sandboxes.usage(groups).frozen
        thawed = _cpu(groups)
        _until(lambda: _cpu(groups) - thawed > 0.2, "the thawed run did not run again")


def test_sigkill_ends_a_frozen_run(box: Sandbox) -> None:
    """``signal_tree`` with SIGKILL thaws after sending it: the frozen run dies at once."""
    with busy(box) as (proc, groups):
        sandboxes.freeze(groups)
        sandboxes.signal_tree(groups, proc.pid, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
        assert not sandboxes.usage(groups).frozen


def test_a_frozen_runs_cgroups_are_removed_with_its_processes(box: Sandbox) -> None:
    """Leaving ``cgroups`` with the run still frozen kills it, thaws it and removes every
    one of its groups (a frozen process would otherwise keep them)."""
    with box.cgroups() as groups:
        proc = box.spawn(BUSY, groups, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: bool((_group(groups, "pids") / "cgroup.procs").read_text()), "no pid")
        sandboxes.freeze(groups)
    assert proc.wait(5) == -signal.SIGKILL
    assert groups
    assert not any(g.exists() for g in groups)
    assert {g.parent.name for g in groups} >= {"memory", "pids", "cpuacct", "freezer"}


def test_a_dead_servers_frozen_run_is_removed(box: Sandbox) -> None:
    """``remove_leftovers`` (recovery) kills and removes a frozen run's cgroups by name."""
    name = f"corral-test-freezer-{os.getpid()}"
    named = Sandbox(box.workspace, box.scratch, limits=box.limits, cgroup_name=name)
    stack = contextlib.ExitStack()
    groups = stack.enter_context(named.cgroups())
    proc = named.spawn(BUSY, groups, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: bool((_group(groups, "pids") / "cgroup.procs").read_text()), "no pid")
        sandboxes.freeze(groups)
        assert sandboxes.remove_leftovers(name) >= 1
        assert proc.wait(5) == -signal.SIGKILL
        assert not any(g.exists() for g in groups)
    finally:
        stack.close()


def test_freezing_without_a_freezer_says_so(box: Sandbox) -> None:
    """Groups without a freezer (a host lacking it): ``freeze`` refuses, naming the cause,
    and ``thaw`` leaves the run as it is."""
    with busy(box) as (proc, groups):
        others = [g for g in groups if g.parent.name != "freezer"]
        with pytest.raises(FreezeFailed, match="no freezer cgroup"):
            sandboxes.freeze(others)
        sandboxes.thaw(others)
        assert proc.poll() is None
