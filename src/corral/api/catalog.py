"""Routes for what Corral serves (providers, models) and what it has served (usage)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from corral.api import models as m
from corral.api.context import Ctx
from corral.errors import PermissionDenied
from corral.identity.service import parse_since, parse_until
from corral.routing import Deployment
from corral.traces.query import Visibility
from corral.traces.usage import DIMENSIONS, UsageRow, parse_dimensions, usage


def list_providers(ctx: Ctx) -> list[m.Provider]:
    """Configured providers. Only the *name* of each secret's variable is shown, never a secret."""
    ctx.require_manager()
    return [
        m.Provider(
            name=p.name,
            kind=p.kind,
            base_url=p.base_url,
            protocols=sorted(p.protocols),
            api_key_env=p.api_key_env,
            api_key_set=bool(p.api_key_env and os.environ.get(p.api_key_env)),
        )
        for p in ctx.host.catalog.providers.values()
    ]


def list_models(ctx: Ctx) -> list[m.Model]:
    """The model catalog with prices in USD per 1M tokens and the price-table version; a
    key limited to some models sees those."""
    catalog = ctx.host.catalog
    allowed = ctx.caller.allowed_models
    return [
        _model(d, catalog.price_version)
        for name, d in catalog.models.items()
        if allowed is None or name in allowed
    ]


def _model(d: Deployment, price_version: str) -> m.Model:
    return m.Model(
        name=d.name,
        provider=d.provider.name,
        upstream_model=d.upstream_model,
        context_window=d.context_window,
        prices=m.Prices(**d.prices.usd_per_million()),
        price_version=price_version,
    )


_DIMENSION = "(?:" + "|".join(DIMENSIONS) + ")"


async def get_usage(
    ctx: Ctx,
    by: Annotated[
        str,
        Query(
            pattern=rf"^\s*{_DIMENSION}\s*(?:,\s*{_DIMENSION}\s*)*$",
            max_length=100,
            description="What to group by: one or more of "
            f"{', '.join(DIMENSIONS)}, separated by commas (`team,model,day`).",
        ),
    ] = "team",
    since: Annotated[
        str,
        Query(
            max_length=64,
            description="Window start: a duration back from now (`24h`, `7d`), `all`, "
            "or an ISO-8601 time.",
        ),
    ] = "24h",
    until: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Window end (excluded): `now`, a duration back from now, or an "
            "ISO-8601 time. Default: no end (spans that reported a later start count too).",
        ),
    ] = None,
    team: Annotated[str | None, Query(description="Only this team (id or name).")] = None,
) -> m.Usage:
    """Requests, errors, tokens, cost and latency of model calls in a window, grouped by any
    combination of team, user, key, model, provider, day and hour.

    The org admin sees everything, a team admin its team, any other key its own calls.
    Sums are exact for any window; latency percentiles are interpolated within buckets.
    """
    now = ctx.host.clock.now()
    start = parse_since(since, now)
    end = parse_until(until, now) if until is not None else None
    dimensions = parse_dimensions(by)
    rows = await asyncio.to_thread(_usage, ctx, dimensions, start, end, team)
    return m.Usage(
        by=by.replace(" ", ""),
        dimensions=list(dimensions),
        since=datetime.fromtimestamp(start, tz=UTC),
        until=datetime.fromtimestamp(end, tz=UTC) if end is not None else None,
        rows=[m.UsageRow(**row.to_dict()) for row in rows],
    )


def _usage(
    ctx: Ctx, dimensions: Sequence[str], start: float, end: float | None, team: str | None
) -> list[UsageRow]:
    if ctx.caller.role in ("admin", "team_admin"):
        team_id = ctx.team_scope(team)
    elif team is not None and ctx.service.get_team(team).id != ctx.caller.team_id:
        raise PermissionDenied("this key may only read its own usage")
    else:
        team_id = None
    visibility = Visibility.of(ctx.caller)
    return usage(ctx.host.store, visibility, dimensions, start, end, team_id=team_id)


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/providers", list_providers, methods=["GET"], tags=["catalog"])
    r.add_api_route("/models", list_models, methods=["GET"], tags=["catalog"])
    r.add_api_route(
        "/usage", get_usage, methods=["GET"], tags=["usage"], response_model_exclude_unset=True
    )
    return r
