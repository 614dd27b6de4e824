"""Runs end to end in the real sandbox: states and who moved them, the run key, the run's
budget, cancel and the wall clock, delivery. Agents here are the ``command`` profile running
small scripts with the system's Python inside the sandbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from corral.store.schema import keys, spans
from tests.runs.conftest import Runs, make_repo, start_runs

# Inside the sandbox: call the gateway through the relay with the run's key. Each call asks
# something new: the same request sent again and again is what guards sequester a run for.
CALL = """
import itertools, json, os, urllib.request, urllib.error
_asked = itertools.count()
def call(model, max_tokens=16):
    body = json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": f"hello {next(_asked)}"}]}).encode()
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=body,
        headers={"authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
                 "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
"""


def script(body: str) -> list[str]:
    return ["/usr/bin/python3", "-c", CALL + body]


def test_a_run_goes_from_queued_to_awaiting_review_with_its_history(runs: Runs) -> None:
    """Each transition is stored with its time, actor and reason; the change comes back as
    a diff, stdout as the report, and the owner defaults to the requester."""
    run = runs.submit(command=["sh", "-c", "echo fixed > README; echo all done"])
    assert (run["state"], run["owner"], run["requester"]) == ("queued", "ada", "ada")
    done = runs.wait(run["id"])
    assert done["state"] == "awaiting_review", done
    assert done["reason"] == "the agent finished: 1 file changed"
    steps = [(e["from_state"], e["to_state"], e["actor"]) for e in done["events"]]
    assert steps == [
        (None, "queued", f"user:{runs.user_id}"),
        ("queued", "admitted", "executor"),
        ("admitted", "running", "executor"),
        ("running", "awaiting_review", "executor"),
    ]
    assert done["sandbox"] == "bubblewrap"
    assert done["exit_code"] == 0
    assert "+fixed" in runs.artifact(run["id"], "diff.patch")
    assert runs.artifact(run["id"], "report.md").strip() == "all done"
    assert (runs.repo / "README").read_text() == "hello\n"  # the source is never touched


def test_the_run_key_exists_only_while_the_run_runs(runs: Runs) -> None:
    """No key exists for a queued run; the run's key calls its models only, is refused for
    others, and is refused altogether once the run has ended."""
    body = """
import pathlib
pathlib.Path("/artifacts/key").write_text(os.environ["OPENAI_API_KEY"])
ok = call("sim-standard")
other = call("sim-frontier")
pathlib.Path("/artifacts/codes.json").write_text(json.dumps([ok[0], other[0], other[1]]))
"""
    run = runs.submit(command=script(body), model="sim-standard")
    with runs.corral.app.store.connect() as conn:
        minted = conn.execute(select(keys.c.id).where(keys.c.run_id == run["id"])).all()
    assert runs.get(run["id"])["state"] != "queued" or minted == []
    done = runs.wait(run["id"])
    assert done["state"] == "awaiting_review", done
    ok, refused, error = json.loads(runs.artifact(run["id"], "artifacts/codes.json"))
    assert (ok, refused) == (200, 403)
    assert "not allowed" in error["error"]["message"]
    key = runs.artifact(run["id"], "artifacts/key")
    with runs.api(key) as c:
        after = c.post(
            "/v1/chat/completions",
            json={"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert after.status_code == 401
    assert "revoked" in after.json()["error"]["message"]
    calls = _gateway_calls(runs, run["id"])
    assert calls
    assert {(c.team_id, c.user_id, c.owner_id) for c in calls} == {
        (runs.team_id, runs.user_id, runs.user_id)
    }


def test_a_run_past_its_budget_is_refused_and_every_level_is_charged(runs: Runs) -> None:
    """The run's budget is a level of the quota chain: its calls count against the run, its
    owner and its team, and once the run's budget is spent the agent sees a 402 naming it."""
    with runs.api(runs.corral.admin_key) as c:
        for scope in ({"kind": "team", "ref": "payments"}, {"kind": "user", "ref": "ada"}):
            r = c.put(
                "/api/v1/budgets",
                json={"scope": scope, "resource": "usd", "window": "month", "limit": 100.0},
            )
            assert r.status_code == 200, r.text
    body = """
import pathlib
codes = []
for _ in range(200):
    status, answer = call("sim-standard", 64)
    codes.append(status)
    if status != 200:
        pathlib.Path("/artifacts/refusal.json").write_text(json.dumps([status, answer]))
        break
print(len(codes), "calls")
"""
    run = runs.submit(command=script(body), budget_usd=0.0005, model="sim-standard")
    done = runs.wait(run["id"])
    status, answer = json.loads(runs.artifact(run["id"], "artifacts/refusal.json"))
    assert status == 402, answer
    assert answer["error"]["code"] == "budget_exceeded"
    assert f"run {run['id']}" in answer["error"]["message"]
    with runs.api(runs.corral.admin_key) as c:
        budgets = c.get("/api/v1/budgets").json()["budgets"]
    spent = {b["scope"]["kind"]: b["spent"] for b in budgets}
    assert spent["run"] > 0
    assert spent["team"] >= spent["run"]
    assert spent["user"] >= spent["run"]
    assert done["budget_usd"] == 0.0005


def test_cancel_stops_the_whole_tree_within_the_grace_period(runs: Runs) -> None:
    """Cancel sends SIGTERM to every process of the run and SIGKILL after the grace: even
    children that ignore SIGTERM are gone, and the run says who cancelled it."""
    tree = (
        "trap '' TERM; (trap '' TERM; sleep 3011) & sleep 3012 & "
        "touch /artifacts/started; /usr/bin/python3 -c "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3013)'"
    )
    run = runs.submit(command=["sh", "-c", tree])
    _wait_for_file(runs.dir / "runs" / run["id"] / "artifacts" / "started")
    assert _processes("301") >= 3
    started = time.monotonic()
    with runs.api() as c:
        cancelled = c.post(f"/api/v1/runs/{run['id']}/cancel").json()
    took = time.monotonic() - started
    assert cancelled["state"] == "cancelled", cancelled
    assert took < 2.0 + 3.0  # the grace (2 s) and a little
    assert _processes("301") == 0
    last = cancelled["events"][-1]
    assert (last["to_state"], last["actor"]) == ("cancelled", f"user:{runs.user_id}")
    assert not Path(f"/sys/fs/cgroup/pids/corral-{run['id']}").exists()


