"""Runs in the store: submit, read, move between states, ask to cancel.

Every state change is a compare-and-set on ``runs.state`` plus a ``run_events``
row in the same transaction, so two processes (or a cancel racing the
executor) can never both move a run, and the history never disagrees with the
state. All methods block (call them in a thread).

Who may do what: the organisation admin, any run; a team admin key, its team's
runs; a person's key, the runs that person requested or owns; a run's own key,
nothing here (a run neither submits runs nor delivers itself).
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from corral.clock import Clock
from corral.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, UnknownModel
from corral.identity.keys import KeyInfo
from corral.identity.service import IdentityService, Team, User
from corral.quota._model import NANO_PER_USD
from corral.runs.model import ACTIVE, PRIORITIES, Run, RunEvent, check_transition
from corral.store import Store
from corral.store.schema import run_events, runs

MAX_TASK_CHARS = 200_000
_CONTINUED = ("requester_id", "requested_by_key", "owner_id", "profile", "command", "model",
              "allowed_models", "priority", "budget_nusd", "timeout_s", "sandbox")  # fmt: skip
"""What a follow-up run takes from the run it continues, unless told otherwise."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What ``corral runs submit`` sends; names (team, owner) may be names or ids."""

    team: str | None
    profile: str
    repo: str
    task: str
    ref: str | None = None
    command: Sequence[str] | str | None = None
    model: str | None = None
    allow_models: Sequence[str] = ()
    priority: str = "normal"
    budget_usd: float | None = None
    timeout_s: float | None = None
    owner: str | None = None
    handoff_from: str | None = None


def actor_of(key: KeyInfo) -> str:
    """How a key appears in a run's history: its user, else the key itself."""
    if key.role == "admin":
        return "admin"
    return f"user:{key.user_id}" if key.user_id else f"key:{key.key_id}"


def refuse_run_keys(key: KeyInfo, what: str) -> None:
    if key.run_id is not None:
        raise PermissionDenied(f"a run's own key may not {what}; use a person's key")


