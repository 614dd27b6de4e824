"""Guards commands: ``corral incidents list|show|ack|release|kill`` and ``corral guards
show|kill-switch``.

They drive ``/api/v1/incidents`` and ``/api/v1/guards`` of a running Corral with the key in
``CORRAL_KEY`` (else ``CORRAL_ADMIN_KEY``): a team's keys read the team's incidents; the
incident's owner, the team's admin and the organisation admin acknowledge, release or kill
one; a team's admin switches its team's traffic off and on, the organisation admin any
team's or the whole organisation's. Every command accepts ``--json``, which prints the
API's answer and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from corral.cli.admin import _console, _path, _print_json, _table, json_option
from corral.cli.client import CorralClient
from corral.cli.runs import _ago, _clock, _epoch

STATES = ("open", "acknowledged", "released", "killed")
"""``corral.guards.incidents.STATES`` (not imported: the CLI loads no server module)."""
ACT_TIMEOUT = 120.0
"""A release or kill answers once the run is thawed or stopped: up to its grace and more."""
_SUMMARY_WIDTH = 60


def _client() -> CorralClient:
    return CorralClient.from_env()


def _short(text: str | None, width: int = _SUMMARY_WIDTH) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


# -- corral incidents -------------------------------------------------------------------------


@click.group()
def incidents() -> None:
    """List the incidents guards opened, read their evidence and timeline, and acknowledge,
    release or kill them."""


@incidents.command("list")
@click.option("--team", help="Only this team's incidents (name or id).")
@click.option("--state", type=click.Choice(STATES), help="Only incidents in this state.")
@click.option("--run", "run_id", metavar="RUN", help="Only this run's incidents.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most."
)
@click.option("--before", metavar="ID", help="The page after this incident (as listed last).")
@json_option
def list_incidents(
    team: str | None,
    state: str | None,
    run_id: str | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """List incidents, newest first."""
    params = {"team": team, "state": state, "run": run_id, "limit": str(limit), "before": before}
    with _client() as api:
        found: dict[str, Any] = api.get("/incidents", params)
    if as_json:
        _print_json(found)
        return
    now = time.time()
    columns = ["id", "state", "action", "detector", "team", "owner", "about", "opened", "summary"]
    rows = (
        [i["id"], i["state"], i["action"], i["detector"], i["team"] or i["team_id"],
         i["owner"] or i["owner_id"], _about(i), _ago(now - _epoch(i["opened_at"])),
         _short(i["summary"])]
        for i in found["incidents"]
    )  # fmt: skip
    _table("Incidents", columns, rows)
    if found["next_before"]:
        click.echo(f"More: corral incidents list --before {found['next_before']}", err=True)


def _about(incident: dict[str, Any]) -> str:
    """``run run_…`` or ``key key_…``: whose behaviour it is about."""
    if incident["subject"] == "run":
        return f"run {incident['run_id']}"
    return f"key {incident['key_id']}"


@incidents.command("show")
@click.argument("incident_id", metavar="ID")
@json_option
def show(incident_id: str, as_json: bool) -> None:
    """Print an incident: who owns it, what it is about, the evidence of each firing, the
    actions taken and its timeline."""
    with _client() as api:
        incident: dict[str, Any] = api.get(f"/incidents/{_path(incident_id)}")
    if as_json:
        _print_json(incident)
        return
    print_incident(incident)


def print_incident(incident: dict[str, Any]) -> None:
    console = _console()
    for name, value in _fields(incident):
        console.print(f"[bold]{name:>10}[/bold]  {escape(value)}", highlight=False)
    evidence = Table(title="Evidence", title_justify="left", box=None, pad_edge=False)
    for column in ("at", "detector", "action", "found", "numbers", "spans"):
        evidence.add_column(column)
    for e in incident["evidence"]:
        numbers = ", ".join(f"{k}={v}" for k, v in e["numbers"].items())
        evidence.add_row(
            _clock(e["at"]), e["detector"], e["action"], escape(e["message"]), escape(numbers),
            escape(" ".join(e["span_ids"])),
        )  # fmt: skip
    console.print()
    if incident["evidence_dropped"]:
        console.print(f"({incident['evidence_dropped']} older firings are no longer kept)")
    console.print(evidence)
    actions = [e for e in incident["events"] if e["kind"] == "action"]
    if actions:
        console.print()
        console.print("[bold]Actions taken[/bold]")
        for e in actions:
            console.print(f"  {_clock(e['at'])}  {escape(e['detail'] or '')}", highlight=False)
    timeline = Table(title="Timeline", title_justify="left", box=None, pad_edge=False)
    for column in ("at", "actor", "what", "detail"):
        timeline.add_column(column)
    for e in incident["events"]:
        timeline.add_row(
            _clock(e["at"]), escape(e["actor_name"]), e["kind"], escape(e["detail"] or "")
        )
    console.print()
    console.print(timeline)


def _fields(incident: dict[str, Any]) -> list[tuple[str, str]]:
    """The incident's fields as (label, text), skipping what is unset."""
    team = incident["team"] or incident["team_id"]
    owner = incident["owner"] or incident["owner_id"]
    shown: list[tuple[str, Any]] = [
        ("incident", incident["id"]), ("state", incident["state"]),
        ("action", f"{incident['action']} (the strongest taken)"),
        ("detector", incident["detector"]), ("summary", incident["summary"]),
        ("about", _about(incident)), ("team", team), ("owner", owner),
        ("opened", _clock(incident["opened_at"])), ("updated", _clock(incident["updated_at"])),
        ("closed", _clock(incident["closed_at"])),
    ]  # fmt: skip
    if incident["subject"] == "run":
        shown.insert(6, ("run key", incident["key_id"]))
    return [(label, str(value)) for label, value in shown if value not in (None, "")]


