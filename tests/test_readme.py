"""The README's tour, run as written.

The blocks the README marks ``<!-- tour -->`` run in order in one bash session (a
terminal: what one block exports or assigns, the next sees), against ``corral serve``
started from the block marked ``<!-- tour: serve -->`` in a second session, on a fresh
``CORRAL_HOME``. What changes is only what a reader changes too: the admin key the
server printed replaces ``sk-corral-admin-…``, ids read from the server replace
``TRACE_OR_RUN_ID`` and ``SPAN_ID``, and the server listens on a free port rather than
4100 (every ``127.0.0.1:4100`` in the blocks follows it, and ``CORRAL_URL`` with it).

Blocks marked ``agent-cli`` run the real Claude Code and Codex CLIs (``make agents``),
blocks marked ``sandbox`` start agent runs (bubblewrap and root): without them those
tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.sandboxing import need_sandbox
from tests.services import free_port, missing_service

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NPM_BIN = ROOT / ".cache" / "npm" / "bin"
ADMIN_PLACEHOLDER = "sk-corral-admin-…"
BLOCK = re.compile(
    r"^<!-- tour(?:: (?P<tag>[\w-]+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S
)
BLOCK_TIMEOUT = 300.0


@dataclass(frozen=True)
class Block:
    """A fenced block of the README the tour runs: its tag (``""``, ``serve``,
    ``agent-cli``, ``sandbox``), language and code, and the line it starts on."""

    tag: str
    lang: str
    code: str
    line: int


def tour_blocks(text: str) -> list[Block]:
    return [
        Block(m["tag"] or "", m["lang"], m["code"], text.count("\n", 0, m.start()) + 2)
        for m in BLOCK.finditer(text)
    ]


class Shell:
    """One bash session fed the blocks one at a time, as a reader pastes them into a
    terminal; ``set -e``: a failing command ends the session and fails the block."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            text=True,
            start_new_session=True,
        )
        self._send("set -eo pipefail")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, block: Block, code: str) -> str:
        """Run ``code`` (the block, placeholders filled in); its output, or a failure."""
        self.count += 1
        base = self.scratch / f"block{self.count}"
        out, done = base.with_suffix(".out"), base.with_suffix(".done")
        if block.lang == "python":
            base.with_suffix(".py").write_text(code)
            command = f"python {base.with_suffix('.py')}"
        else:
            base.with_suffix(".sh").write_text(code)
            command = f"source {base.with_suffix('.sh')}"
        self._send(f"{command} >{out} 2>&1 </dev/null")
        self._send(f"touch {done}")
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while not done.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = out.read_text() if out.exists() else ""
                pytest.fail(f"README line {block.line}: the block failed:\n{code}\n---\n{output}")
            time.sleep(0.05)
        return out.read_text()

    def value(self, name: str) -> str:
        """A shell variable's value now (what ``echo $NAME`` would print)."""
        where = self.scratch / f"var-{name}"
        self._send(f"printf '%s' \"${{{name}-}}\" >{where}.tmp && mv {where}.tmp {where}")
        deadline = time.monotonic() + 10
        while not where.exists():
            assert self.proc.poll() is None, name
            assert time.monotonic() < deadline, name
            time.sleep(0.02)
        return where.read_text()

    def close(self) -> None:
        _stop(self.proc)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


@dataclass
class Tour:
    """The server the tour talks to, the terminal it types into, and what fills the
    placeholders."""

    shell: Shell
    port: int
    admin_key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fill(self, code: str) -> str:
        code = code.replace("127.0.0.1:4100", f"127.0.0.1:{self.port}")
        code = code.replace(ADMIN_PLACEHOLDER, self.admin_key)
        if "TRACE_OR_RUN_ID" in code or "SPAN_ID" in code:
            span = self._a_model_call()
            code = code.replace("TRACE_OR_RUN_ID", span["trace_id"])
            code = code.replace("SPAN_ID", span["span_id"])
        return code

    def run(self, block: Block) -> str:
        return self.shell.run(block, self.fill(block.code))

    def _a_model_call(self) -> dict[str, str]:
        """The newest model call the gateway recorded (records are written in batches)."""
        headers = {"authorization": f"Bearer {self.admin_key}"}
        deadline = time.monotonic() + 15
        while True:
            found = httpx.get(
                f"{self.url}/api/v1/spans",
                params={"kind": "llm_request", "limit": "1"},
                headers=headers,
                timeout=10,
            ).json()["spans"]
            if found or time.monotonic() > deadline:
                assert found, "no model call was recorded for the placeholders"
                return dict(found[0])
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Stop a session started here and what it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _serve(block: Block, env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    code = block.code.replace("127.0.0.1:4100", f"127.0.0.1:{port}")
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-c", code],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _admin_key(proc: subprocess.Popen[bytes], log: Path, url: str) -> str:
    """The admin key ``corral serve`` printed, once it answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"corral serve stopped:\n{log.read_text()}"
        found = re.search(r"sk-corral-admin-\S+", log.read_text())
        if found:
            try:
                httpx.get(f"{url}/", timeout=2)
                return found[0]
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"corral serve printed no admin key:\n{log.read_text()}")


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Tour]:
    """``corral serve`` from the README's serve block on a fresh CORRAL_HOME, and a
    terminal with nothing of the developer's Corral settings in it."""
    blocks = [b for b in tour_blocks(README.read_text()) if b.tag == "serve"]
    assert len(blocks) == 1, "the README marks one block `tour: serve`"
    port = free_port()
    home = tmp_path / "home"
    (tmp_path / "tmp").mkdir()
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path / "tmp"),
        "CORRAL_URL": f"http://127.0.0.1:{port}",
    }
    log = tmp_path / "serve.log"
    server_env = {**env, "CORRAL_HOME": str(tmp_path / "corral"), "CORRAL_PORT": str(port)}
    server = _serve(blocks[0], server_env, log, port)
    shell: Shell | None = None
    try:
        admin_key = _admin_key(server, log, env["CORRAL_URL"])
        if os.environ.get("CI") == "true" or (NPM_BIN / "claude").exists():
            env["PATH"] = f"{NPM_BIN}:{env['PATH']}"
        scratch = tmp_path / "shell"
        scratch.mkdir()
        shell = Shell(env, scratch)
        yield Tour(shell, port, admin_key)
    finally:
        if shell is not None:
            shell.close()
        _stop(server)


