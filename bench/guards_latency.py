"""Trigger-to-sequester latency for ``bench/guards.py``: two ``corral serve`` processes, A and
B, sharing one SQLite store and one Redis, the key refresh as shipped.

A runaway sends one identical request to A until a guard (``repeated_request``) stops it,
while B is asked about the runaway's key every ~5 ms until it refuses it (403
``key_suspended``); a thread reads a run's freezer state as often. Each trial records the
instants on one clock (this machine's wall clock: the servers', the sandbox's and this
process's are the same), and the incident's own figures read back from A's API.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from harness import VENV_BIN, BenchError, Processes, free_port, wait_until
from targets import (
    CHAT_PATH,
    MODEL,
    Target,
    corral_cli,
    listen_problem,
    start_redis,
    start_sim,
)


@dataclass(frozen=True, slots=True)
class Node:
    """One of the two ``corral serve`` processes sharing the store and Redis."""

    name: str
    url: str
    runs: Path
    admin: str = field(repr=False)

    def call(
        self, method: str, path: str, body: object = None, key: str | None = None
    ) -> tuple[int, Any]:
        """One request (the admin key unless ``key``): status and the decoded JSON answer."""
        conn = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=30)
        headers = {"Authorization": f"Bearer {key or self.admin}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            conn.request(method, path, data, headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        with contextlib.suppress(ValueError):
            return response.status, json.loads(raw)
        return response.status, raw

    def new_key(self) -> tuple[str, str]:
        status, made = self.call("POST", "/api/v1/keys", {"team": "bench", "user": "bench"})
        if status != 201:
            raise BenchError(f"{self.name}: creating a key answered {status}: {made}")
        return str(made["id"]), str(made["key"])


def start_pair(procs: Processes, sim: Target, workdir: Path, redis_url: str) -> list[Node]:
    """A, then B (once A has migrated the store), sharing one SQLite file and one Redis."""
    admin = "sk-admin-" + secrets.token_urlsafe(24)
    shared = {"CORRAL_DATABASE_URL": f"sqlite:///{workdir / 'shared.db'}",
              "CORRAL_REDIS_URL": redis_url, "CORRAL_ADMIN_KEY": admin}  # fmt: skip
    nodes = []
    for name in ("A", "B"):
        port, home = free_port(), workdir / f"home-{name}"
        env = {**shared, "CORRAL_HOME": str(home), "CORRAL_RUNS_DIR": str(home / "runs")}
        if name == "B":
            env["CORRAL_RUN_SLOTS"] = "0"  # every run is A's
        argv = [str(VENV_BIN / "corral"), "serve", "--port", str(port), "--sim-url", sim.base_url]
        service = procs.start(f"corral-{name}", argv, core=None, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_until(partial(listen_problem, url + "/"), service=service, timeout=60, what=name)
        nodes.append(Node(name, url, home / "runs", admin))
    env = {"CORRAL_URL": nodes[0].url, "CORRAL_ADMIN_KEY": admin}
    corral_cli(["teams", "create", "bench"], env)
    corral_cli(["users", "create", "bench", "--team", "bench"], env)
    return nodes


RUNAWAY_BODY = {
    "model": MODEL,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Run the tests again, please."}],
}
REPEATS = 5
KEY_REFRESH_S = 0.25
"""``key_refresh_interval`` as shipped: how often B re-reads changed keys."""
"""``repeated_request``'s shipped threshold: the fifth identical call crosses it."""


@dataclass(frozen=True, slots=True)
class Trial:
    """One runaway stopped: instants on this machine's wall clock, and A's own figure."""

    sent: float
    """The client (or the run's agent) sent the call that crossed the threshold."""
    at: float
    """The incident's first evidence ``at``: A's clock when that call finished."""
    refused: float
    """B's first refusal of the key arrived (polled every ~5 ms)."""
    action_s: float
    """The action event's ``seconds`` in the incident's timeline (A: crossing to in force)."""
    frozen: float | None = None
    """The run's freezer group first read FROZEN (polled every ~5 ms); runs only."""


