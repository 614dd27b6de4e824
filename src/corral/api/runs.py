"""Routes for agent runs: submit, list, show, logs, cancel, artifacts, deliver.

A team's keys see and act on their team's runs, the organisation admin on
every run; another team's run is 404, as one that does not exist. A run's own
key may do none of this (a run neither submits runs nor delivers itself).
Store and git work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Protocol, Self, cast

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.background import BackgroundTask

from corral.api.context import Ctx, Host
from corral.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from corral.identity.service import parse_duration
from corral.quota._model import NANO_PER_USD
from corral.review.service import Reviews
from corral.runs import outputs
from corral.runs import workspace as workspaces
from corral.runs.artifacts import ArtifactStore
from corral.runs.executor import LocalExecutor
from corral.runs.ledger import Ledger
from corral.runs.model import ACTIVE, STATES, Run
from corral.runs.profiles import AgentContext
from corral.runs.service import (
    RunRequest,
    RunService,
    actor_of,
    command_line,
    default_model,
    refuse_run_keys,
)
from corral.traces.spans import run_trace
from corral.traces.usage import run_calls

_RUN_ID = Annotated[str, Path(max_length=40, description="A run id (run_…).")]


class RunsHost(Host, Protocol):
    @property
    def runs(self) -> RunService: ...
    @property
    def executor(self) -> LocalExecutor: ...
    @property
    def reviews(self) -> Reviews: ...
    @property
    def ledger(self) -> Ledger: ...


# -- models ---------------------------------------------------------------------------------


class _NoNul(BaseModel):
    """Text that reaches git, a command line or the store may not hold NUL characters."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self) -> Self:
        for name, value in self:
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and "\x00" in v for v in values):
                raise ValueError(f"{name} may not contain NUL characters")
        return self


class SubmitRun(_NoNul):
    """A run to queue. ``team`` defaults to the key's team, ``owner`` to its user; only a
    team admin key or the organisation admin key names another owner, and the run's models
    must be ones the submitting key may call."""

    agent: str = Field(description="The agent profile: corral, claude-code, codex, aider, "
                       "gemini or command.")  # fmt: skip
    repo: str = Field(min_length=1, description="A git repository: a path on the server or a URL.")
    task: str = Field(description="What the agent is asked to do.")
    team: str | None = None
    ref: str | None = Field(default=None, description="Branch, tag or commit (default: HEAD).")
    command: list[str] | str | None = Field(
        default=None, description="The command line of the `command` profile."
    )
    model: str | None = Field(default=None, description="The model the agent is given.")
    allow_models: list[str] = Field(
        default_factory=list, description="Further models the run's key may call."
    )
    priority: str = Field(default="normal", description="low, normal or high.")
    budget_usd: float | None = Field(
        default=None, gt=0, le=1_000_000, allow_inf_nan=False, description="The run's spending cap."
    )
    timeout: str | float | None = Field(
        default=None, description="Wall-clock limit: seconds, or a duration like 30m or 2h."
    )
    owner: str | None = None
    handoff_from: str | None = Field(
        default=None, description="A finished run whose artifacts are mounted at /handoff."
    )


