"""The sandbox of an agent run: bubblewrap, an unprivileged user, cgroup limits.

What the agent gets, and nothing more:

* a read-only system (``/usr`` and the ``/bin``, ``/lib`` links, a few files
  of ``/etc``) plus whatever the profile binds read-only (the agent's own
  install, an earlier run's artifacts) — an allow-list, never ``/``: a
  read-only ``/`` would still expose every host file;
* its workspace (``/workspace``, writable; its ``.git`` read-only, so history
  cannot be rewritten) and a scratch folder (``/scratch``, also ``/tmp``);
* new PID, IPC, UTS, user, cgroup and network namespaces: host processes are
  invisible and the network holds only loopback (the gateway arrives as a
  Unix socket bound at ``/run/corral/gateway.sock``);
* the environment the profile sets, no variable of the host's;
* an unprivileged uid (as root, the agent could read root-owned files by owner
  permission wherever they are bound), open-file and CPU-time rlimits, and a
  cgroup (v1 here) capping memory and process count: ``RLIMIT_NPROC`` does not
  bind uid 0's processes and ``RLIMIT_AS`` breaks V8, whose agents reserve
  large address space.

The wall clock is the caller's (``run`` kills the whole tree when it passes).
``probe`` checks, at start-up, that all of this actually holds on this host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from corral.errors import ConfigError

GATEWAY_SOCKET = "/run/corral/gateway.sock"
_TMP = "/tmp"  # noqa: S108 - the sandbox's own /tmp: a bind of the run's scratch folder
NOBODY = 65534
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_ETC = ("/etc/ssl", "/etc/ca-certificates", "/etc/passwd", "/etc/group", "/etc/hosts")
_SYSTEM_LINKS = ("/bin", "/lib", "/lib64", "/sbin")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use."""

    memory_bytes: int = 4 * 1024**3
    processes: int = 256
    open_files: int = 1024
    cpu_seconds: int = 3600
    wall_seconds: float = 1800.0


