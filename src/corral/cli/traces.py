"""Trajectory commands: ``corral trace``, ``corral spans show`` and ``corral spans search``.

They read what a running Corral recorded, through the admin API, with the key
in ``CORRAL_ADMIN_KEY``: the org admin key reads the organisation, a team admin
key its team, any other key its own spans. Every command accepts ``--json``.
Stored bodies are printed as plain text, never through rich markup, so a
body's brackets (``[REDACTED:…]``) show as they are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from corral.cli.admin import _client, _console, _path, _print_json, _table, _usd, json_option

_DUPLICATE = "(also seen by the gateway)"


# -- corral trace -------------------------------------------------------------------


@click.command()
@click.argument("ref", metavar="RUN_ID|TRACE_ID")
@json_option
def trace(ref: str, as_json: bool) -> None:
    """Print the tree of a run or a trace: agents, steps, tool calls, LLM calls and the
    upstream attempts of each, with durations, tokens, cost and errors."""
    with _client() as api:
        found: dict[str, Any] = api.get(f"/traces/{_path(ref)}")
    if as_json:
        _print_json(found)
        return
    _console().print(render_tree(found))
    click.echo(totals_line(found["totals"]))


def render_tree(found: dict[str, Any]) -> Tree:
    """The trajectory as a rich tree: one line a span, children under their parent."""
    traces = len(found["trace_ids"])
    title = f"{found['kind']} {found['ref']}"
    if found["kind"] == "run":
        title += f" ({traces} trace{'s' if traces != 1 else ''})"
    root = Tree(Text(title, style="bold"))
    branches: dict[str, Tree] = {}
    roots = set(found["roots"])
    for node in found["nodes"]:  # depth first: every parent comes before its children
        parent = (
            branches.get(node["parent_span_id"] or "") if node["span_id"] not in roots else None
        )
        branches[node["span_id"]] = (parent or root).add(node_line(node))
    return root


def node_line(node: dict[str, Any]) -> Text:
    """``kind name  duration  in→out tok  $cost  status``; errors in red, duplicates dimmed."""
    line = Text()
    kind, name = node["kind"], node["name"]
    line.append(kind, style="cyan")
    line.append(f" {name.removeprefix(kind + ' ')}")  # "attempt attempt sim/x" reads badly
    if kind == "llm_request" and node.get("source"):
        line.append(f" ({node['source']})", style="dim")
    if node.get("model") and node["model"] not in node["name"]:
        line.append(f" [{node['model']}]", style="dim")
    line.append(f"  {duration(node['duration_ms'])}", style="dim")
    tokens_in = node["input_tokens"] + node["cached_input_tokens"] + node["cache_write_tokens"]
    tokens_out = node["output_tokens"] + node["reasoning_tokens"]
    if tokens_in or tokens_out:
        line.append(f"  {tokens_in:,}→{tokens_out:,} tok")
    if node["cost_usd"]:
        line.append(f"  {_usd(node['cost_usd'])}")
    if node["status"] == "error":
        detail = ": ".join(x for x in (node["error_class"], node["error_message"]) if x)
        line.append(f"  error {detail}".rstrip(), style="bold red")
    elif node["status"] != "ok":
        line.append(f"  {node['status']}", style="yellow")
    else:
        line.append("  ok", style="green")
    if node["duplicate_of"]:
        line.stylize("dim")
        line.append(f"  {_DUPLICATE}", style="dim italic")
    if node["has_bodies"]:
        line.append("  (bodies)", style="dim")
    line.append(f"  {node['span_id']}", style="dim")  # for `corral spans show`
    return line


def totals_line(t: dict[str, Any]) -> str:
    """Every call the tree shows, once, and how much of it the gateway metered (what spends
    budgets) and how much agents only reported."""
    line = (
        f"Total: {_count(t['spans'], 'span')}, {_count(t['llm_calls'], 'LLM call')}, "
        f"{_token_pair(t)} tokens, {_usd(t['cost_usd'])}"
    )
    parts = [
        f"{label} {_count(c['llm_calls'], 'call')}, {_token_pair(c)} tokens, {_usd(c['cost_usd'])}"
        for label, c in (
            ("metered by the gateway:", t["metered"]),
            ("reported by agents:", t["reported"]),
        )
        if c["llm_calls"]
    ]
    if parts:
        line += f" ({'; '.join(parts)})"
    return f"{line}, {_count(t['errors'], 'error')}, {duration(t['duration_ms'])}"


def _token_pair(t: dict[str, Any]) -> str:
    tokens_in = t["input_tokens"] + t["cached_input_tokens"] + t["cache_write_tokens"]
    return f"{tokens_in:,}→{t['output_tokens'] + t['reasoning_tokens']:,}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def duration(ms: float) -> str:
    if ms < 1_000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes}m{seconds:02d}s"


# -- corral spans -------------------------------------------------------------------


@click.group()
def spans() -> None:
    """Read single spans and their bodies; search spans."""


@spans.command("show")
@click.argument("span_id")
@click.option("--bodies", is_flag=True, help="Also print the stored request and response.")
@json_option
def spans_show(span_id: str, bodies: bool, as_json: bool) -> None:
    """Print every field of SPAN_ID, its attributes and, with --bodies, its bodies."""
    params = {"bodies": "true"} if bodies else None
    with _client() as api:
        found: dict[str, Any] = api.get(f"/spans/{_path(span_id)}", params)
    if as_json:
        _print_json(found)
        return
    shown = {
        k: v
        for k, v in found.items()
        if v is not None and k not in ("attributes", "bodies", "start_ns", "end_ns")
    }
    console = _console()
    for name, value in shown.items():
        console.print(f"[bold]{name:>20}[/bold]  {escape(str(value))}", highlight=False)
    if found["attributes"]:
        click.echo(f"{'attributes':>20}  " + json.dumps(found["attributes"], indent=2))
    for part, body in (found.get("bodies") or {}).items():
        _print_body(part, body)


def _print_body(part: str, body: dict[str, Any]) -> None:
    meta = body.get("meta") or {}
    facts = [body["content_type"]] if body["available"] else []
    if "bytes" in meta:
        facts.append(f"{meta['bytes']:,} bytes")
    if meta.get("redactions"):
        facts.append(f"{meta['redactions']} secrets redacted")
    if meta.get("truncated"):
        facts.append("truncated")
    click.echo(f"\n── {part} body" + (f" ({', '.join(facts)})" if facts else "") + " ──")
    if body["text"] is None:
        click.echo(body["note"])
        if meta:
            click.echo(json.dumps(meta, indent=2))
        return
    click.echo(body["text"])


@spans.command("search")
@click.option("--team", help="Team (name or id).")
@click.option("--user", help="User (name or id).")
@click.option("--key", help="Key (name or id).")
@click.option("--run", help="Run id.")
@click.option("--trace", "trace_id", help="Trace id.")
@click.option(
    "--kind",
    type=click.Choice(["run", "agent", "step", "tool", "llm_request", "attempt", "event", "span"]),
    help="Span kind.",
)
@click.option(
    "--status",
    type=click.Choice(["ok", "error", "cancelled", "refused"]),
    help="Outcome; error also finds refused calls (a budget or limit said no), refused only those.",
)
@click.option("--error-class", help="Error class, e.g. rate_limited or upstream_timeout.")
@click.option("--model", help="The model asked for, or the one that served.")
@click.option("--provider", help="Provider name.")
@click.option("--source", help='"gateway", or the reporting agent\'s service name.')
@click.option("--since", help="Started at or after: 24h, 7d, or an ISO-8601 time.")
@click.option("--until", help="Started before: now, 1h (ago), or an ISO-8601 time.")
@click.option(
    "--attr",
    "attrs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An attribute equals a value (repeat); dotted keys: gen_ai.tool.name=Bash.",
)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most."
)
@click.option("--cursor", help="Continue after a previous page (its next_cursor).")
@json_option
def spans_search(attrs: tuple[str, ...], limit: int, cursor: str | None, **filters: Any) -> None:
    """Find spans, newest first: errors of a team, a model's calls, an agent's tool calls."""
    as_json = filters.pop("as_json")
    params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
    if "trace_id" in params:
        params["trace"] = params.pop("trace_id")
    params.update(limit=str(limit), cursor=cursor)
    if attrs:
        params["attr"] = list(attrs)
    with _client() as api:
        found: dict[str, Any] = api.get("/spans", params)
    if as_json:
        _print_json(found)
        return
    columns = ["start", "kind", "name", "status", "model", "tokens", "cost", "took", "span"]
    rows = [
        [
            s["start"][:19].replace("T", " "),
            s["kind"],
            s["name"],
            s["status"]
            if s["status"] not in ("error", "refused")
            else f"{s['status']} {s['error_class'] or ''}".strip(),
            s["model_requested"] or s["model_served"],
            _tokens(s),
            _usd(s["cost_usd"]) if s["cost_usd"] else None,
            duration(s["duration_ms"]),
            s["span_id"],
        ]
        for s in found["spans"]
    ]
    _table("Spans", columns, rows)
    if found["next_cursor"]:
        click.echo(f"More: --cursor {found['next_cursor']}", err=True)


def _tokens(s: dict[str, Any]) -> str | None:
    tokens_in = s["input_tokens"] + s["cached_input_tokens"] + s["cache_write_tokens"]
    tokens_out = s["output_tokens"] + s["reasoning_tokens"]
    return f"{tokens_in:,}→{tokens_out:,}" if tokens_in or tokens_out else None


# -- corral store -------------------------------------------------------------------


@click.command()
@click.option("--prune", is_flag=True, help="Run a retention pass now, then report.")
@json_option
def store(prune: bool, as_json: bool) -> None:
    """How big the trajectory store is: span rows, bytes on disk, bodies, oldest span.
    With --prune, delete what is past each team's retention window first (org admin)."""
    with _client() as api:
        found: dict[str, Any] = api.get("/store", {"prune": "true" if prune else None})
    if as_json:
        _print_json(found)
        return
    size = found["size"]
    if "retention" in found:
        r = found["retention"]
        click.echo(
            f"Retention: {r['spans_deleted']:,} spans deleted in {r['batches']} batches, "
            f"{r['blob_files_deleted']:,} bodies ({_bytes(r['blob_bytes_freed'])}) "
            f"in {r['duration_s']:.1f} s."
        )
    estimated = " (estimate)" if size.get("spans_estimated") else ""
    lines = [
        ("store", size["dialect"]),
        ("spans", f"{size['spans']:,}{estimated}"),
        ("on disk", _bytes(size["database_bytes"])),
        ("bodies", f"{size['blob_files']:,} files, {_bytes(size['blob_bytes'])}"),
        ("oldest span", _when(size["oldest_span"])),
        ("newest span", _when(size["newest_span"])),
    ]
    for label, value in lines:
        click.echo(f"{label:<12} {value}")


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
