"""Attacks on the server through what a run leaves behind (issue 12, items 1 and 3).

The agent is the attacker: a ``command`` run in the real sandbox that leaves links to
the server's environment and ``/etc/shadow`` where its report should be, swaps an
artifact between a file, a link and a pipe while it is downloaded, writes far more output
than the server keeps, and fills the disk. The server must answer none of it with host
content, block on nothing, keep its memory flat and its logs capped, and fail the run
that is over its disk quota, saying so."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.runs.artifacts import LocalArtifactStore
from corral.runs.outputs import Folder, Unreadable
from tests.runs.conftest import Runs, make_repo, start_runs

PY = "/usr/bin/python3"
NOTE = (
    "[corral: artifacts/report.md is a symbolic link, not a regular file; Corral did not read it]"
)


@pytest.fixture
def runs(shared_dir: Path, tmp_path: Path, store_url: str) -> Iterator[Runs]:
    """The live Corral of tests/runs/conftest.py, on SQLite and on PostgreSQL."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, database_url=store_url) as live:
        yield live


def _host_environ() -> list[str]:
    """The server's environment as /proc/self/environ shows it (Corral runs in this process)."""
    raw = Path("/proc/self/environ").read_bytes().decode(errors="replace")
    return [entry for entry in raw.split("\0") if len(entry) > 8]


