"""Routes for the caller itself, teams, users and service accounts, and keys.

Handlers are plain ``def`` functions: FastAPI runs them in its thread pool,
so the blocking store calls never hold up the event loop.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from corral.api import models as m
from corral.api.context import Ctx
from corral.api.traces import TeamDetail, TracePolicyIn
from corral.errors import InvalidRequest, NotFound
from corral.identity import service as svc
from corral.identity.service import parse_duration, utc
from corral.runs.service import refuse_run_keys


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def team_out(ctx: Ctx, team: svc.Team) -> TeamDetail:
    """A team with its trajectory policy: its own settings and what applies."""
    settings = ctx.host.settings
    return TeamDetail(
        id=team.id,
        name=team.name,
        org_id=team.org_id,
        created_at=_time(team.created_at),
        body_capture=team.body_capture,
        retention_days=team.retention_days,
        effective_body_capture=team.body_capture or settings.trace_bodies,
        effective_retention_days=team.retention_days or settings.trace_retention_days,
    )


def user_out(user: svc.User, team_names: dict[str, str]) -> m.User:
    return m.User(
        id=user.id,
        name=user.name,
        kind=user.kind,
        email=user.email,
        team_id=user.team_id,
        team=team_names.get(user.team_id, user.team_id),
        org_id=user.org_id,
        created_at=_time(user.created_at),
    )


def key_fields(key: svc.Key, names: dict[str, str]) -> dict[str, Any]:
    """A key's public fields; ``names`` maps team and user ids to names."""
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "role": key.role,
        "org_id": key.org_id,
        "team_id": key.team_id,
        "team": names.get(key.team_id) if key.team_id else None,
        "user_id": key.user_id,
        "user": names.get(key.user_id) if key.user_id else None,
        "allowed_models": list(key.allowed_models) if key.allowed_models is not None else None,
        "expires_at": utc(key.expires_at),
        "revoked_at": utc(key.revoked_at),
        "suspended_by": key.suspended_by,
        "created_at": _time(key.created_at),
        "updated_at": _time(key.updated_at),
    }


def _names(ctx: Ctx) -> dict[str, str]:
    """Team and user ids to names (identity tables are small)."""
    names = {t.id: t.name for t in ctx.service.list_teams()}
    names.update((u.id, u.name) for u in ctx.service.list_users())
    return names


# -- me ------------------------------------------------------------------------


def get_me(ctx: Ctx) -> m.Me:
    """The calling key, its team and its user."""
    key = ctx.service.get_key(ctx.caller.key_id)
    names = _names(ctx)
    team = ctx.service.get_team(key.team_id) if key.team_id else None
    user = ctx.service.get_user(key.user_id) if key.user_id else None
    return m.Me(
        key=m.Key(**key_fields(key, names)),
        team=team_out(ctx, team) if team else None,
        user=user_out(user, names) if user else None,
    )


# -- teams ---------------------------------------------------------------------


def create_team(ctx: Ctx, body: m.TeamIn) -> TeamDetail:
    """Create a team (org admin only)."""
    ctx.require_org_admin()
    return team_out(ctx, ctx.service.create_team(body.name))


def list_teams(ctx: Ctx) -> list[TeamDetail]:
    """All teams; a team admin, or a person's key, sees its own team only."""
    if ctx.is_person:
        own = ctx.own_team(None)
        return [team_out(ctx, ctx.service.get_team(own))] if own else []
    return [team_out(ctx, t) for t in ctx.service.list_teams(team_id=ctx.team_scope(None))]


def get_team(ctx: Ctx, team: str) -> TeamDetail:
    """One team, by id or name, with its trajectory policy (a person's key: its own)."""
    if ctx.is_person:
        return team_out(ctx, ctx.service.get_team(_own_team(ctx, team)))
    ctx.require_manager()
    found = ctx.service.get_team(team)
    ctx.require_team_admin(found.id)
    return team_out(ctx, found)


def _own_team(ctx: Ctx, team: str | None) -> str:
    own = ctx.own_team(team)
    if own is None:  # a key of no team that is not an admin's: it has nothing to read here
        raise NotFound(f"team {team!r} not found")
    return own


async def update_team(ctx: Ctx, team: str, body: TracePolicyIn) -> TeamDetail:
    """Set a team's trajectory policy: which bodies are kept and for how many days.

    The org admin, or the team's own admin. Fields left out keep their value;
    `null` returns one to the server's default. This process applies the change
    at once, every other one when it next reloads its rules.
    """
    changes = body.model_dump(include=body.model_fields_set)
    updated = await asyncio.to_thread(_update_team, ctx, team, changes)
    await ctx.host.reload_routes()
    return updated


def _update_team(ctx: Ctx, team: str, changes: dict[str, Any]) -> TeamDetail:
    ctx.require_manager()
    found = ctx.service.get_team(team)
    ctx.require_team_admin(found.id)
    return team_out(ctx, ctx.service.set_team_policy(found.id, changes))


# -- users ---------------------------------------------------------------------


def create_user(ctx: Ctx, body: m.UserIn) -> m.User:
    """Create a user or a service account in a team."""
    ctx.require_manager()
    team = ctx.service.get_team(body.team)
    ctx.require_team_admin(team.id)
    user = ctx.service.create_user(body.name, team.id, kind=body.kind, email=body.email)
    return user_out(user, {team.id: team.name})


