"""Agent run commands: ``corral runs submit|list|show|logs|cancel|artifacts|deliver``.

They drive ``/api/v1/runs`` of a running Corral with the key in ``CORRAL_KEY``
(else ``CORRAL_ADMIN_KEY``): a person's key acts on the runs they own or asked
for, a team admin's on the team's runs, the org admin key on every run (it
names the owner with ``--owner``). ``submit`` prints only the run id on
stdout, so ``RUN=$(corral runs submit ...)`` works; progress and outcomes go to
stderr. Every command but ``logs`` accepts ``--json``, which prints the API's
answer and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from corral.cli.admin import _console, _path, _print_json, _table, _usd, json_option
from corral.cli.client import CLIError, CorralClient
from corral.cli.traces import duration

F = TypeVar("F", bound=Callable[..., Any])

ACTIVE = frozenset({"queued", "admitted", "running"})
"""States a run has not left yet (``corral.runs.model.ACTIVE``; not imported, so the CLI
does not load the runs package)."""
POLL_SECONDS = 0.25
"""How often ``--wait`` and ``logs --follow`` ask; a local server answers in a millisecond."""
CANCEL_TIMEOUT = 120.0
"""The server answers a cancel once the run has stopped: up to its grace period and then some."""
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_REASON_WIDTH = 60


def _client() -> CorralClient:
    return CorralClient.from_env()


def _run_path(run_id: str, *rest: str) -> str:
    return "/".join([f"/runs/{_path(run_id)}", *rest])


@click.group()
def runs() -> None:
    """Submit agent runs, follow them, read what they left and deliver their change."""


# -- submit -----------------------------------------------------------------------------


def _submit_options(func: F) -> F:
    options = [
        click.option("--team", help="The team that pays (default: the key's team)."),
        click.option("--agent", required=True, metavar="PROFILE",
                     help="Agent profile: corral, claude-code, codex, aider, gemini or command."),
        click.option("--repo", required=True, metavar="PATH_OR_URL",
                     help="A git repository: a local path (made absolute) or a URL."),
        click.option("--ref", help="Branch, tag or commit to start from (default: HEAD)."),
        click.option("--task", help="What the agent is asked to do."),
        click.option("--task-file", type=click.File("r"), help="Read the task from a file."),
        click.option("--command", help="The command line of the `command` profile."),
        click.option("--model", help="The model the agent is given."),
        click.option("--allow-model", "allow_models", multiple=True, metavar="MODEL",
                     help="A further model the run's key may call (repeat)."),
        click.option("--priority", type=click.Choice(["low", "normal", "high"]),
                     default="normal", show_default=True, help="Place in the queue."),
        click.option("--budget-usd", type=float, help="The run's spending cap, USD."),
        click.option("--timeout", help="Wall-clock limit: seconds, or 30m, 2h..."),
        click.option("--owner", metavar="USER",
                     help="Who owns the run (default: the key's user; needed with the admin key)."),
        click.option("--handoff-from", metavar="RUN",
                     help="A finished run whose artifacts are mounted at /handoff."),
        click.option("--wait", is_flag=True,
                     help="Wait for the run to end; exit 0 only if it awaits review."),
        json_option,
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@runs.command("submit")
@_submit_options
def submit(
    task: str | None, task_file: TextIO | None, repo: str, wait: bool, as_json: bool, **fields: Any
) -> None:
    """Queue an agent run and print its id; with --wait, follow it until it ends."""
    if (task is None) == (task_file is None):
        raise click.UsageError("give the task with exactly one of --task TEXT or --task-file FILE")
    body = {k: v for k, v in fields.items() if v not in (None, ())}
    body.update(task=task_file.read() if task_file is not None else task, repo=_repo(repo))
    if fields["timeout"] is not None and _NUMBER.match(fields["timeout"]):
        body["timeout"] = float(fields["timeout"])  # the server takes bare seconds as a number
    body["allow_models"] = list(fields["allow_models"])
    with _client() as api:
        run: dict[str, Any] = api.post("/runs", body)
        if not as_json:
            click.echo(run["id"])
        if not wait:
            if as_json:
                _print_json(run)
            return
        run = _wait(api, run)
    if as_json:
        _print_json(run)
    click.echo(f"{run['id']} {_state_line(run)}", err=True)
    click.get_current_context().exit(0 if run["state"] == "awaiting_review" else 1)


def _repo(repo: str) -> str:
    """A local path made absolute (the server resolves paths against its own folder)."""
    if "://" in repo or repo.startswith("git@"):
        return repo
    return os.path.abspath(os.path.expanduser(repo))


def _wait(api: CorralClient, run: dict[str, Any]) -> dict[str, Any]:
    """Poll the run until it leaves the active states, telling each step of its history
    on the way on stderr (from the history, so a step between two polls is not missed)."""
    told = 0
    try:
        while True:
            for event in run["events"][told:]:
                if event["to_state"] in ACTIVE:
                    reason = f": {event['reason']}" if event["reason"] else ""
                    click.echo(f"{run['id']} {event['to_state']}{reason}", err=True)
            told = len(run["events"])
            if run["state"] not in ACTIVE:
                return run
            time.sleep(POLL_SECONDS)
            run = api.get(_run_path(run["id"]))
    except KeyboardInterrupt:
        raise CLIError(
            f"stopped waiting; run {run['id']} goes on (`corral runs cancel {run['id']}` stops it)"
        ) from None


def _state_line(run: dict[str, Any]) -> str:
    state = run["state"].replace("_", " ")
    return f"{state}: {run['reason']}" if run.get("reason") else state


# -- list and show ----------------------------------------------------------------------


@runs.command("list")
@click.option("--team", help="Only this team's runs (name or id).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["queued", "admitted", "running", "awaiting_review", "approved",
                       "rejected", "delivered", "failed", "cancelled", "sequestered"]),
    help="Only runs in this state (repeat for several).",
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most."
)
@json_option
def list_runs(team: str | None, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    params: dict[str, Any] = {"team": team, "limit": str(limit)}
    if states:
        params["state"] = list(states)
    with _client() as api:
        found: dict[str, Any] = api.get("/runs", params)
    if as_json:
        _print_json(found)
        return
    now = time.time()
    columns = ["id", "state", "agent", "team", "owner", "created", "took", "reason"]
    rows = (
        [r["id"], r["state"], r["agent"], r["team"], r["owner"],
         _ago(now - _epoch(r["created_at"])), _took(r, now), _short(r["reason"])]
        for r in found["runs"]
    )  # fmt: skip
    _table("Runs", columns, rows)


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@json_option
def show(run_id: str, as_json: bool) -> None:
    """Print a run: its fields, history, LLM calls and cost, trace and artifacts.
    --json prints the run as the API answers it, with its artifacts added."""
    with _client() as api:
        run: dict[str, Any] = api.get(_run_path(run_id))
        artifacts: list[dict[str, Any]] = api.get(_run_path(run_id, "artifacts"))["artifacts"]
    if as_json:
        _print_json({**run, "artifacts": artifacts})
        return
    console = _console()
    for name, value in _fields(run):
        console.print(f"[bold]{name:>14}[/bold]  {escape(value)}", highlight=False)
    history = Table(title="History", title_justify="left", box=None, pad_edge=False)
    for column in ("at", "change", "actor", "reason"):
        history.add_column(column)
    for e in run["events"]:
        change = f"{e['from_state'] or '-'} → {e['to_state']}"
        history.add_row(
            _clock(e["at"]),
            change,
            escape(e.get("actor_name") or e["actor"]),
            escape(e["reason"] or ""),
        )
    console.print()
    console.print(history)
    console.print()
    _table("Artifacts", ["path", "size"], ([a["path"], f"{a['size']:,}"] for a in artifacts))


def _fields(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's fields as (label, text), skipping what is unset."""
    now = time.time()
    command = shlex.join(run["command"]) if run["command"] else None
    budget = _usd(run["budget_usd"]) if run["budget_usd"] is not None else None
    shown: list[tuple[str, Any]] = [
        ("run", run["id"]), ("state", run["state"]), ("reason", run["reason"]),
        ("team", run["team"]), ("owner", run["owner"]), ("requester", run["requester"]),
        ("agent", run["agent"]), ("repo", run["repo"]), ("ref", run["ref"]),
        ("base commit", run["base_commit"]), ("command", command), ("model", run["model"]),
        ("models", ", ".join(run["allowed_models"])), ("priority", run["priority"]),
        ("budget", budget), ("timeout", duration(run["timeout_s"] * 1000)),
        ("handoff from", run["handoff_from"]), ("sandbox", run["sandbox"]),
        ("exit code", run["exit_code"]), ("created", _clock(run["created_at"])),
        ("started", _clock(run["started_at"])), ("ended", _clock(run["ended_at"])),
        ("took", _took(run, now)), ("delivered to", run["delivered_to"]),
        ("cancel asked", run["cancel_requested"]),
        ("LLM calls", f"{run['llm_calls']:,}, {_usd(run['cost_usd'])}"),
        ("trace", f"{run['trace_id']}  (corral trace {run['trace_id']})"),
        ("task", run["task"].strip()),
    ]  # fmt: skip
    return [(label, str(value)) for label, value in shown if value not in (None, "")]


