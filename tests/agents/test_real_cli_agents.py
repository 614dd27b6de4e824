"""The real Claude Code, Codex and Gemini CLIs (from npm) complete a turn through Corral.

They are installed into .cache/npm by scripts/install-agents.sh (``make agents``;
.ci/run does it). Under CI=true a missing CLI fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import Running

pytestmark = pytest.mark.agent_cli

BIN = Path(__file__).resolve().parents[2] / ".cache" / "npm" / "bin"


def cli(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        message = f"{name} is not installed: run `make agents` (scripts/install-agents.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    return {**keep, "HOME": str(home), "PATH": f"{BIN}:{keep.get('PATH', '/usr/bin:/bin')}"}


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an agent CLI to completion (stdin closed: Claude Code waits on an open pipe)."""
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    return result


def claude_env(corral: Running, home: Path) -> dict[str, str]:
    env = base_env(home)
    env.update(
        ANTHROPIC_BASE_URL=corral.url,
        ANTHROPIC_API_KEY=corral.key,
        DISABLE_AUTOUPDATER="1",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="sim-economy",
        ANTHROPIC_SMALL_FAST_MODEL="sim-economy",
    )
    return env


def run_codex(
    corral: Running, tmp_path: Path, prompt: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """``codex exec`` against the gateway's Responses API; ``$CODEX_HOME`` is
    ``tmp_path/codex-home`` (write a config.toml there first to add settings)."""
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir(exist_ok=True)
    env = base_env(tmp_path / "home")
    env.update(CODEX_HOME=str(codex_home), LOCAL_KEY=corral.key, **extra_env)
    provider = (
        '{name="local",base_url="' + corral.url + '/v1",wire_api="responses",env_key="LOCAL_KEY"}'
    )
    argv = [str(cli("codex")), "exec", "--json", "--skip-git-repo-check", "--disable", "plugins"]
    argv += ["-c", "analytics.enabled=false", "-c", "model_provider=local"]
    argv += ["-c", f"model_providers.local={provider}", "-c", "model=sim-standard"]
    argv += ["-s", "danger-full-access", prompt]
    return run_cli(argv, env, tmp_path)


def test_claude_code_completes_a_turn(corral: Running, tmp_path: Path) -> None:
    env = claude_env(corral, tmp_path / "home")
    env.update(DISABLE_TELEMETRY="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    argv = [str(cli("claude")), "-p", "Say hello to the platform team", "--model", "sim-standard"]
    result = run_cli([*argv, "--output-format", "json"], env, tmp_path)
    out = json.loads(result.stdout)
    assert out.get("is_error") is False, out
    assert "simulator" in out["result"].lower()
    rows = [r for r in corral.records() if r.model_requested == "sim-standard"]
    assert rows
    assert all(r.key_id == corral.key_id for r in rows)
    assert rows[0].protocol == "messages"
    assert rows[0].status == "ok"
    assert rows[0].input_tokens > 0
    assert rows[0].output_tokens > 0


def test_codex_completes_a_turn(corral: Running, tmp_path: Path) -> None:
    result = run_codex(corral, tmp_path, "Say hello to the platform team")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any(e.get("type") == "turn.completed" for e in events), events[-5:]
    rows = corral.records()
    assert rows
    assert all(r.key_id == corral.key_id for r in rows)
    assert rows[0].protocol == "responses"
    assert rows[0].status == "ok"
    assert rows[0].input_tokens > 0


def gemini_env(corral: Running, home: Path) -> dict[str, str]:
    """Gemini CLI on an API key against the gateway, with no folder-trust prompt."""
    env = base_env(home)
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}}
    }
    (home / ".gemini").mkdir(exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    env.update(GEMINI_API_KEY=corral.key, GOOGLE_GEMINI_BASE_URL=corral.url)
    return env


def test_gemini_cli_completes_a_turn(corral: Running, tmp_path: Path) -> None:
    env = gemini_env(corral, tmp_path / "home")
    argv = [str(cli("gemini")), "-p", "Say hello to the platform team", "-m", "sim-standard"]
    result = run_cli([*argv, "--output-format", "json"], env, tmp_path)
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert "simulator" in out["response"].lower(), out
    rows = [r for r in corral.records() if r.model_requested == "sim-standard"]
    assert rows
    assert all(r.key_id == corral.key_id for r in rows)
    assert {r.protocol for r in rows} == {"gemini"}
    assert all(r.status == "ok" for r in rows)
    # The CLI's own token count of its calls is what Corral recorded.
    tokens = out["stats"]["models"]["sim-standard"]["tokens"]
    assert tokens["prompt"] == sum(r.input_tokens + r.cached_input_tokens for r in rows) > 0
    assert tokens["cached"] == sum(r.cached_input_tokens for r in rows)
    assert tokens["candidates"] == sum(r.output_tokens for r in rows) > 0
    assert tokens["thoughts"] == sum(r.reasoning_tokens for r in rows)
