"""Agent profiles: how each agent is started inside a run, and where its report is.

A profile turns a run into a command line and environment: the gateway's base
URL and the run's key in the variables the agent reads, the model, the flags
that make it non-interactive, and its telemetry pointed at Corral's OTLP
ingest (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_RESOURCE_ATTRIBUTES`` carrying
run, team and owner, ``TRACEPARENT`` so its spans join the run's trace).
Every profile gets the variables of ``base_environment``; ``read_only`` names
the host folders its install needs bound into the sandbox; ``report`` finds its
final report after it exits, reading the run's files only through the ``RunFiles``
it is given (links are not followed, sizes are capped: the agent made those files).

Profiles are pluggable: the executor is given a mapping of name to profile
(``default_profiles()`` by default), and a deployment or an extension adds its
own (anything with the ``Profile`` methods) as an entry.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.errors import InvalidRequest
from corral.runs.outputs import RunFiles
from corral.runs.runtime import Runtime

REPORT_TAIL = 8000
"""Characters of stdout kept as the report when an agent leaves no report of its own."""


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What a profile knows about the run it starts. Paths are as the agent sees them."""

    run_id: str
    team: str
    owner: str
    task: str
    model: str
    key: str
    gateway: str  # base URL of the gateway, without /v1, e.g. http://127.0.0.1:4000
    traceparent: str
    workspace: str
    artifacts: str
    home: str
    handoff: str | None = None
    command: Sequence[str] | None = None
    runtime: Runtime | None = None
    agent_path: str = ""  # where agent CLIs are looked up (PATH syntax)
    extra: Mapping[str, str] = field(default_factory=dict)


class Profile(Protocol):
    name: str
    description: str

    def check(self, ctx: AgentContext) -> None:
        """Raise ``InvalidRequest`` when this run cannot be started (missing install...)."""

    def command(self, ctx: AgentContext) -> list[str]: ...

    def environment(self, ctx: AgentContext) -> dict[str, str]: ...

    def read_only(self, ctx: AgentContext) -> list[Path]: ...

    def files(self, ctx: AgentContext) -> dict[str, str]:
        """Files to write under the agent's home (relative path → text) before it starts."""

    def report(self, outputs: RunFiles) -> str | None:
        """The agent's final report, once it has exited, or None. Read it only through
        ``outputs`` (``outputs.artifact("report.md")``, ``outputs.stdout()``): the run's
        files are the agent's and may be links to host files, pipes, or gigabytes."""


def base_environment(ctx: AgentContext) -> dict[str, str]:
    """Variables every agent gets: where the gateway is, the key, the run, telemetry."""
    attributes = f"corral.run_id={ctx.run_id},corral.team={ctx.team},corral.owner={ctx.owner}"
    env = {
        "HOME": ctx.home,
        "CORRAL_RUN_ID": ctx.run_id,
        "CORRAL_ARTIFACTS": ctx.artifacts,
        "CORRAL_MODEL": ctx.model,
        "CORRAL_GATEWAY_URL": ctx.gateway,
        "OPENAI_BASE_URL": f"{ctx.gateway}/v1",
        "OPENAI_API_KEY": ctx.key,
        "ANTHROPIC_BASE_URL": ctx.gateway,
        "ANTHROPIC_API_KEY": ctx.key,
        "OTEL_EXPORTER_OTLP_ENDPOINT": ctx.gateway,
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {ctx.key}",
        "OTEL_RESOURCE_ATTRIBUTES": attributes,
        "TRACEPARENT": ctx.traceparent,
        "LANG": "C.UTF-8",
    }
    if ctx.handoff:
        env["CORRAL_HANDOFF"] = ctx.handoff
    return {**env, **ctx.extra}


def find_cli(name: str, ctx: AgentContext) -> Path:
    """The agent CLI ``name`` on ``run_agent_path``, or a 400 naming where it was sought."""
    found = shutil.which(name, path=ctx.agent_path or os.environ.get("PATH", ""))
    if found is None:
        raise InvalidRequest(
            f"agent CLI {name!r} is not installed on this server (looked in "
            f"{ctx.agent_path or '$PATH'}; set run_agent_path)"
        )
    return Path(found).resolve()


def package_root(executable: Path) -> Path:
    """What the sandbox must bind for the npm package holding ``executable``: the
    ``node_modules`` tree the package sits in, whole, when there is one (``npm install
    --prefix DIR`` puts its dependencies beside it, and Codex's platform binary is the
    sibling package ``@openai/codex-linux-x64``), else the folder holding its
    ``package.json``, else the executable's own folder."""
    found = executable.parent
    for folder in executable.parents:
        if (folder / "package.json").exists():
            found = folder
            break
    for folder in (found, *found.parents):
        if folder.name == "node_modules":
            return folder
    return found


