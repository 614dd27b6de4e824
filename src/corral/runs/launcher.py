"""Launchers: how a run's agent process is started, signalled, waited for and measured.

The executor decides *what* runs and *when*; a ``Launcher`` decides *where*
and *how*. ``BubblewrapLauncher`` is this host's: the agent under bubblewrap as
an unprivileged uid with a seccomp filter and per-run cgroups
(``corral.runs.sandbox`` is the low-level piece), or, with
``unsafe_no_sandbox``, the same limits without bubblewrap. A launcher on other
machines (Ray) implements the same protocol.

A launch goes ``place`` (where the run's folders and the gateway are, as the
agent sees them) → ``prepare`` (hand the folders over, make the cgroups) →
``start`` → ``wait`` / ``signal`` / ``stats`` / ``freeze`` / ``thaw`` → ``release``
(what the limits stopped, in words; the cgroups removed). Every method but ``wait`` blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.runs import sandbox as sandboxes
from corral.runs import workspace as workspaces
from corral.runs.runtime import Runtime, find
from corral.settings import Settings

INSIDE_PORT = 4000
"""The loopback port the gateway relay listens on inside a sandbox."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a run's folders and the gateway are, as the agent sees them."""

    workspace: str
    artifacts: str
    home: str
    handoff: str | None
    port: int  # the relay's loopback port

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One run to launch: its agent's command line and environment, its folders, what its
    install needs bound read-only, its limits, and the gateway socket to relay to."""

    run_id: str
    command: Sequence[str]
    env: Mapping[str, str]
    workspace: workspaces.Workspace
    placement: Placement
    limits: sandboxes.Limits
    gateway_socket: Path
    read_only: Sequence[Path] = ()
    handoff: Path | None = None  # a local folder bound read-only at the placement's handoff


@dataclass(frozen=True, slots=True)
class Stats:
    """A live run's use, from its cgroups, beside its limits (guards compare the two); None
    where the host does not measure it (or the launcher does not hold the run)."""

    memory_bytes: int | None = None
    processes: int | None = None
    cpu_seconds: float | None = None
    memory_limit: int | None = None
    process_limit: int | None = None
    frozen: bool = False
    refused_forks: int | None = None  # forks the process limit refused so far
    oom_kills: int | None = None  # processes the memory limit killed so far


class Launcher(Protocol):
    label: str
    """What runs record as their sandbox (``bubblewrap``, ``none (unsafe)``)."""
    runtime: Runtime | None
    """Corral's Python as the agent sees it (set by ``probe``); profiles run it."""
    cannot_freeze: str | None
    """Why runs cannot be frozen here (set by ``probe``); they still run, ``freeze`` raises."""

    def probe(self) -> str | None:
        """Check at start-up that runs can be launched here; why not, or None."""
        ...

    def place(self, ws: workspaces.Workspace, *, handoff: bool) -> Placement: ...

    def prepare(self, spec: LaunchSpec) -> None:
        """Make ready to start ``spec`` (hand its folders over, make its limits)."""
        ...

    def start(self, run_id: str, *, stdout: int, stderr: int) -> None:
        """Start the prepared run, its output on the descriptors given."""
        ...

    async def wait(self, run_id: str) -> int | None:
        """Wait for the started run to exit; its exit status."""
        ...

    def signal(self, run_id: str, sig: int) -> None:
        """Send ``sig`` to every process of the run (SIGTERM gives the agent its grace)."""
        ...

    def stats(self, run_id: str) -> Stats:
        """What the live run uses now."""
        ...

    def freeze(self, run_id: str) -> None:
        """Stop every process of the started run where it is (no CPU; memory, files and
        sockets kept) and return once all are stopped, within about a second. Raises
        ``FreezeFailed`` when that cannot be done (no freezer here, a process that would not
        stop: the run is then left running). A signal sent while frozen waits until
        ``thaw``; ``signal`` with SIGKILL thaws, so a frozen run can always be killed."""
        ...

    def thaw(self, run_id: str) -> None:
        """Let a run stopped by ``freeze`` go on where it stopped; a run that is not frozen
        is left as it is. Raises ``FreezeFailed`` when the host refuses."""
        ...

    def release(self, run_id: str) -> list[str]:
        """What the limits refused or killed, in words; frees what ``prepare`` made."""
        ...

    def remove_leftovers(self, run_id: str) -> int:
        """Kill what is left of a run of a dead server; how many processes were killed."""
        ...


@dataclass(slots=True)
class _Box:
    sandbox: sandboxes.Sandbox
    stack: contextlib.ExitStack
    command: list[str]
    groups: list[Path] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None


