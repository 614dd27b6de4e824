"""The reference agent against a real Corral whose simulator plays scripted conversations.

Corral (gateway, OTLP ingest, span store) runs in a thread on a loopback port,
backed by a simulator that plays ``data/script.toml``; the agent runs in this
process through ``main`` (its own tracer provider), or as the sandbox runs it:
Debian's ``/usr/bin/python3.11 -m corral.agent`` with only ``PYTHONPATH`` set.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from corral.agent import main
from corral.sim import SimConfig
from corral.sim.testing import running_sim
from corral.store.schema import span_rollups, spans
from tests.agent.test_tools import alive
from tests.conftest import StartCorral
from tests.gateway.conftest import Running, gateway_corral

SCRIPT = Path(__file__).parent / "data" / "script.toml"
BUILD = "sleep 30 & echo $! > sleep.pid; echo building; wait"  # the "slow" conversation's
SRC = Path(__file__).parents[2] / "src"
SITE_PACKAGES = Path(sys.prefix, "lib", "python3.11", "site-packages")
SANDBOX_PYTHON = "/usr/bin/python3.11"
CALC = "def add(a, b):\n    return a - b\n"
TEST_CALC = (
    "from calc import add\n\nassert add(2, 3) == 5, f'add(2, 3) is {add(2, 3)}'\nprint('ok')\n"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tiny project whose test fails: ``add`` subtracts."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    (root / "test_calc.py").write_text(TEST_CALC)
    return root


@pytest.fixture
def scripted(tmp_path: Path, store_url: str, start_corral: StartCorral) -> Iterator[Running]:
    """Corral with a team, user and key, in front of a simulator playing the test script."""
    with (
        running_sim(SimConfig(script=SCRIPT)) as sim,
        gateway_corral(tmp_path / "home", store_url, sim_url=sim.url) as running,
    ):
        yield running


def agent_environ(corral: Running, **extra: str) -> dict[str, str]:
    """What a run's profile gives the agent: gateway, key, model, OTLP endpoint."""
    return {
        "OPENAI_BASE_URL": f"{corral.url}/v1",
        "OPENAI_API_KEY": corral.key,
        "CORRAL_MODEL": "sim-standard",
        "OTEL_EXPORTER_OTLP_ENDPOINT": corral.url,
        **extra,
    }


def trace_rows(corral: Running, trace_id: str, want: int) -> list[Any]:
    """The trace's stored spans, waiting (bounded) until ``want`` of them arrived."""
    deadline = time.monotonic() + 10
    while True:
        with corral.app.store.connect() as conn:
            rows = list(conn.execute(select(spans).where(spans.c.trace_id == trace_id)))
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def reported_trace(report: str) -> str:
    found = re.search(r"Trace: `([0-9a-f]{32})`", report)
    assert found, report
    return found.group(1)


