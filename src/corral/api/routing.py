"""Routes that explain routing: the chain a request would take, and the circuit breakers."""

from __future__ import annotations

from random import Random
from typing import Annotated, Any

from fastapi import APIRouter, Query

from corral.api.context import Ctx
from corral.errors import InvalidRequest


def explain_route(
    ctx: Ctx,
    model: Annotated[str, Query(min_length=1, max_length=200, description="Model or tier.")],
    team: Annotated[str | None, Query(max_length=200, description="Team (name or id).")] = None,
    task_class: Annotated[
        str | None, Query(max_length=200, description="As `x-corral-task-class` would say.")
    ] = None,
    priority: Annotated[
        str | None, Query(max_length=20, description="As `x-corral-priority` would say.")
    ] = None,
) -> dict[str, Any]:
    """The route policy's decision and the chain of deployments a request would try, in order
    (deployments of one model in order of weight; each request draws its own weighted order)."""
    team_id = ctx.team_scope(team)
    team_name = ctx.service.list_teams(team_id=team_id)[0].name if team_id else None
    if priority is not None and priority not in ("low", "normal", "high"):
        raise InvalidRequest("priority must be low, normal or high")
    host = ctx.host
    catalog = host.catalog
    catalog.names_for(model)  # 404 for an unknown name
    decision = (
        host.route_policy.decide(model, team=team_name, task_class=task_class, priority=priority)
        if host.route_policy
        else None
    )
    routed = decision.model if decision else model
    breakers = host.breakers.status()
    chain = [
        {
            "deployment": d.id,
            "model": d.name,
            "tier": d.tier,
            "weight": d.weight,
            "context_window": d.context_window,
            "protocols": sorted(d.provider.protocols),
            "prices": d.prices.usd_per_million(),
            "breaker": breakers.get(d.id, {"state": "closed"})["state"],
        }
        for d in catalog.chain(routed, _ByWeight())
    ]
    return {
        "model": model,
        "team": team_name,
        "task_class": task_class,
        "priority": priority,
        "routed_to": routed,
        "reason": decision.reason if decision else None,
        "max_attempts": host.settings.route_max_attempts,
        "chain": chain,
    }


def list_breakers(ctx: Ctx) -> dict[str, Any]:
    """This process's circuit breakers, by deployment (others keep their own)."""
    ctx.require_manager()
    return {"breakers": ctx.host.breakers.status()}


class _ByWeight(Random):
    """A draw that orders a model's deployments by weight, heaviest first: the usual order."""

    def random(self) -> float:
        return 0.5


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/route/explain", explain_route, methods=["GET"], tags=["routing"])
    r.add_api_route("/breakers", list_breakers, methods=["GET"], tags=["routing"])
    return r
