"""Corral's reference agent: a small tool-using coding loop over the gateway.

Run it as ``corral agent --task "…"`` or, where only the standard library,
httpx and OpenTelemetry are at hand (inside a run's sandbox),
``python -m corral.agent --task "…"``. It talks OpenAI Chat Completions to the
gateway with six tools (``list_files``, ``read_file``, ``search``,
``write_file``, ``edit_file``, ``run``), stops when the model answers without
a tool call or at the turn limit, writes a Markdown report, and emits
OpenTelemetry GenAI spans whose ``traceparent`` ties each model call to the
gateway's record of it.

    command.py    flags, environment, exit codes, the report file
    loop.py       the loop: ask, run the tools, repeat
    model.py      the gateway call, its retries and its errors
    tools.py      the tools, as a table of small functions
    telemetry.py  the spans and their export
    report.py     the report and the files-changed snapshot
    errors.py     the agent's errors and their exit codes

This package imports nothing of Corral outside it: the sandbox's Python has no
database drivers, and the agent must not need them.
"""

from __future__ import annotations

from corral.agent.command import FLAGS, Config, Flag, main, run
from corral.agent.errors import AgentError, GatewayError, Interrupted, ToolError, UsageError
from corral.agent.loop import SYSTEM_PROMPT, Agent, Outcome
from corral.agent.model import ModelClient
from corral.agent.telemetry import AGENT_NAME, Telemetry
from corral.agent.tools import TOOLS, Tool, Toolbox, ToolResult, tool_specs

__all__ = [
    "AGENT_NAME",
    "FLAGS",
    "SYSTEM_PROMPT",
    "TOOLS",
    "Agent",
    "AgentError",
    "Config",
    "Flag",
    "GatewayError",
    "Interrupted",
    "ModelClient",
    "Outcome",
    "Telemetry",
    "Tool",
    "ToolError",
    "ToolResult",
    "Toolbox",
    "UsageError",
    "main",
    "run",
    "tool_specs",
]
