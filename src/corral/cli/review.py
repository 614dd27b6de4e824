"""Review commands: ``corral review list|show|approve|reject|comment|request-changes`` and
``corral ledger``.

They drive ``/api/v1/reviews`` and ``/api/v1/ledger`` of a running Corral with the key in
``CORRAL_KEY`` (else ``CORRAL_ADMIN_KEY``). A run's key is refused by all of them: no agent
approves a change. Every command accepts ``--json``, which prints the API's answer and
nothing else.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.markup import escape

from corral.cli.admin import _console, _path, _print_json, _table, json_option
from corral.cli.client import CorralClient
from corral.cli.runs import _ago, _clock, _epoch

GROUPS = ("team", "agent", "owner")
"""``corral.runs.ledger.GROUPS`` (not imported: the CLI loads no server module)."""


def _client() -> CorralClient:
    return CorralClient.from_env()


@click.group()
def review() -> None:
    """Review runs' changes: list what waits for review, read a change with its checks,
    owners, evidence and reviewer agents' verdicts, approve, reject, comment or ask for
    changes."""


@review.command("list")
@click.option("--mine", is_flag=True, help="Only my runs' and those I am a code owner of.")
@click.option("--team", help="Only this team's (name or id).")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@json_option
def list_reviews(mine: bool, team: str | None, limit: int, as_json: bool) -> None:
    """List open reviews (runs awaiting review or approved), newest first."""
    params = {"team": team, "mine": "true" if mine else None, "limit": str(limit)}
    with _client() as api:
        found: dict[str, Any] = api.get("/reviews", params)
    if as_json:
        _print_json(found)
        return
    now = time.time()
    rows = (
        [r["run_id"], r["state"], r["team"], r["owner"], r["agent"], f"r{r['revision']}",
         _size(r), f"{r['approvals']}/{r['gate']['approvals']}", _missing(r),
         _ago(now - _epoch(r["revisions"][-1]["created_at"]))]
        for r in found["reviews"]
    )  # fmt: skip
    columns = ["run", "state", "team", "owner", "agent", "rev", "change", "approvals", "needs",
               "since"]  # fmt: skip
    _table("Reviews", columns, rows)


def _size(review: dict[str, Any]) -> str:
    diff = review["revisions"][-1]["diff"] if review["revisions"] else {}
    return f"{diff.get('files', 0)} files +{diff.get('added', 0)} -{diff.get('removed', 0)}"


def _missing(review: dict[str, Any]) -> str:
    missing: list[str] = review["missing"]
    if not missing:
        return "nothing: may be delivered"
    first = missing[0] if len(missing[0]) <= 60 else missing[0][:59] + "…"
    return first + (f" (+{len(missing) - 1})" if len(missing) > 1 else "")


@review.command("show")
@click.argument("run_id", metavar="RUN")
@click.option("--no-diff", is_flag=True, help="Leave the diff out.")
@json_option
def show(run_id: str, no_diff: bool, as_json: bool) -> None:
    """Print a review: the gate and what it still needs, the checks, the code owners and who
    is still required, the reviewer agents' verdicts and cost, the evidence check of the
    agent's report, comments and history, the artifacts, then the diff."""
    with _client() as api:
        found: dict[str, Any] = api.get(f"/reviews/{_path(run_id)}")
    if as_json:
        _print_json(found)
        return
    print_review(found, diff=not no_diff)


def print_review(r: dict[str, Any], *, diff: bool = True) -> None:
    console = _console()
    line = console.print
    head = [
        ("review", r["id"]), ("run", f"{r['run_id']} (revision {r['revision']})"),
        ("state", r["state"]), ("team", r["team"]), ("owner", r["owner"]),
        ("requester", r["requester"]), ("agent", r["agent"]), ("repo", r["repo"]),
        ("task", (r["task"].strip().splitlines() or [""])[0][:100]),
        ("pending", r["pending_run"]),
    ]  # fmt: skip
    for name, value in head:
        if value:
            line(f"[bold]{name:>10}[/bold]  {escape(str(value))}", highlight=False)
    line()
    if r["passed"]:
        line("[green]The gate passes: the run may be delivered.[/green]")
    else:
        line("[bold]The gate needs:[/bold]")
        for missing in r["missing"]:
            line(f"  - {escape(missing)}", highlight=False)
    gate = r["gate"]
    rules = f" (rules: {', '.join(gate['rules'])})" if gate["rules"] else ""
    line(f"\n[bold]Approvals[/bold] {r['approvals']} of {gate['approvals']}{rules}")
    _checks(r)
    _owners(r)
    _reviewers(r)
    _evidence(r)
    _history(r)
    if r["artifacts"]:
        line("\n[bold]Artifacts[/bold] " + escape(", ".join(r["artifacts"])))
    for shot in r.get("screenshots", []):
        line(f"[bold]Screenshot[/bold] {escape(shot['name'])}: {escape(shot['url'])}",
             highlight=False)  # fmt: skip
    if diff and r.get("diff"):
        line()
        sys.stdout.write(r["diff"])


def _checks(r: dict[str, Any]) -> None:
    rows = (
        [c["name"], "pass" if c["passed"] else ("FAIL" if c["blocking"] else "flag"),
         escape(c["message"])]
        for c in r["checks"]
    )  # fmt: skip
    _table("Checks", ["check", "result", "message"], rows)


