"""The run sandbox isolates, each guarantee tested against the real bubblewrap and kernel.

These need root (the sandbox drops to an unprivileged uid and makes cgroups) and
bubblewrap; without them they skip, except under CI=true where that is a failure. The
sandboxes here live in pytest's temporary folders, which are 0700 root: the run's uid could
not enter them, as it cannot enter a private home, so every test also shows that a run
reaches its own folders anyway.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyseccomp
import pytest

from corral.runs import Limits, Sandbox, probe
from corral.runs.runtime import find
from tests.sandboxing import as_another_user, make_repo, need_sandbox


@pytest.fixture(autouse=True)
def _needs_bubblewrap_and_root() -> None:
    need_sandbox()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs folder inside a 0700 folder the run's uid cannot enter."""
    folder = tmp_path / "private" / "runs"
    folder.mkdir(parents=True)
    folder.parent.chmod(0o700)
    return folder


@pytest.fixture
def box(runs: Path) -> Sandbox:
    workspace, scratch = runs / "workspace", runs / "scratch"
    workspace.mkdir()
    scratch.mkdir()
    (workspace / "README.md").write_text("the repo\n")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return Sandbox(workspace, scratch, limits=Limits(wall_seconds=30))


def sh(box: Sandbox, script: str) -> tuple[int, str]:
    result = box.run(["/bin/sh", "-c", script])
    return result.returncode, result.stdout + result.stderr


def test_the_probe_passes_on_this_host(runs: Path) -> None:
    """Start-up's check finds the isolation working (CI installs bubblewrap)."""
    found = probe(runs)
    assert found.ok, found.problems


def test_a_file_outside_the_workspace_cannot_be_read(box: Sandbox, tmp_path: Path) -> None:
    """A secret planted next to the workspace is not there inside; the workspace is."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    _, out = sh(box, f"cat {secret}; cat /root/.bashrc; cat /workspace/README.md")
    assert "s3cret" not in out
    assert "the repo" in out
    assert "No such file" in out


def test_nothing_outside_workspace_and_scratch_can_be_written(box: Sandbox) -> None:
    """Workspace and scratch take writes; the system, the root and .git do not."""
    script = (
        "echo a > /workspace/new.txt && echo WS_OK; echo b > /scratch/s && echo SCRATCH_OK; "
        "echo c > /tmp/t && echo TMP_OK; "
        "echo x > /usr/evil || echo USR_DENIED; echo x > /evil || echo ROOT_DENIED; "
        "echo x > /workspace/.git/HEAD || echo GIT_DENIED; "
        "echo x > /etc/passwd || echo ETC_DENIED"
    )
    _, out = sh(box, script)
    for marker in ("WS_OK", "SCRATCH_OK", "TMP_OK", "USR_DENIED", "ROOT_DENIED", "GIT_DENIED"):
        assert marker in out, out
    assert "ETC_DENIED" in out
    assert (box.workspace / "new.txt").read_text() == "a\n"
    assert (box.workspace / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert not Path("/usr/evil").exists()


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers anyone who connects."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.sendall(b"HOST-SECRET\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_a_host_loopback_server_cannot_be_reached(box: Sandbox, host_server: int) -> None:
    """The sandbox's loopback is its own: the host's port answers outside, not inside."""
    with socket.create_connection(("127.0.0.1", host_server), timeout=2) as outside:
        assert outside.recv(64) == b"HOST-SECRET\n"
    script = (
        "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', "
        f'{host_server}), timeout=2); print(s.recv(64))" || echo UNREACHABLE'
    )
    _, out = sh(box, script)
    assert "HOST-SECRET" not in out
    assert "UNREACHABLE" in out


def test_host_processes_are_invisible(box: Sandbox) -> None:
    """Only the sandbox's own processes are in its /proc; the test's pid is not."""
    _, out = sh(box, "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '")
    pids = {int(p) for p in out.split()}
    assert os.getpid() not in pids
    assert max(pids) < 20, pids


def test_the_environment_is_only_what_the_profile_sets(box: Sandbox) -> None:
    """No host variable leaks; the profile's do."""
    os.environ["CORRAL_TEST_HOST_SECRET"] = "leak"
    try:
        env_box = Sandbox(box.workspace, box.scratch, env={"AGENT_MODEL": "sim-standard"})
        _, out = sh(env_box, "env")
    finally:
        del os.environ["CORRAL_TEST_HOST_SECRET"]
    assert "leak" not in out
    assert "AGENT_MODEL=sim-standard" in out