def _rss(field: str = "VmRSS") -> int:
    """This process's resident memory (the live Corral's included), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_report_linked_to_the_servers_environment_or_shadow_is_not_read(runs: Runs) -> None:
    """report.md → /proc/self/environ (the admin key lives in the server's environment) or
    → /etc/shadow: the report says it is a link and holds nothing of either; the link is
    neither listed nor served as an artifact."""
    environ = runs.submit(command=["sh", "-c", "ln -s /proc/self/environ /artifacts/report.md"])
    shadow = runs.submit(command=["sh", "-c", "ln -s /etc/shadow /artifacts/report.md"])
    for run in (environ, shadow):
        done = runs.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        report = runs.artifact(run["id"], "report.md")
        assert report.strip() == NOTE
        with runs.api() as c:
            listed = c.get(f"/api/v1/runs/{run['id']}/artifacts").json()["artifacts"]
            served = c.get(f"/api/v1/runs/{run['id']}/artifacts/artifacts/report.md")
        assert [a["path"] for a in listed] == [
            "diff.patch",
            "report.md",
            "stdout.log",
            "stderr.log",
        ]
        assert served.status_code == 404
        assert "a symbolic link" in served.json()["error"]["message"]
    environ_report = runs.artifact(environ["id"], "report.md")
    assert not any(entry in environ_report for entry in _host_environ())
    assert "root:" not in runs.artifact(shadow["id"], "report.md")


SWAPPER = """
import os
os.chdir("/artifacts")
os.mkdir("d.real")
with open("d.real/shadow", "w") as f:
    f.write("agent data\\n")
targets = ["/proc/self/environ", "/etc/shadow"]
n = 0
open("ready", "w").close()
while not os.path.exists("stop"):
    with open("x.tmp", "w") as f:
        f.write("agent data\\n")
    os.replace("x.tmp", "x")
    os.rename("d.real", "d")  # artifacts/d: the agent's folder...
    os.symlink(targets[n % 2], "x.link")
    os.replace("x.link", "x")
    os.rename("d", "d.real")
    os.symlink("/etc", "d")  # ... then a link to the host's /etc
    os.mkfifo("x.fifo")
    os.replace("x.fifo", "x")
    os.unlink("d")
    n += 1
"""


def test_an_artifact_swapped_under_the_copy_never_stores_host_files(
    runs: Runs, tmp_path: Path
) -> None:
    """What a run leaves is copied into the artifact store, and served from there. While the
    agent keeps swapping artifacts/x between a file, a link to a host file and a FIFO (and
    artifacts/d between a folder and a link to /etc), the store's own copy (300 copies of the
    live run's folder, bounded at 10 s) keeps the agent's data or nothing: never host
    content, never a hang. After the run, what is served holds only the agent's data."""
    run = runs.submit(command=[PY, "-c", SWAPPER], timeout="60s")
    root = runs.dir / "runs" / run["id"]
    deadline = time.monotonic() + 30
    while not (root / "artifacts" / "ready").exists():
        assert time.monotonic() < deadline, runs.get(run["id"])
        time.sleep(0.05)
    store = LocalArtifactStore(tmp_path / "store")
    copied: Counter[tuple[str, bytes | None]] = Counter()
    end = time.monotonic() + 10
    try:
        for n in range(300):
            if time.monotonic() > end:
                break
            with Folder(root) as folder:
                store.collect(f"copy{n}", folder, "artifacts", "artifacts", budget=2**20)
            for name in ("artifacts/x", "artifacts/d/shadow"):
                try:
                    with store.open(f"copy{n}", name) as opened:
                        copied[(name, opened.read_at(0, 2**16))] += 1
                except Unreadable:
                    copied[(name, None)] += 1
    finally:
        (root / "artifacts" / "stop").touch()
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    contents = {content for (_, content) in copied if content is not None}
    assert contents <= {b"agent data\n"}, copied
    assert contents, copied  # the agent's own file was copied at least once: the race ran
    assert sum(copied.values()) >= 100, copied
    with runs.api() as c:
        for name in ("artifacts/x", "artifacts/d/shadow", "artifacts/d.real/shadow"):
            r = c.get(f"/api/v1/runs/{run['id']}/artifacts/{name}")
            assert r.status_code in (200, 404), r.text
            assert r.status_code == 404 or r.content == b"agent data\n", r.content
    print(f"\nswap race: {dict(copied)}")


def test_a_fifo_in_the_artifacts_hangs_neither_the_listing_nor_the_download(runs: Runs) -> None:
    run = runs.submit(command=["sh", "-c", "mkfifo /artifacts/pipe /artifacts/report.md"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    with httpx.Client(
        base_url=runs.corral.url, headers={"authorization": f"Bearer {runs.key}"}, timeout=5
    ) as c:
        listed = c.get(f"/api/v1/runs/{run['id']}/artifacts")
        got = c.get(f"/api/v1/runs/{run['id']}/artifacts/artifacts/pipe")
    assert listed.status_code == 200
    assert "artifacts/pipe" not in {a["path"] for a in listed.json()["artifacts"]}
    assert got.status_code == 404
    assert "a named pipe" in got.json()["error"]["message"]
    report = runs.artifact(run["id"], "report.md")
    assert "report.md is a named pipe" in report


def test_output_past_the_log_cap_is_dropped_without_growing_the_server(
    shared_dir: Path, tmp_path: Path, store_url: str
) -> None:
    """64 MiB of stdout with run_log_max_bytes = 1 MiB (700 MB scaled down): the log holds
    the cap and the markers, the server's peak memory does not grow by the output's size,
    and the run ends normally with its report taken from the kept tail."""
    cap, size = 2**20, 64 * 2**20
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(
        shared_dir, tmp_path, repo, run_log_max_bytes=cap, database_url=store_url
    ) as live:
        writer = f"import sys\nfor _ in range({size // 2**20}): sys.stdout.write('z' * 2**20)\n"
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        before = _rss()
        run = live.submit(command=[PY, "-c", writer + "print()\nprint('all done')"])
        done = live.wait(run["id"], limit=120)
        peak, after = _rss("VmHWM"), _rss()
        assert done["state"] == "awaiting_review", done
        log = live.store / run["id"] / "stdout.log"  # written into the artifact store
        kept = log.read_bytes()
        assert len(kept) < cap + 300, len(kept)
        assert kept.startswith(b"z" * cap + b"\n[corral: the log is cut here at 1048576 bytes")
        assert kept.endswith(f"[corral: cut at {cap} of {size + 10} bytes]\n".encode())
        with live.api() as c:
            tail = c.get(f"/api/v1/runs/{run['id']}/logs", params={"offset": cap - 10}).content
        assert tail.startswith(b"z" * 10 + b"\n[corral: the log is cut here")
    grew = peak - before
    print(
        f"\nlog cap: RSS before {before >> 20} MiB, peak {peak >> 20} MiB, after {after >> 20} MiB"
    )
    assert grew < size // 2, f"the server's peak memory grew by {grew >> 20} MiB"


def test_a_run_past_its_disk_quota_is_stopped_and_failed_naming_the_quota(
    shared_dir: Path, tmp_path: Path, store_url: str
) -> None:
    """Three 10 MiB files under run_disk_mb = 20 (each within it): the run is stopped
    while it still runs; one file written past the quota stops at the quota (RLIMIT_FSIZE)
    and the run that then exits is failed all the same."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, run_disk_mb=20, database_url=store_url) as live:
        many = live.submit(
            command=[
                "sh",
                "-c",
                "for n in 1 2 3; do head -c 10485760 /dev/urandom > f$n; done; sleep 60",
            ],
            timeout="90s",
        )
        one = (
            "import pathlib\n"
            "f = open('/workspace/big', 'wb')\n"
            "try:\n"
            "    for _ in range(100): f.write(b'\\1' * 2**20); f.flush()\n"
            "except OSError as exc:\n"
            "    pathlib.Path('/artifacts/error').write_text(exc.strerror)\n"
        )
        single = live.submit(command=[PY, "-c", one])
        started = time.monotonic()
        failed = live.wait(many["id"], limit=60)
        took = time.monotonic() - started
        assert failed["state"] == "failed", failed
        assert failed["reason"].startswith("the run used ")
        assert failed["reason"].endswith("over its quota of 20 MiB (run_disk_mb)")
        assert took < 30, took  # stopped, not left to its 60 s sleep
        other = live.wait(single["id"], limit=60)
        assert other["state"] == "failed", other
        assert "over its quota of 20 MiB (run_disk_mb)" in other["reason"]
        big = live.dir / "runs" / single["id"] / "workspace" / "big"
        assert big.stat().st_size == 20 * 2**20  # RLIMIT_FSIZE stopped the file at the quota
        assert live.artifact(single["id"], "artifacts/error") == "File too large"


def test_a_log_offset_past_the_end_is_empty_and_a_huge_one_is_refused(runs: Runs) -> None:
    """Logs are read from the offset with a cap (seeking, not reading up to it); an offset no
    file can have is refused naming the field, not a 500."""
    run = runs.submit(command=["sh", "-c", "echo hello"])
    runs.wait(run["id"])
    with runs.api() as c:
        page = c.get(f"/api/v1/runs/{run['id']}/logs", params={"offset": 10**12})
        huge = c.get(f"/api/v1/runs/{run['id']}/logs", params={"offset": 10**30})
    assert (page.status_code, page.content) == (200, b"")
    assert page.headers["x-corral-next-offset"] == str(10**12)
    assert huge.status_code == 400, huge.text
    assert "'offset'" in huge.json()["error"]["message"]


def test_a_diff_too_large_to_keep_awaits_review_but_cannot_be_delivered(
    shared_dir: Path, tmp_path: Path, store_url: str
) -> None:
    """A change whose patch is over run_diff_max_bytes: the run awaits review saying so,
    and delivery, as a branch or a patch, is a 409 naming the cap."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(
        shared_dir, tmp_path, repo, run_diff_max_bytes=4096, database_url=store_url
    ) as live:
        run = live.submit(command=[PY, "-c", "open('big.txt', 'w').write('line\\n' * 5000)"])
        done = live.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        assert done["reason"] == (
            "the agent finished: 1 file changed; its diff is larger than 4,096 bytes "
            "(run_diff_max_bytes), too large to keep whole: it cannot be delivered"
        )
        with live.api() as c:
            for body in ({"branch": "corral/too-big"}, {"patch": True}):
                r = c.post(f"/api/v1/runs/{run['id']}/deliver", json=body)
                assert r.status_code == 409, r.text
                assert "run_diff_max_bytes (4,096 bytes)" in r.json()["error"]["message"]
        assert live.get(run["id"])["state"] == "awaiting_review"