def _owners(r: dict[str, Any]) -> None:
    owners = r["codeowners"]
    console = _console()
    if not owners.get("enabled", True):
        return
    where = owners.get("file") or "no CODEOWNERS file"
    console.print(f"\n[bold]Code owners[/bold] ({escape(where)})", highlight=False)
    for entry in r["owners"]:
        by = ", ".join(entry["approved_by"]) or "[bold]needed[/bold]"
        who = escape(" ".join(entry["owners"]))
        console.print(f"  {escape(entry['path'])}: {who} — {by}", highlight=False)
    for problem in owners.get("problems", []):
        console.print(f"  [yellow]problem[/yellow] {escape(problem['message'])}", highlight=False)


def _reviewers(r: dict[str, Any]) -> None:
    if not r["reviewers"]:
        return
    rows = (
        [v["reviewer"], f"r{v['revision']}", v["verdict"], v["identity"] or "", v["run_id"] or "",
         f"${v['cost_usd']:.4f}", escape((v["summary"] or "")[:80])]
        for v in r["reviewers"]
    )  # fmt: skip
    columns = ["reviewer", "rev", "verdict", "as", "run", "cost", "summary"]
    _table(f"Reviewer agents (cost ${r['reviewers_cost_usd']:.4f}, on this review)", columns,
           rows)  # fmt: skip


def _evidence(r: dict[str, Any]) -> None:
    proof = r["evidence"]
    if not proof:
        return
    steps = f"{proof['steps']} tool steps" if proof["trajectory"] else "no trajectory reported"
    rows = (
        [c["verdict"], c["kind"], escape(c["text"][:80]), escape(c["reason"]),
         " ".join(c["span_ids"][:3])]
        for c in proof["claims"]
    )  # fmt: skip
    _table(f"Evidence ({steps})", ["verdict", "claim", "text", "why", "spans"], rows)


def _history(r: dict[str, Any]) -> None:
    rows = (
        [_clock(a["at"]), a["actor_name"], a["action"] + (" (dismissed)" if a["dismissed"] else ""),
         f"r{a['revision']}" if a["revision"] else "",
         escape(f"{a['path']}:{a['line'] or ''} " if a["path"] else "")
         + escape((a["comment"] or "")[:100])]
        for a in r["actions"]
    )  # fmt: skip
    _table("History", ["at", "who", "did", "rev", "comment"], rows)


def _act(path: str, what: str, body: dict[str, Any] | None, run_id: str, as_json: bool) -> None:
    with _client() as api:
        found: dict[str, Any] = api.post(f"/reviews/{_path(run_id)}/{path}", body)
    if as_json:
        _print_json(found)
        return
    shown = found.get("review", found)
    click.echo(f"{shown['run_id']} {what}: the review is {shown['state']}.")
    if "follow_up" in found:
        click.echo(f"  run {found['follow_up']} is queued to make the changes.")
    for missing in shown["missing"]:
        click.echo(f"  needs: {missing}")


@review.command("approve")
@click.argument("run_id", metavar="RUN")
@click.option("--comment", help="Why (kept in the history).")
@json_option
def approve(run_id: str, comment: str | None, as_json: bool) -> None:
    """Approve the change under review (the run's requester and owner may, but do not
    count)."""
    _act("approve", "approved", {"comment": comment}, run_id, as_json)


@review.command("reject")
@click.argument("run_id", metavar="RUN")
@click.option("--comment", help="Why (kept in the history).")
@json_option
def reject(run_id: str, comment: str | None, as_json: bool) -> None:
    """Reject the change: the run ends rejected and is never delivered."""
    _act("reject", "rejected", {"comment": comment}, run_id, as_json)


@review.command("comment")
@click.argument("run_id", metavar="RUN")
@click.argument("text")
@click.option("--path", help="A path the change touches.")
@click.option("--line", type=click.IntRange(1), help="A line of it (in the new file).")
@json_option
def comment(run_id: str, text: str, path: str | None, line: int | None, as_json: bool) -> None:
    """Comment on the change, or on a line of it; "request-changes" hands the comments to
    the follow-up run."""
    body = {"text": text, "path": path, "line": line}
    _act("comments", "commented", body, run_id, as_json)


@review.command("request-changes")
@click.argument("run_id", metavar="RUN")
@click.option("--comment", required=True, help="What to change.")
@json_option
def request_changes(run_id: str, comment: str, as_json: bool) -> None:
    """Ask for changes: a follow-up run continues the change with your comments; its diff
    replaces the change under review and dismisses the approvals given so far."""
    _act("request-changes", "changes requested", {"comment": comment}, run_id, as_json)


# -- corral ledger ------------------------------------------------------------------------------


@click.command()
@click.option(
    "--by", default="team", show_default=True,
    help=f"Group by any of {', '.join(GROUPS)}, comma-separated.",
)  # fmt: skip
@click.option("--since", help="Runs created since: an ISO date or time (2026-12-01).")
@click.option("--team", help="Only this team (name or id).")
@json_option
def ledger(by: str, since: str | None, team: str | None, as_json: bool) -> None:
    """The autonomy ledger: runs, human interventions per run, and the autonomy rate (runs
    delivered with no human action but the final approval)."""
    with _client() as api:
        found: dict[str, Any] = api.get("/ledger", {"by": by, "since": since, "team": team})
    if as_json:
        _print_json(found)
        return
    groups = found["by"]
    rows = (
        [*(row["group"].get(g, "") for g in groups), row["runs"], row["delivered"],
         row["interventions"], f"{row['interventions_per_run']:.2f}", row["autonomous"],
         f"{row['autonomy_rate']:.0%}",
         ", ".join(f"{k} {v}" for k, v in row["actions"].items())]
        for row in found["rows"]
    )  # fmt: skip
    columns = [*groups, "runs", "delivered", "interventions", "per run", "autonomous",
               "autonomy", "human actions"]  # fmt: skip
    _table("Autonomy ledger", columns, rows)