class BubblewrapLauncher:
    """Runs agents as sandboxed subprocesses of this process (see ``corral.runs.sandbox``)."""

    def __init__(self, *, probe_dir: Path, uid: int, sandboxed: bool = True) -> None:
        self.probe_dir = probe_dir
        self.uid = uid
        self.sandboxed = sandboxed
        self.label = "bubblewrap" if sandboxed else "none (unsafe)"
        self.runtime: Runtime | None = None
        self.cannot_freeze: str | None = None
        self._boxes: dict[str, _Box] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> BubblewrapLauncher:
        runs_dir = (settings.runs_dir or settings.home / "runs").resolve()
        uid = settings.run_uid if os.geteuid() == 0 else os.geteuid()
        return cls(probe_dir=runs_dir / ".probe", uid=uid, sandboxed=not settings.unsafe_no_sandbox)

    def probe(self) -> str | None:
        self.runtime = find()
        found = sandboxes.probe(
            self.probe_dir, runtime=self.runtime, uid=self.uid, sandboxed=self.sandboxed
        )
        self.cannot_freeze = sandboxes.freezer_missing()
        if found.ok:
            return None
        fix = " (--unsafe-no-sandbox runs them anyway, for development)" if self.sandboxed else ""
        return "agent runs are refused on this server: " + "; ".join(found.problems) + fix

    def place(self, ws: workspaces.Workspace, *, handoff: bool) -> Placement:
        if self.sandboxed:
            return Placement(
                "/workspace", "/artifacts", "/scratch", "/handoff" if handoff else None, INSIDE_PORT
            )
        return Placement(
            str(ws.path), str(ws.artifacts), str(ws.scratch),
            str(ws.root / "handoff") if handoff else None, _free_port(),
        )  # fmt: skip

    def prepare(self, spec: LaunchSpec) -> None:
        ws = spec.workspace
        box = sandboxes.Sandbox(
            workspace=ws.path,
            scratch=ws.scratch,
            env=spec.env,
            limits=spec.limits,
            read_only=[*(self.runtime.read_only if self.runtime else ()), *spec.read_only],
            gateway_socket=spec.gateway_socket,
            uid=self.uid,
            cgroup_name=cgroup_name(spec.run_id),
            enabled=self.sandboxed,
            binds=[(ws.artifacts, "/artifacts")],
            ro_binds=[(spec.handoff, "/handoff")] if spec.handoff is not None else [],
        )
        command = self._relayed(spec)
        _hand_over(ws, self.uid)
        stack = contextlib.ExitStack()
        groups = stack.enter_context(box.cgroups())
        self._boxes[spec.run_id] = _Box(box, stack, command, groups)

    def _relayed(self, spec: LaunchSpec) -> list[str]:
        """The agent's command behind the relay that serves the gateway on loopback."""
        assert self.runtime is not None  # the probe found it, or runs are refused
        sock = sandboxes.GATEWAY_SOCKET if self.sandboxed else str(spec.gateway_socket)
        listen = f"127.0.0.1:{spec.placement.port}"
        relay = [*self.runtime.module("corral.runs.forward"), "--listen", listen, "--socket", sock]
        return [*relay, "--", *spec.command]

    def start(self, run_id: str, *, stdout: int, stderr: int) -> None:
        box = self._boxes[run_id]
        box.proc = box.sandbox.spawn(box.command, box.groups, stdout=stdout, stderr=stderr)

    async def wait(self, run_id: str) -> int | None:
        proc = self._boxes[run_id].proc
        assert proc is not None, "wait before start"
        return await _exited(proc)

    def signal(self, run_id: str, sig: int) -> None:
        box = self._boxes.get(run_id)
        if box is not None and box.proc is not None:
            sandboxes.signal_tree(box.groups, box.proc.pid, sig)

    def stats(self, run_id: str) -> Stats:
        box = self._boxes.get(run_id)
        if box is None:
            return Stats()
        used, limits = sandboxes.usage(box.groups), box.sandbox.limits
        return Stats(
            used.memory_bytes, used.processes, used.cpu_seconds,
            memory_limit=limits.memory_bytes, process_limit=limits.processes,
            frozen=used.frozen, refused_forks=used.refused_forks, oom_kills=used.oom_kills,
        )  # fmt: skip

    def freeze(self, run_id: str) -> None:
        sandboxes.freeze(self._started(run_id).groups)

    def thaw(self, run_id: str) -> None:
        sandboxes.thaw(self._started(run_id).groups)

    def _started(self, run_id: str) -> _Box:
        box = self._boxes.get(run_id)
        if box is None or box.proc is None:
            raise sandboxes.FreezeFailed(f"run {run_id} is not running in a sandbox here")
        return box

    def release(self, run_id: str) -> list[str]:
        box = self._boxes.pop(run_id, None)
        if box is None:
            return []
        with box.stack:  # the cgroups are removed after they are read
            return sandboxes.limits_hit(box.groups, box.sandbox.limits)

    def remove_leftovers(self, run_id: str) -> int:
        return sandboxes.remove_leftovers(cgroup_name(run_id))


def cgroup_name(run_id: str) -> str:
    return f"corral-{run_id}"


def _hand_over(ws: workspaces.Workspace, uid: int) -> None:
    if uid == os.geteuid():
        return
    workspaces.hand_over(ws, uid)
    os.chown(ws.artifacts, uid, uid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without holding a thread: its pidfd becomes readable when it exits."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd (old kernel): poll
        while proc.poll() is None:  # noqa: ASYNC110 - nothing to wait on but the process
            await asyncio.sleep(0.1)
        return proc.returncode
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


__all__ = [
    "INSIDE_PORT",
    "BubblewrapLauncher",
    "LaunchSpec",
    "Launcher",
    "Placement",
    "Stats",
    "cgroup_name",
]