def test_the_wall_clock_limit_fails_the_run_saying_so(runs: Runs) -> None:
    """A run past its --timeout is stopped and failed with the limit in the reason."""
    run = runs.submit(command=["sleep", "30"], timeout="1s")
    done = runs.wait(run["id"], limit=30)
    assert done["state"] == "failed"
    assert done["reason"] == "the wall-clock limit (1s) passed"


def test_a_failing_agent_fails_the_run_with_its_exit_code(runs: Runs) -> None:
    """A non-zero exit is a failed run; its stderr is kept."""
    run = runs.submit(command=["sh", "-c", "echo broken >&2; exit 3"])
    done = runs.wait(run["id"])
    assert (done["state"], done["reason"]) == ("failed", "the agent exited with code 3")
    assert runs.artifact(run["id"], "stderr.log") == "broken\n"


def test_delivery_makes_a_branch_without_touching_the_checkout(runs: Runs) -> None:
    """deliver --branch creates the branch in the source repository (its working tree and
    index untouched); the run cannot deliver itself; delivered is recorded with who."""
    (runs.repo / "scratch.txt").write_text("uncommitted work of the engineer\n")
    run = runs.submit(
        command=["sh", "-c", "echo fixed > README; mkdir -p src; echo x > src/new.py"]
    )
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    with runs.api() as c:
        gated = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"branch": "corral/fix-readme"})
    assert gated.status_code == 409  # its review gate needs someone else's approval first
    assert "1 approval needed, 0 given" in gated.json()["error"]["message"]
    runs.approve(run["id"])
    with runs.api() as c:
        r = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"branch": "corral/fix-readme"})
    assert r.status_code == 200, r.text
    commit = r.json()["commit"]
    git = ["git", "-C", str(runs.repo)]
    show = subprocess.run(
        [*git, "show", "corral/fix-readme:README"], capture_output=True, text=True
    )
    assert show.stdout == "fixed\n"
    assert (
        subprocess.run(
            [*git, "rev-parse", "corral/fix-readme"], capture_output=True, text=True
        ).stdout.strip()
        == commit
    )
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status == "?? scratch.txt\n"
    assert (runs.repo / "README").read_text() == "hello\n"
    done = runs.get(run["id"])
    assert done["state"] == "delivered"
    assert [e["to_state"] for e in done["events"]][-2:] == ["approved", "delivered"]
    assert done["events"][-1]["actor"] == f"user:{runs.user_id}"
    with runs.api() as c:
        again = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"patch": True})
    assert again.status_code == 400
    assert "delivered" in again.json()["error"]["message"]


