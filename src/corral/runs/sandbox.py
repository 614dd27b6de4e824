"""The sandbox of an agent run: bubblewrap, an unprivileged user, seccomp, cgroup limits.

What the agent gets, and nothing more:

* a read-only system (``/usr`` and the ``/bin``, ``/lib`` links, a few files
  of ``/etc``) plus whatever the profile binds read-only (the agent's own
  install, Corral's Python, an earlier run's artifacts) — an allow-list, never
  ``/``: a read-only ``/`` would still expose every host file;
* its workspace (``/workspace``, writable; its ``.git`` read-only, so history
  cannot be rewritten) and a scratch folder (``/scratch``, also ``/tmp``);
* new PID, IPC, UTS, user, cgroup and network namespaces: host processes are
  invisible and the network holds only loopback (the gateway arrives as a
  Unix socket bound at ``/run/corral/gateway.sock``);
* no further user namespace (``--disable-userns``) and a seccomp filter that
  answers ``EPERM`` to what an agent never needs (``seccomp``: ptrace, mount,
  keyrings, bpf, namespaces, exotic sockets...);
* the environment the profile sets, no variable of the host's: bubblewrap
  itself starts with an empty one (its first process stays inside as PID 1,
  whose ``/proc/1/environ`` the agent can read), and gets its options, the
  environment with the run's key among them, through ``--args`` on an
  in-memory file, never on a command line other local users can read;
* an unprivileged uid (as root, the agent could read root-owned files by owner
  permission wherever they are bound), open-file, CPU-time and file-size
  rlimits, and a cgroup (v1 here) capping memory and process count:
  ``RLIMIT_NPROC`` does not bind uid 0's processes and ``RLIMIT_AS`` breaks
  V8, whose agents reserve large address space.

The host paths a run needs may sit under folders the uid cannot enter (a
``0700`` home, the private runs folder): ``reveal`` makes exactly those
reachable, in the run's own mount namespace, before the uid is dropped. The
wall clock is the caller's (``run`` kills the whole tree when it passes).
``probe`` checks, at start-up, that all of this actually holds on this host.

A run can be frozen in place (``freeze``, the v1 ``freezer`` cgroup) and thawed again: a
frozen process keeps its memory and files but gets no CPU, and a signal sent to it stays
pending until it is thawed, so whatever kills a run (``signal_tree`` with SIGKILL,
``_remove_cgroup``, ``remove_leftovers``) thaws it after sending SIGKILL.
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

from corral.errors import ConfigError, ServiceUnavailable
from corral.runs import reveal as reveals
from corral.runs import seccomp
from corral.runs.runtime import Runtime, find

GATEWAY_SOCKET = "/run/corral/gateway.sock"
_TMP = "/tmp"  # noqa: S108 - the sandbox's own /tmp: a bind of the run's scratch folder
NOBODY = 65534
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_ETC = ("/etc/ssl", "/etc/ca-certificates", "/etc/passwd", "/etc/group", "/etc/hosts")
_SYSTEM_LINKS = ("/bin", "/lib", "/lib64", "/sbin")
_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")
FREEZE_TIMEOUT = 1.0
"""Seconds ``freeze`` waits for every process of a run to stop before it gives up."""
NO_FREEZER = (
    f"this host has no freezer cgroup (v1, {_CGROUP_ROOT / 'freezer'}): runs cannot be "
    "frozen, so guards cannot sequester them"
)


class FreezeFailed(ServiceUnavailable):
    """A run's sandbox could not be frozen (or thawed): the host has no freezer cgroup, or
    its processes did not all stop in time. The run is left as it was (running)."""

    code = "sandbox_freeze_failed"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use."""

    memory_bytes: int = 4 * 1024**3
    processes: int = 256
    open_files: int = 1024
    cpu_seconds: int = 3600
    wall_seconds: float = 1800.0
    file_bytes: int = 2 * 1024**3  # the largest file a process may write (RLIMIT_FSIZE)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """One run's confinement; ``spawn`` enters it, ``options`` are bubblewrap's."""

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

    @property
    def reached(self) -> list[Path]:
        """The host paths the run's uid must reach: bubblewrap binds them by name, and
        without the sandbox the agent opens them (``reveal`` makes them reachable)."""
        paths = [self.workspace, self.scratch, *self.read_only]
        if self.enabled:  # bubblewrap itself, wherever it is installed
            paths.append(Path(shutil.which(self.bwrap) or self.bwrap))
        paths += [host for host, _ in (*self.binds, *self.ro_binds)]
        if self.gateway_socket is not None:
            paths.append(self.gateway_socket)
        return paths

    def options(self, seccomp_fd: int) -> list[str]:
        """bubblewrap's options (``--args``, not its command line, carries them: they hold
        the environment, the run's key included); ``seccomp_fd`` holds the filter."""
        args = ["--die-with-parent", "--new-session", "--unshare-all", "--unshare-user"]
        args += ["--disable-userns", "--seccomp", str(seccomp_fd)]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in _SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        for path in _ETC:
            args += ["--ro-bind-try", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", _real(self.workspace), "/workspace"]
        if (self.workspace / ".git").exists():
            args += ["--ro-bind", _real(self.workspace / ".git"), "/workspace/.git"]
        # /tmp inside is the run's scratch folder, not the host's /tmp
        args += ["--bind", _real(self.scratch), "/scratch", "--bind", _real(self.scratch), _TMP]
        for bound in self.read_only:
            args += ["--ro-bind", _real(bound), str(bound)]
        for host, inside in self.binds:
            args += ["--bind", _real(host), inside]
        for host, inside in self.ro_binds:
            args += ["--ro-bind", _real(host), inside]
        if self.gateway_socket is not None:
            args += ["--ro-bind", _real(self.gateway_socket), GATEWAY_SOCKET]
        # bubblewrap's root is a tmpfs: make it read-only too, so the binds are all that takes
        # writes (and /workspace/.git, bound read-only over the workspace, stays so).
        args += ["--remount-ro", "/", "--chdir", "/workspace", "--clearenv"]
        for name, value in self.environment.items():
            args += ["--setenv", name, value]
        return args

    @contextlib.contextmanager
    def cgroups(self) -> Iterator[list[Path]]:
        """Per-run cgroups capping memory and process count, one measuring CPU time
        (``cpuacct``) and one that can freeze the run (``freezer``), each where the host has
        it; removed afterwards; empty when the host offers none (``probe`` says so)."""
        made: list[Path] = []
        name = self.cgroup_name or f"corral-{uuid.uuid4().hex[:12]}"
        wanted: dict[str, tuple[str, int] | None] = {
            "memory": ("memory.limit_in_bytes", self.limits.memory_bytes),
            "pids": ("pids.max", self.limits.processes),
            "cpuacct": None,  # measured only (``usage``)
            "freezer": None,  # frozen and thawed on demand (``freeze``, ``thaw``)
        }
        try:
            for controller, knob in wanted.items():
                root = _CGROUP_ROOT / controller
                if not (root / "cgroup.procs").exists():
                    continue
                group = root / name
                group.mkdir()
                made.append(group)
                if knob is not None:
                    (group / knob[0]).write_text(str(knob[1]))
                if controller == "memory":
                    with contextlib.suppress(OSError):  # no swap accounting on some hosts
                        (group / "memory.memsw.limit_in_bytes").write_text(
                            str(self.limits.memory_bytes)
                        )
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
        (and the host's PATH) as the uid given.

        Nothing secret is on a command line (``/proc/PID/cmdline`` is world-readable): the
        options, the environment among them, reach bubblewrap through ``--args`` on an
        in-memory file, and bubblewrap starts with an empty environment (its first process
        stays inside as PID 1, where the agent could read the server's variables).
        """
        reveal = reveals.plan(self.reached, self.uid)
        confine = _confine(self.limits, groups, die_with_parent=not self.enabled)
        workspace = None if self.enabled else self.workspace
        uid = self.uid if self.uid != os.geteuid() else None

        def preexec() -> None:  # in the child, still Corral's uid, before exec
            try:
                _enter(reveal, workspace, uid)
            except OSError as exc:  # Popen reports only that preexec failed: say what
                os.write(2, f"corral: the run could not be started: {exc}\n".encode())
                raise
            confine()

        fds: list[int] = []
        try:
            argv, env = self._command(command, fds)
            return subprocess.Popen(
                argv,
                env=env,
                pass_fds=fds,
                start_new_session=True,
                preexec_fn=preexec,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        finally:
            for fd in fds:  # the child has its own copies
                os.close(fd)

    def _command(self, command: Sequence[str], fds: list[int]) -> tuple[list[str], dict[str, str]]:
        """The command line and environment to start; the in-memory files it reads (the
        seccomp filter and bubblewrap's options) are appended to ``fds``."""
        if not self.enabled:
            return list(command), {**self.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        fds.append(seccomp.memfd(seccomp.build(), "corral-seccomp"))
        options = "\0".join(self.options(fds[-1])) + "\0"
        fds.append(seccomp.memfd(options.encode(), "corral-bwrap-args"))
        bwrap = shutil.which(self.bwrap) or self.bwrap
        return [bwrap, "--args", str(fds[-1]), "--", *command], {}

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


def _real(path: Path) -> str:
    """``path`` with its links resolved, as root sees it: bubblewrap resolves a source as the
    run's uid, which reaches the real folder (``reveal``), not a link's folder."""
    return os.path.realpath(path)


def _enter(reveal: reveals.Reveal, workspace: Path | None, uid: int | None) -> None:
    """In the child: reach the run's paths, drop to the run's uid, enter the workspace
    (without the sandbox; inside, bubblewrap does)."""
    reveal.apply()
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if workspace is not None:
        os.chdir(workspace)


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
    if sig == signal.SIGKILL:  # a frozen process dies only once thawed
        for group in groups:
            if group.parent.name == "freezer":
                _write_state(group, "THAWED")


def freeze(groups: Sequence[Path], timeout: float = FREEZE_TIMEOUT) -> None:
    """Freeze every process of a run (its ``freezer`` group) and wait until the kernel says
    all are frozen. Past ``timeout`` seconds (a process stuck in the kernel, say) it thaws
    the run again and raises ``FreezeFailed``; without a freezer group, too."""
    group = _freezer(groups)
    _write_state(group, "FROZEN", strict=True)
    deadline = time.monotonic() + timeout
    while (state := _read_state(group)) != "FROZEN":
        if time.monotonic() > deadline:
            _write_state(group, "THAWED")
            raise FreezeFailed(
                f"the run's processes did not all stop within {timeout:g} s (freezer state "
                f"{state or 'unreadable'}); it was thawed and goes on running"
            )
        time.sleep(0.002)


def thaw(groups: Sequence[Path], timeout: float = FREEZE_TIMEOUT) -> None:
    """Thaw a run frozen by ``freeze`` (a run that is not frozen, or a host without the
    freezer, is left as it is); raises ``FreezeFailed`` when it still reads frozen after
    ``timeout`` seconds."""
    group = next((g for g in groups if g.parent.name == "freezer"), None)
    if group is None:
        return
    _write_state(group, "THAWED", strict=True)
    deadline = time.monotonic() + timeout
    while (state := _read_state(group)) != "THAWED":
        if time.monotonic() > deadline:
            raise FreezeFailed(f"the run could not be thawed (freezer state {state})")
        time.sleep(0.002)


def frozen(groups: Sequence[Path]) -> bool:
    """Whether the run's freezer group reads FROZEN (False where there is none)."""
    return any(g.parent.name == "freezer" and _read_state(g) == "FROZEN" for g in groups)


def _freezer(groups: Sequence[Path]) -> Path:
    for group in groups:
        if group.parent.name == "freezer":
            return group
    raise FreezeFailed(NO_FREEZER)


def _read_state(group: Path) -> str | None:
    try:
        return (group / "freezer.state").read_text().strip()
    except OSError:
        return None


def _write_state(group: Path, state: str, *, strict: bool = False) -> None:
    try:
        (group / "freezer.state").write_text(state)
    except OSError as exc:
        if strict:
            raise FreezeFailed(f"the run's freezer cgroup refused {state}: {exc}") from exc


def limits_hit(groups: Sequence[Path], limits: Limits) -> list[str]:
    """What the run's cgroups refused or killed, in words (read before they are removed)."""
    used = usage(groups)
    hit: list[str] = []
    if used.oom_kills:
        mib = limits.memory_bytes // 2**20
        hit.append(f"the memory limit ({mib} MiB) killed {used.oom_kills} process(es)")
    if used.refused_forks:
        hit.append(f"the process limit ({limits.processes}) refused {used.refused_forks} fork(s)")
    return hit


@dataclass(frozen=True, slots=True)
class Usage:
    """A live run's use from its cgroups; None for what the host does not measure."""

    memory_bytes: int | None = None
    processes: int | None = None
    cpu_seconds: float | None = None
    frozen: bool = False
    refused_forks: int | None = None  # forks the process limit refused so far
    oom_kills: int | None = None  # processes the memory limit killed so far


def usage(groups: Sequence[Path]) -> Usage:
    """A live run's memory (bytes), process count, CPU time (seconds), whether it is
    frozen, and what its limits refused or killed so far, from its cgroups."""
    memory = processes = forks = ooms = None
    cpu = None
    for group in groups:
        with contextlib.suppress(OSError, ValueError):
            controller = group.parent.name
            if controller == "memory":
                memory = int((group / "memory.usage_in_bytes").read_text())
                ooms = int(_fields(group / "memory.oom_control").get("oom_kill", "0"))
            elif controller == "pids":
                processes = int((group / "pids.current").read_text())
                forks = int(_fields(group / "pids.events").get("max", "0"))
            elif controller == "cpuacct":
                cpu = int((group / "cpuacct.usage").read_text()) / 1e9
    return Usage(memory, processes, cpu, frozen(groups), forks, ooms)


def _fields(path: Path) -> dict[str, str]:
    """A cgroup file of ``name value`` lines."""
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


def _is_bwrap(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bwrap"
    except OSError:
        return False


def remove_leftovers(name: str) -> int:
    """Kill whatever is left in the cgroups named ``name`` (a dead server's run) and remove
    them; return how many processes were killed."""
    killed = 0
    for controller in _CONTROLLERS:
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
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))

    return preexec


def _remove_cgroup(group: Path) -> None:
    """Kill what is left in a run's cgroup and remove it; the run's freezer group (of the
    same name) is thawed after the SIGKILL, or a frozen process would never leave."""
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    freezer = _CGROUP_ROOT / "freezer" / group.name
    if freezer.is_dir():
        _write_state(freezer, "THAWED")
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
    cannot_freeze: str | None = None
    """Why runs cannot be frozen here (no freezer cgroup); they still run."""


def probe(
    scratch: Path,
    bwrap: str = "bwrap",
    *,
    runtime: Runtime | None = None,
    uid: int = NOBODY,
    sandboxed: bool = True,
) -> Probe:
    """Check that the sandbox isolates on this host: bubblewrap runs, the root is
    read-only, host processes and the network are out of sight, no user namespace can be
    made inside, the seccomp filter is in force, Corral's Python (``runtime``, by default
    this one) runs inside, and limits exist. Without the sandbox (``sandboxed=False``):
    only that Corral's Python runs as the run's uid."""
    if sandboxed and shutil.which(bwrap) is None:
        return Probe(False, [f"{bwrap} is not installed (Debian: apt-get install bubblewrap)"])
    runtime = runtime or find()
    work, tmp = scratch / "probe-ws", scratch / "probe-tmp"
    work.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    limits = Limits(wall_seconds=20)
    box = Sandbox(
        work, tmp, limits=limits, bwrap=bwrap, read_only=runtime.read_only, uid=uid,
        enabled=sandboxed,
    )  # fmt: skip
    script = (
        "touch /usr/corral-probe 2>/dev/null && echo ROOT_WRITABLE; "
        "test -r /proc/1/cmdline && grep -q bwrap /proc/1/cmdline || echo PID_NS_MISSING; "
        "ls /sys/class/net 2>/dev/null | grep -qv '^lo$' && echo NETWORK_VISIBLE; "
        'touch /workspace/ok && echo WORKSPACE_OK; "$@"'
    )
    inside = runtime.module("corral.runs.seccomp")  # prints SANDBOX_CHECKED when it ran
    try:
        result = box.run(["/bin/sh", "-c", script, "probe", *inside] if sandboxed else inside)
    except (OSError, subprocess.SubprocessError, ConfigError) as exc:
        return Probe(False, [f"{'bubblewrap' if sandboxed else 'a run'} could not start: {exc}"])
    if not sandboxed:
        if "SANDBOX_CHECKED" in result.stdout:
            return Probe(True, [])
        why = result.stderr.strip()[-300:]
        return Probe(
            False, [f"Corral's Python ({runtime.python}) does not run as uid {uid}: {why}"]
        )
    problems = _problems(result)
    if not (_CGROUP_ROOT / "memory" / "cgroup.procs").exists():
        problems.append("no memory cgroup (v1) to cap a run's memory")
    if not (_CGROUP_ROOT / "pids" / "cgroup.procs").exists():
        problems.append("no pids cgroup (v1) to cap a run's processes")
    return Probe(not problems, problems, freezer_missing())


def freezer_missing() -> str | None:
    """Why runs cannot be frozen on this host, or None."""
    return None if (_CGROUP_ROOT / "freezer" / "cgroup.procs").exists() else NO_FREEZER


def _problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the probe's script found wrong, from its markers."""
    problems: list[str] = []
    if "WORKSPACE_OK" not in result.stdout:
        problems.append(f"bubblewrap failed ({result.returncode}): {result.stderr.strip()[:300]}")
    elif "SANDBOX_CHECKED" not in result.stdout:
        problems.append(
            f"Corral's Python does not run inside the sandbox: {result.stderr.strip()[-300:]}"
        )
    for marker, what in (
        ("ROOT_WRITABLE", "the system folders are writable inside"),
        ("PID_NS_MISSING", "host processes are visible inside (no PID namespace)"),
        ("NETWORK_VISIBLE", "network interfaces other than loopback are visible inside"),
    ):
        if marker in result.stdout:
            problems.append(what)
    for line in result.stdout.splitlines():
        if line.startswith("SANDBOX_PROBLEM "):
            problems.append(line.removeprefix("SANDBOX_PROBLEM "))
    return problems


def require(scratch: Path, bwrap: str = "bwrap") -> None:
    """Refuse to run agents where isolation does not hold, saying why."""
    found = probe(scratch, bwrap)
    if not found.ok:
        raise ConfigError(
            "agent runs are refused: the sandbox does not isolate on this host: "
            + "; ".join(found.problems)
            + " (--unsafe-no-sandbox runs them anyway, for development, and records it)"
        )
