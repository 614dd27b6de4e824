"""The ``corral`` command line.

Each part of Corral contributes its commands from its own module; this
package only assembles the group. Admin commands talk to a running server
over the API (``CORRAL_URL``, ``CORRAL_ADMIN_KEY``); ``serve`` and ``sim``
start servers.
"""

from __future__ import annotations

import click

from corral import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="corral")
def main() -> None:
    """Corral: run coding agents as metered, routed, observed and owned workloads."""


def _register() -> None:
    from corral.cli import admin, agent, quotas, routing, runs, serve, traces
    from corral.sim import cli as sim_cli

    main.add_command(serve.serve)
    main.add_command(sim_cli.sim)
    main.add_command(agent.agent)
    for command in [
        *admin.COMMANDS,
        *quotas.COMMANDS,
        *routing.COMMANDS,
        *runs.COMMANDS,
        *traces.COMMANDS,
    ]:
        main.add_command(command)


_register()
