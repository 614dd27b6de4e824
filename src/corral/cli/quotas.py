"""Budget and rate-limit commands: ``corral budgets`` and ``corral limits``, over the admin API.

A scope is named with ``--team``, ``--user`` (with ``--team``: a user of that
team), ``--key`` or ``--org``. Only the org admin key may set or remove rules;
a team admin key shows those of its team, any other key those of its team, its
user and itself. Budgets from the config file are shown but cannot be changed
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from corral.cli.admin import (
    _client,
    _print_json,
    _table,
    _when,
    amount_text,
    budget_table,
    json_option,
    scope_label,
)

F = TypeVar("F", bound=Callable[..., Any])

_WORDS = {"hour": "hourly", "day": "daily", "month": "monthly", "total": "total"}
_RATES = ("rpm", "tpm", "concurrency")


@dataclass(frozen=True, slots=True)
class Scope:
    """A scope as the options named it."""

    kind: str
    ref: str | None = None
    team: str | None = None

    def body(self) -> dict[str, Any]:
        """As the ``scope`` of a PUT body."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.team is not None:
            out["team"] = self.team
        return out

    def params(self) -> dict[str, str | None]:
        """As the query parameters of GET and DELETE."""
        if self.kind == "org":
            return {"org": "true"}
        params = {self.kind: self.ref}
        if self.team is not None:
            params["team"] = self.team
        return params


def scope_options(func: F) -> F:
    func = click.option("--org", is_flag=True, help="The whole organisation.")(func)
    func = click.option("--key", "key_id", metavar="KEY_ID", help="A key, by id.")(func)
    func = click.option(
        "--user", help="A user or service account (name or id); with --team, of that team."
    )(func)
    return click.option("--team", help="A team (name or id).")(func)


def _scope(team: str | None, user: str | None, key_id: str | None, org: bool) -> Scope | None:
    named = [
        flag
        for flag, given in (("--team", team), ("--user", user), ("--key", key_id), ("--org", org))
        if given
    ]
    if not named:
        return None
    if named == ["--team", "--user"]:
        return Scope("user", user, team)
    if len(named) > 1:
        raise click.UsageError(
            f"name one scope, not {' and '.join(named)} (--team with --user names a user "
            "of that team)"
        )
    if org:
        return Scope("org")
    if team is not None:
        return Scope("team", team)
    return Scope("user", user) if user is not None else Scope("key", key_id)


def _required_scope(team: str | None, user: str | None, key_id: str | None, org: bool) -> Scope:
    scope = _scope(team, user, key_id, org)
    if scope is None:
        raise click.UsageError("name the scope: --team, --user, --key or --org")
    return scope


# -- budgets ---------------------------------------------------------------------


@click.group()
def budgets() -> None:
    """Set, show and remove budgets (USD or tokens per hour, day, month or in total)."""


@budgets.command("set")
@scope_options
@click.option("--usd", type=click.FloatRange(min=0), help="USD per window (up to 9 decimals).")
@click.option("--tokens", type=click.IntRange(min=0), help="Tokens per window (all kinds).")
@click.option(
    "--window",
    type=click.Choice(list(_WORDS)),
    default="day",
    show_default=True,
    help="Calendar window in UTC; total never resets.",
)
@click.option(
    "--soft-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Past this fraction of the budget, requests go to the model's degrade_to.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only JSON: a list of the budgets set.")
def budgets_set(
    team: str | None,
    user: str | None,
    key_id: str | None,
    org: bool,
    usd: float | None,
    tokens: int | None,
    window: str,
    soft_fraction: float | None,
    as_json: bool,
) -> None:
    """Create or replace a budget; with --usd and --tokens, one of each."""
    scope = _required_scope(team, user, key_id, org)
    limits = [(r, v) for r, v in (("usd", usd), ("tokens", tokens)) if v is not None]
    if not limits:
        raise click.UsageError("give --usd, --tokens or both")
    done = []
    with _client() as api:
        for resource, value in limits:
            body = {"scope": scope.body(), "resource": resource, "window": window, "limit": value}
            if soft_fraction is not None:
                body["soft_fraction"] = soft_fraction
            done.append(api.put("/budgets", body))
    if as_json:
        _print_json(done)
        return
    for b in done:
        soft = "" if b["soft_fraction"] is None else f" (soft limit {b['soft_fraction']:.0%})"
        click.echo(
            f"Set the {_WORDS[b['window']]} {_unit(b['resource'])} budget of "
            f"{scope_label(b['scope'])} to {amount_text(b['resource'], b['limit'])}{soft}; "
            f"{amount_text(b['resource'], b['remaining'])} left."
        )


