"""Routes for what Corral serves (providers, models) and what it has served (usage)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from corral.api import models as m
from corral.api.context import Ctx
from corral.errors import PermissionDenied
from corral.identity.service import GroupBy, parse_since
from corral.routing import Deployment


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
    """The model catalog with prices in USD per 1M tokens and the price-table version."""
    ctx.require_manager()
    catalog = ctx.host.catalog
    return [_model(d, catalog.price_version) for d in catalog.models.values()]


def _model(d: Deployment, price_version: str) -> m.Model:
    return m.Model(
        name=d.name,
        provider=d.provider.name,
        upstream_model=d.upstream_model,
        context_window=d.context_window,
        prices=m.Prices(**d.prices.usd_per_million()),
        price_version=price_version,
    )


def get_usage(
    ctx: Ctx,
    by: Annotated[GroupBy, Query(description="What to group by.")] = "team",
    since: Annotated[
        str,
        Query(
            max_length=64,
            description="Window start: a duration back from now (`24h`, `7d`), `all`, "
            "or an ISO-8601 time.",
        ),
    ] = "24h",
    team: Annotated[str | None, Query(description="Only this team (id or name).")] = None,
) -> m.Usage:
    """Requests, tokens and cost of model calls since a time, grouped by team, user, key or model.

    The org admin sees everything, a team admin its team, any other key its own calls.
    """
    start = parse_since(since, ctx.host.clock.now())
    if ctx.caller.role in ("admin", "team_admin"):
        team_id, key_id = ctx.team_scope(team), None
    else:
        if team is not None and ctx.service.get_team(team).id != ctx.caller.team_id:
            raise PermissionDenied("this key may only read its own usage")
        team_id, key_id = None, ctx.caller.key_id
    rows = ctx.service.usage(by, start, team_id=team_id, key_id=key_id)
    return m.Usage(
        by=by,
        since=datetime.fromtimestamp(start, tz=UTC),
        rows=[m.UsageRow(**row.to_dict(by)) for row in rows],
    )


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/providers", list_providers, methods=["GET"], tags=["catalog"])
    r.add_api_route("/models", list_models, methods=["GET"], tags=["catalog"])
    r.add_api_route(
        "/usage", get_usage, methods=["GET"], tags=["usage"], response_model_exclude_unset=True
    )
    return r
