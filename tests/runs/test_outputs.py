"""Reading a run's files as hostile input (``corral.runs.outputs``): links are never
followed, only regular files are opened, reads are capped, walks stay in the folder, disk use
counts blocks once, and the agent's output is copied into capped logs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.runs import outputs
from corral.runs.outputs import Folder, LogCapture, RunFiles, Unreadable
from corral.runs.profiles import ClaudeCode, Codex, CorralAgent

SECRET = "CORRAL_ADMIN_KEY=sk-corral-admin-the-host-secret\n"


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A host file the agent must never get back (stands for /etc/shadow, the environ)."""
    secret = tmp_path / "host" / "secret"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return secret


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run's folder as the executor lays it out."""
    root = tmp_path / "run_1"
    for sub in ("artifacts", "output", "workspace"):
        (root / sub).mkdir(parents=True)
    return root


def _in_time(call: Callable[[], object], seconds: float = 5.0) -> object:
    """``call()``'s result, failing (not hanging) when it takes longer than ``seconds``."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_outcome(call)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{call} blocked for more than {seconds} s"
    return result[0]


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


def test_a_link_to_a_host_file_is_refused_not_followed(run: Path, host_secret: Path) -> None:
    """A link as the file, or as a folder on the way, is refused naming what it is; the
    host file's content never comes back."""
    (run / "artifacts" / "report.md").symlink_to(host_secret)
    (run / "artifacts" / "dir").symlink_to(host_secret.parent)
    (run / "artifacts" / "environ").symlink_to("/proc/self/environ")
    with Folder(run) as folder:
        with pytest.raises(Unreadable) as leaf:
            folder.head("artifacts/report.md", 1000)
        assert leaf.value.what == "a symbolic link"
        with pytest.raises(Unreadable) as way:
            folder.head("artifacts/dir/secret", 1000)
        assert way.value.what == "a symbolic link on the way"
        with pytest.raises(Unreadable):
            folder.head("artifacts/environ", 1000)
        for escape in ("artifacts/../../host/secret", "/etc/passwd", "artifacts//x", ""):
            with pytest.raises(Unreadable):
                folder.open(escape)


def test_pipes_folders_and_devices_are_refused_without_blocking(run: Path) -> None:
    """A FIFO is not opened for reading (that would wait for a writer forever): refused at
    once, like a folder or a device."""
    os.mkfifo(run / "artifacts" / "pipe")
    (run / "artifacts" / "folder").mkdir()
    (run / "artifacts" / "null").symlink_to("/dev/null")
    with Folder(run) as folder:
        for name, what in (("pipe", "a named pipe"), ("folder", "a folder")):
            found = _in_time(lambda n=name: folder.open(f"artifacts/{n}"))
            assert isinstance(found, Unreadable)
            assert found.what == what
        assert folder.files("artifacts") == []  # neither is listed
        with pytest.raises(Unreadable):
            folder.open("artifacts/null")


def test_an_open_file_streams_what_was_checked_even_after_a_swap(
    run: Path, host_secret: Path
) -> None:
    """The check and the read are one open file: swapping the name for a link after the
    open changes nothing of what is streamed."""
    path = run / "artifacts" / "out.txt"
    path.write_text("the agent's own output\n")
    with Folder(run) as folder:
        opened = folder.open("artifacts/out.txt")
    path.unlink()
    path.symlink_to(host_secret)
    assert b"".join(opened.chunks()) == b"the agent's own output\n"
    assert opened.fd == -1  # closed once streamed


def test_reads_are_capped_with_a_marker_and_tails_seek(run: Path) -> None:
    path = run / "output" / "stdout.log"
    path.write_bytes(b"a" * 1000 + b"b" * 1000)
    with Folder(run) as folder:
        head = folder.head("output/stdout.log", 100)
        assert head == b"a" * 100 + b"\n[corral: cut at 100 of 2000 bytes]\n"
        tail = folder.tail("output/stdout.log", 10)
        assert tail == b"[corral: the first 1990 of 2000 bytes are left out]\n" + b"b" * 10
        assert folder.head("output/stdout.log", 5000) == path.read_bytes()
        with folder.open("output/stdout.log") as log:
            assert log.read_at(1995, 100) == b"bbbbb"
            assert log.read_at(10**12, 100) == b""