def test_memory_limit_stops_a_hog(box: Sandbox) -> None:
    """A process allocating past the run's memory is killed or refused."""
    tight = Sandbox(box.workspace, box.scratch, limits=Limits(memory_bytes=64 * 1024**2))
    code, out = sh(tight, "python3 -c \"b = bytearray(512 * 1024 * 1024); print('ALLOCATED')\"")
    assert "ALLOCATED" not in out
    assert code != 0


def test_process_limit_stops_a_fork_bomb(box: Sandbox) -> None:
    """Forks past the run's process count fail (the shell gives up), and the run ends."""
    tight = Sandbox(box.workspace, box.scratch, limits=Limits(processes=16))
    started = time.monotonic()
    code, out = sh(tight, "for i in $(seq 40); do sleep 30 & done; echo ALL_FORKED")
    assert "cannot fork" in out.lower(), out
    assert "ALL_FORKED" not in out
    assert code != 0
    assert time.monotonic() - started < 20, "the sleeps died with the sandbox"


def test_wall_clock_limit_kills_the_whole_tree(box: Sandbox) -> None:
    """Past the wall clock the run is stopped, children included, within the grace."""
    slow = Sandbox(box.workspace, box.scratch, limits=Limits(wall_seconds=1.0))
    started = time.monotonic()
    result = slow.run(["/bin/sh", "-c", "sleep 60 & sleep 60; echo NEVER"], grace=2.0)
    assert time.monotonic() - started < 8
    assert result.returncode != 0
    assert "NEVER" not in result.stdout


def test_an_agent_edits_its_workspace_and_the_diff_shows_it(runs: Path, tmp_path: Path) -> None:
    """A clone handed to the run's uid is editable inside; .git is not; the patch is right."""
    from corral.runs.workspace import diff, hand_over, prepare

    source = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a - b\n"})
    ws = prepare(str(source), None, runs / "runs", "run_edit")
    hand_over(ws, 65534)
    box = Sandbox(ws.path, ws.scratch)
    script = (
        "sed -i 's/a - b/a + b/' calc.py && echo EDITED; "
        "echo x > .git/HEAD || echo GIT_DENIED; git --version >/dev/null 2>&1; true"
    )
    _, out = sh(box, script)
    assert "EDITED" in out, out
    assert "GIT_DENIED" in out
    diff(ws, tmp_path / "diff.patch", 2**20)
    assert "+    return a + b" in (tmp_path / "diff.patch").read_text()


def test_runs_are_refused_where_the_sandbox_cannot_start(runs: Path) -> None:
    """No bubblewrap: the refusal says why and what to install."""
    from corral.errors import ConfigError
    from corral.runs import require

    require(runs)  # this host isolates
    with pytest.raises(ConfigError, match="corral-no-such-bwrap is not installed"):
        require(runs, bwrap="corral-no-such-bwrap")


