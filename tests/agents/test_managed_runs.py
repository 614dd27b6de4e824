"""The real Claude Code, Codex and Gemini CLIs complete a task as managed runs, metered to
the run.

Corral (gateway, in-process simulator playing ``data/managed_runs.toml``, run
executor) runs on a loopback port; a user submits a run over the runs API.
The executor clones a fixture repository, mints the run key and starts the CLI
inside bubblewrap as uid 65534, with the gateway relayed to
``127.0.0.1:4000`` inside. The script answers the task through the CLI's own
tools (Claude Code: ``Read``, ``Edit``, ``Write``, ``Bash``; Codex:
``exec_command``, with ``apply_patch`` run through it; Gemini CLI: ``read_file``,
``write_file``, ``run_shell_command``), then ends with a text
turn. The run must end awaiting review with the change as its diff and the
CLI's report, and every gateway record must carry the run, its team and owner.

They need root and bubblewrap (the sandbox drops to an unprivileged uid and
makes cgroups) and the CLIs from ``make agents``; without them they skip,
except under CI=true where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.runs.model import ACTIVE
from corral.store.schema import spans
from tests.agents.conftest import NOTES
from tests.agents.test_real_cli_agents import BIN, cli
from tests.gateway.conftest import Running, gateway_corral
from tests.sandboxing import need_sandbox
from tests.services import missing_service

pytestmark = pytest.mark.agent_cli

SCRIPT = Path(__file__).parent / "data" / "managed_runs.toml"
RUN_TIMEOUT = 150  # seconds: the run's wall-clock limit; each run takes a few seconds here
RUN_UID = "65534"  # the unprivileged uid runs get when Corral runs as root


@dataclass(frozen=True)
class Task:
    """One agent's scripted task (a conversation of ``data/managed_runs.toml``)."""

    agent: str  # the run profile
    binary: str  # its CLI under .cache/npm/bin
    task: str  # matched by the script's conversation
    calls: int  # model calls the script plays: its turns
    changed: tuple[str, ...]  # files the diff must touch
    tool_output: tuple[str, ...]  # what the CLI's tools returned, read back from its last call
    telemetry: str  # how its own OTLP telemetry names itself (span source) begins


CLAUDE_CODE = Task(
    agent="claude-code",
    binary="claude",
    task="Fix the typo in notes.txt (managed claude-code run)",
    calls=4,
    changed=("notes.txt", "CHANGES.md"),
    tool_output=("Corral runs agnets.", RUN_UID),
    telemetry="claude-code",
)
CODEX = Task(
    agent="codex",
    binary="codex",
    task="Fix the typo in notes.txt (managed codex run)",
    calls=3,
    changed=("notes.txt",),
    tool_output=("Corral runs agnets.", RUN_UID, "Updated the following files"),
    telemetry="codex",
)
GEMINI = Task(
    agent="gemini",
    binary="gemini",
    task="Fix the typo in notes.txt (managed gemini run)",
    calls=4,
    changed=("notes.txt",),
    tool_output=("Corral runs agnets.", RUN_UID),
    telemetry="gemini-cli",
)


@contextlib.contextmanager
def managed_corral(
    home: Path, runs_root: Path, store_url: str, *, agent_path: Path, script: Path
) -> Iterator[Running]:
    """Corral with a team, user and key, running agents found on ``agent_path`` in its
    sandbox from ``runs_root``, its simulator playing ``script``."""
    need_sandbox()
    settings: dict[str, Any] = {
        "runs_dir": runs_root / "runs",
        "run_agent_path": str(agent_path),
        "sim_script": script,
        "run_heartbeat_interval": 0.2,
        "run_grace": 2,
    }
    with gateway_corral(home, store_url, **settings) as running:
        refusal = running.app.executor.refusal
        if refusal:
            missing_service("an isolating sandbox", refusal)
        yield running


@pytest.fixture
def managed(tmp_path: Path, runs_root: Path, store_url: str) -> Iterator[Running]:
    with managed_corral(
        tmp_path / "home", runs_root, store_url, agent_path=BIN, script=SCRIPT
    ) as running:
        yield running


def run_to_the_end(running: Running, repo: Path, task: Task) -> dict[str, Any]:
    """Submit ``task`` as ada (her own key) and wait until the run leaves the live states."""
    client = running.track(
        httpx.Client(
            base_url=running.url, headers={"authorization": f"Bearer {running.key}"}, timeout=30
        )
    )
    body = {
        "agent": task.agent,
        "repo": str(repo),
        "task": task.task,
        "model": "sim-standard",
        "timeout": RUN_TIMEOUT,
    }
    submitted = client.post("/api/v1/runs", json=body)
    assert submitted.status_code == 201, submitted.text
    run_id = submitted.json()["id"]
    deadline = time.monotonic() + RUN_TIMEOUT + 30
    while True:
        run: dict[str, Any] = client.get(f"/api/v1/runs/{run_id}").json()
        if run["state"] not in ACTIVE or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    run["diff"] = artifact(client, run_id, "diff.patch")
    run["report"] = artifact(client, run_id, "report.md")
    run["logs"] = artifact(client, run_id, "stderr.log")[-3000:]
    run["logs"] += artifact(client, run_id, "stdout.log")[-3000:]
    return run