def _epoch(iso: str) -> float:
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _clock(iso: str | None) -> str | None:
    """An API time as ``2025-01-31 12:34:56Z``."""
    return None if iso is None else iso[:19].replace("T", " ") + "Z"


def _ago(seconds: float) -> str:
    return duration(max(0.0, seconds) * 1000) + " ago"


def _took(run: dict[str, Any], now: float) -> str | None:
    """How long the run ran (so far, while it runs); None before it started."""
    if run["started_at"] is None:
        return None
    end = _epoch(run["ended_at"]) if run["ended_at"] else now
    return duration(max(0.0, end - _epoch(run["started_at"])) * 1000)


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= _REASON_WIDTH:
        return text
    return text[: _REASON_WIDTH - 1] + "…"


# -- logs and cancel --------------------------------------------------------------------


@runs.command("logs")
@click.argument("run_id", metavar="RUN")
@click.option("--stderr", "use_stderr", is_flag=True, help="The agent's stderr, not its stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what comes until the run ends.")
@json_option
def logs(run_id: str, use_stderr: bool, follow: bool, as_json: bool) -> None:
    """Print the agent's stdout (or stderr) as bytes, as it was written. With --json, each
    piece is a JSON line: run, stream, offset, next_offset, the run's state and the text."""
    stream = "stderr" if use_stderr else "stdout"
    params = {"stream": stream, "offset": "0"}
    with _client() as api:
        while True:
            response = api.raw("GET", _run_path(run_id, "logs"), params=params)
            state = response.headers.get("x-corral-run-state")
            next_offset = response.headers["x-corral-next-offset"]
            if as_json and (response.content or params["offset"] == "0"):
                piece = {
                    "run": run_id, "stream": stream, "offset": int(params["offset"]),
                    "next_offset": int(next_offset), "state": state,
                    "text": response.content.decode("utf-8", "replace"),
                }  # fmt: skip
                click.echo(json.dumps(piece))
            elif response.content:
                click.echo(response.content, nl=False)  # bytes go to the binary stream
            if response.content:
                params["offset"] = next_offset
                continue  # a full page may have more behind it
            if not follow or state not in ACTIVE:
                return
            time.sleep(POLL_SECONDS)


