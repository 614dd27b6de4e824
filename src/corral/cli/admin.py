"""Admin commands: teams, users, keys, usage, models and providers, over the admin API.

They talk to a running Corral (``CORRAL_URL``, and the key in ``CORRAL_KEY`` or
``CORRAL_ADMIN_KEY``: see ``corral.cli.client``), print tables for people, and
with ``--json`` print only JSON for scripts. Teams and users are named by name
or id. A new key's secret is printed once, when it is created; nothing else
ever prints one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import click
from rich import box
from rich.console import Console
from rich.table import Table

from corral.cli.client import CLIError, CorralClient

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^\d{1,9}[smhdw]$")
_TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens")
_NUMERIC = {"requests", "errors", "input", "cached", "cache write", "output", "reasoning"}
_NUMERIC |= {"p50", "p95", "p99", "retention"}
_NUMERIC |= {"limit", "spent", "reserved", "remaining", "rpm", "tpm", "concurrency"}


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print only JSON.")(func)


def _client() -> CorralClient:
    return CorralClient.from_env()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _console() -> Console:
    console = Console()
    # Piped output has no terminal width; rich would squeeze tables into 80 columns.
    return console if console.is_terminal else Console(width=200)


def _table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    groups: Sequence[Any] | None = None,
) -> None:
    """A table for people; ``groups`` (one label a row) draws a rule where the label changes."""
    rows = list(rows)
    if not rows:
        click.echo(f"{title}: none.")
        return
    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    for name in columns:
        numeric = name in _NUMERIC
        table.add_column(name, justify="right" if numeric or name.startswith("cost") else "left")
    for i, row in enumerate(rows):
        last_of_group = groups is not None and i + 1 < len(rows) and groups[i] != groups[i + 1]
        cells = ("-" if cell is None else str(cell) for cell in row)
        table.add_row(*cells, end_section=last_of_group)
    _console().print(table)


def _when(iso: str | None) -> str | None:
    """``2025-01-31T12:34:56.789Z`` as ``2025-01-31 12:34Z``."""
    return None if iso is None else iso[:16].replace("T", " ") + "Z"


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"


def scope_label(scope: dict[str, Any]) -> str:
    """``team payments``, ``user alice``, ``key key_…`` or ``organisation``."""
    if scope["kind"] == "org":
        return "organisation"
    return f"{scope['kind']} {scope['name'] or scope['id']}"


def amount_text(resource: str, value: float) -> str:
    return _usd(value) if resource == "usd" else f"{int(value):,}"


def budget_table(budgets: Iterable[dict[str, Any]], title: str = "Budgets") -> None:
    """Budgets as ``GET /api/v1/budgets`` lists them, with what is left of each, grouped by
    the kind of scope (organisation, team, users, keys, runs: the API's order)."""
    budgets = list(budgets)
    columns = ["scope", "resource", "window", "limit", "spent", "reserved", "remaining"]
    columns += ["resets at", "soft", "source"]
    amounts = ("limit", "spent", "reserved", "remaining")
    rows = (
        [scope_label(b["scope"]), b["resource"], b["window"]]
        + [amount_text(b["resource"], b[f]) for f in amounts]
        + [
            _when(b["resets_at"]) or "never",
            None if b["soft_fraction"] is None else f"{b['soft_fraction']:.0%}",
            b["source"],
        ]
        for b in budgets
    )
    _table(title, columns, rows, groups=[b["scope"]["kind"] for b in budgets])


# -- teams -----------------------------------------------------------------------


@click.group()
def teams() -> None:
    """Create, list and show teams; set their trajectory policy."""


@teams.command("create")
@click.argument("name")
@json_option
def teams_create(name: str, as_json: bool) -> None:
    """Create the team NAME."""
    with _client() as api:
        team = api.post("/teams", {"name": name})
    if as_json:
        _print_json(team)
    else:
        click.echo(f"Created team {team['name']} ({team['id']}).")


@teams.command("list")
@json_option
def teams_list(as_json: bool) -> None:
    """List teams (a team admin key sees its own team)."""
    with _client() as api:
        found = api.get("/teams")
    if as_json:
        _print_json(found)
        return
    _table(
        "Teams",
        ["name", "id", "created"],
        ((t["name"], t["id"], _when(t["created_at"])) for t in found),
    )


@teams.command("show")
@click.argument("team")
@json_option
def teams_show(team: str, as_json: bool) -> None:
    """Show one team, by name or id, with its trajectory policy."""
    with _client() as api:
        found = api.get(f"/teams/{_path(team)}")
    if as_json:
        _print_json(found)
        return
    _team_table(found)


def _team_table(found: dict[str, Any]) -> None:
    bodies, days = _policy(found)
    _table(
        "Team",
        ["name", "id", "created", "bodies", "retention"],
        [(found["name"], found["id"], _when(found["created_at"]), bodies, days)],
    )


def _policy(team: dict[str, Any]) -> tuple[str, str]:
    """The team's body capture and retention, marked "(default)" when not its own."""
    bodies = team["effective_body_capture"]
    days = f"{team['effective_retention_days']:g} days"
    if team["body_capture"] is None:
        bodies += " (default)"
    if team["retention_days"] is None:
        days += " (default)"
    return bodies, days


def _check_days(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "default":
        return value
    try:
        days = float(value)
    except ValueError:
        days = -1.0
    if not 0 < days <= 3650:
        raise click.BadParameter("give a number of days above 0 (at most 3650), or 'default'")
    return value


@teams.command("set")
@click.argument("team")
@click.option(
    "--bodies",
    type=click.Choice(["off", "metadata", "full", "default"]),
    help="Raw bodies kept for the team's calls: off, metadata (size, digest, shape), "
    "full (redacted, capped), or the server's default.",
)
@click.option(
    "--retention-days",
    callback=_check_days,
    metavar="N|default",
    help="Days the team's spans and bodies are kept, or the server's default.",
)
@json_option
def teams_set(team: str, bodies: str | None, retention_days: str | None, as_json: bool) -> None:
    """Set the trajectory policy of TEAM (org admin key, or the team's admin key)."""
    body: dict[str, Any] = {}
    if bodies is not None:
        body["body_capture"] = None if bodies == "default" else bodies
    if retention_days is not None:
        body["retention_days"] = None if retention_days == "default" else float(retention_days)
    if not body:
        raise click.UsageError("give --bodies, --retention-days or both")
    with _client() as api:
        found = api.request("PATCH", f"/teams/{_path(team)}", json=body)
    if as_json:
        _print_json(found)
        return
    bodies_now, days_now = _policy(found)
    click.echo(f"Team {found['name']}: bodies {bodies_now}, retention {days_now}.")


# -- users -----------------------------------------------------------------------


@click.group()
def users() -> None:
    """Create and list users and service accounts."""


@users.command("create")
@click.argument("name")
@click.option("--team", required=True, help="The team (name or id).")
@click.option("--service", is_flag=True, help="Create a service account rather than a person.")
@click.option("--email", help="Contact address.")
@json_option
def users_create(name: str, team: str, service: bool, email: str | None, as_json: bool) -> None:
    """Create the user NAME in a team."""
    body = {"name": name, "team": team, "kind": "service" if service else "user"}
    if email is not None:
        body["email"] = email
    with _client() as api:
        user = api.post("/users", body)
    if as_json:
        _print_json(user)
    else:
        kind = "service account" if service else "user"
        click.echo(f"Created {kind} {user['name']} ({user['id']}) in team {user['team']}.")


@users.command("list")
@click.option("--team", help="Only this team (name or id).")
@json_option
def users_list(team: str | None, as_json: bool) -> None:
    """List users and service accounts."""
    with _client() as api:
        found = api.get("/users", {"team": team})
    if as_json:
        _print_json(found)
        return
    rows = ((u["name"], u["team"], u["kind"], u["email"], u["id"]) for u in found)
    _table("Users", ["name", "team", "kind", "email", "id"], rows)


# -- keys ------------------------------------------------------------------------


def _check_expires(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _DURATION.match(value):
        raise click.BadParameter("use a number and a unit (s, m, h, d, w), e.g. 12h or 7d")
    return value


@click.group()
def keys() -> None:
    """Create, list and revoke keys."""


@keys.command("create")
@click.option("--team", required=True, help="The owning team (name or id).")
@click.option("--user", required=True, help="The owning user or service account (name or id).")
@click.option("--name", help="A label to recognise the key by.")
@click.option("--models", help="Comma-separated models the key may call (default: all).")
@click.option("--expires", callback=_check_expires, help="Lifetime, e.g. 12h, 7d or 2w.")
@click.option(
    "--role",
    type=click.Choice(["virtual", "team-admin"]),
    default="virtual",
    show_default=True,
    help="team-admin keys may also manage their team.",
)
@click.option("--json", "as_json", is_flag=True, help='Print only {"id": ..., "key": ...}.')
def keys_create(
    team: str,
    user: str,
    name: str | None,
    models: str | None,
    expires: str | None,
    role: str,
    as_json: bool,
) -> None:
    """Create a key and print it. It is shown this once: store it now."""
    body: dict[str, Any] = {"team": team, "user": user, "role": role.replace("-", "_")}
    if name is not None:
        body["name"] = name
    if models is not None:
        body["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if expires is not None:
        body["expires_in"] = expires
    with _client() as api:
        key = api.post("/keys", body)
    if as_json:
        _print_json({"id": key["id"], "key": key["key"]})
        return
    label = f" {key['name']!r}" if key["name"] else ""
    allowed = ", ".join(key["allowed_models"]) if key["allowed_models"] is not None else "all"
    click.echo(
        f"Created {key['role']} key {key['id']}{label} for {key['user']} in team {key['team']} "
        f"(models: {allowed}; expires: {_when(key['expires_at']) or 'never'}).",
        err=True,
    )
    click.echo(key["key"])
    click.echo("Store it now: Corral keeps only a hash and cannot show it again.", err=True)


@keys.command("list")
@click.option("--team", help="Only keys of this team (name or id).")
@click.option("--user", help="Only keys of this user (name or id).")
@json_option
def keys_list(team: str | None, user: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    with _client() as api:
        found = api.get("/keys", {"team": team, "user": user})
    if as_json:
        _print_json(found)
        return
    columns = ["id", "prefix", "name", "team", "user", "role", "models", "expires", "status"]
    _table("Keys", columns, (_key_row(k) for k in found))


def _key_row(key: dict[str, Any]) -> list[Any]:
    models = key["allowed_models"]
    status = f"revoked {_when(key['revoked_at'])}" if key["revoked_at"] else "active"
    return [
        key["id"],
        key["prefix"] if key["prefix"].startswith("(") else f"{key['prefix']}…",
        key["name"],
        key["team"],
        key["user"],
        key["role"],
        "all" if models is None else ", ".join(models) or "none",
        _when(key["expires_at"]) or "never",
        status,
    ]


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID; every Corral process refuses it within a second."""
    with _client() as api:
        key = api.post(f"/keys/{_path(key_id)}/revoke")
    if as_json:
        _print_json(key)
    else:
        click.echo(f"Revoked key {key['id']}{' (' + key['name'] + ')' if key['name'] else ''}.")


# -- usage, models, providers ------------------------------------------------------


_DIMENSIONS = ("team", "user", "key", "model", "provider", "day", "hour")


def _check_by(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parts = [p.strip() for p in value.split(",")]
    unknown = [p for p in parts if p not in _DIMENSIONS]
    if unknown or not value.strip():
        raise click.BadParameter(
            f"{unknown[0] if unknown else value!r} is not one of {', '.join(_DIMENSIONS)}; "
            "combine them with commas, e.g. team,model,day"
        )
    return ",".join(dict.fromkeys(parts))


@click.command()
@click.option(
    "--by",
    default="team",
    show_default=True,
    callback=_check_by,
    help=f"What to group by: one or more of {', '.join(_DIMENSIONS)}, comma-separated "
    "(team,model,day).",
)
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Window start: a duration back from now (24h, 7d), 'all', or an ISO-8601 time.",
)
@click.option(
    "--until", help="Window end (excluded): now (default), a duration back, or an ISO time."
)
@click.option("--team", help="Only this team (name or id).")
@json_option
def usage(by: str, since: str, until: str | None, team: str | None, as_json: bool) -> None:
    """Requests, errors, tokens, cost and latency of model calls, grouped by any of team,
    user, key, model, provider, day and hour; then the budgets (of the team, with --team)
    and what is left of them."""
    with _client() as api:
        report = api.get("/usage", {"by": by, "since": since, "until": until, "team": team})
        if not as_json:
            budgets = api.get("/budgets", {"team": team})["budgets"]
    rows: list[dict[str, Any]] = report["rows"]
    if as_json:
        _print_json(rows)
        return
    dims: list[str] = report["dimensions"]
    columns = [*dims, "requests", "errors", "input", "cached", "cache write", "output"]
    columns += ["reasoning", "cost", "p50", "p95", "p99", "reported"]
    lines = [_usage_line(r, dims) for r in rows]
    if len(rows) > 1:
        requests, *tokens = (
            sum(r[f] for r in rows) for f in ("requests", *_TOKENS, "reasoning_tokens")
        )
        errors = _errors(sum(r["errors"] for r in rows), requests)
        cost = _usd(sum(r["cost_usd"] for r in rows))
        blank = [None] * (len(dims) - 1)
        lines.append(["total", *blank, requests, errors, *tokens, cost, None, None, None, None])
    window = f"since {_when(report['since'])}"
    if until is not None:
        window += f" until {_when(report['until'])}"
    _table(f"Usage by {', '.join(dims)} {window}", columns, lines)
    budget_table(budgets)


def _usage_line(row: dict[str, Any], dims: list[str]) -> list[Any]:
    hour = row.get("hour")
    labels = [_when(hour) if d == "hour" and hour else row.get(d) for d in dims]
    latency = [_ms(row[f"latency_{q}_ms"]) for q in ("p50", "p95", "p99")]
    return [
        *labels,
        row["requests"],
        _errors(row["errors"], row["requests"]),
        *(row[t] for t in _TOKENS),
        row["reasoning_tokens"],
        _usd(row["cost_usd"]),
        *latency,
        _reported(row.get("reported") or {}),
    ]


def _reported(r: dict[str, Any]) -> str | None:
    """What agents reported with no gateway record: shown beside the spend, never in it."""
    calls = int(r.get("requests") or 0)
    return f"{calls} call{'' if calls == 1 else 's'}, {_usd(r['cost_usd'])}" if calls else None


def _errors(errors: int, requests: int) -> str:
    return f"{errors} ({errors / requests:.1%})" if errors and requests else str(errors)


def _ms(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


@click.group()
def models() -> None:
    """The model catalog."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """List models with their provider, context window and prices (USD per 1M tokens)."""
    with _client() as api:
        found = api.get("/models")
    if as_json:
        _print_json(found)
        return
    columns = ["name", "provider", "upstream", "context", "input", "cached", "cache write"]
    columns += ["output", "reasoning"]
    prices = ("input", "cached_input", "cache_write", "output", "reasoning")
    rows = (
        [m["name"], m["provider"], m["upstream_model"], f"{m['context_window']:,}"]
        + [f"{m['prices'][p]:g}" for p in prices]
        for m in found
    )
    version = found[0]["price_version"] if found else "-"
    _table(f"Models (prices in USD per 1M tokens; price table {version})", columns, rows)


@click.group()
def providers() -> None:
    """Upstream providers."""


@providers.command("list")
@json_option
def providers_list(as_json: bool) -> None:
    """List providers and whether the variable holding each one's secret is set."""
    with _client() as api:
        found = api.get("/providers")
    if as_json:
        _print_json(found)
        return
    rows = (
        [p["name"], p["kind"], p["base_url"], ", ".join(p["protocols"]), p["api_key_env"],
         "yes" if p["api_key_set"] else ("no" if p["api_key_env"] else "-")]
        for p in found
    )  # fmt: skip
    _table("Providers", ["name", "kind", "base url", "protocols", "secret variable", "set"], rows)


def _path(segment: str) -> str:
    """A name or id made safe to put in a URL path."""
    if not segment.strip(". "):
        raise CLIError(f"invalid name or id {segment!r}")
    return quote(segment, safe="")