def list_users(
    ctx: Ctx, team: Annotated[str | None, Query(description="Team id or name.")] = None
) -> list[m.User]:
    """Users and service accounts, optionally of one team (a person's key: itself)."""
    if ctx.is_person:
        _own_team(ctx, team)
        return [get_user(ctx, ctx.caller.user_id)] if ctx.caller.user_id else []
    team_id = ctx.team_scope(team)
    names = {t.id: t.name for t in ctx.service.list_teams()}
    return [user_out(u, names) for u in ctx.service.list_users(team_id=team_id)]


def get_user(ctx: Ctx, user: str) -> m.User:
    """One user, by id (or by name when it is unique); a person's key reads itself."""
    if ctx.is_person:
        own = ctx.service.get_user(user, team_id=_own_team(ctx, None))
        if own.id != ctx.caller.user_id:
            raise NotFound(f"user {user!r} not found")
        return user_out(own, {own.team_id: ctx.service.get_team(own.team_id).name})
    ctx.require_manager()
    team_id = None if ctx.caller.role == "admin" else ctx.caller.team_id
    found = ctx.service.get_user(user, team_id=team_id)
    ctx.require_team_admin(found.team_id)
    return user_out(found, {t.id: t.name for t in ctx.service.list_teams()})


# -- keys ----------------------------------------------------------------------


def create_key(ctx: Ctx, body: m.KeyIn) -> m.KeyCreated:
    """Mint a key for a user or service account. The answer holds the secret, once."""
    ctx.require_manager()
    team = ctx.service.get_team(body.team)
    ctx.require_team_admin(team.id)
    if body.models is not None:
        unknown = sorted(set(body.models) - set(ctx.host.catalog.models))
        if unknown:
            raise InvalidRequest(
                f"unknown models {', '.join(map(repr, unknown))}; GET /api/v1/models lists them"
            )
    key, raw = ctx.service.create_key(
        team.id,
        body.user,
        name=body.name,
        models=body.models,
        expires_at=_expiry(ctx, body),
        role=body.role,
        created_by=ctx.caller.key_id,
    )
    return m.KeyCreated(**key_fields(key, _names(ctx)), key=raw)


def _expiry(ctx: Ctx, body: m.KeyIn) -> float | None:
    if body.expires_in is not None and body.expires_at is not None:
        raise InvalidRequest("give expires_in or expires_at, not both")
    if body.expires_in is not None:
        return ctx.host.clock.now() + parse_duration(body.expires_in)
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise InvalidRequest("expires_at needs a time zone, e.g. 2030-01-01T00:00:00Z")
        return body.expires_at.timestamp()
    return None


def list_keys(
    ctx: Ctx,
    team: Annotated[str | None, Query(description="Team id or name.")] = None,
    user: Annotated[str | None, Query(description="User id or name.")] = None,
) -> list[m.Key]:
    """Keys (never their secrets or hashes), optionally of one team or user; a person's
    key sees that person's keys."""
    if ctx.is_person:
        refuse_run_keys(ctx.caller, "list keys")
        team_id: str | None = _own_team(ctx, team)
        user_id = get_user(ctx, user).id if user is not None else ctx.caller.user_id
        if user_id is None:  # a service key of no user: only itself
            return [get_key(ctx, ctx.caller.key_id)]
    else:
        team_id = ctx.team_scope(team)
        user_id = ctx.service.get_user(user, team_id=team_id).id if user is not None else None
    names = _names(ctx)
    return [
        m.Key(**key_fields(k, names))
        for k in ctx.service.list_keys(team_id=team_id, user_id=user_id)
    ]


def get_key(ctx: Ctx, key_id: str) -> m.Key:
    """One key; any key may read itself."""
    key = ctx.service.get_key(key_id)
    if key.id != ctx.caller.key_id:
        ctx.require_manager()
        _require_key_admin(ctx, key)
    return m.Key(**key_fields(key, _names(ctx)))


def revoke_key(ctx: Ctx, key_id: str) -> m.Key:
    """Revoke a key: this process refuses it at once, every other one within a second."""
    ctx.require_manager()
    key = ctx.service.get_key(key_id)
    _require_key_admin(ctx, key)
    revoked = ctx.service.revoke_key(key.id)
    ctx.host.keys.forget(key.key_hash)
    return m.Key(**key_fields(revoked, _names(ctx)))


def _require_key_admin(ctx: Ctx, key: svc.Key) -> None:
    if key.team_id is None and ctx.caller.role != "admin":
        raise NotFound(f"key {key.id!r} not found")  # team admins do not see org keys
    ctx.require_team_admin(key.team_id)


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    r.add_api_route("/me", get_me, methods=["GET"], tags=["me"])
    r.add_api_route("/teams", create_team, methods=["POST"], status_code=201, tags=["teams"])
    r.add_api_route("/teams", list_teams, methods=["GET"], tags=["teams"])
    r.add_api_route("/teams/{team}", get_team, methods=["GET"], tags=["teams"])
    r.add_api_route("/teams/{team}", update_team, methods=["PATCH"], tags=["teams"])
    r.add_api_route("/users", create_user, methods=["POST"], status_code=201, tags=["users"])
    r.add_api_route("/users", list_users, methods=["GET"], tags=["users"])
    r.add_api_route("/users/{user}", get_user, methods=["GET"], tags=["users"])
    r.add_api_route("/keys", create_key, methods=["POST"], status_code=201, tags=["keys"])
    r.add_api_route("/keys", list_keys, methods=["GET"], tags=["keys"])
    r.add_api_route("/keys/{key_id}", get_key, methods=["GET"], tags=["keys"])
    r.add_api_route("/keys/{key_id}/revoke", revoke_key, methods=["POST"], tags=["keys"])
    r.add_api_route(
        "/keys/{key_id}", revoke_key, methods=["DELETE"], tags=["keys"], operation_id="delete_key"
    )
    return r