@budgets.command("show")
@scope_options
@json_option
def budgets_show(
    team: str | None, user: str | None, key_id: str | None, org: bool, as_json: bool
) -> None:
    """Show budgets with their spend in the current window, then the rate limits.
    A team's are shown with those of its users, keys and live runs."""
    scope = _scope(team, user, key_id, org)
    found = _status(scope)
    if as_json:
        _print_json(found)
        return
    within = (
        f" of team {scope.ref} and its users, keys and runs"
        if scope and scope.kind == "team"
        else ""
    )
    budget_table(found["budgets"], f"Budgets{within}")
    _limit_table(found["limits"], f"Rate limits{within}")


@budgets.command("unset")
@scope_options
@click.option("--usd", is_flag=True, help="Remove the USD budget.")
@click.option("--tokens", is_flag=True, help="Remove the token budget.")
@click.option(
    "--window",
    type=click.Choice(list(_WORDS)),
    default="day",
    show_default=True,
    help="The window of the budget to remove.",
)
def budgets_unset(
    team: str | None,
    user: str | None,
    key_id: str | None,
    org: bool,
    usd: bool,
    tokens: bool,
    window: str,
) -> None:
    """Remove a budget set with `corral budgets set`."""
    scope = _required_scope(team, user, key_id, org)
    resources = [r for r, given in (("usd", usd), ("tokens", tokens)) if given]
    if not resources:
        raise click.UsageError("give --usd, --tokens or both")
    with _client() as api:
        for resource in resources:
            api.delete("/budgets", {**scope.params(), "resource": resource, "window": window})
            click.echo(f"Removed the {_WORDS[window]} {_unit(resource)} budget of {_said(scope)}.")


# -- limits ----------------------------------------------------------------------


@click.group()
def limits() -> None:
    """Set, show and clear rate and concurrency limits."""


@limits.command("set")
@scope_options
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=0), help="Tokens per minute.")
@click.option("--concurrency", type=click.IntRange(min=0), help="Requests in flight.")
@json_option
def limits_set(
    team: str | None,
    user: str | None,
    key_id: str | None,
    org: bool,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    as_json: bool,
) -> None:
    """Set some limits of a scope; the others keep their value."""
    scope = _required_scope(team, user, key_id, org)
    given = (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency))
    changes: dict[str, int | None] = {n: v for n, v in given if v is not None}
    if not changes:
        raise click.UsageError("give --rpm, --tpm or --concurrency")
    _put_limits(scope, changes, as_json)


@limits.command("clear")
@scope_options
@click.option("--rpm", is_flag=True, help="Clear the requests-per-minute limit.")
@click.option("--tpm", is_flag=True, help="Clear the tokens-per-minute limit.")
@click.option("--concurrency", is_flag=True, help="Clear the concurrency limit.")
@json_option
def limits_clear(
    team: str | None,
    user: str | None,
    key_id: str | None,
    org: bool,
    rpm: bool,
    tpm: bool,
    concurrency: bool,
    as_json: bool,
) -> None:
    """Clear some limits of a scope (all of them when none is named)."""
    scope = _required_scope(team, user, key_id, org)
    named = [n for n, flag in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)) if flag]
    _put_limits(scope, dict.fromkeys(named or _RATES), as_json)


@limits.command("show")
@scope_options
@json_option
def limits_show(
    team: str | None, user: str | None, key_id: str | None, org: bool, as_json: bool
) -> None:
    """Show rate and concurrency limits."""
    found = _status(_scope(team, user, key_id, org))["limits"]
    if as_json:
        _print_json({"limits": found})
        return
    _limit_table(found)


def _put_limits(scope: Scope, changes: dict[str, int | None], as_json: bool) -> None:
    with _client() as api:
        status = api.put("/limits", {"scope": scope.body(), **changes})
    if as_json:
        _print_json(status)
        return
    values = [f"{n} {status[n]}" for n in _RATES if status[n] is not None]
    label = scope_label(status["scope"])
    if values:
        click.echo(f"Limits of {label}: {', '.join(values)}.")
    else:
        click.echo(f"{label[0].upper()}{label[1:]} has no limits set through the API now.")


# -- shared ----------------------------------------------------------------------


def _status(scope: Scope | None) -> dict[str, Any]:
    with _client() as api:
        found: dict[str, Any] = api.get("/budgets", scope.params() if scope else None)
    return found


def _limit_table(rows: list[dict[str, Any]], title: str = "Rate limits") -> None:
    _table(
        title,
        ["scope", "rpm", "tpm", "concurrency", "source", "updated"],
        (
            [scope_label(r["scope"]), *(r[n] for n in _RATES), r["source"], _when(r["updated_at"])]
            for r in rows
        ),
        groups=[r["scope"]["kind"] for r in rows],
    )


def _unit(resource: str) -> str:
    return "USD" if resource == "usd" else "token"


def _said(scope: Scope) -> str:
    if scope.kind == "org":
        return "the organisation"
    within = f" of team {scope.team}" if scope.team else ""
    return f"{scope.kind} {scope.ref}{within}"