def _need_agent_clis() -> None:
    for name in ("claude", "codex"):
        if not (NPM_BIN / name).exists():
            missing_service(name, f"{name} is not installed: run `make agents`")


def test_the_readme_starts_with_make_run_and_make_test() -> None:
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first[1].splitlines()]
    assert commands == ["make run", "make test"]


def test_the_tour_runs_as_written(tour: Tour) -> None:
    """Every block of the tour but the agent CLIs' succeeds, in order: the SDK calls, the
    usage and trace commands, budgets, and two runs as ada (her key in CORRAL_KEY), the
    second delivered as a branch."""
    for block in tour_blocks(README.read_text()):
        if block.tag in ("serve", "agent-cli"):
            continue
        if block.tag == "sandbox":
            need_sandbox()
        output = tour.run(block)
        if "corral keys create" in block.code:
            assert tour.shell.value("KEY").startswith("sk-corral-"), output
        if "corral budgets show --team payments" in block.code:
            assert "user ada" in output, output  # the team's users' limits, with the team's
        if "corral runs deliver" in block.code:
            repo = tour.shell.value("REPO")
            branch = subprocess.run(
                ["git", "-C", repo, "log", "--format=%s", "-1", "tour/toured", "--"],
                capture_output=True,
                text=True,
            )
            assert branch.returncode == 0, (branch.stderr, output)
    runs = httpx.get(
        f"{tour.url}/api/v1/runs",
        headers={"authorization": f"Bearer {tour.admin_key}"},
        timeout=10,
    ).json()["runs"]
    assert [(r["owner"], r["state"]) for r in runs] == [
        ("ada", "delivered"),
        ("ada", "awaiting_review"),
    ], runs


@pytest.mark.agent_cli
def test_the_agent_cli_snippets_run_as_written(tour: Tour) -> None:
    """The Claude Code and Codex snippets complete a turn through the tour's Corral with
    ada's key (the gateway recorded their calls on her), and the telemetry snippet's
    Claude Code reports its own spans there."""
    _need_agent_clis()
    for block in tour_blocks(README.read_text()):
        if block.tag in ("serve", "sandbox") or block.lang == "python":
            continue
        tour.run(block)
    deadline = time.monotonic() + 30
    while not _spans_from(tour, "claude-code"):
        assert time.monotonic() < deadline, "Claude Code's own telemetry never arrived"
        time.sleep(0.5)
    usage = subprocess.run(
        ["corral", "usage", "--by", "user", "--json"],
        env={"PATH": tour.shell.value("PATH"), "CORRAL_URL": tour.url,
             "CORRAL_KEY": tour.admin_key},
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert '"user": "ada"' in usage.stdout, usage.stdout


def _spans_from(tour: Tour, source: str) -> list[dict[str, object]]:
    found = httpx.get(
        f"{tour.url}/api/v1/spans",
        params={"source": source, "limit": "5"},
        headers={"authorization": f"Bearer {tour.admin_key}"},
        timeout=10,
    )
    return list(found.json()["spans"])


def test_a_block_that_fails_fails_the_tour(tour: Tour) -> None:
    """The harness itself: a failing command in a block is a failure, not a pass."""
    block = Block("", "sh", "true\nfalse\necho unreachable\n", 0)
    with pytest.raises(pytest.fail.Exception, match="the block failed"):
        tour.run(block)
