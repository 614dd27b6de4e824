"""Repositories as a hostile tenant makes them: with hooks and settings that run commands,
built by a run in its own artifacts, `.git` a link, nested repositories pointing at the
host's, a path swapped for a link while a run waits, another team's folder, a URL to a host
nobody allowed. Git must never run what such a repository names, as root or at all; each
test is the attack, and the run-level ones run on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import InvalidRequest, PermissionDenied
from corral.runs.workspace import (
    RepoPolicy,
    check_source,
    deliver_branch,
    diff,
    prepare,
)
from tests.runs.conftest import Runs, make_repo, start_runs
from tests.sandboxing import shared_folder

HOOKS = (
    "pre-receive", "update", "post-receive", "post-update", "reference-transaction",
    "push-to-checkout", "proc-receive", "post-checkout", "pre-auto-gc",
)  # fmt: skip


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """Where a hook or a command a repository names would leave its mark (anyone may
    write: the hook may run as the repository's owner)."""
    folder = tmp_path / "marks"
    folder.mkdir()
    folder.chmod(0o777)
    tmp_path.chmod(0o711)
    return folder


def plant(git_dir: Path, marks: Path) -> None:
    """Hooks and settings in ``git_dir`` that each write a mark when git runs them."""
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in HOOKS:
        (hooks / name).write_text(f'#!/bin/sh\necho "{name} $(id -u)" >> {marks}/ran\n')
        (hooks / name).chmod(0o755)
    config = git_dir / "config"
    alternate = git_dir.parent / "alternate.git"
    subprocess.run(["git", "init", "-q", "--bare", str(alternate)], check=True)
    (git_dir / "objects" / "info" / "alternates").write_text(f"{alternate}/objects\n")
    config.write_text(
        config.read_text()
        + f"[core]\n\tfsmonitor = echo fsmonitor >> {marks}/ran\n"
        + f"\talternateRefsCommand = echo alternateRefs >> {marks}/ran; true\n"
        + "[receive]\n\tautogc = true\n[gc]\n\tauto = 1\n"
        + f'[filter "x"]\n\tsmudge = echo smudge >> {marks}/ran; cat\n'
    )


def ran(marks: Path) -> str:
    found = marks / "ran"
    return found.read_text() if found.exists() else ""


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


PATCH = b"""\
diff --git a/README b/README
--- a/README
+++ b/README
@@ -1 +1 @@
-hello
+fixed
"""


# -- delivery and cloning run nothing of the repository's -------------------------------------


def test_delivery_runs_no_hook_or_command_the_target_names(tmp_path: Path, marks: Path) -> None:
    """Hooks (pre-receive, reference-transaction, …), fsmonitor and alternateRefsCommand in
    the target run nowhere; the branch is still made. A target whose HEAD is the branch
    being delivered, with updateInstead (a checkout, so filters), is refused instead."""
    target = make_repo(tmp_path / "target", {"README": "hello\n"})
    base = git(target, "rev-parse", "HEAD").stdout.strip()
    plant(target / ".git", marks)
    commit = deliver_branch(str(target), base, PATCH, "fix", message="m", author="a")
    assert ran(marks) == ""
    assert git(target, "show", "fix:README").stdout == "fixed\n"
    assert git(target, "rev-parse", "fix").stdout.strip() == commit

    git(target, "config", "receive.denyCurrentBranch", "updateInstead")
    git(target, "symbolic-ref", "HEAD", "refs/heads/checked-out")
    with pytest.raises(InvalidRequest, match="checked out"):
        deliver_branch(str(target), base, PATCH, "checked-out", message="m", author="a")
    assert ran(marks) == ""


def test_cloning_runs_nothing_the_source_names(tmp_path: Path, marks: Path) -> None:
    """A source with hooks and command settings is cloned and checked for its ref without
    any of them running."""
    source = make_repo(tmp_path / "source", {"README": "hello\n", ".gitattributes": "* filter=x\n"})
    plant(source / ".git", marks)
    checked = check_source(str(source), "main")
    ws = prepare(checked, "main", tmp_path / "runs", "run_1")
    assert (ws.path / "README").read_text() == "hello\n"
    assert ran(marks) == ""


def test_git_runs_as_the_repository_owner(shared_dir: Path) -> None:
    """A repository of uid 65534 is served by git as 65534 (the server's root is never
    lent to it): its objects are its owner's after a delivery. While a folder above it is
    closed to its owner, it is still cloned (entered as Corral), but delivery is refused,
    saying why, rather than written as root."""
    target = make_repo(shared_dir / "target", {"README": "hello\n"})
    base = git(target, "rev-parse", "HEAD").stdout.strip()
    subprocess.run(["chown", "-R", "65534:65534", str(target)], check=True)
    shared_dir.chmod(0o700)
    assert check_source(str(target), "main") == str(target)
    prepare(str(target), "main", shared_dir / "runs", "run_1")
    with pytest.raises(InvalidRequest, match="belongs to uid 65534, who cannot reach it"):
        deliver_branch(str(target), base, PATCH, "fix", message="m", author="a")
    shared_dir.chmod(0o711)
    deliver_branch(str(target), base, PATCH, "fix", message="m", author="a")
    owners = {p.lstat().st_uid for p in (target / ".git").rglob("*")}
    assert owners == {65534}


# -- links and the runs folder ---------------------------------------------------------------


def test_a_git_link_is_never_followed(tmp_path: Path, marks: Path) -> None:
    """`.git` a link (to `/`, or to a repository with hooks) is refused as a source and as a
    delivery target, and nothing of the linked repository runs."""
    hooked = make_repo(tmp_path / "hooked", {"README": "hello\n"})
    plant(hooked / ".git", marks)
    base = git(hooked, "rev-parse", "HEAD").stdout.strip()
    for target in ("/", str(hooked / ".git")):
        evil = tmp_path / f"evil{len(target)}"
        evil.mkdir()
        (evil / ".git").symlink_to(target)
        with pytest.raises(PermissionDenied, match=r"\.git is a symbolic link"):
            check_source(str(evil), None)
        with pytest.raises(PermissionDenied, match=r"\.git is a symbolic link"):
            prepare(str(evil), None, tmp_path / "runs", f"run_{len(target)}")
        with pytest.raises(PermissionDenied, match=r"\.git is a symbolic link"):
            deliver_branch(str(evil), base, PATCH, "fix", message="m", author="a")
    assert ran(marks) == ""
    assert git(hooked, "rev-parse", "--verify", "fix").returncode != 0


def test_nothing_inside_the_runs_folder_is_a_repository(tmp_path: Path, marks: Path) -> None:
    """A repository inside Corral's runs folder (a run's artifacts) is refused at submit,
    at clone and at delivery, naming the runs folder; a gitfile pointing into it too."""
    runs = tmp_path / "runs"
    evil = make_repo(runs / "run_a" / "artifacts" / "evil", {"README": "hello\n"})
    plant(evil / ".git", marks)
    base = git(evil, "rev-parse", "HEAD").stdout.strip()
    policy = RepoPolicy(forbidden=(runs.resolve(),))
    with pytest.raises(PermissionDenied, match="inside Corral's runs folder"):
        check_source(str(evil), None, policy)
    with pytest.raises(PermissionDenied, match="inside Corral's runs folder"):
        prepare(str(evil), None, runs, "run_b")
    with pytest.raises(PermissionDenied, match="inside Corral's runs folder"):
        deliver_branch(str(evil), base, PATCH, "fix", message="m", author="a", policy=policy)
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    (pointer / ".git").write_text(f"gitdir: {evil / '.git'}\n")
    with pytest.raises(PermissionDenied, match="inside Corral's runs folder"):
        check_source(str(pointer), None, policy)
    assert ran(marks) == ""


def test_a_git_folder_anyone_may_write_is_refused(tmp_path: Path) -> None:
    """A repository whose git folder is world-writable may hold anyone's hooks: refused."""
    repo = make_repo(tmp_path / "open", {"README": "hello\n"})
    (repo / ".git").chmod(0o777)
    with pytest.raises(PermissionDenied, match="may be written by anyone"):
        check_source(str(repo), None)


# -- the diff ----------------------------------------------------------------------------------


def test_a_nested_gitfile_never_brings_a_host_repository_into_the_diff(tmp_path: Path) -> None:
    """`sub/.git` pointing at a repository of the host: the patch holds the files the agent
    wrote in `sub/`, never that repository's commit or content."""
    host = make_repo(tmp_path / "host", {"secret.txt": "TOPSECRET-4711\n"})
    secret_commit = git(host, "rev-parse", "HEAD").stdout.strip()
    source = make_repo(tmp_path / "source", {"README": "hello\n"})
    ws = prepare(str(source), None, tmp_path / "runs", "run_1")
    (ws.path / "sub").mkdir()
    (ws.path / "sub" / ".git").write_text(f"gitdir: {host / '.git'}\n")
    (ws.path / "sub" / "notes.txt").write_text("mine\n")
    (ws.path / "README").write_text("fixed\n")
    result = diff(ws, tmp_path / "diff.patch", 2**20)
    patch = (tmp_path / "diff.patch").read_text()
    assert "TOPSECRET" not in patch
    assert secret_commit[:7] not in patch
    assert "Subproject" not in patch
    assert "b/sub/notes.txt" in patch
    assert "+fixed" in patch
    assert result.files == 2


# -- URLs ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A loopback TCP port that records whether anyone connected."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_a_redirect_to_another_host_is_not_followed(tmp_path: Path) -> None:
    """An allowed host answering with a redirect to another host: the clone fails, and the
    other host sees no connection."""
    with listener() as elsewhere:
        port = elsewhere.getsockname()[1]

        class Redirect(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{port}{self.path}")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/repo.git"
            policy = RepoPolicy(hosts=("127.0.0.1",))
            with pytest.raises(InvalidRequest, match="git clone failed"):
                prepare(url, None, tmp_path / "runs", "run_1", policy)
        finally:
            server.shutdown()
            server.server_close()
        assert not connected(elsewhere)


def test_ssh_never_uses_the_servers_keys_or_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ssh git starts gets no config, no agent and no key but the configured one (a
    stand-in ``ssh`` on PATH records how it was called)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh.txt"
    (bin_dir / "ssh").write_text(
        f'#!/bin/sh\necho "$@" >> {record}\necho "agent=$SSH_AUTH_SOCK" >> {record}\nexit 1\n'
    )
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/the-servers-agent.sock")
    key = tmp_path / "deploy_key"
    for n, policy in enumerate((RepoPolicy(hosts=("git.example",)),
                                RepoPolicy(hosts=("git.example",), ssh_key=key))):  # fmt: skip
        with pytest.raises(InvalidRequest, match="git clone failed"):
            prepare("ssh://git@git.example/x.git", None, tmp_path / "runs", f"run_{n}", policy)
    calls = record.read_text().splitlines()
    assert calls[1] == calls[3] == "agent="
    for call, identity in ((calls[0], "none"), (calls[2], str(key))):
        assert "-F /dev/null" in call
        assert "IdentityAgent=none" in call
        assert "IdentitiesOnly=yes" in call
        assert f"IdentityFile={identity}" in call


# -- runs ------------------------------------------------------------------------------------------


@pytest.fixture
def live(shared_dir: Path, tmp_path: Path, store_url: str) -> Iterator[Runs]:
    repo = make_repo(shared_dir / "payments" / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, database_url=store_url) as runs:
        yield runs


@pytest.fixture
def open_marks() -> Iterator[Path]:
    """``marks`` where any uid reaches it: a hook run as a run's uid could write there."""
    with shared_folder("corral-marks-") as root:
        root.chmod(0o711)
        (root / "marks").mkdir(mode=0o777)
        (root / "marks").chmod(0o777)
        yield root / "marks"


def submit(runs: Runs, **body: object) -> tuple[int, str]:
    body = {"agent": "command", "repo": str(runs.repo), "task": "t", "command": ["true"], **body}
    with runs.api() as c:
        r = c.post("/api/v1/runs", json=body)
    return r.status_code, r.text


def deliver(runs: Runs, run_id: str, approve: bool = True, **body: object) -> tuple[int, str]:
    """Deliver the run's change, approved first (as the organisation admin: not its
    author) unless told not to."""
    if approve:
        runs.approve(run_id)
    with runs.api() as c:
        r = c.post(f"/api/v1/runs/{run_id}/deliver", json=body)
    return r.status_code, r.text


def test_delivering_into_a_repository_with_hooks_runs_none(live: Runs, open_marks: Path) -> None:
    """The team's repository has hooks and settings naming commands: delivering a run's
    change makes the branch, and none of them runs."""
    marks = open_marks
    plant(live.repo / ".git", marks)
    run = live.submit(command=["sh", "-c", "echo fixed > README"])
    assert live.wait(run["id"])["state"] == "awaiting_review"
    assert deliver(live, run["id"], branch="fix")[0] == 200
    assert git(live.repo, "show", "fix:README").stdout == "fixed\n"
    assert ran(marks) == ""


BUILD_EVIL = """
set -e
cd /artifacts
git init -q evil
cd evil
echo hello > README
git add README
git -c user.name=a -c user.email=a@example.com commit -qm start
for h in pre-receive update post-receive reference-transaction upload-pack; do
  printf '#!/bin/sh\\necho "$0 $(id -u)" >> MARKS/ran\\n' > .git/hooks/$h
  chmod +x .git/hooks/$h
done
mkdir -p /artifacts/rooted
ln -s / /artifacts/rooted/.git
"""


def test_a_repository_a_run_built_is_never_cloned_or_delivered_into(
    live: Runs, open_marks: Path
) -> None:
    """A run builds a repository with hooks in its artifacts (and one whose .git is `/`):
    another run naming either is refused (403, the runs folder); a run whose repository
    path became a link to it is not delivered there (403); no hook ran."""
    marks = open_marks
    builder = live.submit(command=["sh", "-c", BUILD_EVIL.replace("MARKS", str(marks))])
    assert live.wait(builder["id"])["state"] == "awaiting_review"
    artifacts = live.dir / "runs" / builder["id"] / "artifacts"
    assert (artifacts / "evil" / ".git" / "hooks" / "update").is_file()
    for evil in (artifacts / "evil", artifacts / "rooted"):
        status, text = submit(live, repo=str(evil))
        assert status == 403, text
        assert "inside Corral's runs folder" in text

    run = live.submit(command=["sh", "-c", "echo fixed > README"])
    assert live.wait(run["id"])["state"] == "awaiting_review"
    live.approve(run["id"])  # reviewed while its repository was still itself
    live.repo.rename(live.repo.with_name("moved"))
    live.repo.symlink_to(artifacts / "evil")
    status, text = deliver(live, run["id"], branch="fix")
    assert status == 403, text
    assert "symbolic link" in text
    assert git(artifacts / "evil", "rev-parse", "--verify", "fix").returncode != 0
    assert ran(marks) == ""


def test_a_queued_run_whose_path_became_a_link_fails_naming_the_roots(
    shared_dir: Path, tmp_path: Path, store_url: str
) -> None:
    """A run waits in the queue; its repository's path is replaced by a link to another
    team's repository outside the team's roots: when it starts it fails, naming the roots,
    and nothing of the other repository is cloned."""
    roots = shared_dir / "payments"
    repo = make_repo(roots / "repo", {"README": "hello\n"})
    secret = make_repo(shared_dir / "search" / "secret", {"SECRET": "search's\n"})
    settings = {"run_repo_roots": [roots], "run_team_concurrency": 1}
    with start_runs(shared_dir, tmp_path, repo, database_url=store_url, **settings) as runs:
        blocker = runs.submit(command=["sleep", "60"])
        runs.wait(blocker["id"], leave=("queued", "admitted"))
        waiting = runs.submit(command=["sh", "-c", "cat SECRET > /artifacts/stolen"])
        assert runs.get(waiting["id"])["state"] == "queued"
        repo.rename(roots / "old")
        repo.symlink_to(secret)
        with runs.api() as c:
            assert c.post(f"/api/v1/runs/{blocker['id']}/cancel").status_code == 200
        done = runs.wait(waiting["id"])
        assert done["state"] == "failed", done
        assert "symbolic link" in done["reason"]
        assert str(roots.resolve()) in done["reason"]
        assert "run_repo_roots" in done["reason"]
        assert not (runs.dir / "runs" / waiting["id"] / "artifacts" / "stolen").exists()


def test_another_teams_roots_are_refused(shared_dir: Path, tmp_path: Path, store_url: str) -> None:
    """With per-team roots, payments' key may not run on search's repository (403 naming
    the setting), and may on its own."""
    mine = make_repo(shared_dir / "payments" / "repo", {"README": "hello\n"})
    theirs = make_repo(shared_dir / "search" / "repo", {"README": "search\n"})
    team_roots = {"payments": [shared_dir / "payments"], "search": [shared_dir / "search"]}
    with start_runs(
        shared_dir, tmp_path, mine, database_url=store_url, run_team_repo_roots=team_roots
    ) as runs:
        status, text = submit(runs, repo=str(theirs))
        assert status == 403, text
        assert "run_team_repo_roots.payments" in text
        assert submit(runs, repo=str(mine))[0] == 201


def test_a_url_to_a_host_not_allowed_is_refused_without_connecting(live: Runs) -> None:
    """By default no URL host is allowed: http, git and ssh URLs are refused (403 naming
    run_repo_hosts) and the host sees no connection, then or later."""
    with listener() as server:
        port = server.getsockname()[1]
        for url in (
            f"http://127.0.0.1:{port}/x.git",
            f"git://127.0.0.1:{port}/x.git",
            f"ssh://git@127.0.0.1:{port}/x.git",
        ):
            status, text = submit(live, repo=url)
            assert status == 403, text
            assert "run_repo_hosts" in text
        time.sleep(1.0)  # several executor ticks
        assert not connected(server)


def test_a_run_that_changed_nothing_is_not_delivered(live: Runs) -> None:
    """No change: delivery is refused (409, saying so) and no branch is made."""
    run = live.submit(command=["true"])
    assert live.wait(run["id"])["state"] == "awaiting_review"
    for how in ({"branch": "nothing"}, {"patch": True}):
        status, text = deliver(live, run["id"], approve=False, **how)
        assert status == 409, text
        assert "changed nothing" in text
    assert git(live.repo, "rev-parse", "--verify", "nothing").returncode != 0
    assert live.get(run["id"])["state"] == "awaiting_review"


def test_a_path_that_does_not_exist_says_so(live: Runs) -> None:
    """`--repo` naming no folder: 400 saying it does not exist (not "not a repository")."""
    status, text = submit(live, repo=str(live.dir / "no-such-repo"))
    assert status == 400, text
    assert "no such folder" in text