def test_agent_fixes_the_failing_test_and_reports_one_trace(
    scripted: Running, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The scripted agent fixes calc.py, reports it, and leaves one attributed trace."""
    code = main(
        ["--task", "Fix the failing test in this repo.", "--workdir", str(repo)],
        agent_environ(scripted),
    )
    report = capsys.readouterr().out
    assert code == 0, report
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert "- Outcome: completed" in report
    assert "Fixed add() in calc.py" in report
    assert "- Turns: 4 of 30" in report
    assert "- modified `calc.py`" in report
    assert "- `python3 test_calc.py`: exit 0" in report
    for tool in ("edit_file", "list_files", "read_file", "run"):
        assert f"- `{tool}`: 1" in report

    rows = trace_rows(scripted, reported_trace(report), want=17)
    by_kind: dict[str, list[Any]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    (agent,) = by_kind["agent"]
    assert (agent.name, agent.source, agent.parent_span_id) == (
        "invoke_agent corral-agent",
        "corral-agent",
        None,
    )
    chats = [r for r in by_kind["llm_request"] if r.source == "corral-agent"]
    gateway = {r.span_id: r for r in by_kind["llm_request"] if r.source == "gateway"}
    assert len(chats) == 4
    assert len(gateway) == 4
    for chat in chats:
        assert chat.name == "chat sim-standard"
        assert chat.parent_span_id == agent.span_id
        assert gateway[chat.duplicate_of].parent_span_id == chat.span_id, "traceparent honoured"
    tools = sorted(r.name for r in by_kind["tool"])
    assert tools == [f"execute_tool {t}" for t in ("edit_file", "list_files", "read_file", "run")]
    assert {r.parent_span_id for r in by_kind["tool"]} == {agent.span_id}
    assert len(by_kind["attempt"]) == 4
    for row in rows:
        assert (row.team_id, row.user_id, row.key_id) == (
            scripted.team_id,
            scripted.user_id,
            scripted.key_id,
        )
    with scripted.app.store.connect() as conn:
        calls = conn.scalar(select(func.sum(span_rollups.c.requests)))
    assert calls == 4, "the agent's chat spans are not counted a second time"


def test_turn_limit_ends_with_exit_3(
    scripted: Running, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model still calling tools at the turn limit: exit 3, and the report says so."""
    artifacts = tmp_path / "artifacts"
    code = main(
        ["--task", "Keep looking around.", "--workdir", str(repo), "--max-turns", "2"],
        agent_environ(scripted, CORRAL_ARTIFACTS=str(artifacts)),
    )
    out = capsys.readouterr().out
    assert code == 3
    report = (artifacts / "report.md").read_text()
    assert report == out
    assert "- Outcome: turn limit reached (2 turns) before a final answer" in report
    assert "Looking around." in report
    assert "## Files changed\n\n(none)" in report


def test_path_outside_the_workdir_is_refused_as_a_tool_result(
    scripted: Running, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading ../secret.txt or writing /tmp/… is an error result; the run goes on and ends."""
    (tmp_path / "secret.txt").write_text("hunter2")
    code = main(
        ["--task", "Read the secret next door.", "--workdir", str(repo)],
        agent_environ(scripted),
    )
    report = capsys.readouterr().out
    assert code == 0, report
    assert "- `read_file`: 1 (1 failed)" in report
    assert "- `write_file`: 1 (1 failed)" in report
    assert not Path("/tmp/corral-agent-escape.txt").exists()
    rows = trace_rows(scripted, reported_trace(report), want=7)
    failed = [r for r in rows if r.kind == "tool"]
    assert [r.status for r in failed] == ["error", "error"]


def sandbox_env(corral: Running, artifacts: Path) -> dict[str, str]:
    """The environment a run's sandbox gives the agent: nothing of the host's."""
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{SRC}{os.pathsep}{SITE_PACKAGES}",
        "CORRAL_ARTIFACTS": str(artifacts),
        **agent_environ(corral),
    }


def sandbox_agent(
    corral: Running, workdir: Path, artifacts: Path
) -> subprocess.CompletedProcess[str]:
    """The agent as a run's sandbox starts it: Debian's Python, PYTHONPATH, a clean environment."""
    return subprocess.run(
        [SANDBOX_PYTHON, "-m", "corral.agent", "--task", "Fix the failing test."],
        cwd=workdir,
        env=sandbox_env(corral, artifacts),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not Path(SANDBOX_PYTHON).exists(), reason="no Debian python3.11")
def test_spent_budget_stops_with_the_gateways_message(
    tmp_path: Path, store_url: str, start_corral: StartCorral, repo: Path
) -> None:
    """A 402 from the gateway: exit 1, its message on stderr and in the report, no retry."""
    budgets = [{"team": "payments", "tokens": 1, "window": "day"}]
    with (
        running_sim(SimConfig(script=SCRIPT)) as sim,
        gateway_corral(
            tmp_path / "home",
            store_url,
            sim_url=sim.url,
            budgets=budgets,
            quota_refresh_interval=0.1,
        ) as corral,
    ):
        deadline = time.monotonic() + 10
        while not corral.app.quotas.ruleset.budgets:
            assert time.monotonic() < deadline, "the budget never loaded"
            time.sleep(0.02)
        done = sandbox_agent(corral, repo, tmp_path / "artifacts")
    assert done.returncode == 1, done.stderr
    assert "corral-agent: the gateway refused the call: " in done.stderr
    assert "budget" in done.stderr
    report = (tmp_path / "artifacts" / "report.md").read_text()
    assert "- Outcome: stopped: the gateway refused the call: " in report
    assert "- Turns: 0 of 30" in report
    assert report == done.stdout
    assert (repo / "calc.py").read_text() == CALC


def test_revoked_key_stops_with_exit_1(
    scripted: Running, repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key revoked before the run: 401 from the gateway, exit 1, its message reported."""
    scripted.identity.revoke_key(scripted.key_id)
    deadline = time.monotonic() + 10
    while True:  # every gateway process refuses it within the key refresh interval
        probe = httpx.get(
            f"{scripted.url}/v1/models",
            headers={"authorization": f"Bearer {scripted.key}"},
            timeout=10,
        )
        if probe.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    code = main(
        ["--task", "Fix the failing test.", "--workdir", str(repo)], agent_environ(scripted)
    )
    captured = capsys.readouterr()
    assert code == 1
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("corral-agent: the gateway refused the call: ")
    assert "revoked" in message
    assert f"- Outcome: stopped: {message.removeprefix('corral-agent: ')}" in captured.out


@pytest.mark.skipif(not Path(SANDBOX_PYTHON).exists(), reason="no Debian python3.11")
def test_sigterm_stops_the_command_and_still_reports(
    scripted: Running, repo: Path, tmp_path: Path
) -> None:
    """SIGTERM mid-command: the command's group is killed, the report written, the trace sent."""
    agent = subprocess.Popen(
        [SANDBOX_PYTHON, "-m", "corral.agent", "--task", "Wait for the build."],
        cwd=repo,
        env=sandbox_env(scripted, tmp_path / "artifacts"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stderr is not None
    assert agent.stderr.readline() == f"corral-agent: [turn 1] run: {BUILD}\n"
    time.sleep(0.3)  # the command is running
    agent.send_signal(signal.SIGTERM)
    out, err = agent.communicate(timeout=30)
    assert agent.returncode == 1
    assert err == "corral-agent: interrupted by SIGTERM\n"
    assert "- Outcome: stopped: interrupted by SIGTERM" in out
    assert f"- `{BUILD}`: interrupted" in out
    assert (tmp_path / "artifacts" / "report.md").read_text() == out
    rows = trace_rows(scripted, reported_trace(out), want=4)
    (root,) = [r for r in rows if r.kind == "agent"]
    assert root.status == "error"
    sleeper = int((repo / "sleep.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(sleeper):
        assert time.monotonic() < deadline, "the command's process group outlived the agent"
        time.sleep(0.02)


def test_handed_screenshots_are_shown_with_the_task_and_links_are_not(tmp_path: Path) -> None:
    """A review's browser check hands screenshots over ($CORRAL_HANDOFF/screenshots): the
    agent attaches the regular PNG/JPEG files, in name order, within the caps; a link (to a
    host file), a folder, another kind of file, or one too large is left out."""
    from corral.agent.command import IMAGE_MAX_BYTES, handed_images, image_part

    shots = tmp_path / "handoff" / "screenshots"
    shots.mkdir(parents=True)
    (shots / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"b" * 10)
    (shots / "a.jpg").write_bytes(b"\xff\xd8" + b"a" * 10)
    (shots / "notes.txt").write_text("no")
    (shots / "big.png").write_bytes(b"x" * (IMAGE_MAX_BYTES + 1))
    (shots / "link.png").symlink_to("/etc/passwd")
    (shots / "dir.png").mkdir()
    found = handed_images({"CORRAL_HANDOFF": str(tmp_path / "handoff")})
    assert [p.name for p in found] == ["a.jpg", "b.png"]
    part = image_part(found[1])
    assert part["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGg")
    assert handed_images({}) == ()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "h2").mkdir()
    (tmp_path / "h2" / "screenshots").symlink_to(tmp_path / "elsewhere")
    assert handed_images({"CORRAL_HANDOFF": str(tmp_path / "h2")}) == ()
