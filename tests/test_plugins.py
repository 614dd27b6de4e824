"""Extensions through entry points, acting in a live ``corral serve`` (issue 13, acceptance 3).

tests/plugin/corral_example is a package outside ``src/corral`` that registers, through the
``corral`` entry-point group only, an agent profile, a request guard, a response observer
with a call listener, a span sink and an after-run step. It is installed with pip into a
folder of its own (never into the virtualenv); one ``corral serve`` has that folder on its
``PYTHONPATH``, another the same settings without it. What the extension's listener and
sink see, it appends as JSON lines to ``CORRAL_EXAMPLE_OUT``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.gateway.serve import start_server, stop_server
from tests.sandboxing import make_repo, need_sandbox, shared_folder
from tests.services import free_port

pytestmark = pytest.mark.slow

T = TypeVar("T")
EXAMPLE = Path(__file__).parent / "plugin" / "corral_example"
LIVE = ("queued", "admitted", "running")
MODEL = "sim-standard"
HELLO = "Say hello in a few words."
BLOCK = {"x-example-block": "yes"}


@dataclass(frozen=True)
class Wire:
    """How a client of one protocol calls a model, and where its error's code is."""

    name: str
    path: str
    stream_path: str
    auth: str  # the header the protocol's SDKs send the key in
    body: dict[str, Any]
    error_type: Callable[[dict[str, Any]], str]

    def headers(self, key: str) -> dict[str, str]:
        return {self.auth: f"Bearer {key}" if self.auth == "authorization" else key}