def _act(path: str, done: str) -> Callable[..., None]:
    """The body of ``ack``, ``release`` or ``kill``: POST to the incident's ``path``."""

    @click.argument("incident_id", metavar="ID")
    @click.option("--comment", help="Why: written in the incident's timeline.")
    @json_option
    def command(incident_id: str, comment: str | None, as_json: bool) -> None:
        body = {"comment": comment} if comment is not None else None
        with _client() as api:
            incident: dict[str, Any] = api.request(
                "POST", f"/incidents/{_path(incident_id)}/{path}", json=body, timeout=ACT_TIMEOUT
            )
        if as_json:
            _print_json(incident)
            return
        click.echo(f"{incident['id']} {done}: {incident['state']}.")
        last = [e for e in incident["events"] if e["kind"] == "action"]
        if last and path != "ack":
            click.echo(f"  {last[-1]['detail']}")

    return command


incidents.command("ack", help="Acknowledge an incident: someone is on it (nothing else changes).")(
    _act("ack", "acknowledged")
)
incidents.command(
    "release",
    help="Release an incident: thaw and resume its run, restore its key; the incident closes.",
)(_act("release", "released"))
incidents.command(
    "kill",
    help="Kill an incident's run (it ends failed, naming the incident), or keep its key "
    "suspended for good; the incident closes.",
)(_act("kill", "killed"))


# -- corral guards ------------------------------------------------------------------------------


@click.group()
def guards() -> None:
    """Show the detectors and thresholds that apply to a team; switch a team's or the whole
    organisation's agent traffic off and on."""


@guards.command("show")
@click.option(
    "--team",
    help="The team whose thresholds to show (default: the key's team; with the organisation "
    "admin key, the defaults).",
)
@json_option
def guards_show(team: str | None, as_json: bool) -> None:
    """Print every detector, its thresholds (marking those the team's settings override)
    and its escalation ladder, then the kill switches that are on."""
    with _client() as api:
        found: dict[str, Any] = api.get("/guards", {"team": team})
        switches: list[dict[str, Any]] = api.get("/guards/kill-switches")["switches"]
    if as_json:
        _print_json({**found, "switches": switches})
        return
    title = f"Detectors for team {found['team']}" if found["team"] else "Detectors (defaults)"
    rows = (
        [d["name"], "on" if d["enabled"] else "off", ", ".join(d["subjects"]),
         _thresholds(d), " → ".join(d["actions"]), _short(d["summary"])]
        for d in found["detectors"]
    )  # fmt: skip
    _table(title, ["detector", "enabled", "watches", "thresholds", "actions", "summary"], rows)
    if any(d["overridden"] for d in found["detectors"]):
        click.echo("* set in the [guards] settings (for everyone, or for this team)")
    _switch_table(switches)


def _thresholds(detector: dict[str, Any]) -> str:
    marked = set(detector["overridden"])
    return ", ".join(
        f"{name}={value:g}{'*' if name in marked else ''}"
        for name, value in detector["thresholds"].items()
    )


def _switch_table(switches: list[dict[str, Any]]) -> None:
    rows = (
        [s["team"] or s["team_id"] or "the organisation", _clock(s["on_at"]), s["actor"],
         s["comment"]]
        for s in switches
    )  # fmt: skip
    _table("Kill switches on", ["stops", "since", "by", "comment"], rows)


@guards.command("kill-switch")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--team", help="The team to stop or restart (default: the whole organisation).")
@click.option("--comment", help="Why: kept with the switch.")
@json_option
def kill_switch(state: str, team: str | None, comment: str | None, as_json: bool) -> None:
    """Stop a team's (--team) or the whole organisation's agent traffic (on), or let it
    flow again (off)."""
    body = {"on": state == "on", "team": team, "comment": comment}
    with _client() as api:
        answer: dict[str, Any] = api.request(
            "POST", "/guards/kill-switch", json=body, timeout=ACT_TIMEOUT
        )
    if as_json:
        _print_json(answer)
        return
    who = f"team {team}" if team else "the whole organisation"
    click.echo(
        f"Agent traffic of {who} is stopped."
        if state == "on"
        else f"Agent traffic of {who} flows again (unless another switch stops it)."
    )
    _switch_table(answer["switches"])
