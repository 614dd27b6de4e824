"""Acceptance 1 and 2: scripted runaway agents in a fleet with healthy runs, in the real
sandbox. Each runaway is sequestered by the detector made for it, with an incident naming
the detector and its evidence; the healthy runs finish untouched. A sequestered run's key is
refused naming the incident, its sandbox uses no CPU while frozen, its workspace is kept;
``release`` resumes it and ``kill`` ends it failed, the reason naming the incident.

The runaways: a command agent sending one request in a loop; the reference agent scripted to
repeat a tool call, to oscillate A-B-A-B, and to read on and on without changing anything; a
command agent burning tokens far past the per-minute ceiling; one ignoring a spent budget
(an error storm of 402s); a fork bomb; a memory balloon.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.runs import sample
from tests.runs.conftest import Runs, make_repo, shared_dir, start_runs

# Thresholds low enough for a test to cross them in seconds, on every detector the fleet
# exercises; the healthy runs (the sample's fix: five calls) stay far below each.
GUARDS: dict[str, Any] = {
    "sample_interval": 0.2,
    "detectors": {
        "ceiling": {"thresholds": {"tokens_per_minute": 60_000}},
        "error_storm": {"thresholds": {"errors": 8}, "actions": ["sequester"]},
        "stalled_progress": {"thresholds": {"turns": 8, "tokens": 2_000}, "actions": ["sequester"]},
        "sandbox_pressure": {"thresholds": {"samples": 2}},
    },
}

LOOP = """\
import json, os, sys, time, urllib.request, urllib.error
URL = os.environ["OPENAI_BASE_URL"] + "/chat/completions"
KEY = os.environ["OPENAI_API_KEY"]

