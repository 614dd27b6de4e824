"""The ``corral`` command line.

Each part of Corral contributes its commands from its own module; this
package only assembles the group, lazily: a command's module is imported when
that command runs (or its help is asked for), never for ``corral --help``, so
the client commands do not pay for importing the server. Client commands talk
to a running server over the API (``CORRAL_URL``, and the key in
``CORRAL_KEY`` or ``CORRAL_ADMIN_KEY``); ``serve`` and ``sim`` start servers.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import click

from corral import __version__


class Lazy(NamedTuple):
    """Where a command lives, and its one-line summary for ``corral --help``."""

    module: str
    attribute: str
    summary: str


# The summaries are the first sentence of each command's help (a test compares them), so
# ``corral --help`` lists every command without importing any.
COMMANDS: dict[str, Lazy] = {
    "agent": Lazy(
        "corral.cli.agent",
        "agent",
        "Run Corral's reference coding agent on a task, through the gateway.",
    ),
    "budgets": Lazy(
        "corral.cli.quotas",
        "budgets",
        "Set, show and remove budgets (USD or tokens per hour, day, month or in total).",
    ),
    "capacity": Lazy(
        "corral.cli.routing",
        "capacity",
        "Show each provider contract's use per hour: within the reserved capacity and past it.",
    ),
    "guards": Lazy(
        "corral.cli.guards",
        "guards",
        "Show the detectors and thresholds that apply to a team; switch a team's or the whole "
        "organisation's agent traffic off and on.",
    ),
    "incidents": Lazy(
        "corral.cli.guards",
        "incidents",
        "List the incidents guards opened, read their evidence and timeline, and acknowledge, "
        "release or kill them.",
    ),
    "keys": Lazy("corral.cli.admin", "keys", "Create, list and revoke keys."),
    "ledger": Lazy(
        "corral.cli.review",
        "ledger",
        "The autonomy ledger: runs, human interventions per run, and the autonomy rate (runs "
        "delivered with no human action but the final approval).",
    ),
    "limits": Lazy(
        "corral.cli.quotas", "limits", "Set, show and clear rate and concurrency limits."
    ),
    "models": Lazy("corral.cli.admin", "models", "The model catalog."),
    "providers": Lazy("corral.cli.admin", "providers", "Upstream providers."),
    "review": Lazy(
        "corral.cli.review",
        "review",
        "Review runs' changes: list what waits for review, read a change with its checks, "
        "owners, evidence and reviewer agents' verdicts, approve, reject, comment or ask for "
        "changes.",
    ),
    "route": Lazy(
        "corral.cli.routing", "route", "Explain routing decisions and show circuit breakers."
    ),
    "runs": Lazy(
        "corral.cli.runs",
        "runs",
        "Submit agent runs, follow them, read what they left and deliver their change.",
    ),
    "serve": Lazy(
        "corral.cli.serve",
        "serve",
        "Run Corral: gateway (/v1), admin API (/api/v1), status page (/).",
    ),
    "sim": Lazy(
        "corral.sim.cli",
        "sim",
        "Serve simulated OpenAI, Anthropic and Gemini endpoints (no real model is involved).",
    ),
    "spans": Lazy(
        "corral.cli.traces", "spans", "Read single spans and their bodies; search spans."
    ),
    "store": Lazy(
        "corral.cli.traces",
        "store",
        "How big the trajectory store is: span rows, bytes on disk, bodies, oldest span.",
    ),
    "teams": Lazy(
        "corral.cli.admin",
        "teams",
        "Create, list and show teams; set their trajectory policy.",
    ),
    "trace": Lazy(
        "corral.cli.traces",
        "trace",
        "Print the tree of a run or a trace: agents, steps, tool calls, LLM calls and the "
        "upstream attempts of each, with durations, tokens, cost and errors.",
    ),
    "usage": Lazy(
        "corral.cli.admin",
        "usage",
        "Requests, errors, tokens, cost and latency of model calls, grouped by any of team, "
        "user, key, model, provider, day and hour; then the budgets (of the team, with --team) "
        "and what is left of them.",
    ),
    "users": Lazy("corral.cli.admin", "users", "Create and list users and service accounts."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when used; its help lists them from a table."""

    def __init__(self, name: str | None = None, *, lazy: dict[str, Lazy], **attrs: Any) -> None:
        super().__init__(name, **attrs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in self.lazy:
            return found
        where = self.lazy[cmd_name]
        command = getattr(importlib.import_module(where.module), where.attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{where.module}.{where.attribute} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their summaries as click lists them, without importing them."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # A command not imported yet is listed through a stand-in holding its summary.
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name].summary)
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="corral")
def main() -> None:
    """Corral: run coding agents as metered, routed, observed and owned workloads."""
