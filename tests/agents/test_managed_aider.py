"""The real aider completes a task as a managed run, metered to the run.

Corral (gateway, in-process simulator playing ``data/managed_aider.toml``, run
executor) runs on a loopback port; a user submits an ``aider`` run over the runs
API. The executor clones a fixture repository, mints the run key and starts
aider (its own virtualenv, ``.cache/aider``, bound read-only) inside bubblewrap
as uid 65534, with the gateway relayed to ``127.0.0.1:4000`` inside and no other
network. aider adds the file the task names to its chat, the script answers in
aider's "whole" edit format, aider writes the file. The run must end awaiting
review with the change as its diff, aider's output as its report and its chat
transcript as an artifact, and every gateway record must carry the run, its team
and owner and the run's key.

It needs root, bubblewrap and aider (``make agents`` installs it); without them it
skips, except under CI=true where that is a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.conftest import NOTES
from tests.agents.test_managed_runs import Task, llm_calls, managed_corral, run_to_the_end
from tests.gateway.conftest import Running

pytestmark = pytest.mark.agent_cli

SCRIPT = Path(__file__).parent / "data" / "managed_aider.toml"
AIDER_BIN = Path(__file__).resolve().parents[2] / ".cache" / "aider" / "bin"
AIDER = Task(
    agent="aider",
    binary="aider",
    task="Fix the typo in notes.txt (managed aider run)",
    calls=1,
    changed=("notes.txt",),
    tool_output=(),
    telemetry="",
)


def aider() -> Path:
    """aider's executable in its virtualenv; missing, the test skips (fails under CI=true)."""
    path = AIDER_BIN / "aider"
    if not path.exists():
        message = "aider is not installed: run `make agents` (scripts/install-agents.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def managed(tmp_path: Path, runs_root: Path, store_url: str) -> Iterator[Running]:
    aider()
    with managed_corral(
        tmp_path / "home", runs_root, store_url, agent_path=AIDER_BIN, script=SCRIPT
    ) as running:
        yield running


def test_aider_completes_a_managed_run(managed: Running, repo: Path) -> None:
    """aider, sandboxed and offline, edits the file its task names; its diff, report,
    transcript and metered calls come back on the run."""
    run = run_to_the_end(managed, repo, AIDER)
    assert run["state"] == "awaiting_review", (run["state"], run["reason"], run["logs"])
    assert run["sandbox"] == "bubblewrap"
    assert run["exit_code"] == 0
    assert run["diff"].count("diff --git") == 1, run["diff"]
    assert "diff --git a/notes.txt b/notes.txt" in run["diff"], run["diff"]
    assert "-Corral runs agnets.\n+Corral runs agents.\n" in run["diff"], run["diff"]
    assert "Fixed the typo in notes.txt" in run["report"], run["report"]
    assert "Applied edit to notes.txt" in run["report"], run["report"]
    assert (repo / "notes.txt").read_text() == NOTES, "the change stays in the run's clone"

    key_id = managed.app.runs.load(run["id"]).key_id
    calls = llm_calls(managed, run["id"], "gateway", AIDER.calls)
    assert len(calls) == AIDER.calls, [c.model_requested for c in calls]
    for call in calls:
        assert call.status == "ok", call.error_message
        assert (call.team_id, call.user_id, call.owner_id) == (
            managed.team_id,
            managed.user_id,
            managed.user_id,
        )
        assert call.key_id == key_id != managed.key_id, "the run's own key, not ada's"
        assert call.cost_nusd > 0
        assert call.input_tokens + call.cached_input_tokens > 0
    shown = managed.corral.get(f"/api/v1/runs/{run['id']}", key=managed.key).json()
    assert shown["llm_calls"] == AIDER.calls
    assert shown["cost_usd"] > 0

    body = managed.app.blobs.get(calls[0].request_blob)
    assert body is not None, "the gateway kept the request body"
    sent = json.dumps(json.loads(body)["messages"])
    assert AIDER.task in sent, "the task reached the model"
    assert "Corral runs agnets." in sent, "with the file it names, added to aider's chat"
    transcript = managed.corral.get(
        f"/api/v1/runs/{run['id']}/artifacts/artifacts/aider.chat.history.md", key=managed.key
    )
    assert transcript.status_code == 200, "aider's chat transcript is an artifact of the run"
    assert "Applied edit to notes.txt" in transcript.text, transcript.text
