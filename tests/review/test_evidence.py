"""The evidence check: a report's claims against the run's trajectory (its tool spans).

Trajectories are real: Corral's reference agent runs in-process on a small
project (real commands, real pytest), scripted by an in-memory gateway; its
spans are encoded as OTLP, parsed by ingest, stored by the span writer into a
SQLite store and a blob folder, and read back as the spans table's rows.
Claude Code's and Codex's tool spans come from their captured OTLP payloads
(tests/traces/data/otlp), Gemini CLI's from its documented event shapes.
``tests_after_last_edit`` is called through its module: imported bare, a name starting
with "test" would be collected as a test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from corral.agent import Agent, ModelClient, Telemetry, Toolbox
from corral.review import evidence
from corral.review.evidence import MAX_CLAIMS, Claim, Verdict, check, extract_claims
from corral.review.trajectory import (
    MAX_ROWS,
    MAX_TOTAL_BODY_BYTES,
    OUTPUT_HEAD_CHARS,
    OUTPUT_TAIL_CHARS,
    Executed,
    command_shape,
    trajectory,
)
from corral.store import Store
from corral.store.schema import spans
from corral.traces.blobs import BlobStore
from corral.traces.otlp import Identity, parse_logs, parse_traces
from corral.traces.writer import SpanWriter
from tests.traces.test_otlp_agents import logs_request

DATA = Path(__file__).parents[1] / "traces" / "data" / "otlp"
PYTEST = f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
FIX = {"path": "calc.py", "old": "return a - b", "new": "return a + b"}


# -- the real pipeline: agent → OTLP → ingest → writer → rows ---------------------------------


class Stored:
    """A SQLite store and blob folder that span rows go through, as Corral stores them."""

    def __init__(self, root: Path) -> None:
        self.store = Store(f"sqlite:///{root / 'corral.db'}")
        self.store.migrate()
        self.blobs = BlobStore(root / "blobs")
        self.writer = SpanWriter(self.store, blobs=self.blobs, max_body_bytes=4 * 1024 * 1024)

    def rows(self, run_id: str) -> list[dict[str, Any]]:
        query = select(spans).where(spans.c.run_id == run_id).order_by(spans.c.start_ns)
        with self.store.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def steps(self, run_id: str) -> list[Executed]:
        return trajectory(self.rows(run_id), self.blobs.get)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    kept = Stored(tmp_path_factory.mktemp("evidence-store"))
    yield kept
    kept.store.close()


def identity(run_id: str) -> Identity:
    return Identity("org_1", "team_1", "usr_ada", f"key_{run_id}", run_id, "usr_ada")


def answer(turn: int, content: str | None, call: tuple[str, dict[str, Any]] | None) -> Any:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if call is not None:
        name, args = call
        function = {"name": name, "arguments": json.dumps(args)}
        message["tool_calls"] = [{"id": f"call_{turn}", "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    return {"id": f"chatcmpl-{turn}", "model": "sim-standard", "choices": [choice], "usage": usage}


def run_agent(
    stored: Stored,
    tmp_path: Path,
    run_id: str,
    calls: list[tuple[str, dict[str, Any]]],
    writer: SpanWriter | None = None,
) -> list[Executed]:
    """The reference agent makes ``calls`` (one a turn) in a project with a failing test, then
    answers; its spans are stored as ingest stores them (by ``writer``, else the store's) and
    read back as a trajectory."""
    workdir = tmp_path / "repo"
    workdir.mkdir()
    (workdir / "calc.py").write_text(BUGGY)
    (workdir / "test_calc.py").write_text(TEST)
    turns = [answer(n, None, call) for n, call in enumerate(calls)]
    turns.append(answer(len(calls), "Done.", None))

    def gateway(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        done = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return httpx.Response(200, json=turns[done])

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    http = httpx.Client(transport=httpx.MockTransport(gateway))
    client = ModelClient("http://gateway.test/v1", "sk-run", http, sleep=lambda s: None)
    agent = Agent("sim-standard", client, Toolbox(workdir), Telemetry(provider))
    assert agent.run("Fix add()").status == "completed"
    provider.shutdown()
    body = encode_spans(exported.get_finished_spans()).SerializeToString()
    batch = parse_traces(
        body,
        content_type="application/x-protobuf",
        content_encoding=None,
        identity=identity(run_id),
    )
    (writer or stored.writer).write(batch.rows)
    return stored.steps(run_id)


def ids(steps: list[Executed], tool: str) -> list[str]:
    return [step.span_id for step in steps if step.tool == tool]


def verdicts(report: str, steps: list[Executed] | None) -> dict[str, Verdict]:
    return {v.claim.kind: v for v in check(extract_claims(report), steps)}


# -- the reference agent's trajectories -------------------------------------------------------


def test_reference_agent_steps_carry_commands_exit_codes_and_edited_paths(
    stored: Stored, tmp_path: Path
) -> None:
    """run → command with its exit code and output; edit_file → edit with its path; read_file
    → read; in start order."""
    steps = run_agent(
        stored,
        tmp_path,
        "run_shape",
        [
            ("read_file", {"path": "calc.py"}),
            ("run", {"command": PYTEST}),
            ("edit_file", FIX),
            ("run", {"command": PYTEST}),
        ],
    )
    assert [(s.tool, s.kind) for s in steps] == [
        ("read_file", "read"),
        ("run", "command"),
        ("edit_file", "edit"),
        ("run", "command"),
    ]
    read, failing, edit, passing = steps
    assert (failing.command, failing.exit_code, failing.ok) == (PYTEST, 1, False)
    assert "1 failed" in failing.output
    assert (passing.exit_code, passing.ok) == (0, True)
    assert "1 passed" in passing.output
    assert (edit.paths, edit.ok, edit.command) == (("calc.py",), True, None)
    assert read.start_ns < failing.start_ns < edit.start_ns < passing.start_ns
    assert all(len(step.span_id) == 16 for step in steps)


def test_all_tests_pass_with_no_test_after_the_last_edit_is_unverifiable(
    stored: Stored, tmp_path: Path
) -> None:
    """Tests ran, then the agent edited and stopped: "all tests pass" is unverifiable, naming
    the last edit's span; the gate's policy check fails with the same span."""
    steps = run_agent(
        stored,
        tmp_path,
        "run_untested",
        [("run", {"command": PYTEST}), ("edit_file", FIX)],
    )
    (edit_id,) = ids(steps, "edit_file")
    found = verdicts("Fixed the sign in `add`. All tests pass.", steps)["tests_pass"]
    assert (found.verdict, found.span_ids) == ("unverifiable", (edit_id,))
    assert f"no test command ran after the last edit, span {edit_id}" in found.reason
    passed, message, span_ids = evidence.tests_after_last_edit(steps)
    assert (passed, span_ids) == (False, (edit_id,))
    assert edit_id in message


def test_a_true_claim_is_supported_with_the_span_ids(stored: Stored, tmp_path: Path) -> None:
    """Reproduced with the test (failed before the edit), fixed, tests passed after: every
    claim is supported and names the spans that show it."""
    steps = run_agent(
        stored,
        tmp_path,
        "run_honest",
        [("run", {"command": PYTEST}), ("edit_file", FIX), ("run", {"command": PYTEST})],
    )
    before, after = ids(steps, "run")
    report = (
        "## Summary\n"
        "I reproduced the bug with `python -m pytest -q -p no:cacheprovider test_calc.py` "
        "(1 failed), then fixed `add` in calc.py.\n\n"
        "- Ran `pytest -q -p no:cacheprovider test_calc.py` after the fix.\n"
        "- All tests pass.\n"
    )
    found = verdicts(report, steps)
    assert found["reproduced"].verdict == "supported"
    assert found["reproduced"].span_ids == (before,)
    assert found["tests_pass"].verdict == "supported"
    assert found["tests_pass"].span_ids == (after,)
    assert after in found["tests_pass"].reason
    assert found["ran_command"].verdict == "supported"
    assert found["ran_command"].span_ids == (before, after)
    assert evidence.tests_after_last_edit(steps) == (True, found["tests_pass"].reason, (after,))


def test_a_failed_last_test_run_contradicts_all_tests_pass(stored: Stored, tmp_path: Path) -> None:
    """The last test run after the last edit failed (a wrong fix): contradicted, naming it."""
    wrong = {"path": "calc.py", "old": "return a - b", "new": "return a * b"}
    steps = run_agent(
        stored,
        tmp_path,
        "run_wrong_fix",
        [("edit_file", wrong), ("run", {"command": PYTEST})],
    )
    (last,) = ids(steps, "run")
    found = verdicts("Tests pass now.", steps)["tests_pass"]
    assert (found.verdict, found.span_ids) == ("contradicted", (last,))
    assert "exit code 1" in found.reason
    assert evidence.tests_after_last_edit(steps)[0] is False


def test_a_claimed_reproduction_command_that_never_ran_is_contradicted(
    stored: Stored, tmp_path: Path
) -> None:
    """The report quotes a reproduction script the trajectory never ran."""
    steps = run_agent(
        stored, tmp_path, "run_invented", [("edit_file", FIX), ("run", {"command": PYTEST})]
    )
    report = "I reproduced the issue with `python repro.py` and fixed it. All tests pass."
    found = verdicts(report, steps)
    assert found["reproduced"].verdict == "contradicted"
    assert "`python repro.py` never ran" in found["reproduced"].reason
    assert found["tests_pass"].verdict == "supported"


def test_a_reproduction_that_ran_only_after_the_edit_or_passed_is_contradicted(
    stored: Stored, tmp_path: Path
) -> None:
    """The quoted test ran only after the first edit, or it passed before it: no reproduction."""
    steps = run_agent(
        stored,
        tmp_path,
        "run_late_repro",
        [("run", {"command": "echo checking"}), ("edit_file", FIX), ("run", {"command": PYTEST})],
    )
    (edit_id,) = ids(steps, "edit_file")
    late = verdicts(f"I reproduced the bug with `{PYTEST}`.", steps)["reproduced"]
    assert late.verdict == "contradicted"
    assert f"ran only after the first edit, span {edit_id}" in late.reason
    passed = verdicts("I reproduced the bug with `echo checking`.", steps)["reproduced"]
    assert passed.verdict == "contradicted"
    assert "succeeded before the first edit" in passed.reason
    unquoted = verdicts("I reproduced the bug first.", steps)["reproduced"]
    assert unquoted.verdict == "contradicted"


def test_a_shell_edit_counts_as_the_last_edit(stored: Stored, tmp_path: Path) -> None:
    """``sed -i`` after the passing test run is an edit: the test no longer counts."""
    steps = run_agent(
        stored,
        tmp_path,
        "run_sed",
        [
            ("edit_file", FIX),
            ("run", {"command": PYTEST}),
            ("run", {"command": "sed -i 's/a + b/b + a/' calc.py"}),
        ],
    )
    sed = steps[-1]
    assert (sed.kind, sed.paths, sed.exit_code) == ("edit", ("calc.py",), 0)
    found = verdicts("All tests pass.", steps)["tests_pass"]
    assert (found.verdict, found.span_ids) == ("unverifiable", (sed.span_id,))


def test_benchmark_numbers_are_supported_by_command_output(stored: Stored, tmp_path: Path) -> None:
    """Numbers that appear in a command's output support the claim; others leave it
    unverifiable, never contradicted."""
    bench = "echo 'before: 120.4 ms'; echo 'after: 80.1 ms'"
    steps = run_agent(stored, tmp_path, "run_bench", [("run", {"command": bench})])
    (span,) = ids(steps, "run")
    good = verdicts("Latency went from 120 ms to 80 ms.", steps)["benchmark"]
    assert good.claim.numbers == ("120", "80")
    assert (good.verdict, good.span_ids) == ("supported", (span,))
    bad = verdicts("The parser is 2.3x faster.", steps)["benchmark"]
    assert bad.verdict == "unverifiable"
    assert "2.3" in bad.reason


def test_the_reference_agent_s_long_test_output_keeps_its_exit_code(
    stored: Stored, tmp_path: Path
) -> None:
    """A test run with a long output still shows its exit code (the result's tail is kept)."""
    noisy = f"python -c \"print('x' * 30000)\" && {PYTEST}"
    steps = run_agent(stored, tmp_path, "run_noisy", [("run", {"command": noisy})])
    (step,) = steps
    assert (step.exit_code, step.ok) == (1, False)
    assert len(step.output) <= OUTPUT_HEAD_CHARS + OUTPUT_TAIL_CHARS + 100


# -- other agents' tool spans, as ingest stores them ------------------------------------------


def store_payload(stored: Stored, run_id: str, name: str, body: bytes | None = None) -> None:
    """An agent's OTLP payload (a captured file, or ``body``) through ingest and the writer."""
    if body is None:
        body = (DATA / name).read_bytes()
    content_type = "application/json" if name.endswith(".json") else "application/x-protobuf"
    batch = parse_logs(
        body, content_type=content_type, content_encoding=None, identity=identity(run_id)
    )
    stored.writer.write(batch.rows)


@pytest.mark.parametrize("name", ["claude-code-tool-logs.pb", "claude-code-tool-logs.json"])
def test_claude_code_bash_is_a_command_its_success_the_outcome(stored: Stored, name: str) -> None:
    """Claude Code's tool_result: Bash with its command (no output is reported); success
    follows the exit code, so ok is True."""
    run_id = f"run_claude_{name.rsplit('.', 1)[-1]}"
    store_payload(stored, run_id, name)
    (step,) = stored.steps(run_id)
    assert (step.tool, step.kind, step.command) == ("Bash", "command", "echo corral-sim")
    assert (step.exit_code, step.ok, step.output) == (None, True, "")
    found = verdicts("I ran `echo corral-sim`. I ran `npm test`.", [step])
    assert [v.verdict for v in check(extract_claims("I ran `echo  corral-sim`."), [step])] == [
        "supported"
    ]
    assert found["ran_command"].verdict == "contradicted"  # the last claim: npm test


def claude_tool_result(at_s: int, tool: str, tool_input: dict[str, Any], success: str) -> Any:
    """A Claude Code ``tool_result`` record, shaped as the captured ones."""
    return {
        "body": "claude_code.tool_result",
        "event.name": "tool_result",
        "session.id": "cc-1",
        "prompt.id": "p-1",
        "tool_name": tool,
        "success": success,
        "duration_ms": "500",
        "tool_input": json.dumps(tool_input),
        "time": 1_800_000_000_000_000_000 + at_s * 1_000_000_000,
    }


def test_claude_code_failed_bash_after_an_edit_contradicts_tests_pass(stored: Stored) -> None:
    """Edit {"file_path"} is an edit; a Bash test run reported with success false (it exited
    non-zero) after it contradicts "all tests pass"."""
    body = logs_request(
        "claude-code",
        claude_tool_result(1, "Edit", {"file_path": "/w/calc.py", "old_string": "-"}, "true"),
        claude_tool_result(3, "Bash", {"command": "npm test 2>&1"}, "false"),
    )
    store_payload(stored, "run_claude_failed", "claude.pb", body)
    edit, bash = stored.steps("run_claude_failed")
    assert (edit.kind, edit.paths, edit.ok) == ("edit", ("/w/calc.py",), True)
    assert (bash.kind, bash.command, bash.ok) == ("command", "npm test 2>&1", False)
    found = verdicts("All tests pass.", [edit, bash])["tests_pass"]
    assert (found.verdict, found.span_ids) == ("contradicted", (bash.span_id,))


def test_without_kept_bodies_nothing_is_contradicted_for_want_of_commands(
    stored: Stored, tmp_path: Path
) -> None:
    """A team that keeps no bodies (the writer keeps only their shape): commands are unknown,
    so a claimed command is unverifiable, never contradicted."""
    shapes_only = SpanWriter(stored.store, blobs=None, max_body_bytes=1024)
    calls = [("edit_file", FIX), ("run", {"command": PYTEST})]
    blind = run_agent(stored, tmp_path, "run_metadata", calls, writer=shapes_only)
    assert [(s.kind, s.command, s.ok) for s in blind] == [
        ("edit", None, True),
        ("command", None, None),
    ]
    found = verdicts("I ran `pytest`. I reproduced it with `python repro.py`. Tests pass.", blind)
    assert {kind: v.verdict for kind, v in found.items()} == {
        "ran_command": "unverifiable",
        "reproduced": "unverifiable",
        "tests_pass": "unverifiable",
    }
    assert "1 command spans have no recorded text" in found["tests_pass"].reason


@pytest.mark.parametrize("name", ["codex-tool-logs.pb", "codex-tool-logs.json"])
def test_codex_exec_command_shows_its_exit_code(stored: Stored, name: str) -> None:
    """Codex's tool_result: exec_command {"cmd"}, answered "Process exited with code 0"."""
    run_id = f"run_codex_{name.rsplit('.', 1)[-1]}"
    store_payload(stored, run_id, name)
    (step,) = stored.steps(run_id)
    assert (step.tool, step.kind, step.command) == ("exec_command", "command", "echo corral-sim")
    assert (step.exit_code, step.ok) == (0, True)
    assert "corral-sim" in step.output


def test_codex_apply_patch_and_shell_argv(stored: Stored) -> None:
    """apply_patch is an edit with the patch's files; the older shell tool's argv
    ``["bash", "-lc", script]`` is the script; its exit code is read from its output."""
    patch = (
        "*** Begin Patch\n*** Update File: src/calc.py\n@@\n-    return a - b\n+    return a + b\n"
        "*** Add File: tests/test_new.py\n+def test_x():\n+    pass\n*** End Patch\n"
    )
    session = {"conversation.id": "c-1"}
    body = logs_request(
        "codex_exec",
        {
            "event.name": "codex.tool_result",
            "tool_name": "shell",
            "arguments": json.dumps({"command": ["bash", "-lc", "cargo test"]}),
            "output": "Exit code: 101\nWall time: 1.2 seconds\nOutput:\ntest result: FAILED.",
            "success": "true",
            "time": 1_800_000_000_000_000_000,
            **session,
        },
        {
            "event.name": "codex.tool_result",
            "tool_name": "apply_patch",
            "arguments": patch,
            "output": "Success. Updated the following files:\nM src/calc.py",
            "success": "true",
            "time": 1_800_000_001_000_000_000,
            **session,
        },
    )
    store_payload(stored, "run_codex_patch", "codex.pb", body)
    shell, edit = stored.steps("run_codex_patch")
    assert (shell.command, shell.exit_code, shell.ok) == ("cargo test", 101, False)
    assert (edit.kind, edit.paths) == ("edit", ("src/calc.py", "tests/test_new.py"))
    found = verdicts("All tests pass.", [shell, edit])["tests_pass"]
    assert (found.verdict, found.span_ids) == ("unverifiable", (edit.span_id,))


def test_gemini_cli_shell_success_is_no_exit_code(stored: Stored) -> None:
    """Gemini CLI reports no output and its success does not follow the exit code: a shell
    command's outcome is unknown, so "tests pass" stays unverifiable; replace is an edit."""
    session = {"session.id": "g-1", "prompt_id": "p-1"}
    body = logs_request(
        "gemini-cli",
        {
            "event.name": "gemini_cli.tool_call",
            "function_name": "replace",
            "function_args": json.dumps({"file_path": "/w/calc.py", "old_string": "-"}),
            "success": True,
            "time": 1_800_000_000_000_000_000,
            **session,
        },
        {
            "event.name": "gemini_cli.tool_call",
            "function_name": "run_shell_command",
            "function_args": json.dumps({"command": "npm test", "description": "tests"}),
            "success": True,
            "time": 1_800_000_002_000_000_000,
            **session,
        },
    )
    store_payload(stored, "run_gemini", "gemini.pb", body)
    edit, shell = stored.steps("run_gemini")
    assert (edit.kind, edit.paths, edit.ok) == ("edit", ("/w/calc.py",), True)
    assert (shell.kind, shell.command, shell.ok) == ("command", "npm test", None)
    found = verdicts("All tests pass.", [edit, shell])["tests_pass"]
    assert (found.verdict, found.span_ids) == ("unverifiable", (shell.span_id,))
    assert "was not reported" in found.reason


# -- claims -------------------------------------------------------------------------------------


def test_claims_are_extracted_by_deterministic_rules() -> None:
    """Each kind of claim, its command and numbers; negations and counted failures are not
    claims; a fenced block after "I ran:" is that sentence's command."""
    report = (
        "## What I did\n"
        "- I reproduced the bug with `pytest tests/test_calc.py` before the fix.\n"
        "- Ran `ruff check .` and `mypy src` after editing `calc.py`.\n"
        "- 12 passed, 1 failed.\n"
        "- Not all tests pass yet, but the tests are green on CI.\n"
        "- I couldn't reproduce the crash.\n"
        "- The parser is now 2.3x faster: p99 latency went from 120 ms to 80 ms.\n"
        "- I ran the tests.\n\n"
        "I ran:\n```\n$ make test\n```\n"
        "42 passed.\n"
    )
    assert extract_claims(report) == [
        Claim(
            "reproduced",
            "I reproduced the bug with `pytest tests/test_calc.py` before the fix.",
            "pytest tests/test_calc.py",
        ),
        Claim(
            "ran_command",
            "Ran `ruff check .` and `mypy src` after editing `calc.py`.",
            "ruff check .",
        ),
        Claim(
            "ran_command", "Ran `ruff check .` and `mypy src` after editing `calc.py`.", "mypy src"
        ),
        Claim("tests_pass", "Not all tests pass yet, but the tests are green on CI."),
        Claim(
            "benchmark",
            "The parser is now 2.3x faster: p99 latency went from 120 ms to 80 ms.",
            numbers=("2.3", "120", "80"),
        ),
        Claim("ran_command", "I ran: `make test`", "make test"),
    ]  # "42 passed." says tests pass again: kept once
    for admitted in ("No tests pass yet.", "None of the tests pass.", "Tests don't pass."):
        assert extract_claims(admitted) == [], admitted
    assert [c.kind for c in extract_claims("No regressions, all tests pass.")] == ["tests_pass"]
    assert extract_claims("Result: 42 passed in 1.2s.") == [
        Claim("tests_pass", "Result: 42 passed in 1.2s.")
    ]


def test_unquoted_commands_count_only_when_they_look_like_commands() -> None:
    """An unquoted "I ran pytest -q" names a command; "I ran the tests" does not."""
    assert extract_claims("I ran pytest -q and all was well.") == [
        Claim("ran_command", "I ran pytest -q and all was well.", "pytest -q")
    ]
    assert extract_claims("I ran the tests and everything looked fine.") == []


def test_shapes_of_shell_commands() -> None:
    """Test commands of many ecosystems; pipes hide a test's exit code; a test's redirect is a
    log, not an edit; heredoc bodies are not commands."""
    for command in (
        "pytest -q",
        "cd pkg && python3.11 -m pytest tests/",
        "uv run pytest -x",
        "FOO=1 timeout 60 tox -e py311",
        "npm run test:unit",
        "yarn test",
        "go test ./...",
        "cargo nextest run",
        "./gradlew test",
        "make check",
        "bash -lc 'npx vitest run'",
    ):
        shape = command_shape(command)
        assert (shape.test, shape.test_last, shape.edit) == (True, True, False), command
    assert command_shape("pytest 2>&1 | tail -20").test_last is False
    assert command_shape("pytest || true").test_last is False
    assert command_shape("pytest > /work/log.txt").edit is False
    assert command_shape("echo 'a > b' && ls 2>/dev/null").edit is False
    heredoc = command_shape("cat > run.sh <<'EOF'\npytest\nEOF")
    assert (heredoc.test, heredoc.edit, heredoc.paths) == (False, True, ("run.sh",))
    assert command_shape("sed -i 's/x/y/' a.py && pytest").test_after_edit is True
    assert command_shape("git apply fix.patch").edit is True
    assert command_shape("python manage.py test").test is True
    assert command_shape("python setup.py sdist").test is False


# -- no trajectory, and hostile input ---------------------------------------------------------


def test_no_trajectory_makes_every_claim_unverifiable() -> None:
    """steps=None: the run reported no trajectory; every claim says so."""
    claims = extract_claims(
        "I reproduced the bug with `pytest`. I ran `make lint`. All tests pass. It is 2x faster."
    )
    assert [c.kind for c in claims] == ["reproduced", "ran_command", "tests_pass", "benchmark"]
    found = check(claims, None)
    assert {v.verdict for v in found} == {"unverifiable"}
    assert all("no trajectory" in v.reason and v.span_ids == () for v in found)
    passed, message, span_ids = evidence.tests_after_last_edit(None)
    assert (passed, message, span_ids) == (False, "no trajectory was reported for this run", ())


def test_no_edit_passes_the_policy_check() -> None:
    """No file edited: the policy check passes and says why."""
    read = Executed("a" * 16, 1, 2, "read_file", "read", None, None, True, (), "")
    passed, message, span_ids = evidence.tests_after_last_edit([read])
    assert (passed, span_ids) == (True, ())
    assert "no file was edited" in message


def test_a_ten_megabyte_report_is_bounded() -> None:
    """Only the first MAX_REPORT_CHARS are read and at most MAX_CLAIMS kept, quickly; a claim
    said again is kept once."""
    report = "".join(f"All tests pass. I ran `make t{n}`. " for n in range(300_000))
    report += "`" * 1_000_000
    assert len(report) > 10_000_000
    started = time.monotonic()
    claims = extract_claims(report)
    assert time.monotonic() - started < 5
    assert len(claims) == MAX_CLAIMS
    assert all(len(c.sentence) <= 500 for c in claims)
    assert [c.kind for c in claims].count("tests_pass") == 1
    unbroken = "tests pass " + "x" * 10_000_000
    assert [c.kind for c in extract_claims(unbroken)] == ["tests_pass"]


def tool_row(number: int, name: str | None = "execute_tool run", **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "span_id": f"{number:016x}",
        "kind": "tool",
        "name": name,
        "status": "ok",
        "start_ns": 1_000 + number,
        "end_ns": 1_000 + number,
        "attributes": {},
        "request_blob": f"req/{number}",
        "response_blob": f"res/{number}",
    }
    row.update(columns)
    return row


def test_a_hundred_thousand_rows_are_bounded() -> None:
    """At most MAX_ROWS tool rows are read, and bodies only within the byte budget."""
    reads: list[str] = []

    def body(key: str) -> bytes:
        reads.append(key)
        return b'{"command": "pytest -q"}' if key.startswith("req") else b"ok\n[exit code 0]"

    rows = [tool_row(n) for n in range(100_000)]
    started = time.monotonic()
    steps = trajectory(rows, body)
    assert time.monotonic() - started < 30
    assert len(steps) == MAX_ROWS
    assert len(reads) == 2 * MAX_ROWS
    assert steps[-1].ok is True


def test_binary_and_huge_bodies_are_bounded() -> None:
    """Binary bodies decode without failing; huge ones are read within the budget, kept as
    head and tail, and the exit code at their end is still found."""
    served: list[int] = []
    huge = os.urandom(1024) + b"\0\xff" * 5_000_000 + b"\n[exit code 3]"

    def body(key: str) -> bytes:
        data = huge if key.startswith("res") else os.urandom(4096)
        served.append(len(data))
        return data

    steps = trajectory([tool_row(n) for n in range(40)], body)
    assert sum(served) <= MAX_TOTAL_BODY_BYTES + len(huge)
    told = [s for s in steps if s.exit_code is not None]
    assert told
    assert all((s.exit_code, s.ok) == (3, False) for s in told)
    assert all(len(s.output) <= OUTPUT_HEAD_CHARS + OUTPUT_TAIL_CHARS + 100 for s in steps)
    assert all(s.command is None or len(s.command) <= 2_000 for s in steps)
    untold = [s for s in steps if s.exit_code is None]
    assert untold, "past the budget, bodies are no longer read"
    assert verdicts("I ran `make lint`.", steps)["ran_command"].verdict == "unverifiable"


def test_hostile_row_values_are_tolerated() -> None:
    """Rows of other kinds are skipped; wrong types become empty values, never errors."""
    rows: list[Any] = [
        "not a row",
        {"kind": "llm_request", "span_id": "x"},
        tool_row(1, name=None, start_ns="soon", end_ns=None, attributes="[]", request_blob=5),
        tool_row(2, name="execute_tool " + "B" * 10_000, span_id="y" * 1_000),
    ]
    lying = tool_row(3, name="execute_tool read_file", request_blob=None, response_blob="r")
    (read,) = trajectory([lying], lambda key: b"print('done')\n[exit code 1]")
    assert (read.kind, read.exit_code, read.ok) == ("read", None, True)
    blobs = BlobStore(Path("/nonexistent-blobs"))
    steps = trajectory(rows, blobs.get)  # "req/2" is no blob key: the store refuses it
    assert len(steps) == 2
    assert (steps[0].start_ns, steps[0].tool) == (0, "")
    assert (len(steps[1].tool), len(steps[1].span_id)) == (200, 64)


def test_a_quoted_test_command_that_passes_is_a_tests_pass_claim() -> None:
    """ "`python3 test_calc.py` passes" claims the tests pass (the reference agent's way of
    saying it); a quoted command that is not a test, or a negated one, claims nothing."""
    (claim,) = extract_claims("Fixed add(). `python3 test_calc.py` passes.")
    assert (claim.kind, claim.command) == ("tests_pass", "python3 test_calc.py")
    assert extract_claims("`python3 calc.py` passes.") == []
    assert extract_claims("`pytest -q` no longer passes.") == []
