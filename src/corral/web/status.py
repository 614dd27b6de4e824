"""A minimal server-rendered status page: usage, runs by state, the catalog, links.

Anyone who reaches the port sees that the process serves and figures that name
no tenant: requests in the last 24 hours and runs by state, organisation-wide,
and the model catalog. Usage by team and by model (names and spend), runs by
team and where the store lives need the org admin key (``Authorization:
Bearer``), as ``/metrics`` does, or ``metrics_public = true``. The full
dashboard arrives later.
"""

from __future__ import annotations

import asyncio
import time
from html import escape
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from corral.errors import CorralError
from corral.gateway.http import Receive, Scope, Send, api_key, send_bytes
from corral.identity.service import IdentityService, UsageRow
from corral.runs.model import STATES
from corral.store.schema import runs, teams

if TYPE_CHECKING:
    from corral.app import CorralApp

_HTML = (b"content-type", b"text/html; charset=utf-8")
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d232a;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}th,td{padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}tr:nth-child(even){background:#f3f5f7}
th{border-bottom:2px solid #ccd;font-weight:600}code{background:#eef;padding:0 .2rem}
.muted{color:#667}
"""


async def status_app(app: CorralApp, scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /`` renders the page; ``HEAD /`` answers 200 (agents probe it); else 404."""
    path, method = scope["path"], scope["method"]
    if path != "/" or method not in ("GET", "HEAD"):
        await send_bytes(send, 404, [_HTML], b"<h1>404</h1><p>Not found.</p>")
        return
    if method == "HEAD":
        await send_bytes(send, 200, [_HTML], b"")
        return
    try:
        full = await _may_see_tenants(app, scope)
    except CorralError as exc:  # a key was sent and is not one: say so rather than hide it
        headers = [_HTML, (b"www-authenticate", b"Bearer")]
        await send_bytes(send, exc.status, headers, f"<p>{escape(exc.message)}</p>".encode())
        return
    page = await asyncio.to_thread(render, app, full=full)
    await send_bytes(send, 200, [_HTML], page.encode())


async def _may_see_tenants(app: CorralApp, scope: Scope) -> bool:
    """The org admin key (or ``metrics_public``): teams' names and spend are tenant data."""
    if app.settings.metrics_public:
        return True
    presented = api_key(scope)
    if not presented:
        return False
    caller = await app.keys.authenticate(presented)
    return caller.role == "admin"


def render(app: CorralApp, *, full: bool = False) -> str:
    """The page; ``full`` adds what names teams and models with their spend, and the store."""
    base = f"http://{app.settings.host}:{app.settings.port}"
    store = f" · store {escape(app.store.describe())}" if full else ""
    body = _tenants(app) if full else _public(app)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Corral status</title><meta http-equiv="refresh" content="5"><style>{_STYLE}</style></head>
<body><h1>Corral</h1>
<p class="muted">Gateway <code>{escape(base)}/v1</code> · admin API
<a href="/api/v1/docs">/api/v1</a>{store} ·
price table {escape(app.catalog.price_version)} · {time.strftime("%Y-%m-%d %H:%M:%S %Z")}</p>
{body}
<h2>Models</h2>{_catalog(app)}
</body></html>"""


def _public(app: CorralApp) -> str:
    """Organisation-wide counts, naming no team, user or model."""
    service = IdentityService(app.store, app.clock)
    day = service.usage("team", app.clock.now() - 86_400)
    requests = sum(r.requests for r in day)
    return f"""<h2>Requests, last 24 hours</h2><p>{requests:,}</p>
<h2>Agent runs by state</h2>{_runs(app, by_team=False)}
<p class="muted">Usage by team and model needs the org admin key
(<code>Authorization: Bearer</code>), as <code>/metrics</code> does.</p>"""


def _tenants(app: CorralApp) -> str:
    service = IdentityService(app.store, app.clock)
    now = app.clock.now()
    day = service.usage("team", now - 86_400)
    total = service.usage("team", 0)
    models = service.usage("model", now - 86_400)
    return f"""<h2>Usage by team, last 24 hours</h2>{_table(day, "team")}
<h2>Usage by model, last 24 hours</h2>{_table(models, "model")}
<h2>Usage by team, all time</h2>{_table(total, "team")}
<h2>Agent runs by team and state</h2>{_runs(app, by_team=True)}"""


def _runs(app: CorralApp, *, by_team: bool) -> str:
    """Counts only: a run's task and repository are for those who may see the run."""
    query = select(runs.c.state, func.count()).group_by(runs.c.state)
    if by_team:
        query = (
            select(teams.c.name, runs.c.state, func.count())
            .join(teams, teams.c.id == runs.c.team_id)
            .group_by(teams.c.name, runs.c.state)
        )
    with app.store.connect() as conn:
        rows = [tuple(r) if by_team else ("all teams", *r) for r in conn.execute(query)]
    refusal = app.executor.refusal if by_team else None  # it names folders on the host
    note = f'<p class="muted">This process refuses runs: {escape(refusal)}</p>' if refusal else ""
    if not rows:
        return note + '<p class="muted">No runs yet (<code>corral runs submit</code>).</p>'
    counts: dict[str, dict[str, int]] = {}
    for team, state, n in rows:
        counts.setdefault(team, {})[state] = n
    head = "<tr><th>team</th>" + "".join(f"<th>{s.replace('_', ' ')}</th>" for s in STATES)
    body = "".join(
        f"<tr><td>{escape(team)}</td>"
        + "".join(f"<td>{by_state.get(s, 0):,}</td>" for s in STATES)
        + "</tr>"
        for team, by_state in sorted(counts.items())
    )
    return f"{note}<table>{head}</tr>{body}</table>"


def _table(rows: list[UsageRow], by: str) -> str:
    if not rows:
        return '<p class="muted">No requests yet.</p>'
    head = (
        f"<tr><th>{escape(by)}</th><th>requests</th><th>input</th><th>cached input</th>"
        "<th>cache write</th><th>output</th><th>reasoning</th><th>cost (USD)</th></tr>"
    )
    body = "".join(
        f"<tr><td>{escape(r.label)}</td><td>{r.requests:,}</td><td>{r.input_tokens:,}</td>"
        f"<td>{r.cached_input_tokens:,}</td><td>{r.cache_write_tokens:,}</td>"
        f"<td>{r.output_tokens:,}</td><td>{r.reasoning_tokens:,}</td>"
        f"<td>{r.cost_usd:,.6f}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _catalog(app: CorralApp) -> str:
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(d.provider.name)}</td>"
        f"<td>{escape(d.upstream_model)}</td><td>{d.context_window:,}</td></tr>"
        for name, d in app.catalog.models.items()
    )
    return (
        "<table><tr><th>model</th><th>provider</th><th>upstream model</th>"
        f"<th>context window</th></tr>{rows}</table>"
    )
