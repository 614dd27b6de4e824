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
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Protocol

from corral.asgi import Receive, Scope, Send, api_key, send_bytes
from corral.errors import CorralError
from corral.identity.service import IdentityService
from corral.runs.model import STATES
from corral.runs.service import RunService
from corral.traces.query import Visibility
from corral.traces.usage import UsageRow, usage

if TYPE_CHECKING:
    from corral.clock import Clock
    from corral.identity.keys import KeyCache
    from corral.routing import Catalog
    from corral.settings import Settings
    from corral.store import Store

_HTML = (b"content-type", b"text/html; charset=utf-8")
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d232a;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}th,td{padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}tr:nth-child(even){background:#f3f5f7}
th{border-bottom:2px solid #ccd;font-weight:600}code{background:#eef;padding:0 .2rem}
.muted{color:#667}
"""


class RunRefusal(Protocol):
    """The run executor: why this process refuses runs (it names folders), or None."""

    @property
    def refusal(self) -> str | None: ...


class StatusPage:
    """The ASGI app of ``/``; ``catalog`` is called per page (it is built at start-up)."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyCache,
        store: Store,
        clock: Clock,
        catalog: Callable[[], Catalog],
        executor: RunRefusal,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.store = store
        self.clock = clock
        self.catalog = catalog
        self.executor = executor
        self.identity = IdentityService(store, clock)
        self.runs = RunService(store, clock, self.identity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /`` renders the page; ``HEAD /`` answers 200 (agents probe it); else 404."""
        path, method = scope["path"], scope["method"]
        if path != "/" or method not in ("GET", "HEAD"):
            await send_bytes(send, 404, [_HTML], b"<h1>404</h1><p>Not found.</p>")
            return
        if method == "HEAD":
            await send_bytes(send, 200, [_HTML], b"")
            return
        try:
            full = await self._may_see_tenants(scope)
        except CorralError as exc:  # a key was sent and is not one: say so rather than hide it
            headers = [_HTML, (b"www-authenticate", b"Bearer")]
            await send_bytes(send, exc.status, headers, f"<p>{escape(exc.message)}</p>".encode())
            return
        page = await asyncio.to_thread(self.render, full=full)
        await send_bytes(send, 200, [_HTML], page.encode())

    async def _may_see_tenants(self, scope: Scope) -> bool:
        """The org admin key (or ``metrics_public``): teams' names and spend are tenant data."""
        if self.settings.metrics_public:
            return True
        presented = api_key(scope)
        if not presented:
            return False
        caller = await self.keys.authenticate(presented)
        return caller.role == "admin"

    def render(self, *, full: bool = False) -> str:
        """The page; ``full`` adds what names teams and models with their spend, and the store."""
        base = f"http://{self.settings.host}:{self.settings.port}"
        store = f" · store {escape(self.store.describe())}" if full else ""
        body = self._tenants() if full else self._public()
        catalog = self.catalog()
        return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Corral status</title><meta http-equiv="refresh" content="5"><style>{_STYLE}</style></head>
<body><h1>Corral</h1>
<p class="muted">Gateway <code>{escape(base)}/v1</code> · admin API
<a href="/api/v1/docs">/api/v1</a>{store} ·
price table {escape(catalog.price_version)} · {time.strftime("%Y-%m-%d %H:%M:%S %Z")}</p>
{body}
<h2>Models</h2>{_catalog(catalog)}
</body></html>"""

    def _public(self) -> str:
        """Organisation-wide counts, naming no team, user or model."""
        day = self._usage("team", self.clock.now() - 86_400)
        requests = sum(r.requests for r in day)
        return f"""<h2>Requests, last 24 hours</h2><p>{requests:,}</p>
<h2>Agent runs by state</h2>{self._runs(by_team=False)}
<p class="muted">Usage by team and model needs the org admin key
(<code>Authorization: Bearer</code>), as <code>/metrics</code> does.</p>"""

    def _tenants(self) -> str:
        now = self.clock.now()
        day = self._usage("team", now - 86_400)
        total = self._usage("team", 0)
        models = self._usage("model", now - 86_400)
        return f"""<h2>Usage by team, last 24 hours</h2>{_table(day, "team")}
<h2>Usage by model, last 24 hours</h2>{_table(models, "model")}
<h2>Usage by team, all time</h2>{_table(total, "team")}
<h2>Agent runs by team and state</h2>{self._runs(by_team=True)}"""

    def _usage(self, by: str, since: float) -> list[UsageRow]:
        """Organisation-wide totals since ``since``, by one dimension."""
        return usage(self.store, Visibility(), [by], since)

    def _runs(self, *, by_team: bool) -> str:
        """Counts only: a run's task and repository are for those who may see the run."""
        counted = self.runs.counts()
        names = self.identity.team_names(team for team, _ in counted) if by_team else {}
        counts: dict[str, dict[str, int]] = {}
        for (team_id, state), n in counted.items():
            team = names.get(team_id, team_id) if by_team else "all teams"
            by_state = counts.setdefault(team, {})
            by_state[state] = by_state.get(state, 0) + n
        refusal = self.executor.refusal if by_team else None  # it names folders on the host
        note = (
            f'<p class="muted">This process refuses runs: {escape(refusal)}</p>' if refusal else ""
        )
        if not counts:
            return note + '<p class="muted">No runs yet (<code>corral runs submit</code>).</p>'
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
        f"<tr><td>{escape(r.group[0][1])}</td><td>{r.requests:,}</td><td>{r.input_tokens:,}</td>"
        f"<td>{r.cached_input_tokens:,}</td><td>{r.cache_write_tokens:,}</td>"
        f"<td>{r.output_tokens:,}</td><td>{r.reasoning_tokens:,}</td>"
        f"<td>{r.cost_usd:,.6f}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _catalog(catalog: Catalog) -> str:
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(d.provider.name)}</td>"
        f"<td>{escape(d.upstream_model)}</td><td>{d.context_window:,}</td></tr>"
        for name, d in catalog.models.items()
    )
    return (
        "<table><tr><th>model</th><th>provider</th><th>upstream model</th>"
        f"<th>context window</th></tr>{rows}</table>"
    )
