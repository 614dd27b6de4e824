"""Routes for budgets and rate limits: read them with their current usage; set them.

Only the org admin sets or removes rules. Budgets of the config file are shown
but read-only here (409). After a write this process reloads its rules at once;
every other process picks the change up within ``quota_refresh_interval``.
Handlers are async (they await the quota gate); store calls go to a thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from corral.api import models as m
from corral.api.context import Context, Ctx
from corral.errors import InvalidRequest, NotFound, PermissionDenied
from corral.quota import Level
from corral.quota.gate import QuotaGate
from corral.quota.rules import MAX_AMOUNT, QuotaRules, RateRule

ScopeKey = tuple[str, str]
Named = tuple[str, str | None, str | None]  # kind, ref, team (of a user)

_NANO_PER_USD = 10**9

_ORDER = {
    name: i
    for i, name in enumerate(
        ("org", "team", "user", "key", "run", "usd", "tokens", "hour", "day", "month", "total")
    )
}

TeamParam = Annotated[str | None, Query(description="A team (id or name).")]
UserParam = Annotated[
    str | None, Query(description="A user (id or name; with `team`, a user of that team).")
]
KeyParam = Annotated[str | None, Query(description="A key, by id.")]
OrgParam = Annotated[bool, Query(description="`true`: the organisation itself.")]


# -- scopes ------------------------------------------------------------------------


def _named(team: str | None, user: str | None, key: str | None, org: bool) -> Named | None:
    """The one scope the query parameters name, if any; ``team`` with ``user`` names a user."""
    given = [k for k, v in (("team", team), ("user", user), ("key", key)) if v is not None]
    if org:
        given.append("org")
    if not given:
        return None
    if given == ["team", "user"]:
        return "user", user, team
    if len(given) > 1:
        raise InvalidRequest(
            f"name one scope, not {' and '.join(given)} (team with user names a user of that team)"
        )
    kind = given[0]
    return kind, {"team": team, "user": user, "key": key}.get(kind), None


def _body_level(rules: QuotaRules, scope: m.ScopeIn) -> Level:
    if scope.team is not None and scope.kind != "user":
        raise InvalidRequest("scope.team names the team of a user; give it with kind 'user' only")
    if scope.kind == "org" and scope.ref is not None:
        raise InvalidRequest("an org scope takes no ref")
    return rules.level(scope.kind, scope.ref, team=scope.team)


def _require_org_admin(ctx: Context) -> None:
    if ctx.caller.role != "admin":
        raise PermissionDenied("only the organisation admin key may set budgets and limits")


def _visible(ctx: Context) -> set[ScopeKey] | None:
    """The levels the caller may read (None: all): a team admin its team and the levels
    inside it; any other key the levels of its own chain below the organisation."""
    caller = ctx.caller
    if caller.role == "admin":
        return None
    if caller.role == "team_admin":
        return set() if caller.team_id is None else _inside_team(ctx, caller.team_id)
    chain = (
        ("team", caller.team_id),
        ("user", caller.user_id),
        ("key", caller.key_id),
        ("run", caller.run_id),
    )
    return {(kind, scope_id) for kind, scope_id in chain if scope_id is not None}


def _inside_team(ctx: Context, team_id: str) -> set[ScopeKey]:
    """The team and the levels inside it: its users, its keys, and the runs whose key is
    still live (a finished run's budget is shown by `corral runs show`, not with the team's)."""
    out: set[ScopeKey] = {("team", team_id)}
    out.update(("user", u.id) for u in ctx.service.list_users(team_id=team_id))
    for k in ctx.service.list_keys(team_id=team_id):
        out.add(("key", k.id))
        if k.run_id is not None and k.revoked_at is None:
            out.add(("run", k.run_id))
    return out


def _reading_scopes(ctx: Context, named: Named | None) -> set[ScopeKey] | None:
    """The levels to show (None: all), checked against what the caller may read (blocking).

    A team is shown with the levels inside it, so the limits set on its users and keys
    are in the same answer; any other scope alone.
    """
    visible = _visible(ctx)
    if named is None:
        return visible
    kind, ref, team = named
    if kind == "user" and team is None and ctx.caller.role != "admin":
        team = ctx.caller.team_id  # a name is looked up in the caller's own team
    level = ctx.host.quotas.rules.level(kind, ref, team=team)
    scope: ScopeKey = (level.kind, level.id)
    if visible is not None and scope not in visible:
        # Named as the caller named it: another team's key or user is not named back.
        raise PermissionDenied(f"this key may not read the budgets and limits of that {kind}")
    wanted = _inside_team(ctx, level.id) if level.kind == "team" else {scope}
    return wanted if visible is None else wanted & visible


# -- amounts and answers -------------------------------------------------------------


def _stored_amount(resource: str, value: float) -> int:
    """A limit as stored: nano-USD for ``usd`` (exactly, via its decimal text), tokens as is."""
    exact = Decimal(str(value))
    if resource == "usd":
        exact *= _NANO_PER_USD
        if exact != exact.to_integral_value():
            raise InvalidRequest(f"a USD limit has at most 9 decimals (nano-dollars), not {value}")
    elif exact != exact.to_integral_value():
        raise InvalidRequest(f"a token limit is a whole number, not {value}")
    if exact >= MAX_AMOUNT:
        top = Decimal(MAX_AMOUNT - 1)
        most = f"{top / _NANO_PER_USD} USD" if resource == "usd" else f"{top:,} tokens"
        raise InvalidRequest(f"a limit may be at most {most}, not {value}")
    return int(exact)


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def _budget_out(row: dict[str, Any]) -> m.BudgetStatus:
    return m.BudgetStatus(
        **{**row, "resets_at": _time(row["resets_at"]), "updated_at": _time(row["updated_at"])}
    )


def _limit_out(row: dict[str, Any]) -> m.LimitStatus:
    return m.LimitStatus(**{**row, "updated_at": _time(row["updated_at"])})


def _rate_row(rule: RateRule) -> dict[str, Any]:
    lv = rule.level
    return {
        "scope": {"kind": lv.kind, "id": lv.id, "name": lv.name},
        "rpm": rule.rpm,
        "tpm": rule.tpm,
        "concurrency": rule.concurrency,
        "source": rule.source,
        "updated_at": rule.updated_at,
    }


def _sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    scope = row["scope"]
    return (
        _ORDER[scope["kind"]],
        scope["name"] or scope["id"],
        _ORDER.get(row.get("resource", ""), 0),
        _ORDER.get(row.get("window", ""), 0),
    )


async def _budget_rows(gate: QuotaGate, scopes: set[ScopeKey] | None) -> list[dict[str, Any]]:
    """Budget status of every scope, or of ``scopes`` (only those are asked for their
    usage)."""
    if scopes is None:
        return await gate.budget_status()
    ruled = {(r.level.kind, r.level.id) for r in gate.ruleset.budgets}
    return [row for s in sorted(ruled & scopes) for row in await gate.budget_status(s)]


# -- routes ----------------------------------------------------------------------------


async def get_budgets(
    ctx: Ctx,
    team: TeamParam = None,
    user: UserParam = None,
    key: KeyParam = None,
    org: OrgParam = False,
) -> m.Budgets:
    """Budgets with their current window's spend, and rate limits, of every scope or one;
    a team's come with those of its users, keys and live runs.

    The org admin sees everything; a team admin its team and the levels inside it; any
    other key its team, its user and itself.
    """
    scopes = await asyncio.to_thread(_reading_scopes, ctx, _named(team, user, key, org))
    gate = ctx.host.quotas
    budgets = await _budget_rows(gate, scopes)
    limits = [
        row
        for row in gate.limit_status()
        if scopes is None or (row["scope"]["kind"], row["scope"]["id"]) in scopes
    ]
    return m.Budgets(
        budgets=[_budget_out(b) for b in sorted(budgets, key=_sort_key)],
        limits=[_limit_out(r) for r in sorted(limits, key=_sort_key)],
    )


async def put_budget(ctx: Ctx, body: m.BudgetIn) -> m.BudgetStatus:
    """Create or replace the budget of a scope on a resource per window (org admin).

    A budget set in the config file cannot be changed here (409).
    """
    _require_org_admin(ctx)
    amount = _stored_amount(body.resource, body.limit)
    gate = ctx.host.quotas

    def write() -> tuple[Level, str]:
        level = _body_level(gate.rules, body.scope)
        rule = gate.rules.set_budget(
            level,
            body.resource,
            body.window,
            amount,
            soft_fraction=body.soft_fraction,
            by=ctx.caller.key_id,
        )
        return level, rule.id

    level, budget_id = await asyncio.to_thread(write)
    await gate.reload()
    for row in await gate.budget_status((level.kind, level.id)):
        if row["id"] == budget_id:
            return _budget_out(row)
    raise NotFound(f"the {body.window} {body.resource} budget of {level.label} was just removed")


async def delete_budget(
    ctx: Ctx,
    resource: Annotated[m.Resource, Query(description="`usd` or `tokens`.")],
    window: Annotated[m.Window, Query(description="The budget's window.")] = "day",
    team: TeamParam = None,
    user: UserParam = None,
    key: KeyParam = None,
    org: OrgParam = False,
) -> Response:
    """Remove a budget set through the API (org admin); the scope is named as in GET."""
    _require_org_admin(ctx)
    named = _named(team, user, key, org)
    if named is None:
        raise InvalidRequest("name the budget's scope: team=, user=, key= or org=true")
    kind, ref, team_ref = named
    gate = ctx.host.quotas

    def remove() -> None:
        level = gate.rules.level(kind, ref, team=team_ref)
        gate.rules.delete_budget(level, resource, window)

    await asyncio.to_thread(remove)
    await gate.reload()
    return Response(status_code=204)


async def put_limits(ctx: Ctx, body: m.LimitsIn) -> m.LimitStatus:
    """Set or clear (`null`) the rate and concurrency limits of a scope (org admin).

    Fields absent from the body keep their value; with all three cleared the scope has no
    stored limits. A limit in the config file still applies: the stricter one holds.
    """
    _require_org_admin(ctx)
    changes: dict[str, int | None] = {
        name: getattr(body, name)
        for name in ("rpm", "tpm", "concurrency")
        if name in body.model_fields_set
    }
    if not changes:
        raise InvalidRequest("give at least one of rpm, tpm, concurrency (null clears one)")
    gate = ctx.host.quotas

    def write() -> RateRule:
        level = _body_level(gate.rules, body.scope)
        return gate.rules.set_limits(level, changes, by=ctx.caller.key_id)

    rule = await asyncio.to_thread(write)
    await gate.reload()
    return _limit_out(_rate_row(rule))


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["budgets"])
    r.add_api_route("/budgets", get_budgets, methods=["GET"])
    r.add_api_route("/budgets", put_budget, methods=["PUT"])
    r.add_api_route(
        "/budgets", delete_budget, methods=["DELETE"], status_code=204, response_class=Response
    )
    r.add_api_route("/limits", put_limits, methods=["PUT"])
    return r