@dataclass(frozen=True, slots=True)
class Sandbox:
    """One run's confinement; ``argv`` is the bubblewrap command that enters it."""

    workspace: Path
    scratch: Path
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    read_only: Sequence[Path] = ()
    gateway_socket: Path | None = None
    uid: int = NOBODY
    bwrap: str = "bwrap"
    cgroup_name: str | None = None  # default: a fresh random name
    binds: Sequence[tuple[Path, str]] = ()  # more writable folders: (host path, inside path)
    ro_binds: Sequence[tuple[Path, str]] = ()  # more read-only folders, bound elsewhere
    enabled: bool = True  # False: --unsafe-no-sandbox (same limits, no bubblewrap)

    @property
    def environment(self) -> dict[str, str]:
        """What the command sees: the profile's variables, nothing of the host's."""
        return {"HOME": "/scratch", "TMPDIR": _TMP, "PATH": "/usr/bin:/bin", **self.env}

    def argv(self, command: Sequence[str]) -> list[str]:
        if not self.enabled:
            return list(command)
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in _SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        for path in _ETC:
            args += ["--ro-bind-try", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(self.workspace), "/workspace"]
        if (self.workspace / ".git").exists():
            args += ["--ro-bind", str(self.workspace / ".git"), "/workspace/.git"]
        # /tmp inside is the run's scratch folder, not the host's /tmp
        args += ["--bind", str(self.scratch), "/scratch", "--bind", str(self.scratch), _TMP]
        for bound in self.read_only:
            args += ["--ro-bind", str(bound), str(bound)]
        for host, inside in self.binds:
            args += ["--bind", str(host), inside]
        for host, inside in self.ro_binds:
            args += ["--ro-bind", str(host), inside]
        if self.gateway_socket is not None:
            args += ["--ro-bind", str(self.gateway_socket), GATEWAY_SOCKET]
        # bubblewrap's root is a tmpfs: make it read-only too, so the binds are all that takes
        # writes (and /workspace/.git, bound read-only over the workspace, stays so).
        args += ["--remount-ro", "/", "--chdir", "/workspace", "--clearenv"]
        for name, value in self.environment.items():
            args += ["--setenv", name, value]
        return [*args, "--", *command]

    @contextlib.contextmanager
    def cgroups(self) -> Iterator[list[Path]]:
        """Per-run cgroups capping memory and process count (removed afterwards); empty when
        the host offers none (``probe`` says so)."""
        made: list[Path] = []
        name = self.cgroup_name or f"corral-{uuid.uuid4().hex[:12]}"
        wanted = {
            "memory": ("memory.limit_in_bytes", self.limits.memory_bytes),
            "pids": ("pids.max", self.limits.processes),
        }
        try:
            for controller, (knob, value) in wanted.items():
                root = _CGROUP_ROOT / controller
                if not (root / "cgroup.procs").exists():
                    continue
                group = root / name
                group.mkdir()
                made.append(group)
                (group / knob).write_text(str(value))
                if controller == "memory":
                    with contextlib.suppress(OSError):  # no swap accounting on some hosts
                        (group / "memory.memsw.limit_in_bytes").write_text(str(value))
                os.chown(group / "cgroup.procs", self.uid, self.uid)  # the child joins itself
            yield made
        finally:
            for group in made:
                _remove_cgroup(group)

    def spawn(
        self,
        command: Sequence[str],
        groups: Sequence[Path],
        *,
        stdout: IO[bytes] | int,
        stderr: IO[bytes] | int,
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` inside (in the cgroups ``groups``, made by ``cgroups``); the caller
        waits. Without the sandbox it runs in the workspace with only the profile's variables
        (and the host's PATH) as the uid given."""
        drop = (
            {"user": self.uid, "group": self.uid, "extra_groups": []}
            if self.uid != os.geteuid()
            else {}
        )
        env = (
            self.environment
            if self.enabled
            else {**self.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            self.argv(command),
            **drop,
            env=None if self.enabled else env,
            cwd=None if self.enabled else self.workspace,
            start_new_session=True,
            preexec_fn=_confine(self.limits, groups, die_with_parent=not self.enabled),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )

    def run(
        self, command: Sequence[str], *, grace: float = 5.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside and wait at most the wall-clock limit; past it, SIGTERM to
        the whole tree, then SIGKILL after ``grace`` seconds. ``returncode`` -9/-15 then."""
        for path in (self.workspace, self.scratch):
            os.chown(path, self.uid, self.uid)
        with self.cgroups() as groups:
            proc = self.spawn(command, groups, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = proc.communicate(timeout=self.limits.wall_seconds)
            except subprocess.TimeoutExpired:
                signal_tree(groups, proc.pid, signal.SIGTERM)
                try:
                    out, err = proc.communicate(timeout=grace)
                except subprocess.TimeoutExpired:
                    signal_tree(groups, proc.pid, signal.SIGKILL)
                    out, err = proc.communicate()
        text = (out.decode(errors="replace"), err.decode(errors="replace"))
        return subprocess.CompletedProcess(proc.args, proc.returncode, *text)


def signal_tree(groups: Sequence[Path], leader: int, sig: int) -> None:
    """Send ``sig`` to every process of a run: those in its cgroups and its process group.

    SIGTERM spares bubblewrap's own processes: their default action would end the sandbox
    at once (``--die-with-parent``) instead of giving the agent its grace period.
    """
    pids: set[int] = set()
    for group in groups:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (group / "cgroup.procs").read_text().split())
    for pid in pids:
        if sig == signal.SIGTERM and _is_bwrap(pid):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    if sig != signal.SIGTERM or not groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, sig)


def limits_hit(groups: Sequence[Path], limits: Limits) -> list[str]:
    """What the run's cgroups refused or killed, in words (read before they are removed)."""
    hit: list[str] = []
    for group in groups:
        with contextlib.suppress(OSError, ValueError):
            if group.parent.name == "memory":
                fields = dict(
                    line.split() for line in (group / "memory.oom_control").read_text().splitlines()
                )
                if int(fields.get("oom_kill", "0")):
                    mib = limits.memory_bytes // 2**20
                    hit.append(
                        f"the memory limit ({mib} MiB) killed {fields['oom_kill']} process(es)"
                    )
            elif group.parent.name == "pids":
                events = dict(
                    line.split() for line in (group / "pids.events").read_text().splitlines()
                )
                if int(events.get("max", "0")):
                    hit.append(
                        f"the process limit ({limits.processes}) refused {events['max']} fork(s)"
                    )
    return hit


def _is_bwrap(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bwrap"
    except OSError:
        return False


def remove_leftovers(name: str) -> int:
    """Kill whatever is left in the cgroups named ``name`` (a dead server's run) and remove
    them; return how many processes were killed."""
    killed = 0
    for controller in ("memory", "pids"):
        group = _CGROUP_ROOT / controller / name
        if group.is_dir():
            with contextlib.suppress(OSError):
                killed = max(killed, len((group / "cgroup.procs").read_text().split()))
            _remove_cgroup(group)
    return killed


_PR_SET_PDEATHSIG = 1


def _confine(
    limits: Limits, groups: Sequence[Path], *, die_with_parent: bool = False
) -> Callable[[], None]:
    def preexec() -> None:  # in the child, after dropping to the run's uid, before exec
        if die_with_parent:  # bubblewrap does this itself; without it, do it here
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for group in groups:
            (group / "cgroup.procs").write_text(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def _remove_cgroup(group: Path) -> None:
    """Kill what is left in a run's cgroup and remove it."""
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:  # the killed processes are still leaving it
            time.sleep(0.02)


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    problems: list[str]


def probe(scratch: Path, bwrap: str = "bwrap") -> Probe:
    """Check that the sandbox isolates on this host: bubblewrap runs, the root is
    read-only, host processes and the network are out of sight, limits exist."""
    if shutil.which(bwrap) is None:
        return Probe(False, [f"{bwrap} is not installed (Debian: apt-get install bubblewrap)"])
    work, tmp = scratch / "probe-ws", scratch / "probe-tmp"
    work.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    box = Sandbox(work, tmp, limits=Limits(wall_seconds=20), bwrap=bwrap)
    script = (
        "touch /usr/corral-probe 2>/dev/null && echo ROOT_WRITABLE; "
        "test -r /proc/1/cmdline && grep -q bwrap /proc/1/cmdline || echo PID_NS_MISSING; "
        "ls /sys/class/net 2>/dev/null | grep -qv '^lo$' && echo NETWORK_VISIBLE; "
        "touch /workspace/ok && echo WORKSPACE_OK"
    )
    problems: list[str] = []
    try:
        result = box.run(["/bin/sh", "-c", script])
    except (OSError, subprocess.SubprocessError) as exc:
        return Probe(False, [f"bubblewrap could not start: {exc}"])
    if result.returncode != 0 or "WORKSPACE_OK" not in result.stdout:
        problems.append(f"bubblewrap failed ({result.returncode}): {result.stderr.strip()[:300]}")
    for marker, what in (
        ("ROOT_WRITABLE", "the system folders are writable inside"),
        ("PID_NS_MISSING", "host processes are visible inside (no PID namespace)"),
        ("NETWORK_VISIBLE", "network interfaces other than loopback are visible inside"),
    ):
        if marker in result.stdout:
            problems.append(what)
    if not (_CGROUP_ROOT / "memory" / "cgroup.procs").exists():
        problems.append("no memory cgroup (v1) to cap a run's memory")
    if not (_CGROUP_ROOT / "pids" / "cgroup.procs").exists():
        problems.append("no pids cgroup (v1) to cap a run's processes")
    return Probe(not problems, problems)


def require(scratch: Path, bwrap: str = "bwrap") -> None:
    """Refuse to run agents where isolation does not hold, saying why."""
    found = probe(scratch, bwrap)
    if not found.ok:
        raise ConfigError(
            "agent runs are refused: the sandbox does not isolate on this host: "
            + "; ".join(found.problems)
            + " (--unsafe-no-sandbox runs them anyway, for development, and records it)"
        )
