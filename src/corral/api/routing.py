"""Routes that explain routing: the chain a request would take, and the circuit breakers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from random import Random
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from corral.api.context import Ctx
from corral.errors import InvalidRequest
from corral.identity.service import parse_since
from corral.routing.policy import add_stored, remove_stored
from corral.settings import RoutePolicyConfig
from corral.traces.usage import provider_attempts


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


class PolicyIn(RoutePolicyConfig):
    """A route policy rule, and where it goes among the API's rules (default: last)."""

    position: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Rules apply by ascending position, after the config file's.",
    )


def list_policies(ctx: Ctx) -> dict[str, Any]:
    """The route policy rules in the order they apply: the config file's, then the API's.

    The org admin sees every rule; a team admin the rules that can apply to its team's
    requests (its team's and those naming no team), never another team's."""
    ctx.require_manager()
    policy = ctx.host.route_policy
    rules = policy.rules() if policy is not None else []
    every = ctx.caller.role == "admin"
    team = ctx.caller.team_name
    return {
        "policies": [
            {"number": n, "source": source, "id": rule_id, **rule.model_dump()}
            for n, source, rule_id, rule in rules
            if every or rule.team is None or rule.team == team
        ]
    }


async def add_policy(ctx: Ctx, body: PolicyIn) -> dict[str, Any]:
    """Add a rule (org admin). Every process applies it within `quota_refresh_interval`."""
    ctx.require_org_admin()
    policy = ctx.host.route_policy
    assert policy is not None
    rule = RoutePolicyConfig(**body.model_dump(exclude={"position"}))
    policy.check(rule)
    rule_id = await asyncio.to_thread(
        add_stored,
        ctx.host.store,
        rule,
        now=ctx.host.clock.now(),
        by=ctx.caller.key_id,
        position=body.position,
    )
    await ctx.host.reload_routes()
    return {"id": rule_id, **list_policies(ctx)}


async def remove_policy(ctx: Ctx, rule_id: str) -> Response:
    """Remove a rule set through the API (org admin); config-file rules stay."""
    ctx.require_org_admin()
    await asyncio.to_thread(remove_stored, ctx.host.store, rule_id)
    await ctx.host.reload_routes()
    return Response(status_code=204)


def list_breakers(ctx: Ctx) -> dict[str, Any]:
    """This process's circuit breakers, by deployment (others keep their own)."""
    ctx.require_manager()
    return {"breakers": ctx.host.breakers.status()}


class _ByWeight(Random):
    """A draw that orders a model's deployments by weight, heaviest first: the usual order."""

    def random(self) -> float:
        return 0.5


def capacity_report(
    ctx: Ctx,
    since: Annotated[
        str, Query(max_length=64, description="Window start: `24h`, `7d`, `all` or ISO-8601.")
    ] = "24h",
) -> dict[str, Any]:
    """Each provider contract's use per hour: attempts and tokens within the reserved capacity
    and past it, and utilisation of the reserved RPM and TPM (per hour: 60 × the rate)."""
    ctx.require_manager()
    host = ctx.host
    start = parse_since(since, host.clock.now())
    contracts = {
        name: p.capacity for name, p in host.catalog.providers.items() if p.capacity is not None
    }
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for r in provider_attempts(host.store, contracts, start):
        entry = table.setdefault(
            (r.provider, r.hour),
            {
                "reserved_attempts": 0,
                "overflow_attempts": 0,
                "reserved_tokens": 0,
                "overflow_tokens": 0,
            },
        )
        side = "reserved" if r.reserved else "overflow"
        entry[f"{side}_attempts"] += r.attempts
        entry[f"{side}_tokens"] += r.tokens
    providers = []
    for name, cap in sorted(contracts.items()):
        hours = []
        for (provider, h), entry in sorted(table.items()):
            if provider != name:
                continue
            hours.append(
                {
                    "hour": datetime.fromtimestamp(h * 3600, UTC).isoformat(),
                    **entry,
                    "rpm_utilisation": _share(entry["reserved_attempts"], cap.reserved_rpm),
                    "tpm_utilisation": _share(entry["reserved_tokens"], cap.reserved_tpm),
                }
            )
        providers.append(
            {
                "provider": name,
                "contract": cap.model_dump(),
                "hours": hours,
            }
        )
    return {"since": datetime.fromtimestamp(start, UTC).isoformat(), "providers": providers}


def _share(used: int, per_minute: int | None) -> float | None:
    return None if not per_minute else round(used / (per_minute * 60), 4)


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/route/explain", explain_route, methods=["GET"], tags=["routing"])
    r.add_api_route("/breakers", list_breakers, methods=["GET"], tags=["routing"])
    r.add_api_route("/capacity", capacity_report, methods=["GET"], tags=["routing"])
    r.add_api_route("/route/policies", list_policies, methods=["GET"], tags=["routing"])
    r.add_api_route(
        "/route/policies", add_policy, methods=["POST"], tags=["routing"], status_code=201
    )
    r.add_api_route(
        "/route/policies/{rule_id}",
        remove_policy,
        methods=["DELETE"],
        tags=["routing"],
        status_code=204,
        response_class=Response,
    )
    return r