class Poller(threading.Thread):
    """Asks B about a key (``GET /v1/models``, which no detector sees) every ``interval`` s until
    it refuses it (403 ``key_suspended``); ``refused_at``: when that answer arrived."""

    def __init__(self, node: Node, key: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.node, self.key, self.interval = node, key, interval
        self.refused_at: float | None = None
        self.problem: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, answer = self.node.call("GET", "/v1/models", key=self.key)
            if status == 403 and "key_suspended" in json.dumps(answer):
                self.refused_at = time.time()
                return
            if status != 200:
                self.problem = f"B answered the key {status}: {answer}"
                return
            time.sleep(self.interval)


class FreezeWatch(threading.Thread):
    """Reads a run's freezer state every ``interval`` s; ``frozen_at``: when it read FROZEN."""

    def __init__(self, run_id: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.state = FREEZER / f"corral-{run_id}" / "freezer.state"
        self.interval = interval
        self.frozen_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                if self.state.read_text().strip() == "FROZEN":
                    self.frozen_at = time.time()
                    return
            time.sleep(self.interval)


FREEZER = Path("/sys/fs/cgroup/freezer")


def _known_to(b: Node, key: str) -> None:
    """Wait until B's key cache has the key (a new key reaches it at its next refresh)."""
    deadline = time.monotonic() + 10
    while b.call("GET", "/v1/models", key=key)[0] != 200:
        if time.monotonic() > deadline:
            raise BenchError("B did not accept a new key within 10 s")
        time.sleep(0.01)


def _random_phase() -> None:
    """Wait a random part of B's key refresh interval: a trial ends just after one of B's
    polls (the refusal), so without it every trial's suspension would land at much the same
    point of B's cycle, and the figures would show that point instead of the spread."""
    time.sleep(secrets.randbelow(int(1000 * KEY_REFRESH_S)) / 1000)


def _refused(poller: Poller, what: str) -> float:
    poller.stop.set()
    poller.join()
    if poller.problem is not None or poller.refused_at is None:
        raise BenchError(f"{what}: {poller.problem or 'B did not refuse its key within 15 s'}")
    return poller.refused_at


def key_trial(a: Node, b: Node) -> Trial:
    """A person's fresh key sends one request to A in a loop; B is polled until it refuses it."""
    key_id, key = a.new_key()
    _known_to(b, key)
    _random_phase()
    poller = Poller(b, key)
    poller.start()
    sent: list[float] = []  # when each call answered 200 was sent
    deadline = time.monotonic() + 15
    while poller.is_alive() and time.monotonic() < deadline:
        began = time.time()
        status, answer = a.call("POST", CHAT_PATH, RUNAWAY_BODY, key=key)
        if status == 200:
            sent.append(began)
        elif status != 403:
            raise BenchError(f"A answered the runaway {status}: {answer}")
    refused = _refused(poller, f"key {key_id}")
    at, seconds = _incident(a, key_id=key_id)
    return Trial(sent[REPEATS - 1], at, refused, seconds)


def _incident(
    a: Node, *, key_id: str | None = None, run_id: str | None = None
) -> tuple[float, float]:
    """The open incident of the key or run: its first evidence's ``at`` and its first action
    event's ``seconds`` (waiting up to 10 s for the action to be written)."""
    path = "/api/v1/incidents" + (f"?run={run_id}" if run_id else "?state=open")
    for _ in range(100):
        listed = a.call("GET", path)[1]
        mine = [i for i in listed.get("incidents", []) if key_id in (None, i["key_id"])]
        if mine:
            incident = a.call("GET", f"/api/v1/incidents/{mine[0]['id']}")[1]
            if incident["detector"] != "repeated_request":
                raise BenchError(f"incident {incident['id']} is {incident['detector']}'s")
            actions = [e for e in incident["events"] if e["kind"] == "action"]
            if actions:
                at = datetime.fromisoformat(incident["evidence"][0]["at"]).timestamp()
                return at, float(actions[0]["data"]["seconds"])
        time.sleep(0.1)
    raise BenchError(f"A shows no incident with an action for key {key_id} / run {run_id}")


RUNAWAY = """
import json, os, time, urllib.error, urllib.request
key, folder = os.environ["OPENAI_API_KEY"], os.environ["CORRAL_ARTIFACTS"]
body = json.dumps({**json.loads(BODY), "model": os.environ["CORRAL_MODEL"]}).encode()
with open(folder + "/key.tmp", "w") as f:
    f.write(key)
os.rename(folder + "/key.tmp", folder + "/key")
url = os.environ["OPENAI_BASE_URL"] + "/chat/completions"
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
while not os.path.exists(folder + "/go"):
    time.sleep(0.01)
with open(folder + "/sent", "a") as log:
    while True:
        log.write(f"{time.time()}\\n")
        log.flush()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers)) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{exc.code}: {exc.read()[:500]!r}") from None
"""
"""The run's agent (``BODY`` is prepended): saves its key for the bench, waits for the go, then
sends one request in a loop, noting when it sent each (a frozen agent cannot note an answer
it got just then)."""


def _wait_for(path: Path, what: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not appear within {timeout:.0f} s ({path})")
        time.sleep(0.02)
    return path.read_text()


def make_repo(path: Path) -> Path:
    """A one-commit git repository for the runs to clone."""
    path.mkdir()
    (path / "README").write_text("a repository for the guards benchmark\n")
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    for args in (["init", "-q"], ["add", "."], [*ident, "commit", "-qm", "start"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
    return path


def run_trial(a: Node, b: Node, repo: Path, submitter: str) -> Trial:
    """A ``command`` run on A whose agent loops on one request, until it is sequestered; the
    incident is then killed (the run ends) so that the next trial starts clean."""
    agent = f"BODY = {json.dumps(RUNAWAY_BODY)!r}\n{RUNAWAY}"
    submitted = {"agent": "command", "repo": str(repo), "task": "loop",
                 "command": ["/usr/bin/python3", "-c", agent]}  # fmt: skip
    status, run = a.call("POST", "/api/v1/runs", submitted, key=submitter)
    if status != 201:
        raise BenchError(f"A refused the run: {status} {run}")
    run_id, folder = run["id"], a.runs / run["id"] / "artifacts"
    key = _wait_for(folder / "key", f"run {run_id}'s key")
    _known_to(b, key)
    _random_phase()
    poller, freezer = Poller(b, key), FreezeWatch(run_id)
    poller.start()
    freezer.start()
    (folder / "go").touch()
    poller.join(15)
    freezer.join(max(0.0, 15 - (time.time() - (poller.refused_at or time.time()))))
    refused = _refused(poller, f"run {run_id}")
    freezer.stop.set()
    if freezer.frozen_at is None:
        raise BenchError(f"run {run_id}: its sandbox did not read FROZEN within 15 s")
    sent = [float(t) for t in (folder / "sent").read_text().split()]
    at, seconds = _incident(a, run_id=run_id)
    incident = a.call("GET", f"/api/v1/incidents?run={run_id}")[1]["incidents"][0]
    a.call("POST", f"/api/v1/incidents/{incident['id']}/kill", {"comment": "trial over"})
    return Trial(sent[REPEATS - 1], at, refused, seconds, freezer.frozen_at)


# --- what the trials say ------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of the values at or below it
    (with 20 trials the 99th percentile is the slowest trial)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Latency:
    """Part 2's trials: a person's keys, and runs (or why runs could not be measured)."""

    keys: list[Trial]
    runs: list[Trial]
    runs_problem: str | None


def measure_latency(trials: int, workdir: Path) -> Latency:
    """``trials`` runaway keys, then ``trials`` runaway runs, on one pair of processes."""
    with Processes(workdir) as procs:
        sim = start_sim(procs, free_port())
        redis = start_redis(procs, workdir)
        a, b = start_pair(procs, sim, workdir, redis.url)
        keys = [key_trial(a, b) for _ in range(trials)]
        runs: list[Trial] = []
        problem = None
        try:
            if not (FREEZER / "cgroup.procs").exists():
                raise BenchError(f"this host has no freezer cgroup (v1) at {FREEZER}")
            repo, submitter = make_repo(workdir / "repo"), a.new_key()[1]
            runs = [run_trial(a, b, repo, submitter) for _ in range(trials)]
        except BenchError as exc:
            problem = str(exc)
    return Latency(keys, runs, problem)