def _tail_report(stdout: str) -> str | None:
    text = stdout.strip()
    return text[-REPORT_TAIL:] if text else None


def _file_report(outputs: RunFiles, *names: str) -> str | None:
    for name in names:
        text = outputs.artifact(name)
        if text is not None:
            return text
    return None


class _Base:
    name = ""
    description = ""

    def check(self, ctx: AgentContext) -> None:
        return None

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return base_environment(ctx)

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return []

    def files(self, ctx: AgentContext) -> dict[str, str]:
        return {}

    def report(self, outputs: RunFiles) -> str | None:
        return _file_report(outputs, "report.md") or _tail_report(outputs.stdout())


class CorralAgent(_Base):
    name = "corral"
    description = "Corral's reference agent (corral agent): a small tool-using coding loop"

    def check(self, ctx: AgentContext) -> None:
        if ctx.runtime is None:
            raise InvalidRequest("the corral profile needs Corral's Python inside the sandbox")

    def command(self, ctx: AgentContext) -> list[str]:
        assert ctx.runtime is not None  # check() ran first
        return [
            *ctx.runtime.module("corral.agent"),
            "--task",
            ctx.task,
            "--model",
            ctx.model,
            "--workdir",
            ctx.workspace,
            "--report",
            f"{ctx.artifacts}/report.md",
        ]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {**base_environment(ctx), "OTEL_SERVICE_NAME": "corral-agent"}

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return ctx.runtime.read_only if ctx.runtime is not None else []


class ClaudeCode(_Base):
    name = "claude-code"
    description = "Anthropic's Claude Code CLI (claude -p), over the Messages API"

    def check(self, ctx: AgentContext) -> None:
        find_cli("claude", ctx)

    def command(self, ctx: AgentContext) -> list[str]:
        return [
            str(find_cli("claude", ctx)),
            "-p",
            ctx.task,
            "--model",
            ctx.model,
            "--output-format",
            "json",
            "--dangerously-skip-permissions",
        ]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {
            **base_environment(ctx),
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": ctx.model,
            "ANTHROPIC_SMALL_FAST_MODEL": ctx.model,
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_LOGS_EXPORT_INTERVAL": "1000",
            "OTEL_LOG_USER_PROMPTS": "1",
        }

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return [package_root(find_cli("claude", ctx))]

    def report(self, outputs: RunFiles) -> str | None:
        for line in reversed(outputs.stdout().strip().splitlines()):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and isinstance(parsed.get("result"), str):
                return str(parsed["result"])[: outputs.max_bytes]
        return super().report(outputs)


class Codex(_Base):
    name = "codex"
    description = "OpenAI's Codex CLI (codex exec), over the Responses API"

    def check(self, ctx: AgentContext) -> None:
        find_cli("codex", ctx)

    def command(self, ctx: AgentContext) -> list[str]:
        return [
            str(find_cli("codex", ctx)),
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--disable",
            "plugins",
            "-s",
            "danger-full-access",  # the sandbox is Corral's; Codex's own needs namespaces
            "--output-last-message",
            f"{ctx.artifacts}/last-message.md",
            ctx.task,
        ]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {**base_environment(ctx), "CODEX_HOME": f"{ctx.home}/.codex"}

    def files(self, ctx: AgentContext) -> dict[str, str]:
        provider = (
            f'{{ name = "corral", base_url = "{ctx.gateway}/v1", wire_api = "responses", '
            'env_key = "OPENAI_API_KEY" }'
        )
        exporter = (
            f'{{ otlp-http = {{ endpoint = "{ctx.gateway}/v1/logs", protocol = "binary", '
            f'headers = {{ authorization = "Bearer {ctx.key}" }} }} }}'
        )
        config = (
            f'model = "{ctx.model}"\nmodel_provider = "corral"\n'
            "[analytics]\nenabled = false\n"
            f"[model_providers]\ncorral = {provider}\n"
            f"[otel]\nlog_user_prompt = true\nexporter = {exporter}\n"
        )
        return {".codex/config.toml": config}

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return [package_root(find_cli("codex", ctx))]

    def report(self, outputs: RunFiles) -> str | None:
        found = _file_report(outputs, "last-message.md", "report.md")
        return found or _tail_report(outputs.stdout())