def test_another_team_cannot_see_or_touch_a_run(runs: Runs) -> None:
    """Another team's key gets 404 for the run, its logs, artifacts, cancel and delivery."""
    team = runs.identity.create_team("search")
    user = runs.identity.create_user("bob", team.id)
    _, other = runs.identity.create_key(team.id, user.id)
    run = runs.submit(command=["true"])
    runs.wait(run["id"])
    with runs.api(other) as c:
        for method, path in (
            ("GET", ""), ("GET", "/logs"), ("GET", "/artifacts"), ("GET", "/artifacts/diff.patch"),
            ("POST", "/cancel"),
        ):  # fmt: skip
            r = c.request(method, f"/api/v1/runs/{run['id']}{path}")
            assert r.status_code == 404, (path, r.text)
        assert c.get("/api/v1/runs").json()["runs"] == []


def _gateway_calls(runs: Runs, run_id: str) -> list[object]:
    deadline = time.monotonic() + 10
    while True:
        with runs.corral.app.store.connect() as conn:
            rows = conn.execute(
                select(spans).where(spans.c.run_id == run_id, spans.c.kind == "llm_request")
            ).all()
        if rows or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.1)


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _processes(marker: str) -> int:
    """Processes on this host whose command line mentions ``marker``."""
    found = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline and b"pytest" not in cmdline:
            found += 1
    return found


def test_without_the_sandbox_the_run_says_so_and_still_runs_unprivileged(
    shared_dir: Path, tmp_path: Path
) -> None:
    """--unsafe-no-sandbox: the run records "none (unsafe)", the agent runs in the workspace
    as the unprivileged uid and reaches the gateway through the relay."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, unsafe_no_sandbox=True) as unsafe:
        body = "import pathlib; print(os.getuid(), call('sim-standard')[0], pathlib.Path.cwd())"
        run = unsafe.submit(command=script(body), model="sim-standard")
        assert run["sandbox"] == "none (unsafe)"
        done = unsafe.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        uid, status, cwd = unsafe.artifact(run["id"], "stdout.log").split()
        assert (uid, status) == ("65534", "200")
        assert cwd == str(shared_dir / "runs" / run["id"] / "workspace")


def test_a_managed_run_is_confined(runs: Runs, tmp_path: Path) -> None:
    """Through the executor, not just the sandbox class: a planted host file is absent, only
    workspace/scratch/artifacts take writes, a host loopback server is unreachable while the
    gateway answers, host processes are invisible and no host variable leaks."""
    planted = runs.dir / "planted-secret.txt"
    planted.write_text("host secret\n")
    planted.chmod(0o644)  # readable by anyone on the host: only the sandbox hides it
    os.environ["CORRAL_TEST_LEAK"] = "leaked"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = f"""
import pathlib, socket
facts = {{}}
facts["planted"] = pathlib.Path({str(planted)!r}).exists()
def writable(path):
    try:
        pathlib.Path(path).write_text("x")
        return True
    except OSError:
        return False
