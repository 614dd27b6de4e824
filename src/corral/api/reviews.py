"""Routes for review gates: list and show reviews, approve, reject, comment, request changes;
and the autonomy ledger.

Who may do what (``corral.review.service``): the organisation admin, the keys of the run's
team and the code owners of its change see a review and act on it; a run's own key does
none of it (403). The run's requester and owner may approve, but their approvals never
count (they are the change's authors). Every action is recorded in the ledger.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from corral.api.bodies import Storable
from corral.api.context import Ctx
from corral.api.runs import RunsHost
from corral.errors import InvalidRequest, NotFound, PermissionDenied
from corral.review import browser
from corral.review.service import Review, Reviews
from corral.runs import outputs
from corral.runs.artifacts import ArtifactStore
from corral.runs.ledger import Ledger
from corral.traces.usage import run_calls

_RUN_ID = Annotated[str, Path(max_length=40, description="A run id (run_…).")]
_DIFF_SHOWN = 1 << 20  # bytes of the diff a review shows; the whole is an artifact
_SHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.png")


class ReviewsHost(RunsHost, Protocol):
    @property
    def reviews(self) -> Reviews: ...
    @property
    def ledger(self) -> Ledger: ...


# -- models -------------------------------------------------------------------------------------


class Verdict(Storable):
    comment: str | None = Field(default=None, max_length=20_000, description="Why.")


_NO_VERDICT = Verdict()  # the body is optional: no body is no comment


class CommentIn(Storable):
    text: str = Field(min_length=1, max_length=20_000)
    path: str | None = Field(default=None, max_length=1000, description="A path it changes.")
    line: int | None = Field(default=None, ge=1, le=10_000_000, description="A line of it.")


class ChangesIn(Storable):
    comment: str = Field(min_length=1, max_length=20_000, description="What to change.")


class ActionOut(BaseModel):
    id: int
    run_id: str
    revision: int | None
    actor: str = Field(description="admin, user:<id> or key:<id>.")
    actor_name: str
    action: str
    comment: str | None
    path: str | None
    line: int | None
    at: datetime
    dismissed: bool = Field(description="An approval a newer revision dismissed.")


class RevisionOut(BaseModel):
    revision: int
    run_id: str
    run_state: str
    created_at: datetime
    created_by: str
    diff: dict[str, Any] = Field(description="Files, lines added and removed (the current "
                                             "revision's paths too).")  # fmt: skip


class VerdictOut(BaseModel):
    reviewer: str
    revision: int
    verdict: str = Field(description="pending, approve, changes_requested or error.")
    run_id: str | None = Field(description="The reviewer agent's own run.")
    identity: str | None = Field(description="The service account it ran as.")
    summary: str | None
    comments: list[dict[str, Any]]
    llm_calls: int
    cost_usd: float = Field(description="What it cost, metered to the review.")


class ReviewOut(BaseModel):
    id: str = Field(description="The review: its first run's id.")
    run_id: str = Field(description="The run whose change is under review (latest revision).")
    state: str = Field(description="open, changes_requested, approved, rejected or delivered.")
    passed: bool = Field(description="Whether the gate passes: the run may be delivered.")
    missing: list[str] = Field(description="What the gate still needs, one sentence each.")
    team: str
    repo: str
    agent: str
    task: str
    requester: str | None
    owner: str
    authors: list[str] = Field(description="Whose approvals do not count (user ids).")
    revision: int
    pending_run: str | None = Field(description="A follow-up run making requested changes.")
    gate: dict[str, Any] = Field(description="The effective gate and the rules it came from.")
    approvals: int = Field(description="Approvals that count.")
    authors_approved: list[str] = Field(
        description="Approvals given by the change's authors: recorded, never counted."
    )
    owners: list[dict[str, Any]] = Field(description="Each code-owned path and who approved.")
    checks: list[dict[str, Any]] = Field(description="Policy checks, tests after edit, evidence.")
    codeowners: dict[str, Any] = Field(description="The CODEOWNERS file read and its problems.")
    evidence: dict[str, Any] = Field(description="Each claim of the report and its verdict.")
    reviewers: list[VerdictOut]
    reviewers_cost_usd: float = Field(description="What reviewer agents cost, on this review.")
    revisions: list[RevisionOut]
    actions: list[ActionOut] = Field(description="Approvals, comments, requests: the history.")
    screenshots: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The browser check's pages: name, url of the PNG (on show only).",
    )
    diff: str | None = Field(default=None, description="The change (first MiB; on show only).")
    artifacts: list[str] = Field(default_factory=list, description="The run's artifacts.")


class ReviewList(BaseModel):
    reviews: list[ReviewOut]


class ChangesOut(BaseModel):
    review: ReviewOut
    follow_up: str = Field(description="The run queued to make the changes.")


class LedgerRowOut(BaseModel):
    group: dict[str, str] = Field(description="team / agent / owner, by name.")
    runs: int
    delivered: int
    interventions: int = Field(description="Human actions but the final approval and delivery.")
    interventions_per_run: float
    autonomous: int = Field(description="Runs delivered with no intervention.")
    autonomy_rate: float = Field(description="autonomous / delivered.")
    actions: dict[str, int] = Field(description="Every human action, by kind.")


class LedgerOut(BaseModel):
    by: list[str]
    since: datetime | None
    rows: list[LedgerRowOut]


# -- rendering ----------------------------------------------------------------------------------


def _host(ctx: Ctx) -> ReviewsHost:
    return cast(ReviewsHost, ctx.host)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _out(ctx: Ctx, review: Review, *, detail: bool = False) -> ReviewOut:
    host = _host(ctx)
    run = review.run
    users = {u for r in review.runs.values() for u in (r.owner_id, r.requester_id) if u}
    users |= {a.actor.removeprefix("user:") for a in review.actions if a.actor.startswith("user:")}
    users |= {v.user_id for v in review.verdicts if v.user_id}
    names = ctx.service.user_names(users)
    team = ctx.service.team_names([run.team_id]).get(run.team_id, run.team_id)

    def name(actor: str) -> str:
        return names.get(actor.removeprefix("user:"), actor) if actor.startswith("user:") else actor

    verdicts = []
    total = 0
    for v in review.verdicts:
        calls, cost = run_calls(host.store, v.run_id) if v.run_id else (0, 0)
        total += cost
        verdicts.append(
            VerdictOut(
                reviewer=v.reviewer, revision=v.revision, verdict=v.verdict, run_id=v.run_id,
                identity=names.get(v.user_id or "", v.user_id), summary=v.summary,
                comments=v.comments, llm_calls=calls, cost_usd=cost / 1e9,
            )
        )  # fmt: skip
    findings = review.findings
    out = ReviewOut(
        id=review.id, run_id=run.id, state=review.state, passed=review.decision.passed,
        missing=review.decision.missing, team=team, repo=run.repo, agent=run.profile,
        task=run.task, requester=names.get(run.requester_id or "", run.requester_id),
        owner=names.get(run.owner_id, run.owner_id),
        authors=sorted(host.reviews.authors(review)), revision=review.current.revision,
        pending_run=None if review.pending is None else review.pending.run_id,
        gate=review.gate.as_json(), approvals=review.decision.approvals,
        authors_approved=review.decision.authors_approved,
        owners=review.decision.owners, checks=findings.get("checks", []),
        codeowners=findings.get("codeowners", {}), evidence=findings.get("evidence", {}),
        reviewers=verdicts, reviewers_cost_usd=total / 1e9,
        revisions=[
            RevisionOut(
                revision=r.revision, run_id=r.run_id, run_state=review.runs[r.run_id].state,
                created_at=_dt(r.created_at), created_by=r.created_by,
                diff=dict((r.findings or {}).get("diff", {})),
            )
            for r in review.revisions
        ],
        actions=[
            ActionOut(
                id=a.id, run_id=a.run_id, revision=a.revision, actor=a.actor,
                actor_name=name(a.actor), action=a.action, comment=a.comment, path=a.path,
                line=a.line, at=_dt(a.at), dismissed=a.dismissed_at is not None,
            )
            for a in review.actions
        ],
    )  # fmt: skip
    if detail:
        store = host.executor.artifacts
        out.diff = _diff(store, run.id)
        out.artifacts = [path for path, _ in store.list(run.id, "")]
        out.screenshots = _screenshots(store, review)
    return out


def _web_run(review: Review) -> str | None:
    """The run of the current revision's browser check, if there is one."""
    for verdict in review.verdicts:
        if verdict.reviewer == browser.REVIEWER and verdict.revision == review.current.revision:
            return verdict.run_id
    return None