def artifact(client: httpx.Client, run_id: str, name: str) -> str:
    """An artifact's text over the runs API, empty when the run left none."""
    response = client.get(f"/api/v1/runs/{run_id}/artifacts/{name}")
    return response.text if response.status_code == 200 else ""


def llm_calls(running: Running, run_id: str, source: str, want: int) -> list[Any]:
    """The run's llm_request spans whose source starts with ``source``, waiting (bounded) for
    ``want`` of them."""
    deadline = time.monotonic() + 15
    while True:
        with running.app.store.connect() as conn:
            rows = conn.execute(
                select(spans)
                .where(
                    spans.c.kind == "llm_request",
                    spans.c.source.startswith(source),
                    spans.c.run_id == run_id,
                )
                .order_by(spans.c.start_ns)
            ).fetchall()
        if len(rows) >= want or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.1)


def tool_outputs(body: dict[str, Any]) -> list[str]:
    """The tool results a request carries back: Messages ``tool_result`` blocks, Responses
    ``function_call_output``/``custom_tool_call_output`` items, Gemini ``functionResponse``
    parts."""
    found: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                found.append(json.dumps(block.get("content")))
    for item in body.get("input", []):
        if item.get("type") in ("function_call_output", "custom_tool_call_output"):
            found.append(json.dumps(item.get("output")))
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "functionResponse" in part:
                found.append(json.dumps(part["functionResponse"].get("response")))
    return found


def check_managed_run(running: Running, repo: Path, task: Task) -> None:
    """Run ``task`` to the end and check the run, its artifacts and its metered calls."""
    cli(task.binary)
    run = run_to_the_end(running, repo, task)
    assert run["state"] == "awaiting_review", (run["state"], run["reason"], run["logs"])
    assert run["sandbox"] == "bubblewrap"
    assert run["exit_code"] == 0
    for name in task.changed:
        assert f"diff --git a/{name} b/{name}" in run["diff"], run["diff"]
    assert "-Corral runs agnets.\n+Corral runs agents.\n" in run["diff"], run["diff"]
    assert "Fixed the typo in notes.txt" in run["report"], run["report"]
    assert (repo / "notes.txt").read_text() == NOTES, "the change stays in the run's clone"

    key_id = running.app.runs.load(run["id"]).key_id
    calls = llm_calls(running, run["id"], "gateway", task.calls)
    assert len(calls) == task.calls, [c.model_requested for c in calls]
    for call in calls:
        assert call.status == "ok", call.error_message
        assert (call.team_id, call.user_id, call.owner_id) == (
            running.team_id,
            running.user_id,
            running.user_id,
        )
        assert call.key_id == key_id != running.key_id, "the run's own key, not ada's"
        assert call.cost_nusd > 0
        assert call.input_tokens + call.cached_input_tokens > 0
    reported = llm_calls(running, run["id"], task.telemetry, task.calls)
    assert {r.duplicate_of for r in reported} == {c.span_id for c in calls}, (
        "the CLI's own telemetry reached Corral through the relay and joined the gateway's calls"
    )
    shown = running.corral.get(f"/api/v1/runs/{run['id']}", key=running.key).json()
    assert shown["llm_calls"] == task.calls, "each call counted once"
    assert shown["cost_usd"] > 0

    last = running.app.blobs.get(calls[-1].request_blob)
    assert last is not None, "the gateway kept the request body"
    outputs = tool_outputs(json.loads(last))
    for expected in task.tool_output:
        assert any(expected in output for output in outputs), (expected, outputs)


def test_claude_code_completes_a_managed_run(managed: Running, repo: Path) -> None:
    """Claude Code, sandboxed, edits with its own tools; its diff, report and metered calls
    come back on the run."""
    check_managed_run(managed, repo, CLAUDE_CODE)


def test_codex_completes_a_managed_run(managed: Running, repo: Path) -> None:
    """Codex, sandboxed, patches through exec_command; its diff, report and metered calls come
    back on the run."""
    check_managed_run(managed, repo, CODEX)


def test_gemini_cli_completes_a_managed_run(managed: Running, repo: Path) -> None:
    """Gemini CLI, sandboxed, reads, writes and runs a command with its own tools over the
    Gemini API; its diff, report and metered calls come back on the run."""
    check_managed_run(managed, repo, GEMINI)
