"""``corral agent``: Corral's reference coding agent, as ``python -m corral.agent`` runs it.

The options are built from ``corral.agent.FLAGS`` (the table the agent's own
argument parser is built from) and handed back to ``corral.agent.main`` as
arguments, so both entry points behave the same.
"""

from __future__ import annotations

from typing import Any

import click

from corral.agent import FLAGS, main


def _forward(**values: Any) -> None:
    argv: list[str] = []
    for flag in FLAGS:
        value = values[flag.name.lstrip("-").replace("-", "_")]
        if value is not None:
            argv.append(f"{flag.name}={value}")  # "=": a value may start with "-"
    raise SystemExit(main(argv, prog="corral agent"))


agent = click.Command(
    "agent",
    callback=_forward,
    params=[
        click.Option([flag.name], metavar=flag.metavar, help=flag.help, type=flag.type)
        for flag in FLAGS
    ],
    help="Run Corral's reference coding agent on a task, through the gateway.\n\n"
    "It lists, reads, searches, writes and edits files in the workdir and runs shell commands "
    "there, until the model answers without a tool call or the turn limit is reached, then "
    "prints a Markdown report. The key comes from OPENAI_API_KEY (or CORRAL_API_KEY). "
    "Exit codes: 0 completed, 1 stopped by an error, 2 bad usage, 3 turn limit reached.",
)