def test_no_command_line_on_the_host_shows_the_runs_key(box: Sandbox) -> None:
    """Another local user reads every process's command line (/proc/PID/cmdline is
    world-readable) while a run is live: the key the profile sets is in none of them."""
    key = "sk-corral-run-" + os.urandom(8).hex()
    live = Sandbox(box.workspace, box.scratch, env={"OPENAI_API_KEY": key})
    proc = live.spawn(["/bin/sleep", "7.2513"], [], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not as_another_user("grep -lsF -f - /proc/[0-9]*/cmdline", "7.2513"):
            assert time.monotonic() < deadline, "the run's processes never appeared"
            time.sleep(0.05)
        # the key reaches grep on its standard input, so grep's own command line lacks it
        found = as_another_user("grep -lsF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ", key)
        inside = live.run(["/bin/sh", "-c", "echo $OPENAI_API_KEY"]).stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert found == ""
    assert inside == key + "\n"  # the agent still gets it


def test_the_servers_environment_is_not_readable_inside(box: Sandbox) -> None:
    """bubblewrap's first process stays inside as PID 1: it must not carry the server's
    variables (the admin key, upstream keys), which the agent could read there."""
    os.environ["CORRAL_TEST_SERVER_SECRET"] = "server-secret-17"
    try:
        _, out = sh(box, "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo DONE")
    finally:
        del os.environ["CORRAL_TEST_SERVER_SECRET"]
    assert "DONE" in out
    assert "server-secret-17" not in out


def test_no_user_namespace_can_be_made_inside(box: Sandbox) -> None:
    """unshare -U, unshare -r and unshare(CLONE_NEWUSER) all fail inside."""
    runtime = find()
    inside = Sandbox(box.workspace, box.scratch, read_only=runtime.read_only)
    code = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "print('PY_REFUSED' if libc.unshare(0x10000000) == -1 else 'PY_UNSHARED')"
    )
    script = (
        "unshare -U true && echo U_UNSHARED || echo U_REFUSED; "
        "unshare -r true && echo R_UNSHARED || echo R_REFUSED; "
        f'"{runtime.python}" -c "{code}"'
    )
    _, out = sh(inside, script)
    for refused in ("U_REFUSED", "R_REFUSED", "PY_REFUSED"):
        assert refused in out, out


_SYSCALLS = """
import ctypes, errno, json, os, socket, subprocess, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
NR = json.loads(sys.argv[1])
def err(result):
    return 0 if result != -1 else ctypes.get_errno()
out = {}
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
out["ptrace"] = err(libc.ptrace(16, child, None, None))  # PTRACE_ATTACH
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
out["process_vm_readv"] = err(libc.process_vm_readv(os.getpid(), iov, 1, iov, 1, 0))
out["keyctl"] = err(libc.syscall(NR["keyctl"], 0, -3, 0))  # the session keyring's id
out["bpf"] = err(libc.syscall(NR["bpf"], 0, None, 0))
out["mount"] = err(libc.mount(b"none", b"/scratch", b"tmpfs", 0, None))
out["unshare_net"] = err(libc.unshare(0x40000000))
params = ctypes.create_string_buffer(120)
out["io_uring_setup"] = err(libc.syscall(NR["io_uring_setup"], 1, params))
out["userfaultfd"] = err(libc.syscall(NR["userfaultfd"], 1))  # UFFD_USER_MODE_ONLY
out["personality"] = err(libc.personality(0x0040000))  # ADDR_NO_RANDOMIZE
out["personality_query"] = err(libc.personality(ctypes.c_uint(0xFFFFFFFF)))
out["clone3"] = err(libc.syscall(NR["clone3"], None, 0))
out["tiocsti"] = err(libc.ioctl(0, 0x5412, ctypes.c_char_p(b"x")))
for name, family, kind, proto in (
    ("unix", socket.AF_UNIX, socket.SOCK_STREAM, 0),
    ("inet", socket.AF_INET, socket.SOCK_STREAM, 0),
    ("inet6", socket.AF_INET6, socket.SOCK_STREAM, 0),
    ("netlink_route", socket.AF_NETLINK, socket.SOCK_RAW, 0),
    ("netlink_audit", socket.AF_NETLINK, socket.SOCK_RAW, 9),
    ("alg", 38, socket.SOCK_SEQPACKET, 0),
):
    try:
        socket.socket(family, kind, proto).close()
        out[name] = 0
    except OSError as exc:
        out[name] = exc.errno
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
out["subprocess"] = subprocess.run(["/bin/true"]).returncode
os.kill(child, 9)
print(json.dumps({k: errno.errorcode.get(v, v) for k, v in out.items()}))
"""


