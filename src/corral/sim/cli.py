"""``corral sim``: serve the provider simulator until Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import click

from corral.errors import ConfigError
from corral.sim.app import create_sim_app
from corral.sim.config import SimConfig
from corral.sim.options import FaultSpec, parse_faults
from corral.sim.server import bind_socket, uvicorn_config


def _faults(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[FaultSpec, ...]:
    try:
        return tuple(spec for value in values for spec in parse_faults(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=4200, show_default=True, type=int, help="Port (0 picks one).")
@click.option(
    "--script",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Scripted conversations (TOML or JSON); see docs/simulator.md.",
)
@click.option("--ttft-ms", default=0.0, show_default=True, type=float, help="Time to first token.")
@click.option("--tps", default=0.0, show_default=True, type=float, help="Tokens/s; 0 = at once.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for answers and faults.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    callback=_faults,
    help="Default fault, e.g. 429@0.05 or 503@0.01,reset@0.01 (repeatable).",
)
@click.option(
    "--fault-timeout",
    default=300.0,
    show_default=True,
    type=float,
    help="Seconds the timeout and stall faults hang.",
)
def sim(
    host: str,
    port: int,
    script: Path | None,
    ttft_ms: float,
    tps: float,
    seed: int,
    faults: tuple[FaultSpec, ...],
    fault_timeout: float,
) -> None:
    """Serve simulated OpenAI, Anthropic and Gemini endpoints (no real model is involved)."""
    import uvicorn

    try:
        config = SimConfig(
            ttft_ms=ttft_ms,
            tokens_per_second=tps,
            seed=seed,
            script=script,
            default_faults=faults,
            fault_timeout_s=fault_timeout,
        )
        app = create_sim_app(config)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from exc
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}"
    click.echo(
        f"Corral simulator serving {url}  (OpenAI: {url}/v1, Anthropic: {url}, Gemini: {url})"
    )
    click.echo("Models: " + ", ".join(config.models) + "; any other name is answered too.")
    server = uvicorn.Server(uvicorn_config(app, loop="uvloop"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it shut down on; that is the normal way out.
        pass
    finally:
        sock.close()
    click.echo("Corral simulator stopped.")