class Aider(_Base):
    """aider, one ``--message`` turn, unattended, offline but for the gateway.

    aider edits files in the workspace and commits nothing (``.git`` is read-only, Corral
    takes the diff); its chat transcript goes to the artifacts, its other state to the home.
    The model is ``openai/M``; aider chooses its edit format from that name as it always
    does (``whole`` for a name it does not know).
    """

    name = "aider"
    description = "aider (aider --message), over the Chat Completions API"

    def check(self, ctx: AgentContext) -> None:
        find_cli("aider", ctx)

    def command(self, ctx: AgentContext) -> list[str]:
        aider = [
            str(find_cli("aider", ctx)),
            "--message",
            ctx.task,
            "--model",
            f"openai/{ctx.model}",
            "--yes-always",  # --message is unattended: add mentioned files, apply edits
            "--no-auto-commits",  # .git is read-only inside; Corral takes the diff itself
            "--no-dirty-commits",
            "--no-gitignore",  # would add .aider* to the repository's .gitignore
            "--chat-history-file",
            f"{ctx.artifacts}/aider.chat.history.md",
            "--input-history-file",
            f"{ctx.home}/.aider.input.history",
            "--no-check-update",  # the sandbox has no network: nothing of aider's own
            "--no-analytics",
            "--no-detect-urls",
            "--no-show-release-notes",
            "--no-show-model-warnings",
            "--no-fancy-input",
            "--no-pretty",
        ]
        # aider keeps its repository map's cache in the repository root, where it would
        # become part of the diff: remove it when aider exits, keeping aider's exit status.
        tidy = 'cd "$1" && shift && "$@"; status=$?; rm -rf .aider.tags.cache.v*; exit $status'
        return ["/bin/sh", "-c", tidy, "aider", ctx.workspace, *aider]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {
            **base_environment(ctx),
            "OPENAI_API_BASE": f"{ctx.gateway}/v1",
            # litellm fetches its price map from GitHub at import unless told not to
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }

    def files(self, ctx: AgentContext) -> dict[str, str]:
        # Known to aider, the model needs no metadata download (aider's own price map fetch)
        metadata = {f"openai/{ctx.model}": {"litellm_provider": "openai", "mode": "chat"}}
        # Without a git identity aider writes one into the repository's config (read-only).
        # Without a sandbox .git belongs to Corral's uid, not the run's: git needs safe.directory.
        gitconfig = (
            f"[user]\n\tname = aider (Corral run {ctx.run_id})\n"
            f"\temail = {ctx.run_id}@corral.invalid\n"
            f"[safe]\n\tdirectory = {ctx.workspace}\n"
        )
        return {".aider.model.metadata.json": json.dumps(metadata), ".gitconfig": gitconfig}

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return [find_cli("aider", ctx).parents[1]]  # its virtualenv


class Gemini(_Base):
    name = "gemini"
    description = "Google's Gemini CLI (gemini -p), over the Gemini API"

    def check(self, ctx: AgentContext) -> None:
        find_cli("gemini", ctx)

    def command(self, ctx: AgentContext) -> list[str]:
        gemini = str(find_cli("gemini", ctx))
        return [gemini, "-p", ctx.task, "--model", ctx.model, "--yolo", "--output-format", "json"]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {
            **base_environment(ctx),
            "GOOGLE_GEMINI_BASE_URL": ctx.gateway,
            "GEMINI_API_KEY": ctx.key,
            "GEMINI_TELEMETRY_ENABLED": "true",
            "GEMINI_TELEMETRY_TARGET": "local",
            "GEMINI_TELEMETRY_OTLP_ENDPOINT": ctx.gateway,
            "GEMINI_TELEMETRY_OTLP_PROTOCOL": "http",
            "GEMINI_TELEMETRY_LOG_PROMPTS": "true",
        }

    def files(self, ctx: AgentContext) -> dict[str, str]:
        """An API key as its sign-in (no browser), and no folder-trust prompt: the sandbox
        is the boundary, and nothing answers a prompt."""
        settings = {
            "security": {
                "auth": {"selectedType": "gemini-api-key"},
                "folderTrust": {"enabled": False},
            },
        }
        return {".gemini/settings.json": json.dumps(settings)}

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return [package_root(find_cli("gemini", ctx))]

    def report(self, outputs: RunFiles) -> str | None:
        """``--output-format json`` prints one JSON object whose ``response`` is the answer."""
        text = outputs.stdout()
        start = text.find("{")
        if start >= 0:
            try:
                parsed = json.loads(text[start:])
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("response"), str):
                return str(parsed["response"])[: outputs.max_bytes]
        return super().report(outputs)


class Command(_Base):
    name = "command"
    description = "any command line (--command), with the gateway and key in its environment"

    def check(self, ctx: AgentContext) -> None:
        if not ctx.command:
            raise InvalidRequest("the command profile needs --command: the command line to run")

    def command(self, ctx: AgentContext) -> list[str]:
        assert ctx.command  # check() ran first
        return list(ctx.command)

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {**base_environment(ctx), "CORRAL_TASK": ctx.task}


def default_profiles() -> dict[str, Profile]:
    """The built-in profiles by name."""
    found: list[Profile] = [CorralAgent(), ClaudeCode(), Codex(), Aider(), Gemini(), Command()]
    return {p.name: p for p in found}
