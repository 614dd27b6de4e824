"""Routes for guards: incidents (list, show, acknowledge, release, kill), the detectors as
they apply to a team, and kill switches.

Who may do what:

* reading: the organisation admin every incident; a team's keys (its admin's, a person's)
  the team's incidents. Another team's incident is 404, as one that does not exist, on
  every route, and so is another team named in ``team``;
* ack, release, kill: the organisation admin, the admin of the incident's team, or the
  incident's owner (the person whose run or key it is about);
* kill switches: a team's admin for that team, the organisation admin for any team and for
  the whole organisation (``team`` null);
* a run's own key: none of it (403).

Reads go to the store through the engine's ``IncidentService``; changes go through the
guards engine (``host.guards``), which does what a release or a kill means for the run and
its key, and records the incident's new state and what it did in the timeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from corral.api.bodies import Storable
from corral.api.context import Context, Ctx, Host
from corral.errors import NotFound, PermissionDenied
from corral.guards.incidents import STATES, Incident, IncidentService
from corral.guards.ops import DetectorView, GuardOps, KillSwitch
from corral.runs.ledger import HumanAction, Ledger
from corral.runs.service import RunService, actor_of, refuse_run_keys

_INCIDENT_ID = Annotated[str, Path(max_length=40, description="An incident id (inc_…).")]


class GuardsHost(Host, Protocol):
    @property
    def guards(self) -> GuardOps: ...
    @property
    def runs(self) -> RunService: ...
    @property
    def ledger(self) -> Ledger: ...


def _record(ctx: Ctx, run_id: str, action: HumanAction, actor: str, comment: str | None) -> None:
    host = _host(ctx)
    host.ledger.record(host.runs.load(run_id), action, actor, comment=comment)


# -- models ---------------------------------------------------------------------------------


class Evidence(BaseModel):
    """One firing: what crossed which threshold, the spans that show it, what it did."""

    detector: str
    message: str
    numbers: dict[str, float | int | str] = Field(
        description="What crossed, and the threshold it crossed."
    )
    span_ids: list[str] = Field(description="The spans that are the evidence, most recent last.")
    at: datetime
    action: str = Field(description="warn, throttle, sequester or kill.")


class IncidentEvent(BaseModel):
    at: datetime
    actor: str = Field(description="guard:<detector>, admin, user:<id> or key:<id>.")
    actor_name: str = Field(description="The actor as people know it: the user's name.")
    kind: str = Field(description="opened, fired, ack, release, kill, or an action taken.")
    detail: str | None = Field(description="The finding's message, or the person's comment.")
    data: Any = Field(default=None, description="The firing's evidence, or what an action did.")


class IncidentOut(BaseModel):
    id: str
    state: str = Field(description=", ".join(STATES))
    action: str = Field(description="The strongest action taken so far.")
    detector: str = Field(description="The detector that opened it.")
    summary: str = Field(description="What the opening firing found.")
    subject: str = Field(description="run, or key (a key that is not a run's).")
    run_id: str | None
    key_id: str | None
    team_id: str | None
    team: str | None = Field(description="The team's name.")
    owner_id: str | None
    owner: str | None = Field(description="The owner's name: the run's owner, or the key's user.")
    evidence: list[Evidence] = Field(description="The newest firings, oldest first.")
    evidence_dropped: int = Field(description="Older firings whose evidence is no longer kept.")
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    events: list[IncidentEvent] = Field(
        default_factory=list, description="The timeline (on a single incident only)."
    )


class IncidentList(BaseModel):
    incidents: list[IncidentOut]
    next_before: str | None = Field(
        description="Pass as `before` for the next page; null when this page is the last."
    )


class Comment(Storable):
    comment: str | None = Field(
        default=None, max_length=2000, description="Why: written in the incident's timeline."
    )


_NO_COMMENT = Comment()  # the body is optional: no body is no comment


class DetectorOut(BaseModel):
    name: str
    summary: str
    enabled: bool
    signals: list[str]
    subjects: list[str]
    thresholds: dict[str, float]
    actions: list[str] = Field(description="The escalation ladder, one step per firing.")
    overridden: list[str] = Field(description="The thresholds this team's settings change.")


class GuardsOut(BaseModel):
    team: str | None = Field(description="The team the thresholds apply to; null: the defaults.")
    detectors: list[DetectorOut]


class SwitchOut(BaseModel):
    team_id: str | None = Field(description="null: the whole organisation's switch.")
    team: str | None = Field(description="The team's name.")
    on_at: datetime
    actor: str
    comment: str | None


class SwitchList(BaseModel):
    switches: list[SwitchOut] = Field(description="The switches that are on.")


class KillSwitchIn(Storable):
    on: bool = Field(description="true stops the traffic; false lets it flow again.")
    team: str | None = Field(
        default=None, max_length=200, description="A team (name or id); null: the organisation."
    )
    comment: str | None = Field(default=None, max_length=2000)


# -- rendering ----------------------------------------------------------------------------------


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _Names:
    """Team and user names of a page of incidents, read in two queries."""

    def __init__(self, ctx: Context, found: Iterable[Incident], actors: Iterable[str] = ()):
        found = list(found)
        users = {i.owner_id for i in found if i.owner_id}
        users |= {a.removeprefix("user:") for a in actors if a.startswith("user:")}
        self.teams = ctx.service.team_names({i.team_id for i in found if i.team_id})
        self.users = ctx.service.user_names(users)

    def actor(self, actor: str) -> str:
        if actor.startswith("user:"):
            return self.users.get(actor.removeprefix("user:"), actor)
        return actor


def _out(incident: Incident, names: _Names) -> IncidentOut:
    return IncidentOut(
        id=incident.id, state=incident.state, action=incident.action,
        detector=incident.detector, summary=incident.summary, subject=incident.subject,
        run_id=incident.run_id, key_id=incident.key_id, team_id=incident.team_id,
        team=names.teams.get(incident.team_id or ""), owner_id=incident.owner_id,
        owner=names.users.get(incident.owner_id or ""),
        evidence=[Evidence.model_validate({**e, "at": _dt(e["at"])}) for e in incident.evidence],
        evidence_dropped=incident.evidence_dropped, opened_at=_dt(incident.opened_at),
        updated_at=_dt(incident.updated_at),
        closed_at=None if incident.closed_at is None else _dt(incident.closed_at),
        events=[
            IncidentEvent(
                at=_dt(e.at), actor=e.actor, actor_name=names.actor(e.actor), kind=e.kind,
                detail=e.detail, data=e.data,
            )
            for e in incident.events
        ],
    )  # fmt: skip


def _detailed(ctx: Context, incident: Incident) -> IncidentOut:
    return _out(incident, _Names(ctx, [incident], (e.actor for e in incident.events)))


def _switches(ctx: Context, switches: list[KillSwitch]) -> SwitchList:
    """The switches the caller may see: all for the organisation admin; the organisation's
    and its own team's for a team's key."""
    if ctx.caller.role != "admin":
        switches = [s for s in switches if s.team_id in (None, ctx.caller.team_id)]
    names = ctx.service.team_names({s.team_id for s in switches if s.team_id})
    return SwitchList(
        switches=[
            SwitchOut(
                team_id=s.team_id, team=names.get(s.team_id or ""), on_at=_dt(s.on_at),
                actor=s.actor, comment=s.comment,
            )
            for s in switches
        ]
    )  # fmt: skip


def _detector(view: DetectorView) -> DetectorOut:
    return DetectorOut(
        name=view.name, summary=view.summary, enabled=view.enabled, signals=list(view.signals),
        subjects=list(view.subjects), thresholds=dict(view.thresholds),
        actions=list(view.actions), overridden=list(view.overridden),
    )  # fmt: skip


# -- who may do what ----------------------------------------------------------------------------


def _host(ctx: Context) -> GuardsHost:
    return cast(GuardsHost, ctx.host)


def _incidents(ctx: Context) -> IncidentService:
    return _host(ctx).guards.incidents


def _visible(ctx: Context, incident_id: str) -> Incident:
    """The incident, with its timeline, if the caller may see it; 404 as a missing one
    otherwise (another team's incident is not this key's business)."""
    refuse_run_keys(ctx.caller, "read or act on incidents")
    incident = _incidents(ctx).get(incident_id)
    if ctx.caller.role != "admin" and incident.team_id != ctx.caller.team_id:
        raise NotFound(f"incident {incident_id[:40]} not found")
    return incident


def _check_may_act(ctx: Context, incident: Incident, what: str) -> None:
    """The organisation admin, the incident's team's admin, or its owner."""
    caller = ctx.caller
    if caller.role == "admin" or (
        caller.role == "team_admin" and caller.team_id == incident.team_id
    ):
        return
    if incident.owner_id is not None and caller.user_id == incident.owner_id:
        return
    raise PermissionDenied(
        f"only the incident's owner, its team's admin or the organisation admin may {what} "
        f"incident {incident.id}; use one of their keys"
    )


def _team_for(ctx: Context, team: str | None) -> str | None:
    """The team id a read is about: any team (or none: None) for the organisation admin; a
    team's key always its own (another team named is 404)."""
    refuse_run_keys(ctx.caller, "read guards")
    if ctx.caller.role == "admin":
        return None if team is None else ctx.service.get_team(team).id
    return ctx.own_team(team)