def _screenshots(store: ArtifactStore, review: Review) -> list[dict[str, Any]]:
    web = _web_run(review)
    if web is None:
        return []
    found = []
    for name, size in store.list(web, browser.SCREENSHOTS.rstrip("/")):  # names below it
        if _SHOT.fullmatch(name):
            url = f"/api/v1/reviews/{review.run.id}/screenshots/{name}"
            found.append({"name": name.removesuffix(".png"), "url": url, "bytes": size})
    return found


def _diff(store: ArtifactStore, run_id: str) -> str:
    try:
        with store.open(run_id, "diff.patch") as patch:
            data = patch.read_at(0, _DIFF_SHOWN + 1)
    except outputs.Unreadable:
        return ""
    text = data[:_DIFF_SHOWN].decode(errors="replace")
    if len(data) > _DIFF_SHOWN:
        text += f"\n[… cut at {_DIFF_SHOWN:,} bytes: corral runs artifacts {run_id} diff.patch]\n"
    return text


# -- routes -------------------------------------------------------------------------------------


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["reviews"])

    @r.get("/reviews", summary="Open reviews (runs awaiting review or approved), newest first")
    async def list_reviews(
        ctx: Ctx,
        team: Annotated[str | None, Query(max_length=200)] = None,
        mine: Annotated[
            bool, Query(description="Only my runs' and those I am a code owner of.")
        ] = False,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> ReviewList:
        def work() -> ReviewList:
            found = _host(ctx).reviews.find(ctx.caller, team=team, mine=mine, limit=limit)
            return ReviewList(reviews=[_out(ctx, review) for review in found])

        return await asyncio.to_thread(work)

    @r.get("/reviews/{run_id}", summary="One review: its change, checks, owners, evidence")
    async def show(ctx: Ctx, run_id: _RUN_ID) -> ReviewOut:
        def work() -> ReviewOut:
            return _out(ctx, _host(ctx).reviews.get(run_id, ctx.caller), detail=True)

        return await asyncio.to_thread(work)

    @r.get("/reviews/{run_id}/screenshots/{name}", summary="A browser check's screenshot (PNG)")
    async def screenshot(
        ctx: Ctx,
        run_id: _RUN_ID,
        name: Annotated[str, Path(pattern=_SHOT.pattern, description="NAME.png")],
    ) -> Response:
        host = _host(ctx)

        def work() -> outputs.Opened:
            web = _web_run(host.reviews.get(run_id, ctx.caller))  # 404 for those who may not
            if web is None:
                raise NotFound(f"run {run_id}'s change has no browser check")
            try:
                return host.executor.artifacts.open(web, browser.SCREENSHOTS + name)
            except outputs.Unreadable as exc:
                raise NotFound(f"no screenshot {name} on run {run_id}'s review") from exc

        opened = await asyncio.to_thread(work)
        return StreamingResponse(
            opened.chunks(), media_type="image/png", background=BackgroundTask(opened.close)
        )

    @r.post("/reviews/{run_id}/approve", summary="Approve the change under review")
    async def approve(ctx: Ctx, run_id: _RUN_ID, body: Verdict = _NO_VERDICT) -> ReviewOut:
        def work() -> ReviewOut:
            comment = body.comment
            return _out(ctx, _host(ctx).reviews.approve(run_id, ctx.caller, comment))

        return await asyncio.to_thread(work)

    @r.post("/reviews/{run_id}/reject", summary="Reject the change (the run ends rejected)")
    async def reject(ctx: Ctx, run_id: _RUN_ID, body: Verdict = _NO_VERDICT) -> ReviewOut:
        def work() -> ReviewOut:
            comment = body.comment
            return _out(ctx, _host(ctx).reviews.reject(run_id, ctx.caller, comment))

        return await asyncio.to_thread(work)

    @r.post("/reviews/{run_id}/comments", summary="Comment on the change, or a line of it")
    async def comment(ctx: Ctx, run_id: _RUN_ID, body: CommentIn) -> ReviewOut:
        def work() -> ReviewOut:
            done = _host(ctx).reviews.comment(
                run_id, ctx.caller, body.text, path=body.path, line=body.line
            )
            return _out(ctx, done)

        return await asyncio.to_thread(work)

    @r.post(
        "/reviews/{run_id}/request-changes",
        status_code=201,
        summary="Ask for changes: a follow-up run continues the change with the comments",
    )
    async def request_changes(ctx: Ctx, run_id: _RUN_ID, body: ChangesIn) -> ChangesOut:
        host = _host(ctx)

        def work() -> ChangesOut:
            review, follow = host.reviews.request_changes(run_id, ctx.caller, body.comment)
            return ChangesOut(review=_out(ctx, review), follow_up=follow.id)

        done = await asyncio.to_thread(work)
        host.executor.wake()
        return done

    @r.get("/ledger", summary="Human interventions per run and the autonomy rate")
    async def ledger(
        ctx: Ctx,
        by: Annotated[
            str, Query(max_length=100, description="team, agent, owner; comma-separated.")
        ] = "team",
        since: Annotated[
            datetime | None, Query(description="Runs created since (ISO 8601).")
        ] = None,
        team: Annotated[str | None, Query(max_length=200)] = None,
    ) -> LedgerOut:
        groups = [g.strip() for g in by.split(",") if g.strip()]

        def work() -> LedgerOut:
            if ctx.caller.run_id is not None:
                raise PermissionDenied("a run's key may not read the ledger; use a person's key")
            teams = _ledger_teams(ctx, team)
            rows = _host(ctx).ledger.report(
                by=groups, since=None if since is None else since.timestamp(), teams=teams
            )
            return LedgerOut(by=groups, since=since, rows=[_row(ctx, row) for row in rows])

        return await asyncio.to_thread(work)

    return r


def _ledger_teams(ctx: Ctx, team: str | None) -> list[str] | None:
    """The teams a ledger covers: any (or all) for the organisation admin; a team's key its
    own team."""
    if ctx.caller.role == "admin":
        return None if team is None else [ctx.service.get_team(team).id]
    own = ctx.own_team(team)
    if own is None:
        raise InvalidRequest("this key belongs to no team")
    return [own]


def _row(ctx: Ctx, row: Any) -> LedgerRowOut:
    group = dict(row.group)
    if "team" in group:
        group["team"] = ctx.service.team_names([group["team"]]).get(group["team"], group["team"])
    if "owner" in group:
        group["owner"] = ctx.service.user_names([group["owner"]]).get(
            group["owner"], group["owner"]
        )
    data = row.as_json()
    data["group"] = group
    return LedgerRowOut.model_validate(data)


__all__ = ["router"]
