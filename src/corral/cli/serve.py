"""``corral serve``: the gateway, the admin API and the status page in one process."""

from __future__ import annotations

import os
import sys

import click
import uvicorn

from corral.app import CorralApp, create_app
from corral.errors import CorralError
from corral.server import HttpLimits, bind, server_config
from corral.settings import load_settings


@click.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: 4100].")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file [default: $CORRAL_CONFIG, else ./corral.toml if present].",
)
@click.option(
    "--sim-url",
    default=None,
    help="Serve the simulator's models from this external `corral sim` (with no providers).",
)
@click.option(
    "--unsafe-no-sandbox",
    is_flag=True,
    default=None,
    help="Run agents without the sandbox (development only; every run records it).",
)
def serve(
    host: str | None,
    port: int | None,
    config_file: str | None,
    sim_url: str | None,
    unsafe_no_sandbox: bool | None,
) -> None:
    """Run Corral: gateway (/v1), admin API (/api/v1), status page (/)."""
    try:
        settings = load_settings(
            config_file,
            host=host,
            port=port,
            sim_url=sim_url,
            unsafe_no_sandbox=True if unsafe_no_sandbox else None,
        )
        # The port first: start-up mints and prints the one-time admin key, which must
        # not happen for a server that then cannot listen (the key would be lost).
        sock = bind(settings.host, settings.port)
        app = create_app(settings)
    except CorralError as exc:
        raise click.ClickException(exc.message) from exc
    app.on_startup.append(_announce)
    limits = HttpLimits.from_settings(settings)
    config = server_config(app, limits, access_log=settings.access_log)
    uvicorn.Server(config).run(sockets=[sock])


def _announce(app: CorralApp) -> None:
    s = app.settings
    url = f"http://{s.host}:{s.port}"
    out = sys.stderr
    print(f"Corral {url}  (gateway {url}/v1, admin API {url}/api/v1, status page {url}/)", file=out)
    print(f"  store: {app.store.describe()}", file=out)
    print(f"  models: {', '.join(app.catalog.models)}", file=out)
    for provider in app.catalog.providers.values():
        if provider.api_key_env and not os.environ.get(provider.api_key_env):
            print(
                f"  warning: provider {provider.name!r} reads its secret from "
                f"{provider.api_key_env}, which is not set: its models will answer 502",
                file=out,
            )
    if app.extensions.names:
        print(f"  extensions: {', '.join(app.extensions.names)}", file=out)
    runs = app.executor
    if runs.refusal:
        print(f"  warning: {runs.refusal}", file=out)
    else:
        print(
            f"  runs: {s.run_slots} slots, sandbox {runs.sandbox_label}, folder {runs.dir}",
            file=out,
        )
        if runs.launcher.cannot_freeze:
            print(
                f"  warning: runs cannot be sequestered here ({runs.launcher.cannot_freeze}): "
                "a guard kills a runaway run instead",
                file=out,
            )
    print(f"  guards: {app.guards.describe()}", file=out)
    if app.generated_admin_key:
        print(
            "  admin key (shown once, only its hash is kept; export it as CORRAL_ADMIN_KEY):\n"
            f"    {app.generated_admin_key}",
            file=out,
        )
    out.flush()