WIRES = [
    Wire(
        "chat",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "authorization",
        {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": HELLO}]},
        lambda body: str(body["error"]["code"]),
    ),
    Wire(
        "messages",
        "/v1/messages",
        "/v1/messages",
        "x-api-key",
        {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": HELLO}]},
        lambda body: str(body["type"] == "error" and body["error"]["type"]),
    ),
    Wire(
        "gemini",
        f"/v1beta/models/{MODEL}:generateContent",
        f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        "x-goog-api-key",
        {"contents": [{"role": "user", "parts": [{"text": HELLO}]}]},
        lambda body: str(body["error"]["status"]),
    ),
]
REFUSED_AS = {"chat": "example_blocked", "messages": "permission_error",
              "gemini": "PERMISSION_DENIED"}  # fmt: skip


@dataclass
class Served:
    """A live ``corral serve``: its URL, ada's key (team payments), the fixture repository
    and the file the example extension reports to."""

    url: str
    key: str
    repo: Path
    out: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def call(
        self, wire: Wire, headers: Mapping[str, str], *, stream: bool = False
    ) -> httpx.Response:
        """One model call in ``wire``'s protocol with ``headers``, read whole."""
        body = {**wire.body, "stream": True} if stream and wire.name != "gemini" else wire.body
        with httpx.Client(base_url=self.url, timeout=60) as c:
            return c.post(
                wire.stream_path if stream else wire.path,
                json=body,
                headers={**wire.headers(self.key), **headers},
            )

    def reports(self, kind: str) -> list[dict[str, Any]]:
        """What the extension reported so far, of ``kind`` (``call`` or ``spans``)."""
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def reported_call(self, request_id: str) -> dict[str, Any]:
        """The listener's report of the call ``request_id``, once it is written."""
        return _until(
            lambda: next((r for r in self.reports("call") if r["request_id"] == request_id), None),
            f"the call listener never reported {request_id}",
        )

    def record(self, request_id: str) -> dict[str, Any]:
        """The gateway's record (the ``llm_request`` span) of the call ``request_id``."""
        with self.client(ADMIN_KEY) as c:

            def find() -> dict[str, Any] | None:
                listed = c.get("/api/v1/spans", params={"kind": "llm_request"})
                assert listed.status_code == 200, listed.text
                for summary in listed.json()["spans"]:
                    detail = c.get(f"/api/v1/spans/{summary['span_id']}").json()
                    if detail["request_id"] == request_id:
                        return dict(detail)
                return None

            return _until(find, f"no record of the call {request_id}")

    def trace_span_ids(self, trace_id: str) -> set[str]:
        with self.client(ADMIN_KEY) as c:
            trace = c.get(f"/api/v1/traces/{trace_id}")
        assert trace.status_code == 200, trace.text
        return {node["span_id"] for node in trace.json()["nodes"]}


def _until(check: Callable[[], T | None], what: str, limit: float = 30) -> T:
    """The first value ``check`` returns that is not None (bounded)."""
    deadline = time.monotonic() + limit
    while (found := check()) is None:
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def _install(target: Path) -> None:
    """pip installs the example into ``target``, built by hatchling (a dev dependency)
    offline: nothing is fetched, the virtualenv is not touched."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.fail("hatchling, the example's build backend, is missing: pip install -e '.[dev]'")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", "--target", str(target), str(EXAMPLE)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (target / "corral_example" / "__init__.py").is_file()


def _ada(url: str) -> str:
    """Team payments, user ada and her key, made through the admin API."""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as c:
        made = None
        for path, body in (
            ("/api/v1/teams", {"name": "payments"}),
            ("/api/v1/users", {"name": "ada", "team": "payments"}),
            ("/api/v1/keys", {"team": "payments", "user": "ada"}),
        ):
            made = c.post(path, json=body)
            assert made.status_code == 201, made.text
    assert made is not None
    return str(made.json()["key"])


@contextlib.contextmanager
def _serve(root: Path, site: Path | None, **env: str) -> Iterator[Served]:
    """``corral serve`` on the default simulator, runs in the sandbox, with ``site`` (the
    example's install folder) on its ``PYTHONPATH`` when given."""
    repo = make_repo(root / "repo", {"README": "hello\n"})
    out = root / "example-out.jsonl"
    env = {
        "CORRAL_EXAMPLE_OUT": str(out),
        "CORRAL_RUNS_DIR": str(root / "runs"),
        "CORRAL_ARTIFACT_DIR": str(root / "artifacts"),
        "CORRAL_RUN_HEARTBEAT_INTERVAL": "0.2",
        "CORRAL_RUN_GRACE": "2",
        "CORRAL_RECORD_FLUSH_INTERVAL": "0.05",
        **env,
    }
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    port = free_port()
    proc = start_server(root / "home", port, **env)
    try:
        url = f"http://127.0.0.1:{port}"
        yield Served(url, _ada(url), repo, out)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def extended() -> Iterator[Served]:
    """A server with the example extension installed."""
    with shared_folder("corral-plugins-") as root:
        _install(root / "site")
        with _serve(root, root / "site") as served:
            yield served


@pytest.fixture(scope="module")
def bare() -> Iterator[Served]:
    """The same server without the extension (and running no runs)."""
    with shared_folder("corral-plugins-") as root, _serve(root, None, CORRAL_RUN_SLOTS="0") as s:
        yield s


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.name)
def test_the_guard_refuses_a_marked_request_in_the_callers_shape(
    extended: Served, wire: Wire
) -> None:
    """A request marked ``x-example-block: yes`` gets the guard's 403 in the caller's
    protocol; its record says refused, by the guard's code; the listener saw it end, and
    the observer saw no chunk of it (it never went upstream)."""
    refused = extended.call(wire, BLOCK)
    assert refused.status_code == 403, refused.text
    assert wire.error_type(refused.json()) == REFUSED_AS[wire.name]
    assert "corral-example guard" in refused.text
    request_id = refused.headers["x-corral-request-id"]

    record = extended.record(request_id)
    assert record["status"] == "refused"
    assert record["http_status"] == 403
    assert record["error_class"] == "example_blocked"
    assert record["attributes"]["guard"]["refused"] == "example_blocked"
    assert "guards" not in record["attributes"]
    assert extended.reported_call(request_id) == {
        "kind": "call", "request_id": request_id, "status": "refused", "chunks": 0,
    }  # fmt: skip


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.name)
def test_an_unmarked_stream_is_annotated_observed_and_offered_to_the_sink(
    extended: Served, wire: Wire
) -> None:
    """An unmarked streamed call succeeds; its record carries the guard's annotation; the
    observer counted more than one chunk of it; the sink was offered its spans."""
    # x-sim-tps paces the simulator's answer, so that it arrives in several reads
    answered = extended.call(wire, {"x-example-block": "no", "x-sim-tps": "400"}, stream=True)
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/event-stream")
    request_id = answered.headers["x-corral-request-id"]

    record = extended.record(request_id)
    assert record["status"] == "ok"
    assert record["attributes"]["guards"] == {"example": "seen"}
    with extended.client(ADMIN_KEY) as c:  # annotations are searchable (docs/plugins.md)
        found = c.get("/api/v1/spans", params={"attr": "guards.example=seen", "limit": 100})
    assert record["span_id"] in {s["span_id"] for s in found.json()["spans"]}, found.text
    reported = extended.reported_call(request_id)
    assert reported["status"] == "ok"
    assert reported["chunks"] > 1, reported

    spans = extended.trace_span_ids(record["trace_id"])
    assert record["span_id"] in spans
    assert len(spans) >= 2, spans  # the call and its upstream attempt
    _until(
        lambda: spans <= {i for r in extended.reports("spans") for i in r["span_ids"]} or None,
        f"the span sink was never offered all of {sorted(spans)}",
    )


def test_a_run_with_the_extensions_profile_ends_with_its_steps_artifact(extended: Served) -> None:
    """``--agent example-echo`` runs the extension's command in the sandbox; Corral's steps
    and then the extension's ``example-step`` run after it, whose artifact the API serves."""
    need_sandbox()
    with extended.client() as c:
        body = {"agent": "example-echo", "repo": str(extended.repo), "task": "say hi"}
        submitted = c.post("/api/v1/runs", json=body)
        assert submitted.status_code == 201, submitted.text
        run_id = submitted.json()["id"]

        def ended() -> dict[str, Any] | None:
            run = c.get(f"/api/v1/runs/{run_id}").json()
            return None if run["state"] in LIVE else dict(run)

        run = _until(ended, "the run did not end", limit=60)
        assert run["state"] == "awaiting_review", run
        assert "1 file changed" in run["reason"], run

        def artifact(name: str) -> str:
            got = c.get(f"/api/v1/runs/{run_id}/artifacts/{name}")
            assert got.status_code == 200, (name, got.text)
            return got.text

        assert artifact("artifacts/example-step.txt") == (
            f"example-step saw run {run_id} end with exit code 0: 1 file(s) changed\n"
        )
        assert artifact("report.md") == "done\n"  # the profile's report, by Corral's step
        assert "+say hi\n" in artifact("diff.patch")


def test_without_the_extension_none_of_it_acts(bare: Served) -> None:
    """The same server without the package on its path: the profile is unknown (a 400
    naming it), a marked request is served, its record has no annotation, nothing is
    reported."""
    with bare.client() as c:
        body = {"agent": "example-echo", "repo": str(bare.repo), "task": "say hi"}
        unknown = c.post("/api/v1/runs", json=body)
    assert unknown.status_code == 400, unknown.text
    message = unknown.json()["error"]["message"]
    assert "unknown agent profile 'example-echo'" in message, message

    served = bare.call(WIRES[0], BLOCK, stream=True)
    assert served.status_code == 200, served.text
    record = bare.record(served.headers["x-corral-request-id"])
    assert record["status"] == "ok"
    assert "guards" not in (record["attributes"] or {})
    assert not bare.out.exists()


def test_an_extension_that_fails_to_load_stops_the_start_saying_so(tmp_path: Path) -> None:
    """An installed package whose ``corral`` entry point cannot be imported: ``corral
    serve`` does not start, and says why in one line rather than a traceback."""
    dist = tmp_path / "site" / "broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[corral]\nbroken = corral_broken_extension\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_HOME=str(tmp_path / "home"), PYTHONPATH=str(tmp_path / "site"))
    argv = [sys.executable, "-m", "corral", "serve", "--port", str(free_port())]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert (
        "Error: an extension registered under the 'corral' entry points failed to load "
        "(ModuleNotFoundError: No module named 'corral_broken_extension')"
    ) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