def test_the_listing_walks_without_following_links(run: Path, host_secret: Path) -> None:
    """Regular files only, with their sizes; a linked folder is not entered; a folder deeper
    than LIST_DEPTH is not listed (the walk holds one descriptor per level)."""
    arts = run / "artifacts"
    (arts / "a" / "b").mkdir(parents=True)
    (arts / "a" / "b" / "c.txt").write_text("123")
    (arts / "top.txt").write_text("x")
    (arts / "host").symlink_to(host_secret.parent)
    (arts / "secret").symlink_to(host_secret)
    deep = arts.joinpath(*["d"] * (outputs.LIST_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep")
    with Folder(run) as folder:
        assert folder.files("artifacts") == [("a/b/c.txt", 3), ("top.txt", 1)]
        assert folder.files("artifacts", limit=1) in ([("a/b/c.txt", 3)], [("top.txt", 1)])
        assert folder.files("missing") == []


def test_disk_usage_counts_blocks_once_and_follows_no_link(tmp_path: Path) -> None:
    """Hard links count once; a link to a large host file counts as a link; a sparse file
    counts what it allocates."""
    root = tmp_path / "run"
    root.mkdir()
    empty = outputs.disk_usage(root)
    big = tmp_path / "host-big"
    big.write_bytes(os.urandom(4 * 2**20))
    (root / "link").symlink_to(big)
    data = root / "data"
    data.write_bytes(os.urandom(2**20))
    for n in range(5):
        os.link(data, root / f"hard{n}")
    with (root / "sparse").open("wb") as f:
        f.truncate(10 * 2**30)
    used = outputs.disk_usage(root)
    assert 2**20 <= used - empty < 2**20 + 64 * 1024, used - empty
    assert outputs.disk_usage(tmp_path / "none") == 0
    assert outputs.over_quota(root, 2) is None
    data.write_bytes(os.urandom(3 * 2**20))
    reason = outputs.over_quota(root, 2)
    assert reason == "the run used 3.0 MiB of disk, over its quota of 2 MiB (run_disk_mb)"


def test_a_tree_too_deep_to_measure_is_a_reason_to_stop(tmp_path: Path) -> None:
    """Nesting past MEASURE_DEPTH cannot hide data from the quota: it stops the run."""
    root = tmp_path / "run"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(outputs.MEASURE_DEPTH + 2):  # relative opens: deeper than PATH_MAX allows
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    reason = outputs.over_quota(root, 100)
    assert reason is not None
    assert f"deeper than {outputs.MEASURE_DEPTH} levels" in reason


def test_profiles_read_reports_through_the_reader_only(run: Path) -> None:
    """report.md or Codex's last-message.md linked to the server's environment or
    /etc/shadow: the report says it is a link and holds nothing of the target."""
    (run / "artifacts" / "last-message.md").symlink_to("/proc/self/environ")
    (run / "artifacts" / "report.md").symlink_to("/etc/shadow")
    (run / "output" / "stdout.log").write_text("the agent's stdout\n")
    with Folder(run) as folder:
        files = RunFiles(folder, max_bytes=1000)
        codex = Codex().report(files)
        corral = CorralAgent().report(files)
    note = "[corral: artifacts/{} is a symbolic link, not a regular file; Corral did not read it]\n"
    assert codex == note.format("last-message.md")
    assert corral == note.format("report.md")


def test_reports_are_capped_and_stdout_is_a_tail(run: Path) -> None:
    (run / "artifacts" / "report.md").write_text("r" * 5000)
    (run / "output" / "stdout.log").write_text("x" * 300_000 + '\n{"result": "done"}\n')
    with Folder(run) as folder:
        files = RunFiles(folder, max_bytes=1000)
        report = CorralAgent().report(files)
        assert report == "r" * 1000 + "\n[corral: cut at 1000 of 5000 bytes]\n"
        assert ClaudeCode().report(files) == "done"
        assert len(files.stdout()) < 200_100


def test_log_capture_keeps_the_cap_and_never_blocks_the_writer(tmp_path: Path) -> None:
    """A process writing far past the cap runs to its end; the log holds the cap, a marker
    where it was cut, and the whole size; stderr is kept apart."""
    cap = 64 * 1024
    writer = (
        "import sys\n"
        "for _ in range(160): sys.stdout.buffer.write(b'y' * 65536)\n"
        "sys.stderr.write('only stderr\\n')\n"
    )
    with LogCapture(tmp_path, cap) as streams:
        proc = subprocess.Popen(
            [sys.executable, "-c", writer], stdout=streams.stdout, stderr=streams.stderr
        )
        streams.started()
        assert proc.wait(timeout=30) == 0
        streams.drain(10)
    log = (tmp_path / "stdout.log").read_bytes()
    assert log.startswith(b"y" * cap + b"\n[corral: the log is cut here at 65536 bytes")
    assert log.endswith(f"[corral: cut at {cap} of {160 * 65536} bytes]\n".encode())
    assert len(log) < cap + 300
    assert (tmp_path / "stderr.log").read_text() == "only stderr\n"


def test_a_log_file_swapped_for_a_link_is_not_written_through(
    tmp_path: Path, host_secret: Path
) -> None:
    """The log files are opened with O_NOFOLLOW: a link left in their place is refused."""
    (tmp_path / "stdout.log").symlink_to(host_secret)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        LogCapture(tmp_path, 1000)
    assert host_secret.read_text() == SECRET