class RunEventOut(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    actor: str = Field(description="user:<id>, admin, or executor.")
    actor_name: str = Field(description="The actor as people know it: the user's name.")
    reason: str | None


class RunOut(BaseModel):
    id: str
    state: str = Field(description=", ".join(STATES))
    reason: str | None = Field(description="Why the run is in its state.")
    team: str
    owner: str
    requester: str | None
    agent: str
    repo: str
    ref: str
    base_commit: str | None
    task: str
    command: list[str] | None
    model: str
    allowed_models: list[str]
    priority: str
    budget_usd: float | None
    timeout_s: float
    handoff_from: str | None
    sandbox: str
    exit_code: int | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    trace_id: str
    delivered_to: str | None
    cancel_requested: str | None
    llm_calls: int = 0
    cost_usd: float = 0.0
    events: list[RunEventOut] = Field(default_factory=list)


class RunList(BaseModel):
    runs: list[RunOut]


class Artifact(BaseModel):
    path: str
    size: int


class ArtifactList(BaseModel):
    artifacts: list[Artifact]


class Deliver(_NoNul):
    branch: str | None = Field(default=None, description="Create this branch in the repository.")
    patch: bool = Field(default=False, description="Answer the change as a patch instead.")


class Delivered(BaseModel):
    run: RunOut
    branch: str | None = None
    commit: str | None = None
    patch: str | None = None


# -- helpers ------------------------------------------------------------------------------------


def _host(ctx: Ctx) -> RunsHost:
    return cast(RunsHost, ctx.host)


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _out(ctx: Ctx, run: Run, *, detail: bool = False, names: _Names | None = None) -> RunOut:
    """A run as the API shows it; ``detail`` adds its history, LLM calls and cost."""
    host = _host(ctx)
    names = names or _Names.of(ctx, [run])
    calls, cost = 0, 0
    events: list[RunEventOut] = []
    if detail:
        calls, cost = run_calls(host.store, run.id)
        history = host.runs.events(run.id)
        names.add_actors(ctx, [e.actor for e in history])
        events = [
            RunEventOut(
                at=cast(datetime, _dt(e.at)), from_state=e.from_state, to_state=e.to_state,
                actor=e.actor, actor_name=names.actor(e.actor), reason=e.reason,
            )
            for e in history
        ]  # fmt: skip
    return RunOut(
        id=run.id, state=run.state, reason=run.reason,
        team=names.teams.get(run.team_id, run.team_id),
        owner=names.users.get(run.owner_id, run.owner_id),
        requester=names.users.get(run.requester_id or "", run.requester_id),
        agent=run.profile, repo=run.repo, ref=run.ref, base_commit=run.base_commit,
        task=run.task, command=run.command, model=run.model,
        allowed_models=list(run.allowed_models), priority=run.priority,
        budget_usd=None if run.budget_nusd is None else run.budget_nusd / NANO_PER_USD,
        timeout_s=run.timeout_s, handoff_from=run.handoff_from, sandbox=run.sandbox,
        exit_code=run.exit_code, created_at=cast(datetime, _dt(run.created_at)),
        started_at=_dt(run.started_at), ended_at=_dt(run.ended_at),
        trace_id=run_trace(run.id)[0], delivered_to=run.delivered_to,
        cancel_requested=run.cancel_requested, llm_calls=calls, cost_usd=cost / NANO_PER_USD,
        events=events,
    )  # fmt: skip


@dataclass(slots=True)
class _Names:
    """Team and user names of a page of runs, read in two queries."""

    teams: dict[str, str]
    users: dict[str, str]

    @classmethod
    def of(cls, ctx: Ctx, found: list[Run]) -> _Names:
        user_ids = {u for r in found for u in (r.owner_id, r.requester_id) if u}
        team_ids = {r.team_id for r in found}
        identity = ctx.service
        return cls(identity.team_names(team_ids), identity.user_names(user_ids))

    def add_actors(self, ctx: Ctx, actors: list[str]) -> None:
        wanted = {a.removeprefix("user:") for a in actors if a.startswith("user:")}
        wanted -= self.users.keys()
        self.users.update(ctx.service.user_names(wanted))

    def actor(self, actor: str) -> str:
        """``user:usr_…`` as the user's name; ``admin`` and ``executor`` as they are."""
        if actor.startswith("user:"):
            return self.users.get(actor.removeprefix("user:"), actor)
        return actor


def _timeout(value: str | float | None, default: float, most: float) -> float:
    """Seconds from a number or a duration (``30m``); NaN, infinities and numbers too large
    for a float are refused like any other value out of range (a 400 naming the field)."""
    if value is None:
        return default
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
    except OverflowError:
        seconds = math.inf
    if not 0 < seconds <= most:  # also false for NaN
        raise InvalidRequest(
            f"timeout (--timeout) must be more than 0 and at most {most:g} seconds"
        )
    return seconds


def _submit(ctx: Ctx, body: SubmitRun) -> Run:
    host = _host(ctx)
    refuse_run_keys(ctx.caller, "submit runs")
    executor = host.executor
    profile = executor.profiles.get(body.agent)
    if profile is None:
        known = ", ".join(sorted(executor.profiles))
        raise InvalidRequest(f"unknown agent profile {body.agent!r}; known: {known}")
    s = host.settings
    models = list(host.catalog.models)
    model = body.model or default_model(ctx.caller, s.run_default_model, models)
    for name in (model, *body.allow_models):
        if name not in host.catalog.models:
            raise InvalidRequest(f"model {name!r} is not in the catalog ({', '.join(models)})")
    allowed = list(dict.fromkeys([model, *body.allow_models]))
    req = RunRequest(
        team=body.team, profile=body.agent, repo=body.repo, task=body.task, ref=body.ref,
        command=body.command, model=model, allow_models=body.allow_models,
        priority=body.priority, budget_usd=body.budget_usd, owner=body.owner,
        handoff_from=body.handoff_from,
    )  # fmt: skip
    team, _ = host.runs.check_rights(req, ctx.caller, allowed)  # before the slower checks
    probe = AgentContext(
        run_id="", team="", owner="", task=body.task, model=model, key="", gateway="",
        traceparent="", workspace="", artifacts="", home="", runtime=executor.runtime,
        command=command_line(body.command),
        agent_path=executor.agent_path,
    )  # fmt: skip
    profile.check(probe)
    policy = workspaces.team_policy(s, team.name, executor.dir)
    source = workspaces.check_source(body.repo, body.ref, policy)
    timeout = _timeout(body.timeout, s.run_default_timeout, s.run_max_timeout)
    if executor.refusal:  # after the request's own mistakes, which the caller can fix
        raise ServiceUnavailable(executor.refusal, code="runs_refused")
    return host.runs.new_run(
        req, ctx.caller, source=source, model=model, allowed=allowed, timeout_s=timeout,
        sandbox=executor.sandbox_label,
    )  # fmt: skip


_OUTPUTS = ("diff.patch", "report.md", "stdout.log", "stderr.log")
"""What Corral itself keeps of a run in the artifact store, beside the agent's artifacts."""
_LOG_PAGE = 4 * 1024 * 1024
"""The most one logs request answers (the CLI asks again from the next offset)."""


def _artifacts(host: RunsHost, run: Run) -> list[Artifact]:
    """Corral's outputs and the agent's artifacts, as the artifact store holds them (the
    agent's links, pipes and devices were never copied in)."""
    store = host.executor.artifacts
    found: list[Artifact] = []
    for name in _OUTPUTS:
        with contextlib.suppress(outputs.Unreadable), store.open(run.id, name) as opened:
            found.append(Artifact(path=name, size=opened.size))
    for folder in ("artifacts", "sequestered"):  # sequestered/N.patch: its change when frozen
        for path, size in store.list(run.id, folder):
            found.append(Artifact(path=f"{folder}/{path}", size=size))
    return found


def _open_artifact(host: RunsHost, run: Run, name: str) -> outputs.Opened:
    """Artifact ``name`` opened for reading from the artifact store: one of Corral's outputs,
    or a file under ``artifacts/``; anything else is 404."""
    if name not in _OUTPUTS and not name.startswith(("artifacts/", "sequestered/")):
        raise NotFound(f"artifact {name} not found")
    try:
        return host.executor.artifacts.open(run.id, name)
    except outputs.Unreadable as exc:
        what = "" if exc.what == "missing" else f" ({exc.what}: only regular files are served)"
        raise NotFound(f"artifact {name} not found for run {run.id}{what}") from exc


def _read_patch(host: RunsHost, run: Run) -> bytes:
    """The run's patch (none: empty), at most ``run_diff_max_bytes`` of it; a run whose diff
    was too large to keep whole cannot be delivered."""
    cap = host.settings.run_diff_max_bytes
    store = host.executor.artifacts
    try:
        too_large = _exists(store, run.id, outputs.DIFF_TOO_LARGE)
        with store.open(run.id, "diff.patch") as patch:
            if too_large or patch.size > cap:
                raise Conflict(
                    f"run {run.id}'s diff is larger than run_diff_max_bytes "
                    f"({outputs.size_in_words(cap)}) and was not kept whole: it cannot "
                    "be delivered; raise run_diff_max_bytes and run it again"
                )
            data = patch.read_at(0, cap)
    except outputs.Unreadable:
        return b""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        raise Conflict(
            f"run {run.id}'s patch is not UTF-8 text and cannot be delivered here: download it "
            f"(corral runs artifacts {run.id} diff.patch) and apply it with git"
        ) from exc
    return data


def _exists(store: ArtifactStore, run_id: str, name: str) -> bool:
    try:
        store.open(run_id, name).close()
    except outputs.Unreadable:
        return False
    return True


def _deliver(ctx: Ctx, run_id: str, body: Deliver) -> Delivered:
    host = _host(ctx)
    refuse_run_keys(ctx.caller, "deliver runs")
    run = host.runs.get(run_id, ctx.caller)
    if (body.branch is None) == (not body.patch):
        raise InvalidRequest("say how to deliver: a branch name, or patch = true")
    if run.state not in ("awaiting_review", "approved"):
        raise InvalidRequest(
            f"run {run.id} is {run.state.replace('_', ' ')}; only a run awaiting review or "
            "approved can be delivered"
        )
    if ctx.caller.user_id is None and ctx.caller.role != "admin":
        raise PermissionDenied("delivery needs a person's key")
    patch = _read_patch(host, run)
    if not patch.strip():  # a branch would be an empty commit, a patch nothing at all
        raise Conflict(f"run {run.id} changed nothing: there is nothing to deliver")
    host.reviews.check_deliverable(run.id, ctx.caller)  # 409 naming what the gate needs
    run = host.runs.get(run_id, ctx.caller)  # approved by the last approval, perhaps
    actor = actor_of(ctx.caller)
    if body.branch is not None:
        if run.base_commit is None:
            raise InvalidRequest(f"run {run.id} has no base commit to deliver onto")
        message = (
            f"{_first_line(run.task)}\n\nCorral run {run.id} ({run.profile}), delivered by {actor}."
        )
        commit = workspaces.deliver_branch(
            run.repo,
            run.base_commit,
            patch,  # read from the artifact store and checked by _read_patch
            body.branch,
            message=message,
            author=f"corral {run.id}",
            policy=workspaces.team_policy(
                host.settings,
                host.executor.identity.get_team(run.team_id).name,
                host.executor.dir,
            ),  # checked again: the repository's path may have changed since submit
        )
        target = f"branch {body.branch} ({commit[:12]})"
    else:
        commit, target = None, "patch"
    if run.state == "awaiting_review":  # its gate passes (or gates are off)
        reason = "its review gate passed" if host.reviews.enabled else "review gates are off"
        host.runs.transition(run.id, "approved", actor=actor, reason=reason)
    done = host.runs.transition(
        run.id, "delivered", actor=actor, reason=f"delivered as {target}", delivered_to=target
    )
    host.ledger.record(done, "deliver", actor, comment=target)
    return Delivered(
        run=_out(ctx, done, detail=True), branch=body.branch, commit=commit,
        patch=patch.decode() if body.patch else None,
    )  # fmt: skip


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "agent run"
    return line[:72]


# -- routes ----------------------------------------------------------------------------------


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/runs", tags=["runs"])

    @r.post("", status_code=201, summary="Queue an agent run")
    async def submit(ctx: Ctx, body: SubmitRun) -> RunOut:
        await _host(ctx).executor.ready()
        run = await asyncio.to_thread(_submit, ctx, body)
        _host(ctx).executor.wake()
        return await asyncio.to_thread(_out, ctx, run, detail=True)

    @r.get("", summary="List runs, newest first")
    async def list_runs(
        ctx: Ctx,
        team: str | None = None,
        state: Annotated[list[str] | None, Query(description="Repeat to match several.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> RunList:
        def work() -> RunList:
            found = _host(ctx).runs.find(ctx.caller, team=team, states=state or (), limit=limit)
            names = _Names.of(ctx, found)
            return RunList(runs=[_out(ctx, run, names=names) for run in found])

        return await asyncio.to_thread(work)

    @r.get("/{run_id}", summary="One run, with its history, calls and cost")
    async def show(ctx: Ctx, run_id: _RUN_ID) -> RunOut:
        def work() -> RunOut:
            return _out(ctx, _host(ctx).runs.get(run_id, ctx.caller), detail=True)

        return await asyncio.to_thread(work)

    @r.post("/{run_id}/cancel", summary="Cancel a run (a live one is stopped first)")
    async def cancel(ctx: Ctx, run_id: _RUN_ID) -> RunOut:
        host = _host(ctx)
        run = await asyncio.to_thread(host.runs.request_cancel, run_id, ctx.caller)
        await asyncio.to_thread(host.ledger.record, run, "cancel", actor_of(ctx.caller))
        if run.state in ACTIVE:
            host.executor.cancel_local(run_id, actor_of(ctx.caller))
            deadline = host.settings.run_grace + 2 * host.settings.run_heartbeat_interval + 10
            loop = asyncio.get_running_loop()
            end = loop.time() + deadline
            while run.state in ACTIVE and loop.time() < end:
                await asyncio.sleep(0.1)
                run = await asyncio.to_thread(host.runs.load, run_id)
        return await asyncio.to_thread(_out, ctx, run, detail=True)

    @r.get("/{run_id}/logs", summary="The agent's stdout or stderr, from an offset")
    async def logs(
        ctx: Ctx,
        run_id: _RUN_ID,
        stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> Response:
        def work() -> Response:
            host = _host(ctx)
            run = host.runs.get(run_id, ctx.caller)
            data = b""
            with (
                contextlib.suppress(outputs.Unreadable),  # no log yet
                host.executor.artifacts.open(run.id, f"{stream}.log") as log,
            ):
                data = log.read_at(offset, _LOG_PAGE)
            headers = {
                "x-corral-next-offset": str(offset + len(data)),
                "x-corral-run-state": run.state,
            }
            return Response(data, media_type="text/plain; charset=utf-8", headers=headers)

        return await asyncio.to_thread(work)

    @r.get("/{run_id}/artifacts", summary="What a run left: diff, report, logs, its artifacts")
    async def artifacts(ctx: Ctx, run_id: _RUN_ID) -> ArtifactList:
        def work() -> ArtifactList:
            host = _host(ctx)
            return ArtifactList(artifacts=_artifacts(host, host.runs.get(run_id, ctx.caller)))

        return await asyncio.to_thread(work)

    @r.get("/{run_id}/artifacts/{name:path}", summary="One artifact's content")
    async def artifact(ctx: Ctx, run_id: _RUN_ID, name: str) -> Response:
        def work() -> outputs.Opened:
            host = _host(ctx)
            return _open_artifact(host, host.runs.get(run_id, ctx.caller), name)

        opened = await asyncio.to_thread(work)
        # Streamed from the file opened and checked above, never reopened by name (a link
        # the agent swaps in meanwhile is not followed), in chunks: it need not fit in memory.
        return StreamingResponse(
            opened.chunks(),
            media_type="application/octet-stream",
            background=BackgroundTask(opened.close),
        )

    @r.post("/{run_id}/deliver", summary="Deliver a run's change as a branch or a patch")
    async def deliver(ctx: Ctx, run_id: _RUN_ID, body: Deliver) -> Delivered:
        return await asyncio.to_thread(_deliver, ctx, run_id, body)

    return r