facts["writes"] = {{p: writable(p) for p in ("/workspace/ok", "/scratch/ok", "/artifacts/ok",
    "/usr/x", "/etc/x", "/x", "/workspace/.git/x", {str(runs.dir / "x")!r})}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    facts["host_loopback"] = True
except OSError:
    facts["host_loopback"] = False
facts["gateway"] = call("sim-standard")[0]
facts["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
facts["leak"] = os.environ.get("CORRAL_TEST_LEAK")
facts["uid"] = os.getuid()
pathlib.Path("/artifacts/facts.json").write_text(json.dumps(facts))
"""
    try:
        run = runs.submit(command=script(body), model="sim-standard")
        done = runs.wait(run["id"])
    finally:
        listener.close()
        del os.environ["CORRAL_TEST_LEAK"]
    assert done["state"] == "awaiting_review", done
    facts = json.loads(runs.artifact(run["id"], "artifacts/facts.json"))
    assert facts["planted"] is False
    assert facts["writes"] == {
        "/workspace/ok": True, "/scratch/ok": True, "/artifacts/ok": True, "/usr/x": False,
        "/etc/x": False, "/x": False, "/workspace/.git/x": False, str(runs.dir / "x"): False,
    }  # fmt: skip
    assert (facts["host_loopback"], facts["gateway"]) == (False, 200)
    assert max(facts["pids"]) < 10  # its own PID namespace: a handful of processes
    assert (facts["leak"], facts["uid"]) == (None, 65534)
    assert not (runs.dir / "x").exists()


def test_memory_and_process_limits_stop_a_runaway_run(shared_dir: Path, tmp_path: Path) -> None:
    """run_memory_mb and run_processes bind a run: an allocation past the memory cap is
    killed, a fork loop past the process cap fails; the run fails saying how it ended."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, run_memory_mb=64, run_processes=16) as limited:
        hog = limited.submit(command=["/usr/bin/python3", "-c", "b = bytearray(512 * 2**20)"])
        forks = limited.submit(command=["sh", "-c", "for i in $(seq 64); do sleep 5 & done; wait"])
        hogged = limited.wait(hog["id"])
        assert hogged["state"] == "failed"
        assert hogged["reason"] == (
            "the agent was killed by SIGKILL: the memory limit (64 MiB) killed 1 process(es)"
        )
        forked = limited.wait(forks["id"])
        assert forked["state"] == "failed", forked
        assert "the process limit (16) refused" in forked["reason"], forked["reason"]
        assert "fork" in limited.artifact(forks["id"], "stderr.log").lower()


def test_a_runs_folder_too_deep_for_a_unix_socket_still_runs(
    shared_dir: Path, tmp_path: Path
) -> None:
    """A Unix socket's path holds at most 107 bytes: under a deeper runs folder the gateway
    is served from a folder of its own, and runs work."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    deep = shared_dir / ("d" * 60) / ("e" * 60) / "runs"
    with start_runs(shared_dir, tmp_path, repo, runs_dir=deep) as live:
        assert len(str(deep)) > 107
        run = live.submit(command=script("print(call('sim-standard')[0])"), model="sim-standard")
        done = live.wait(run["id"])
        assert done["state"] == "awaiting_review", done
        with live.api() as c:
            out = c.get(f"/api/v1/runs/{run['id']}/logs").text
        assert out == "200\n"


def test_a_handoff_mounts_the_earlier_runs_artifacts_read_only(runs: Runs) -> None:
    """--handoff-from RUN: the earlier run's artifacts are at /handoff ($CORRAL_HANDOFF),
    readable, not writable; a live run or another team's cannot be handed from."""
    plan = runs.submit(
        command=["sh", "-c", 'echo "step 1: fix README" > "$CORRAL_ARTIFACTS/plan.md"']
    )
    assert runs.wait(plan["id"])["state"] == "awaiting_review"
    body = (
        'cat "$CORRAL_HANDOFF/plan.md" > README; '
        "if echo x > /handoff/plan.md; then echo WROTE; else echo read-only; fi"
    )
    implement = runs.submit(command=["sh", "-c", body], handoff_from=plan["id"])
    done = runs.wait(implement["id"])
    assert done["state"] == "awaiting_review", done
    assert done["handoff_from"] == plan["id"]
    assert runs.artifact(implement["id"], "stdout.log") == "read-only\n"
    assert "+step 1: fix README" in runs.artifact(implement["id"], "diff.patch")
    assert runs.artifact(plan["id"], "artifacts/plan.md") == "step 1: fix README\n"

    live = runs.submit(command=["sleep", "30"])
    with runs.api() as c:
        busy = c.post("/api/v1/runs", json={
            "agent": "command", "repo": str(runs.repo), "task": "t", "command": ["true"],
            "handoff_from": live["id"],
        })  # fmt: skip
        c.post(f"/api/v1/runs/{live['id']}/cancel")
    assert busy.status_code == 409, busy.text
    team = runs.identity.create_team("search")
    bob = runs.identity.create_user("bob", team.id)
    _, other = runs.identity.create_key(team.id, bob.id)
    with runs.api(other) as c:
        foreign = c.post("/api/v1/runs", json={
            "agent": "command", "repo": str(runs.repo), "task": "t", "command": ["true"],
            "handoff_from": plan["id"],
        })  # fmt: skip
    assert foreign.status_code == 404, foreign.text


def test_one_slot_admits_by_priority_then_first_come(shared_dir: Path, tmp_path: Path) -> None:
    """With one slot taken, waiting runs start high before normal before low, and within a
    priority in the order they came; a finished run's workspace goes at once with
    run_workspace_retention = 0 while its artifacts stay."""
    repo = make_repo(shared_dir / "repo", {"README": "hello\n"})
    with start_runs(shared_dir, tmp_path, repo, run_slots=1, run_workspace_retention=0) as live:
        first = live.submit(command=["sleep", "1"])
        waiting = [
            live.submit(command=["true"], priority=p)["id"]
            for p in ("low", "normal", "high", "normal")
        ]
        assert live.wait(first["id"])["state"] == "awaiting_review"
        started = {r: live.wait(r)["started_at"] for r in waiting}
        low, normal, high, later = waiting
        assert started[high] < started[normal] < started[later] < started[low]
        folder = shared_dir / "runs" / low
        assert not (folder / "workspace").exists()
        assert not (folder / "scratch").exists()
        assert (folder / "output" / "diff.patch").exists()
        assert live.get(low)["events"][0]["actor_name"] == "ada"


def test_metrics_show_the_executor(runs: Runs) -> None:
    """/metrics tells this process's slots, live runs, refusal, runs it holds frozen and runs
    ended by state."""
    run = runs.submit(command=["sh", "-c", "exit 4"])
    assert runs.wait(run["id"])["state"] == "failed"
    with runs.api(runs.corral.admin_key) as c:
        text = c.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("corral_run")
    }
    assert samples == {
        ("corral_run_slots", ()): 2,
        ("corral_runs_live", ()): 0,
        ("corral_runs_refused", ()): 0,
        ("corral_runs_sequestered", ()): 0,
        ("corral_runs_ended_total", (("state", "failed"),)): 1,
    }


def test_the_status_page_counts_runs_and_names_teams_only_to_the_admin(runs: Runs) -> None:
    """Without a key the status page counts runs by state, naming no team and never a task;
    the organisation admin's key adds the counts per team."""
    run = runs.submit(command=["true"], task="a secret plan for the refund endpoint")
    runs.wait(run["id"])
    with httpx.Client(base_url=runs.corral.url, timeout=30) as anonymous:
        page = anonymous.get("/").text
    assert "Agent runs" in page
    assert "payments" not in page
    with runs.api(runs.corral.admin_key) as c:
        full = c.get("/").text
    assert "Agent runs by team and state" in full
    assert "<td>payments</td>" in full
    for shown in (page, full):
        assert "secret plan" not in shown
        assert run["id"] not in shown


def test_delivery_into_someone_elses_repository_writes_as_its_owner(runs: Runs) -> None:
    """Corral runs as root; a repository owned by another user gets the branch written as
    that user, so no root-owned object folder is left where its owner must write."""
    subprocess.run(["chown", "-R", "65534:65534", str(runs.repo)], check=True)
    runs.repo.parent.chmod(0o711)  # its owner reaches it, as a person reaches their home
    run = runs.submit(command=["sh", "-c", "echo fixed > README"])
    assert runs.wait(run["id"])["state"] == "awaiting_review"
    runs.approve(run["id"])
    with runs.api() as c:
        r = c.post(f"/api/v1/runs/{run['id']}/deliver", json={"branch": "fix"})
    assert r.status_code == 200, r.text
    owners = {p.stat().st_uid for p in (runs.repo / ".git").rglob("*")}
    assert owners == {65534}


def test_a_run_another_process_ended_is_stopped_here_and_left_as_it_says(runs: Runs) -> None:
    """If another process marks a live run failed (it judged its executor dead), the process
    still running it stops the agent at its next heartbeat and does not overwrite the state."""
    run = runs.submit(command=["sh", "-c", "touch /artifacts/up; sleep 3041"])
    _wait_for_file(runs.dir / "runs" / run["id"] / "artifacts" / "up")
    runs.corral.app.runs.transition(
        run["id"], "failed", actor="executor", reason="judged dead by another process"
    )
    deadline = time.monotonic() + 2.0 + 5.0  # the grace, a few heartbeats
    while _processes("3041") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes("3041") == 0
    time.sleep(0.5)
    done = runs.get(run["id"])
    assert (done["state"], done["reason"]) == ("failed", "judged dead by another process")