def _switch_scope(ctx: Context, team: str | None) -> str | None:
    """The team whose switch the caller flips (None: the organisation's), if it may."""
    refuse_run_keys(ctx.caller, "switch traffic off or on")
    caller = ctx.caller
    if caller.role == "admin":
        return None if team is None else ctx.service.get_team(team).id
    if team is None:
        raise PermissionDenied(
            "the organisation's kill switch needs the organisation admin key; to stop your "
            "team's traffic name it (team, or --team T)"
        )
    team_id = ctx.own_team(team)
    if caller.role != "team_admin":
        raise PermissionDenied(
            "a team's kill switch needs that team's admin key or the organisation admin key"
        )
    return team_id


# -- routes -------------------------------------------------------------------------------------

_Act = Callable[[GuardOps], Callable[..., Awaitable[Incident]]]


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["guards"])

    @r.get("/incidents", summary="List incidents, newest first")
    async def list_incidents(
        ctx: Ctx,
        team: Annotated[str | None, Query(max_length=200)] = None,
        state: Annotated[str | None, Query(description=", ".join(STATES))] = None,
        run: Annotated[str | None, Query(max_length=40, description="A run id.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[
            str | None, Query(max_length=40, description="The last id of the previous page.")
        ] = None,
    ) -> IncidentList:
        def work() -> IncidentList:
            team_id = _team_for(ctx, team)
            if before is not None:
                _visible(ctx, before)  # another team's id as a cursor is 404 like any other
            found = _incidents(ctx).list(
                team_id=team_id, state=state, run_id=run, limit=limit, before=before
            )
            names = _Names(ctx, found)
            return IncidentList(
                incidents=[_out(i, names) for i in found],
                next_before=found[-1].id if len(found) == limit else None,
            )

        return await asyncio.to_thread(work)

    @r.get("/incidents/{incident_id}", summary="One incident, with its evidence and timeline")
    async def show(ctx: Ctx, incident_id: _INCIDENT_ID) -> IncidentOut:
        return await asyncio.to_thread(lambda: _detailed(ctx, _visible(ctx, incident_id)))

    def action(
        path: str, verb: str, act: _Act, summary: str, ledger: HumanAction | None = None
    ) -> None:
        @r.post(f"/incidents/{{incident_id}}/{path}", summary=summary, name=f"{path}_incident")
        async def change(
            ctx: Ctx, incident_id: _INCIDENT_ID, body: Comment = _NO_COMMENT
        ) -> IncidentOut:
            def check() -> None:
                _check_may_act(ctx, _visible(ctx, incident_id), verb)

            await asyncio.to_thread(check)
            actor = actor_of(ctx.caller)
            done = await act(_host(ctx).guards)(incident_id, actor=actor, comment=body.comment)
            if ledger is not None and done.run_id is not None:  # a human action on a run
                await asyncio.to_thread(_record, ctx, done.run_id, ledger, actor, body.comment)
            # read again: the timeline as it is now, whatever the engine handed back
            shown = await asyncio.to_thread(_incidents(ctx).get, done.id)
            return await asyncio.to_thread(_detailed, ctx, shown)

    action("ack", "acknowledge", lambda g: g.acknowledge, "Acknowledge an incident")
    action("release", "release", lambda g: g.release, "Release a run or key (thaw, restore)",
           "incident_release")  # fmt: skip
    action("kill", "kill", lambda g: g.kill, "Kill an incident's run (or keep its key suspended)",
           "incident_kill")  # fmt: skip

    @r.get("/guards", summary="The detectors and thresholds that apply to a team")
    async def effective(
        ctx: Ctx, team: Annotated[str | None, Query(max_length=200)] = None
    ) -> GuardsOut:
        def work() -> GuardsOut:
            team_id = _team_for(ctx, team)
            views = _host(ctx).guards.effective(team_id)
            name = None if team_id is None else ctx.service.team_names([team_id]).get(team_id)
            return GuardsOut(team=name, detectors=[_detector(v) for v in views])

        return await asyncio.to_thread(work)

    @r.get("/guards/kill-switches", summary="The kill switches that are on")
    async def switches(ctx: Ctx) -> SwitchList:
        refuse_run_keys(ctx.caller, "read guards")
        on = _host(ctx).guards.switches_on()
        return await asyncio.to_thread(_switches, ctx, on)

    @r.post("/guards/kill-switch", summary="Stop or restart a team's or the organisation's traffic")
    async def kill_switch(ctx: Ctx, body: KillSwitchIn) -> SwitchList:
        team_id = await asyncio.to_thread(_switch_scope, ctx, body.team)
        on = await _host(ctx).guards.kill_switch(
            team_id, body.on, actor=actor_of(ctx.caller), comment=body.comment
        )
        return await asyncio.to_thread(_switches, ctx, on)

    return r
