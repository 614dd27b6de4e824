"""The real Claude Code, Codex and Gemini CLIs send their own telemetry to Corral while
calling models through it: their events land on the right team and run, and each call is
counted once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from corral.store.schema import keys, span_rollups, spans
from tests.agents.test_real_cli_agents import claude_env, cli, gemini_env, run_cli, run_codex
from tests.gateway.conftest import Running

pytestmark = pytest.mark.agent_cli

RUN = "run_telemetry1"


def make_run_key(corral: Running) -> None:
    """Turn the fixture's key into a run's key (runs mint theirs; issue 6)."""
    with corral.app.store.begin() as conn:
        conn.execute(
            update(keys)
            .where(keys.c.id == corral.key_id)
            .values(run_id=RUN, updated_at=time.time())
        )


def llm_rows(corral: Running, source: str, want: int) -> list[Any]:
    """The run's llm_request rows from ``source``, waiting (bounded) for ``want`` of them."""
    deadline = time.monotonic() + 30
    while True:
        with corral.app.store.connect() as conn:
            rows = conn.execute(
                select(spans).where(
                    spans.c.kind == "llm_request", spans.c.source == source, spans.c.run_id == RUN
                )
            ).fetchall()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def counted_calls(corral: Running) -> int:
    with corral.app.store.connect() as conn:
        total = conn.scalar(
            select(func.sum(span_rollups.c.requests)).where(
                span_rollups.c.team_id == corral.team_id
            )
        )
    return int(total or 0)


def check_one_trajectory(corral: Running, agent_source: str) -> None:
    gateway = llm_rows(corral, "gateway", 1)
    assert gateway, "the gateway recorded the calls"
    reported = llm_rows(corral, agent_source, len(gateway))
    assert len(reported) == len(gateway), (gateway, reported)
    for row in reported:
        assert (row.team_id, row.user_id, row.run_id) == (corral.team_id, corral.user_id, RUN)
    assert {r.duplicate_of for r in reported} == {g.span_id for g in gateway}
    assert counted_calls(corral) == len(gateway), "each call counted once"
    with corral.app.store.connect() as conn:
        steps = conn.scalar(
            select(func.count()).where(spans.c.kind == "step", spans.c.source == agent_source)
        )
    assert steps, "the prompt became a step"


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_claude_code_telemetry_joins_the_gateway_records(
    corral: Running, tmp_path: Path, protocol: str
) -> None:
    make_run_key(corral)
    env = claude_env(corral, tmp_path / "home")
    env.update(
        CLAUDE_CODE_ENABLE_TELEMETRY="1",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_ENDPOINT=corral.url,
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {corral.key}",
        OTEL_LOGS_EXPORT_INTERVAL="500",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        OTEL_LOG_USER_PROMPTS="1",
        OTEL_RESOURCE_ATTRIBUTES=f"corral.run_id={RUN},corral.team=payments",
    )
    run_cli([str(cli("claude")), "-p", "Say hello", "--model", "sim-standard"], env, tmp_path)
    check_one_trajectory(corral, "claude-code")


@pytest.mark.parametrize("protocol", ["binary", "json"])
def test_codex_telemetry_joins_the_gateway_records(
    corral: Running, tmp_path: Path, protocol: str
) -> None:
    make_run_key(corral)
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    headers = f'headers = {{ authorization = "Bearer {corral.key}" }}'
    (codex_home / "config.toml").write_text(
        "[otel]\nlog_user_prompt = true\n"
        f'exporter = {{ otlp-http = {{ endpoint = "{corral.url}/v1/logs", '
        f'protocol = "{protocol}", {headers} }} }}\n'
    )
    run_codex(
        corral,
        tmp_path,
        "Say hello to the platform team",
        OTEL_RESOURCE_ATTRIBUTES=f"corral.run_id={RUN}",
    )
    sources = _sources(corral)
    agent_source = next((s for s in sources if s.startswith("codex")), None)
    assert agent_source is not None, sources
    check_one_trajectory(corral, agent_source)


def _sources(corral: Running) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        with corral.app.store.connect() as conn:
            found = [s for s in conn.scalars(select(spans.c.source).distinct()) if s]
        if any(s.startswith("codex") for s in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_gemini_cli_telemetry_joins_the_gateway_records(corral: Running, tmp_path: Path) -> None:
    """Over OTLP/HTTP (Gemini CLI's other choice, gRPC, Corral does not take)."""
    make_run_key(corral)
    env = gemini_env(corral, tmp_path / "home")
    env.update(
        GEMINI_TELEMETRY_ENABLED="true",
        GEMINI_TELEMETRY_TARGET="local",
        GEMINI_TELEMETRY_OTLP_ENDPOINT=corral.url,
        GEMINI_TELEMETRY_OTLP_PROTOCOL="http",
        GEMINI_TELEMETRY_LOG_PROMPTS="true",
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {corral.key}",
        OTEL_RESOURCE_ATTRIBUTES=f"corral.run_id={RUN}",
    )
    argv = [str(cli("gemini")), "-p", "Say hello", "-m", "sim-standard"]
    run_cli(argv, env, tmp_path)
    check_one_trajectory(corral, "gemini-cli")