class RunService:
    def __init__(self, store: Store, clock: Clock, identity: IdentityService) -> None:
        self._store = store
        self._clock = clock
        self._identity = identity

    # -- submit ------------------------------------------------------------------------

    def new_run(
        self,
        req: RunRequest,
        key: KeyInfo,
        *,
        source: str,
        model: str,
        allowed: list[str],
        timeout_s: float,
        sandbox: str,
    ) -> Run:
        """Insert a queued run (the caller has checked profile, repo and that the models are
        in the catalog); ``key`` may not widen what it may do (``check_rights``)."""
        team, owner = self.check_rights(req, key, allowed)
        if req.priority not in PRIORITIES:
            raise InvalidRequest(f"--priority must be one of {', '.join(PRIORITIES)}")
        if not req.task.strip():
            raise InvalidRequest("the task is empty: give --task TEXT or --task-file FILE")
        if len(req.task) > MAX_TASK_CHARS:
            raise InvalidRequest(f"the task is longer than {MAX_TASK_CHARS} characters")
        if req.handoff_from is not None:
            earlier = self.get(req.handoff_from, key)
            if earlier.team_id != team.id:
                raise NotFound(f"run {req.handoff_from} not found")
            if earlier.state in ACTIVE:
                raise Conflict(
                    f"run {earlier.id} is {earlier.state}; hand off from a run that has ended"
                )
        budget = None
        if req.budget_usd is not None:
            if req.budget_usd <= 0:
                raise InvalidRequest("--budget-usd must be more than 0")
            budget = round(req.budget_usd * NANO_PER_USD)
        now = self._clock.now()
        run_id = "run_" + uuid.uuid4().hex[:20]
        values: dict[str, Any] = {
            "id": run_id,
            "org_id": team.org_id,
            "team_id": team.id,
            "requester_id": key.user_id,
            "requested_by_key": key.key_id,
            "owner_id": owner.id,
            "profile": req.profile,
            "repo": source,
            "ref": req.ref or "HEAD",
            "task": req.task,
            "command": command_line(req.command),
            "model": model,
            "allowed_models": allowed,
            "priority": req.priority,
            "budget_nusd": budget,
            "timeout_s": timeout_s,
            "handoff_from": req.handoff_from,
            "sandbox": sandbox,
            "state": "queued",
            "created_at": now,
            "updated_at": now,
        }
        with self._store.begin() as conn:
            conn.execute(runs.insert().values(**values))
            conn.execute(
                run_events.insert().values(
                    run_id=run_id, at=now, from_state=None, to_state="queued",
                    actor=actor_of(key), reason=f"submitted ({req.profile}, sandbox {sandbox})",
                )
            )  # fmt: skip
        return self.load(run_id)

    def follow_up(
        self, run: Run, task: str, *, actor: str, reason: str | None = None, **changed: Any
    ) -> Run:
        """A queued run continuing ``run``'s change: on ``run``'s base commit with its patch
        applied first and its artifacts handed over, with the same team, owner, requester,
        profile, models, budget and limits but for the fields ``changed`` names (a reviewer
        agent's run: its own owner, profile, model and budget). A review asked for changes,
        or a reviewer agent reviews the change. The rights were checked when ``run`` was
        submitted; ``actor`` is who or what asked for it."""
        if run.base_commit is None:
            raise Conflict(f"run {run.id} has no base commit: its change cannot be continued")
        if len(task) > MAX_TASK_CHARS:
            raise InvalidRequest(f"the task is longer than {MAX_TASK_CHARS} characters")
        unknown = set(changed) - {*_CONTINUED, "handoff_from"}
        if unknown:
            raise ValueError(f"not a field a follow-up may change: {sorted(unknown)}")
        now = self._clock.now()
        run_id = "run_" + uuid.uuid4().hex[:20]
        values: dict[str, Any] = {name: getattr(run, name) for name in _CONTINUED}
        values |= {"handoff_from": run.id, **changed}
        values |= {
            "id": run_id, "org_id": run.org_id, "team_id": run.team_id, "repo": run.repo,
            "ref": run.base_commit, "task": task, "continues_from": run.id, "state": "queued",
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        with self._store.begin() as conn:
            conn.execute(runs.insert().values(**values))
            conn.execute(
                run_events.insert().values(
                    run_id=run_id, at=now, from_state=None, to_state="queued", actor=actor,
                    reason=reason or f"continues run {run.id}'s change ({values['profile']}, "
                    f"sandbox {values['sandbox']})",
                )
            )  # fmt: skip
        return self.load(run_id)

    def check_rights(
        self, req: RunRequest, key: KeyInfo, allowed: Sequence[str]
    ) -> tuple[Team, User]:
        """The run's team and owner, refused (403) where ``key`` would get more through the
        run than it may itself: a model it may not call, another team, another owner."""
        refuse_run_keys(key, "submit runs")
        for name in allowed:  # the gateway's own rule, so the run's key could call them too
            _check_model(key, name)
        team = self._team(req, key)
        return team, self._owner(req, key, team)

    def _team(self, req: RunRequest, key: KeyInfo) -> Team:
        """The run's team: the key's own (only the organisation admin names another)."""
        if key.role == "admin":
            if req.team is None:
                raise InvalidRequest(
                    "name the run's team (team, or --team T): the organisation admin key "
                    "belongs to no team"
                )
            return self._identity.get_team(req.team)
        own = self._identity.get_team(key.team_id or "")
        if req.team is not None and req.team not in (own.id, own.name):
            # refused without looking the team up: this key learns nothing of other teams
            raise PermissionDenied(
                f"this key may only submit runs for its own team ({own.name}); another "
                "team's runs need that team's key or the organisation admin key"
            )
        return own

    def _owner(self, req: RunRequest, key: KeyInfo, team: Team) -> User:
        """The run's owner, who is billed for it: the key's user unless a team admin key (of
        the run's team) or the organisation admin key names another user of the team."""
        if req.owner is None:
            if key.user_id is None:
                raise InvalidRequest(
                    "name the run's owner (owner, or --owner USER; a user of team "
                    f"{team.name}): the organisation admin key speaks for no user; or submit "
                    "with that person's own key"
                )
            return self._identity.get_user(key.user_id, team_id=team.id)
        if key.role not in ("admin", "team_admin"):
            me = self._identity.get_user(key.user_id) if key.user_id else None
            if me is None or req.owner not in (me.id, me.name):
                # refused before looking the name up: who exists is not this key's business
                raise PermissionDenied(
                    f"this key may only submit runs owned by its own user "
                    f"({me.name if me else 'none'}); making another user the owner needs "
                    f"team {team.name}'s admin key or the organisation admin key"
                )
            return me  # not looked up by the name again: a name may equal another's id
        return self._identity.get_user(req.owner, team_id=team.id)

    # -- read ----------------------------------------------------------------------------

    def load(self, run_id: str) -> Run:
        """A run by id, whoever asks (for the executor)."""
        with self._store.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return Run.from_row(row)

    def get(self, run_id: str, key: KeyInfo) -> Run:
        """A run ``key`` may see; another team's run is 404 exactly like a missing one."""
        refuse_run_keys(key, "read runs")
        try:
            run = self.load(run_id) if len(run_id) <= 40 else None
        except NotFound:
            run = None
        if run is None or not _may_see(key, run):
            raise NotFound(f"run {run_id[:40]} not found")
        return run

    def find(
        self,
        key: KeyInfo,
        *,
        team: str | None = None,
        states: Sequence[str] = (),
        owner: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        refuse_run_keys(key, "read runs")
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        if key.role != "admin":
            query = query.where(runs.c.team_id == key.team_id)
        if key.role == "virtual":
            mine = (runs.c.owner_id == key.user_id) | (runs.c.requester_id == key.user_id)
            query = query.where(mine)
        if team is not None:
            team_row = self._identity.get_team(team)
            if key.role != "admin" and team_row.id != key.team_id:
                raise NotFound(f"team {team} not found")
            query = query.where(runs.c.team_id == team_row.id)
        if states:
            query = query.where(runs.c.state.in_(list(states)))
        if owner is not None:
            query = query.where(runs.c.owner_id == owner)
        with self._store.connect() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def events(self, run_id: str) -> list[RunEvent]:
        with self._store.connect() as conn:
            rows = conn.execute(
                select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
            )
            return [RunEvent.from_row(r) for r in rows]

    def queued(self) -> list[Run]:
        """Queued runs, oldest first (the executor orders them by priority)."""
        with self._store.connect() as conn:
            rows = conn.execute(
                select(runs).where(runs.c.state == "queued").order_by(runs.c.created_at)
            )
            return [Run.from_row(r) for r in rows]

    def in_states(self, states: Sequence[str]) -> list[Run]:
        with self._store.connect() as conn:
            rows = conn.execute(select(runs).where(runs.c.state.in_(list(states))))
            return [Run.from_row(r) for r in rows]

    def in_team(self, team_id: str | None, states: Sequence[str], *, limit: int) -> list[Run]:
        """A team's runs (None: every team's) in ``states``, newest first, whoever asks
        (the caller decides who may see them)."""
        query = select(runs).where(runs.c.state.in_(list(states)))
        if team_id is not None:
            query = query.where(runs.c.team_id == team_id)
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        with self._store.connect() as conn:
            return [Run.from_row(r) for r in conn.execute(query)]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many runs each team has in each state, keyed ``(team_id, state)``: counts only,
        for pages that may not show what a run is."""
        query = select(runs.c.team_id, runs.c.state, func.count()).group_by(
            runs.c.team_id, runs.c.state
        )
        with self._store.connect() as conn:
            return {(team, state): int(n) for team, state, n in conn.execute(query)}

    # -- change ----------------------------------------------------------------------------

    def transition(
        self, run_id: str, new: str, *, actor: str, reason: str | None = None, **fields: Any
    ) -> Run:
        """Move a run to ``new`` (compare-and-set on its current state); ``Conflict`` when it
        is no longer in a state that may become ``new``."""
        run = self.load(run_id)
        check_transition(run_id, run.state, new)
        now = self._clock.now()
        values = {"state": new, "updated_at": now, "reason": reason, **fields}
        with self._store.begin() as conn:
            done = conn.execute(
                runs.update().where(runs.c.id == run_id, runs.c.state == run.state).values(**values)
            ).rowcount
            if done != 1:
                raise Conflict(f"run {run_id} changed state meanwhile; it is no longer {run.state}")
            conn.execute(
                run_events.insert().values(
                    run_id=run_id, at=now, from_state=run.state, to_state=new, actor=actor,
                    reason=reason,
                )
            )  # fmt: skip
        return self.load(run_id)

    def update(self, run_id: str, **fields: Any) -> None:
        """Change fields that are not the state (heartbeat, base commit, key id...)."""
        with self._store.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**fields))

    def request_cancel(self, run_id: str, key: KeyInfo) -> Run:
        """Cancel a queued run now; ask the executor holding a live one to stop it."""
        refuse_run_keys(key, "cancel runs")
        run = self.get(run_id, key)
        actor = actor_of(key)
        if run.state == "queued":
            try:
                return self.transition(run_id, "cancelled", actor=actor, reason="cancelled")
            except Conflict:
                run = self.load(run_id)  # admitted meanwhile: stop it like a live one
        if run.state not in ACTIVE:
            raise Conflict(f"run {run_id} is {run.state.replace('_', ' ')}; nothing to cancel")
        self.update(run_id, cancel_requested=actor)
        return self.load(run_id)

    def held(self, run_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """The stored state of each of ``run_ids`` and who asked to cancel it (if anyone):
        what the executor holding them checks at each heartbeat."""
        if not run_ids:
            return {}
        with self._store.connect() as conn:
            rows = conn.execute(
                select(runs.c.id, runs.c.state, runs.c.cancel_requested).where(
                    runs.c.id.in_(list(run_ids))
                )
            )
            return {r.id: (r.state, r.cancel_requested) for r in rows}


def default_model(key: KeyInfo, preferred: str | None, catalog: Sequence[str]) -> str:
    """The model of a run that names none: ``preferred`` (``run_default_model``), else the
    catalog's first; the first of those the key may call, when it may not call them."""
    ordered = [m for m in dict.fromkeys([preferred, *catalog]) if m]
    if key.allowed_models is not None:
        mine = [m for m in ordered if m in key.allowed_models]
        ordered = mine or ordered
    return ordered[0] if ordered else ""


def _check_model(key: KeyInfo, model: str) -> None:
    """``KeyInfo.check_model`` (what the gateway checks per call), said of a run."""
    try:
        key.check_model(model)
    except UnknownModel as exc:
        raise type(exc)(
            f"{exc.message}: a run may use only models the key that submits it may call",
            code=exc.code,
        ) from exc


def _may_see(key: KeyInfo, run: Run) -> bool:
    if key.role == "admin":
        return True
    if run.team_id != key.team_id:
        return False
    return key.role == "team_admin" or key.user_id in (run.owner_id, run.requester_id)


def command_line(command: Sequence[str] | str | None) -> list[str] | None:
    """``--command`` as argv: a string is split like a shell would (no shell runs it)."""
    if command is None:
        return None
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise InvalidRequest("--command is empty")
    return argv