def call(content, **extra):
    messages = [{"role": "user", "content": content}]
    body = {"model": os.environ["CORRAL_MODEL"], "messages": messages, **extra}
    request = urllib.request.Request(URL, json.dumps(body).encode(), method="POST",
        headers={"authorization": "Bearer " + KEY, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code

mode = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
with open(os.path.join(os.environ["CORRAL_ARTIFACTS"], "key.txt"), "w") as saved:
    saved.write(KEY)  # the test reads it to call as the run
with open("started.txt", "w") as started:
    started.write(mode + "\\n")  # a change in the workspace before the loop
for n in range(count):
    if mode == "same":
        call("is the build green yet?")
    elif mode == "spike":
        call(f"summarise chunk {n}: " + "lorem ipsum dolor sit amet " * 6000)
    elif mode == "storm":
        call(f"try again {n}")
    time.sleep(pause)
with open("progress.txt", "w") as done:
    done.write("done\\n")
"""

FORK_BOMB = """\
import os, time
while True:  # children that stay, and forks past the process limit, refused
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(0.01)
"""

BALLOON = """\
import subprocess, sys, time
GROW = ("held = []\\nwhile True:\\n    held.append(bytearray(2**20))\\n"
        "    held[-1][::4096] = b'x' * 256")
while True:  # a worker that grows until the memory limit kills it, started again and again
    subprocess.run([sys.executable, "-c", GROW])
    time.sleep(0.1)
"""


def _script(tmp: Path) -> Path:
    """The sample's conversations and three runaway ones for the reference agent."""
    turns: list[str] = []

    def conversation(name: str, match: str, calls: list[str]) -> None:
        turns.append(f'[[conversations]]\nname = "{name}"\nmatch = "{match}"\n')
        for call in calls:
            turns.append(f"[[conversations.turns]]\ntool_calls = [{call}]\n")

    run = '{{ name = "run", arguments = {{ command = "{}" }} }}'
    conversation("repeat", "^loop on the status", [run.format("echo waiting")] * 20)
    conversation("oscillate", "^flip flop", [run.format(c) for c in ("echo A", "echo B") * 10])
    reads = [f'{{ name = "search", arguments = {{ pattern = "def{n}" }} }}' for n in range(28)]
    conversation("stall", "^read forever", reads)
    path = tmp / "script.toml"
    path.write_text(sample.SCRIPT.read_text() + "\n" + "\n".join(turns))
    return path


__all__ = ["shared_dir"]  # the fixture, shared with tests/runs


@pytest.fixture
def fleet(shared_dir: Path, tmp_path: Path) -> Iterator[Runs]:
    files = {p.name: p.read_text() for p in (sample.HERE / "repo").iterdir() if p.is_file()}
    repo = make_repo(
        tmp_path / "repo",
        {**files, "loop.py": LOOP, "balloon.py": BALLOON, "forkbomb.py": FORK_BOMB},
    )
    with start_runs(
        shared_dir, tmp_path, repo, run_slots=10, run_memory_mb=96, run_processes=32,
        sim_script=_script(tmp_path), guards=GUARDS,
    ) as runs:  # fmt: skip
        yield runs


def _incident_of(runs: Runs, run_id: str) -> dict[str, Any]:
    with runs.api(runs.corral.admin_key) as c:
        found = c.get("/api/v1/incidents", params={"run": run_id}).json()["incidents"]
        assert len(found) == 1, found
        answer = c.get(f"/api/v1/incidents/{found[0]['id']}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_runaways_are_sequestered_and_healthy_runs_are_not(fleet: Runs) -> None:
    runs = fleet
    quick = {"timeout": "2m"}
    healthy = [
        runs.submit(agent="corral", task="Fix the failing test", **quick)["id"] for _ in range(2)
    ]
    runaway = {
        "repeated_request": runs.submit(command=["python3", "loop.py", "same"], **quick),
        "repeated_tool": runs.submit(agent="corral", task="loop on the status", **quick),
        "oscillation": runs.submit(agent="corral", task="flip flop", **quick),
        "stalled_progress": runs.submit(agent="corral", task="read forever", **quick),
        "ceiling": runs.submit(command=["python3", "loop.py", "spike"], **quick),
        "error_storm": runs.submit(
            command=["python3", "loop.py", "storm"], budget_usd=0.000001, **quick
        ),
        "fork bomb": runs.submit(command=["python3", "forkbomb.py"], **quick),
        "memory balloon": runs.submit(command=["python3", "balloon.py"], **quick),
    }
    for name, run in runaway.items():
        done = runs.wait(run["id"], leave=("queued", "admitted", "running"), limit=45)
        assert done["state"] == "sequestered", (name, done)
        incident = _incident_of(runs, run["id"])
        detector = {"fork bomb": "sandbox_pressure", "memory balloon": "sandbox_pressure"}.get(
            name, name
        )
        assert incident["detector"] == detector, (name, incident)
        assert incident["evidence"], incident
        assert incident["owner_id"] == runs.user_id
        assert incident["id"] in done["reason"], done
    for run_id in healthy:
        done = runs.wait(run_id, limit=45)
        assert done["state"] == "awaiting_review", done
    with runs.api(runs.corral.admin_key) as c:
        every = c.get("/api/v1/incidents", params={"limit": 100}).json()["incidents"]
    touched = {i["run_id"] for i in every}
    assert touched.isdisjoint(healthy), every
    for run in runaway.values():
        _kill(runs, _incident_of(runs, run["id"])["id"])
        assert runs.wait(run["id"], leave=("sequestered",), limit=30)["state"] == "failed"


def _kill(runs: Runs, incident_id: str) -> None:
    with runs.api(runs.corral.admin_key) as c:
        answer = c.post(f"/api/v1/incidents/{incident_id}/kill", json={"comment": "test over"})
    assert answer.status_code == 200, answer.text


def test_a_sequestered_run_is_frozen_refused_kept_and_released(fleet: Runs) -> None:
    """Acceptance 2: refused naming the incident, no CPU while frozen, workspace intact,
    released it finishes; another one killed ends failed naming the incident."""
    runs = fleet
    run = runs.submit(command=["python3", "loop.py", "same", "7", "0.25"], timeout="2m")
    done = runs.wait(run["id"], limit=60)
    assert done["state"] == "sequestered", done
    incident = _incident_of(runs, run["id"])
    app = runs.corral.app
    key_id = app.runs.load(run["id"]).key_id
    assert key_id is not None
    # every gateway process refuses the key: the store says so (other processes poll it)
    key = runs.identity.get_key(key_id)
    assert key.suspended_by == incident["id"]
    cpu = _cpu(run["id"])
    time.sleep(1.0)
    assert _cpu(run["id"]) == cpu  # frozen: not one nanosecond more
    assert app.executor.sequestered == 1
    # its workspace as it was when frozen: kept, and its change snapshotted
    assert "started.txt" in runs.artifact(run["id"], "sequestered/1.patch")
    assert (runs.dir / "runs" / run["id"] / "workspace" / "started.txt").read_text() == "same\n"
    with runs.api(runs.corral.admin_key) as c:
        answer = c.post(f"/api/v1/incidents/{incident['id']}/release", json={})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "released"
    done = runs.wait(run["id"], leave=("queued", "admitted", "running", "sequestered"))
    assert done["state"] == "awaiting_review", done
    assert "progress.txt" in runs.artifact(run["id"], "diff.patch")
    assert runs.identity.get_key(key_id).suspended_by is None


def _cpu(run_id: str) -> int:
    usage = Path(f"/sys/fs/cgroup/cpuacct/corral-{run_id}/cpuacct.usage")
    return int(usage.read_text())


def test_the_sequestered_runs_key_is_refused_in_its_protocol(fleet: Runs) -> None:
    runs = fleet
    run = runs.submit(command=["python3", "loop.py", "same"], timeout="2m")
    done = runs.wait(run["id"], limit=60)
    assert done["state"] == "sequestered", done
    incident = _incident_of(runs, run["id"])
    raw = _run_key(runs, run["id"])
    with httpx.Client(base_url=runs.corral.url) as c:
        openai_shape = c.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {raw}"},
            json={"model": "sim-standard", "messages": [{"role": "user", "content": "hi"}]},
        )
        anthropic_shape = c.post(
            "/v1/messages",
            headers={"x-api-key": raw, "anthropic-version": "2023-06-01"},
            json={"model": "sim-standard", "max_tokens": 10,
                  "messages": [{"role": "user", "content": "hi"}]},
        )  # fmt: skip
    assert openai_shape.status_code == 403
    assert openai_shape.json()["error"]["code"] == "key_suspended"
    assert incident["id"] in openai_shape.json()["error"]["message"]
    assert anthropic_shape.status_code == 403
    assert anthropic_shape.json()["type"] == "error"
    assert incident["id"] in anthropic_shape.json()["error"]["message"]
    _kill(runs, incident["id"])
    ended = runs.wait(run["id"], leave=("sequestered",), limit=30)
    assert ended["state"] == "failed"
    assert incident["id"] in ended["reason"]


def _run_key(runs: Runs, run_id: str) -> str:
    """The run key as its agent holds it (loop.py saves it among its artifacts)."""
    return (runs.dir / "runs" / run_id / "artifacts" / "key.txt").read_text()


def test_the_kill_switch_freezes_a_teams_runs_and_off_resumes_them(fleet: Runs) -> None:
    """Acceptance 4, runs: a team's switch freezes its running agents within a second and
    leaves another team's running; ``off`` thaws them and they finish."""
    runs = fleet
    search = runs.identity.create_team("search")
    bob = runs.identity.create_user("bob", search.id)
    _, bob_key = runs.identity.create_key(search.id, bob.id)
    slow = ["python3", "loop.py", "storm", "16", "0.25"]  # a new question every 0.25 s, 4 s
    ours = runs.submit(command=slow, timeout="2m")
    theirs = runs.submit(key=bob_key, command=slow, timeout="2m")

    def state(run: dict[str, Any]) -> str:
        with runs.api(runs.corral.admin_key) as c:
            return str(c.get(f"/api/v1/runs/{run['id']}").json()["state"])

    for run in (ours, theirs):
        _until(lambda r=run: state(r) == "running", 20)  # type: ignore[misc]
    with runs.api(runs.corral.admin_key) as c:
        on = c.post("/api/v1/guards/kill-switch", json={"on": True, "team": "payments"})
    assert on.status_code == 200, on.text
    assert _until(lambda: state(ours) == "sequestered", 1.0) < 1.0
    assert "kill switch" in runs.get(ours["id"])["reason"]
    assert state(theirs) == "running"
    cpu = _cpu(ours["id"])
    waiting = runs.submit(command=["true"], timeout="2m")  # not admitted while the switch is on
    time.sleep(1.0)
    assert _cpu(ours["id"]) == cpu
    assert state(waiting) == "queued"
    with runs.api(runs.corral.admin_key) as c:
        off = c.post("/api/v1/guards/kill-switch", json={"on": False, "team": "payments"})
    assert off.status_code == 200, off.text
    for run in (ours, theirs, waiting):
        _until(lambda r=run: state(r) not in ("queued", "admitted", "running", "sequestered"), 30)  # type: ignore[misc]
        assert state(run) == "awaiting_review"


def _until(check: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start