@runs.command("cancel")
@click.argument("run_id", metavar="RUN")
@json_option
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel a run; a live one is stopped first (SIGTERM, then SIGKILL after the grace)."""
    with _client() as api:
        run: dict[str, Any] = api.request(
            "POST", _run_path(run_id, "cancel"), timeout=CANCEL_TIMEOUT
        )
    if as_json:
        _print_json(run)
        return
    click.echo(f"{run['id']} {_state_line(run)}")


# -- artifacts --------------------------------------------------------------------------


@runs.command("artifacts")
@click.argument("run_id", metavar="RUN")
@click.argument("path", required=False)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="With PATH: the file (or folder) to write it to. Without: a folder to download all into.",
)
@json_option
def artifacts(run_id: str, path: str | None, out: Path | None, as_json: bool) -> None:
    """List a run's artifacts (diff.patch, report.md, logs, what the agent left), print one
    (PATH) to stdout, or download them (--out). --json applies to the list."""
    with _client() as api:
        if path is not None:
            _fetch(api, run_id, path, out)
            return
        found: list[dict[str, Any]] = api.get(_run_path(run_id, "artifacts"))["artifacts"]
        if out is not None:
            for artifact in found:
                _fetch(api, run_id, artifact["path"], out / _safe(artifact["path"]))
            click.echo(f"Downloaded {len(found)} artifacts into {out}.", err=True)
    if as_json:
        _print_json({"artifacts": found})
    elif out is None:
        _table("Artifacts", ["path", "size"], ([a["path"], f"{a['size']:,}"] for a in found))


def _fetch(api: CorralClient, run_id: str, name: str, out: Path | None) -> None:
    """Write artifact ``name`` to ``out`` (into it when it is a folder), or to stdout."""
    data = api.raw("GET", _run_path(run_id, "artifacts", _safe(name).as_posix())).content
    if out is None:
        click.echo(data, nl=False)
        return
    target = out / _safe(name) if out.is_dir() else out
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _safe(name: str) -> PurePosixPath:
    """An artifact path that stays inside the folder it is written to."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise CLIError(f"refusing artifact path {name!r}: not a relative path inside the run")
    return path


# -- deliver ----------------------------------------------------------------------------


@runs.command("deliver")
@click.argument("run_id", metavar="RUN")
@click.option("--branch", help="Create this branch in the run's repository, holding the change.")
@click.option(
    "--patch", "patch_file", metavar="FILE", help="Write the change as a patch to FILE (- stdout)."
)
@json_option
def deliver(run_id: str, branch: str | None, patch_file: str | None, as_json: bool) -> None:
    """Deliver a run's change as a new branch (the working tree is not touched) or a patch."""
    if (branch is None) == (patch_file is None):
        raise click.UsageError("deliver with exactly one of --branch NAME or --patch FILE")
    body: dict[str, Any] = {"branch": branch} if branch is not None else {"patch": True}
    with _client() as api:
        done: dict[str, Any] = api.post(_run_path(run_id, "deliver"), body)
    if patch_file is not None and not (patch_file == "-" and as_json):
        _save_patch(done["patch"] or "", patch_file)
    if as_json:
        _print_json(done)
    elif branch is not None:
        click.echo(f"Delivered {done['run']['id']} as branch {done['branch']} ({done['commit']}).")
    else:
        where = "stdout" if patch_file == "-" else patch_file
        size = len((done["patch"] or "").encode())
        click.echo(f"Delivered {done['run']['id']} as a patch ({size:,} bytes) to {where}.",
                   err=patch_file == "-")  # fmt: skip


def _save_patch(patch: str, target: str) -> None:
    if target == "-":
        click.echo(patch.encode(), nl=False)
        return
    try:
        Path(target).write_text(patch)
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc.strerror or exc}") from exc
