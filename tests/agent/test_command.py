"""The command line (flags, environment, exit codes), the report, and the import fence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corral.agent import Outcome, Toolbox, main
from corral.agent.report import changes, code, render, snapshot
from corral.agent.tools import CommandRun
from corral.cli.agent import agent as agent_command

SRC = Path(__file__).parents[2] / "src"
SITE_PACKAGES = Path(sys.prefix, "lib", "python3.11", "site-packages")
SANDBOX_PYTHON = "/usr/bin/python3.11"
FULL = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k", "CORRAL_MODEL": "m"}


@pytest.mark.parametrize(
    ("argv", "environ", "said"),
    [
        ([], FULL, "no task: pass --task TEXT or --task-file FILE"),
        (["--task", "  "], FULL, "no task: pass --task TEXT or --task-file FILE"),
        (["--task", "t", "--task-file", "f"], FULL, "give --task or --task-file, not both"),
        (["--task-file", "/nonexistent/task.md"], FULL, "--task-file /nonexistent/task.md: cannot"),
        (
            ["--task", "t"],
            {**FULL, "CORRAL_MODEL": ""},
            "no model: pass --model or set CORRAL_MODEL",
        ),
        (
            ["--task", "t"],
            {k: v for k, v in FULL.items() if k != "OPENAI_BASE_URL"},
            "no gateway URL: pass --base-url or set OPENAI_BASE_URL (the gateway's /v1 base)",
        ),
        (
            ["--task", "t"],
            {k: v for k, v in FULL.items() if k != "OPENAI_API_KEY"},
            "no API key: set OPENAI_API_KEY or CORRAL_API_KEY",
        ),
        (["--task", "t", "--max-turns", "0"], FULL, "--max-turns must be at least 1"),
        (["--task", "t", "--workdir", "/nonexistent"], FULL, "--workdir /nonexistent: not a"),
    ],
)
def test_usage_errors_exit_2_naming_what_to_set(
    argv: list[str], environ: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing or conflicting settings: exit 2 and one line naming the flag or variable."""
    assert main(argv, environ) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"corral-agent: {said}")
    assert captured.err.count("\n") == 1


def test_corral_api_key_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CORRAL_API_KEY stands in for OPENAI_API_KEY; the task may come from a file."""
    task = tmp_path / "task.md"
    task.write_text("Do the thing.\n")
    environ = {k: v for k, v in FULL.items() if k != "OPENAI_API_KEY"} | {"CORRAL_API_KEY": "k"}
    # The gateway address is a closed port: the run gets as far as calling it.
    code = main(["--task-file", str(task), "--workdir", str(tmp_path)], environ)
    captured = capsys.readouterr()
    assert code == 1
    assert "could not reach the gateway at http://127.0.0.1:9/v1/chat/completions" in captured.err
    assert "- Outcome: stopped: could not reach the gateway" in captured.out


@pytest.mark.skipif(not Path(SANDBOX_PYTHON).exists(), reason="no Debian python3.11")
def test_sandbox_invocation_imports_nothing_of_the_server(tmp_path: Path) -> None:
    """Under the sandbox's python with only PYTHONPATH, --help works and no server module loads."""
    env = {"PYTHONPATH": f"{SRC}{os.pathsep}{SITE_PACKAGES}"}
    shown = subprocess.run(
        [SANDBOX_PYTHON, "-m", "corral.agent", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "--command-timeout SECONDS" in shown.stdout
    probe = (
        "import sys, corral.agent.command, corral.agent.telemetry as t;"
        "t.exporter_from({'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://x'}, 'k');"
        "print(sorted(m for m in sys.modules if m.startswith(('corral', 'sqlalchemy', 'redis'))"
        " and not m.startswith('corral.agent')))"
    )
    loaded = subprocess.run(
        [SANDBOX_PYTHON, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "['corral']"


def test_cli_command_forwards_to_the_same_entry() -> None:
    """`corral agent` shows the agent's flags and forwards them to main (a '-' value too)."""
    runner = CliRunner()
    shown = runner.invoke(agent_command, ["--help"], prog_name="corral agent")
    assert shown.exit_code == 0
    for flag in ("--task TEXT", "--max-turns N", "--command-timeout SECONDS"):
        assert flag in shown.output
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "", "CORRAL_API_KEY": ""}
    refused = runner.invoke(agent_command, ["--task", "-v", "--model", "m"], env=env)
    assert refused.exit_code == 2
    assert "corral-agent: no API key: set OPENAI_API_KEY or CORRAL_API_KEY" in refused.output


def test_snapshot_sees_added_deleted_and_same_size_edits(tmp_path: Path) -> None:
    """Changes are found by content too: an edit keeping size and mtime still shows."""
    (tmp_path / "same.py").write_text("a - b\n")
    (tmp_path / "gone.txt").write_text("x")
    (tmp_path / ".git").mkdir()
    before = snapshot(tmp_path)
    stat = (tmp_path / "same.py").stat()
    (tmp_path / "same.py").write_text("a + b\n")
    os.utime(tmp_path / "same.py", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "new" / "n.txt").parent.mkdir()
    (tmp_path / "new" / "n.txt").write_text("n")
    (tmp_path / ".git" / "index").write_text("ignored")
    assert changes(before, snapshot(tmp_path)) == [
        ("gone.txt", "deleted"),
        ("new/n.txt", "added"),
        ("same.py", "modified"),
    ]


def test_report_lists_outcome_tools_files_and_commands(tmp_path: Path) -> None:
    """The report names the outcome, the summary, tool counts, changed files and commands."""
    box = Toolbox(tmp_path)
    box.calls.update({"run": 2, "read_file": 1})
    box.failures.update({"run": 1})
    box.commands += [
        CommandRun("make `test`", 2, "exit 2", 1.25),
        CommandRun("sleep 9", None, "timed out after 0.5s", 0.5),
    ]
    outcome = Outcome("error", "", 4, "ab" * 16, "the gateway refused the call: budget spent")
    report = render(outcome, box, [("a.py", "modified")], model="m", max_turns=30)
    assert report.splitlines()[:6] == [
        "# Corral agent report",
        "",
        "- Outcome: stopped: the gateway refused the call: budget spent",
        "- Model: `m`",
        "- Turns: 4 of 30",
        f"- Trace: `{'ab' * 16}`",
    ]
    assert "(the model gave no final text)" in report
    assert "- `read_file`: 1\n- `run`: 2 (1 failed)" in report
    assert "- modified `a.py`" in report
    assert "- `` make `test` ``: exit 2 (1.2s)\n- `sleep 9`: timed out after 0.5s (0.5s)" in report


def test_inline_code_survives_backticks_and_newlines() -> None:
    """Inline code is fenced longer than any backtick run it holds, on one line."""
    assert code("ls") == "`ls`"
    assert code("echo `x`\nls") == "``echo `x` ls``"
    assert code("`x`") == "`` `x` ``"
    assert code("a``b") == "```a``b```"