def test_dangerous_system_calls_are_refused_with_eperm(box: Sandbox) -> None:
    """The seccomp filter answers what an agent never needs with EPERM (clone3 with ENOSYS,
    so the C library falls back to clone); everyday calls, threads and processes work."""
    runtime = find()
    inside = Sandbox(box.workspace, box.scratch, read_only=runtime.read_only)
    arch = pyseccomp.system_arch()
    numbers = {
        name: pyseccomp.resolve_syscall(arch, name)
        for name in ("keyctl", "bpf", "io_uring_setup", "userfaultfd", "clone3")
    }
    result = inside.run([runtime.python, "-c", _SYSCALLS, json.dumps(numbers)])
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    refused = (
        "ptrace", "process_vm_readv", "keyctl", "bpf", "mount", "unshare_net", "io_uring_setup",
        "userfaultfd", "personality", "tiocsti", "netlink_audit", "alg",
    )  # fmt: skip
    assert {name: found[name] for name in refused} == dict.fromkeys(refused, "EPERM")
    assert found["clone3"] == "ENOSYS"
    allowed = ("personality_query", "unix", "inet", "inet6", "netlink_route", "subprocess")
    assert {name: found[name] for name in allowed} == dict.fromkeys(allowed, 0)


def test_the_probe_refuses_a_sandbox_without_its_filter(runs: Path, tmp_path: Path) -> None:
    """A bubblewrap that drops --disable-userns and --seccomp (an older or patched one) is
    caught at start-up: the probe names both, and runs are refused."""
    from corral.errors import ConfigError
    from corral.runs import require

    runtime = find()
    weak = tmp_path / "weak-bwrap"
    weak.write_text(
        f"#!{runtime.python}\n"
        "import os, sys\n"
        "argv = sys.argv[1:]\n"
        "fd = int(argv[argv.index('--args') + 1])\n"
        "with os.fdopen(fd, 'rb') as f:\n"
        "    opts = f.read().split(b'\\0')[:-1]\n"
        "opts.remove(b'--disable-userns')\n"
        "i = opts.index(b'--seccomp')\n"
        "del opts[i:i + 2]\n"
        "new = os.memfd_create('args', 0)\n"
        "os.write(new, b'\\0'.join(opts) + b'\\0')\n"
        "os.lseek(new, 0, 0)\n"
        "argv[argv.index('--args') + 1] = str(new)\n"
        "os.execv('/usr/bin/bwrap', ['bwrap', *argv])\n"
    )
    weak.chmod(0o755)
    found = probe(runs, bwrap=str(weak))
    assert "a process inside can create a user namespace" in found.problems, found.problems
    assert "the seccomp filter is not in force inside" in found.problems
    with pytest.raises(ConfigError, match="seccomp filter is not in force"):
        require(runs, bwrap=str(weak))


def test_a_tool_under_a_private_folder_runs_inside_and_without_the_sandbox(
    box: Sandbox, tmp_path: Path
) -> None:
    """An install under a 0700 folder (a home such as /root) is bound read-only and runs as
    the run's uid, with and without bubblewrap; the folder's other files stay out of reach."""
    home = tmp_path / "home"
    tools = home / "tools"
    tools.mkdir(parents=True)
    home.chmod(0o700)
    (home / "diary.txt").write_text("dear diary\n")
    tool = tools / "hello"
    tool.write_text("#!/bin/sh\necho hello from $(id -u)\n")
    tool.chmod(0o755)
    for enabled in (True, False):
        sandbox = Sandbox(box.workspace, box.scratch, read_only=[tools], enabled=enabled)
        _, out = sh(sandbox, f"{tool}; cat {home / 'diary.txt'} || echo NO_DIARY")
        assert "hello from 65534" in out, (enabled, out)
        assert "NO_DIARY" in out
        assert "dear diary" not in out
