"""Routing commands: ``corral route explain`` and ``corral route breakers``, over the admin API."""

from __future__ import annotations

from typing import Any

import click

from corral.cli.admin import _client, _print_json, _table, json_option


@click.group()
def route() -> None:
    """Explain routing decisions and show circuit breakers."""


@route.command("explain")
@click.option("--model", "model", required=True, help="The model (or tier) a request asks for.")
@click.option("--team", help="The team sending it (name or id).")
@click.option("--task-class", help="Its x-corral-task-class.")
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), help="Its priority.")
@json_option
def explain(
    model: str, team: str | None, task_class: str | None, priority: str | None, as_json: bool
) -> None:
    """Print the route policy's decision and the chain of deployments that would be tried."""
    params = {"model": model, "team": team, "task_class": task_class, "priority": priority}
    with _client() as api:
        found: dict[str, Any] = api.get(
            "/route/explain", {k: v for k, v in params.items() if v is not None}
        )
    if as_json:
        _print_json(found)
        return
    who = f" from team {found['team']}" if found["team"] else ""
    extra = [
        f"task class {task_class}" if task_class else "",
        f"priority {priority}" if priority else "",
    ]
    context = ", ".join(x for x in extra if x)
    click.echo(f"A request for {model}{who}{f' ({context})' if context else ''}:")
    if found["reason"]:
        click.echo(f"  goes to {found['routed_to']}: {found['reason']}")
    else:
        click.echo("  keeps its model: no route policy moves it")
    click.echo(
        f"  tries, in order, at most {found['max_attempts']} of (deployments of one model: "
        "heaviest first, each request draws its own weighted order):"
    )
    _table(
        "Chain",
        ["#", "deployment", "model", "tier", "weight", "context", "speaks", "breaker"],
        [
            [
                i,
                d["deployment"],
                d["model"],
                d["tier"],
                f"{d['weight']:g}",
                f"{d['context_window']:,}",
                ", ".join(d["protocols"]),
                d["breaker"],
            ]
            for i, d in enumerate(found["chain"], 1)
        ],
    )


@route.command("policies")
@json_option
def policies(as_json: bool) -> None:
    """List the route policy rules in the order they apply (config file first)."""
    with _client() as api:
        found: dict[str, Any] = api.get("/route/policies")
    if as_json:
        _print_json(found)
        return
    _policy_table(found["policies"])


@route.command("add")
@click.option("--team", help="Match this team's requests (name).")
@click.option("--task-class", help="Match requests with this x-corral-task-class.")
@click.option(
    "--priority", type=click.Choice(["low", "normal", "high"]), help="Match this priority."
)
@click.option("--tier", help="The dearest tier matching requests may use.")
@click.option("--allowed-tier", "allowed", multiple=True, help="A tier they may use (repeat).")
@click.option("--position", type=float, help="Where among the API's rules (default: last).")
@json_option
def add(
    team: str | None,
    task_class: str | None,
    priority: str | None,
    tier: str | None,
    allowed: tuple[str, ...],
    position: float | None,
    as_json: bool,
) -> None:
    """Add a route policy rule (org admin key)."""
    body = {
        "team": team,
        "task_class": task_class,
        "priority": priority,
        "tier": tier,
        "allowed_tiers": list(allowed) or None,
        "position": position,
    }
    with _client() as api:
        found: dict[str, Any] = api.post("/route/policies", body)
    if as_json:
        _print_json(found)
        return
    click.echo(f"Added route policy {found['id']}.")
    _policy_table(found["policies"])


@route.command("remove")
@click.argument("rule_id")
def remove(rule_id: str) -> None:
    """Remove a route policy rule set through the API (org admin key)."""
    with _client() as api:
        api.delete(f"/route/policies/{rule_id}")
    click.echo(f"Removed route policy {rule_id}.")


def _policy_table(rules: list[dict[str, Any]]) -> None:
    _table(
        "Route policies (the first matching rule applies)",
        ["#", "id", "team", "task class", "priority", "tier", "allowed tiers", "source"],
        [
            [
                r["number"],
                r["id"],
                r["team"],
                r["task_class"],
                r["priority"],
                r["tier"],
                ", ".join(r["allowed_tiers"]) if r["allowed_tiers"] else None,
                r["source"],
            ]
            for r in rules
        ],
    )


@route.command("breakers")
@json_option
def breakers(as_json: bool) -> None:
    """Show the circuit breakers of the Corral process that answers (each keeps its own)."""
    with _client() as api:
        found: dict[str, Any] = api.get("/breakers")
    if as_json:
        _print_json(found)
        return
    _table(
        "Circuit breakers",
        ["deployment", "state", "recent attempts", "recent failures", "opened", "cooling s"],
        [
            [
                d,
                b["state"],
                b["recent_attempts"],
                b["recent_failures"],
                b["opened"],
                b["cooling_for_s"],
            ]
            for d, b in found["breakers"].items()
        ],
    )


@click.command()
@click.option("--since", default="24h", show_default=True, help="Window: 24h, 7d, all, ISO time.")
@json_option
def capacity(since: str, as_json: bool) -> None:
    """Show each provider contract's use per hour: within the reserved capacity and past it."""
    with _client() as api:
        found: dict[str, Any] = api.get("/capacity", {"since": since})
    if as_json:
        _print_json(found)
        return
    if not found["providers"]:
        click.echo("No provider has a capacity contract (set [providers.capacity] in the config).")
        return
    for p in found["providers"]:
        c = p["contract"]
        terms = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items() if v is not None)
        _table(
            f"{p['provider']}: {terms}",
            [
                "hour (UTC)",
                "reserved",
                "overflow",
                "reserved tokens",
                "overflow tokens",
                "RPM used",
                "TPM used",
            ],
            [
                [
                    h["hour"][:13].replace("T", " ") + ":00",
                    h["reserved_attempts"],
                    h["overflow_attempts"],
                    f"{h['reserved_tokens']:,}",
                    f"{h['overflow_tokens']:,}",
                    _pct(h["rpm_utilisation"]),
                    _pct(h["tpm_utilisation"]),
                ]
                for h in p["hours"]
            ],
        )


def _pct(share: float | None) -> str | None:
    return None if share is None else f"{share:.1%}"
