"""Reviews in the store: a run's change, its revisions, who approved it, and whether its
gate passes (``corral.review.gate``).

A **review** is named by the first run whose change it holds; each **revision** is a run's
change (``review_revisions``). "Request changes" queues a follow-up run that continues the
change (``RunService.follow_up``) and adds a revision; once that run ends with its change,
the revision is the one under review, the approvals of earlier ones are dismissed, and the
earlier run is rejected as superseded. What a revision's change is held to that does not
move (policy checks, code owners, the evidence check: ``Findings``) is judged once and kept
with the revision; approvals, rejections and reviewers' verdicts are read at every look.

Who may see a review: the organisation admin, the keys of the run's team, and the code
owners of its change (a user, or a member of an owning team, of another team). Who may act:
the same people; never a run's key (no agent approves, comments or rejects here: reviewer
agents give their verdicts as runs of their own). All methods block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from corral.clock import Clock
from corral.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, StoreError
from corral.identity.keys import KeyInfo
from corral.identity.service import IdentityService
from corral.review.gate import Approval, Decision, Gate, OwnedPath, decide, gate_for
from corral.runs.ledger import Ledger, RunAction
from corral.runs.model import ACTIVE, Run
from corral.runs.service import RunService, actor_of
from corral.settings import ReviewConfig, ReviewerSettings
from corral.store import Store
from corral.store.schema import review_revisions, review_verdicts

REVIEWABLE = frozenset({"awaiting_review", "approved", "rejected", "delivered"})
"""States in which a run's change is there to review (or was)."""
OPEN = frozenset({"awaiting_review", "approved"})
"""States in which a review takes approvals, comments and requests for changes."""
MAX_COMMENT = 20_000


class FindingsMaker(Protocol):
    def __call__(self, run: Run, gate: Gate) -> dict[str, Any]:
        """What a revision's change is held to that does not move: ``{"checks": [...],
        "codeowners": {...}, "evidence": {...}, "diff": {...}}`` (see
        ``corral.review.findings``). Blocking; may read git, the artifacts and spans."""
        ...


@dataclass(frozen=True, slots=True)
class Revision:
    review_id: str
    revision: int
    run_id: str
    created_at: float
    created_by: str
    findings: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> Revision:
        return cls(row.review_id, row.revision, row.run_id, row.created_at, row.created_by,
                   row.report)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reviewer agent's verdict on a revision (``pending`` until its run ends)."""

    reviewer: str
    revision: int
    run_id: str | None
    user_id: str | None
    verdict: str  # pending, approve, changes_requested, error
    summary: str | None
    comments: list[dict[str, Any]]
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> Verdict:
        return cls(row.reviewer, row.revision, row.run_id, row.user_id, row.verdict,
                   row.summary, list(row.comments or []), row.updated_at)  # fmt: skip


@dataclass(slots=True)
class Review:
    """A review as it stands."""

    id: str
    run: Run  # the run whose change is under review (the current revision's)
    runs: dict[str, Run]  # every revision's run, by id
    revisions: list[Revision]
    current: Revision
    pending: Revision | None  # a newer revision whose run is still working
    gate: Gate
    decision: Decision
    actions: list[RunAction]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def findings(self) -> dict[str, Any]:
        return self.current.findings or {}

    @property
    def state(self) -> str:
        """open, changes_requested, approved (the gate passes), rejected or delivered."""
        if self.run.state in ("rejected", "delivered"):
            return self.run.state
        if self.pending is not None:
            return "changes_requested"
        return "approved" if self.decision.passed else "open"


class Reviews:
    """The review service: ``get``/``find`` to read, ``approve``/``reject``/``comment``/
    ``request_changes`` to act, ``check_deliverable`` for delivery."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        identity: IdentityService,
        runs: RunService,
        ledger: Ledger,
        config: ReviewConfig,
        findings: FindingsMaker,
    ) -> None:
        self._store = store
        self._clock = clock
        self._identity = identity
        self._runs = runs
        self._ledger = ledger
        self.config = config
        self._findings = findings

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # -- reading ---------------------------------------------------------------------------

    def gate(self, run: Run) -> Gate:
        team = self._identity.get_team(run.team_id)
        return gate_for(self.config, team.id, team.name, run.repo)

    def get(self, run_id: str, caller: KeyInfo) -> Review:
        """The review holding ``run_id``'s change (any of its revisions' runs), if the
        caller may see it; 404 as a missing run otherwise."""
        _refuse_run_keys(caller, "read reviews")
        review = self.load(run_id)
        if review is None or not self._may_see(caller, review):
            raise NotFound(f"no review of run {run_id[:40]}")
        return review

    def find(
        self, caller: KeyInfo, *, team: str | None = None, mine: bool = False, limit: int = 50
    ) -> list[Review]:
        """Open reviews (their run awaiting review or approved) the caller may see, newest
        first; ``mine``: the caller's own runs' and those it is a code owner of."""
        _refuse_run_keys(caller, "read reviews")
        team_id = None
        if team is not None:
            team_id = self._identity.get_team(team).id
            if caller.role != "admin" and team_id != caller.team_id:
                raise NotFound(f"team {team!r} not found")
        elif caller.role != "admin":
            team_id = caller.team_id
        found = []
        for run in self._runs.in_team(team_id, sorted(OPEN), limit=limit * 4):
            review = self.load(run.id)
            if review is None or review.run.id != run.id or not self._may_see(caller, review):
                continue  # superseded by a follow-up (listed under its own run)
            if mine and not self._is_mine(caller, review):
                continue
            found.append(review)
            if len(found) >= limit:
                break
        return found

    def load(self, run_id: str) -> Review | None:
        """The review holding ``run_id``'s change, whoever asks (None: there is none)."""
        try:
            run = self._runs.load(run_id) if len(run_id) <= 40 else None
        except NotFound:
            return None
        if run is None:
            return None
        revisions = self._revisions_of(run)
        if not revisions:
            return None
        runs = {r.run_id: self._runs.load(r.run_id) for r in revisions}
        current = max(
            (r for r in revisions if runs[r.run_id].state in REVIEWABLE),
            key=lambda r: r.revision,
            default=None,
        )
        if current is None:
            return None
        newer = [r for r in revisions if r.revision > current.revision]
        pending = next((r for r in newer if runs[r.run_id].state in ACTIVE), None)
        current = self._judged(current, runs[current.run_id])
        if current.revision > 1:
            self._supersede(revisions, runs, current)
        lineage = [r.run_id for r in revisions]
        actions = self._ledger.actions(lineage)
        verdicts = self._verdicts(current.review_id)
        review = Review(
            id=current.review_id, run=runs[current.run_id], runs=runs, revisions=revisions,
            current=current, pending=pending, gate=self.gate(runs[current.run_id]),
            decision=Decision(), actions=actions, verdicts=verdicts,
        )  # fmt: skip
        review.decision = self._decide(review)
        return review

    def _revisions_of(self, run: Run) -> list[Revision]:
        """The review's revisions; the first made here for a run with a change to review."""
        with self._store.connect() as conn:
            mine = conn.execute(
                select(review_revisions.c.review_id).where(review_revisions.c.run_id == run.id)
            ).first()
        if mine is None:
            if run.state not in REVIEWABLE or run.continues_from is not None:
                return []
            self._add_revision(run.id, 1, run.id, "system")
            review_id = run.id
        else:
            review_id = mine.review_id
        with self._store.connect() as conn:
            rows = conn.execute(
                select(review_revisions)
                .where(review_revisions.c.review_id == review_id)
                .order_by(review_revisions.c.revision)
            )
            return [Revision.from_row(r) for r in rows]

    def _add_revision(self, review_id: str, revision: int, run_id: str, actor: str) -> None:
        try:
            with self._store.begin() as conn:
                conn.execute(
                    review_revisions.insert().values(
                        review_id=review_id, revision=revision, run_id=run_id,
                        created_at=self._clock.now(), created_by=actor,
                    )  # no report: SQL NULL (a JSON None would be stored as 'null')
                )  # fmt: skip
        except StoreError as exc:
            if not _taken(exc):
                raise  # made meanwhile by another reader (the same row): fine

    def _judged(self, revision: Revision, run: Run) -> Revision:
        """The revision with its findings, made (once) when it has none yet."""
        if revision.findings is not None:
            return revision
        gate = self.gate(run)
        for reviewer in gate.reviewers:  # before CODEOWNERS is read: they may be owners
            self.reviewer_account(run.team_id, reviewer, make=True)
        made = self._findings(run, gate)
        with self._store.begin() as conn:
            conn.execute(
                review_revisions.update()
                .where(
                    review_revisions.c.review_id == revision.review_id,
                    review_revisions.c.revision == revision.revision,
                    review_revisions.c.report.is_(None),
                )
                .values(report=made)
            )
        return Revision(revision.review_id, revision.revision, revision.run_id,
                        revision.created_at, revision.created_by, made)  # fmt: skip

    def _supersede(
        self, revisions: Sequence[Revision], runs: dict[str, Run], current: Revision
    ) -> None:
        """A newer revision is under review: the approvals of the older ones are dismissed
        and their runs, still open, rejected as superseded."""
        older = [r for r in revisions if r.revision < current.revision]
        self._ledger.dismiss_approvals([r.run_id for r in older], current.revision)
        for revision in older:
            run = runs[revision.run_id]
            if run.state in OPEN:
                try:
                    runs[run.id] = self._runs.transition(
                        run.id, "rejected", actor="system",
                        reason=f"superseded by run {current.run_id} (revision "
                        f"{current.revision}), made for the changes requested",
                    )  # fmt: skip
                except Conflict:
                    runs[run.id] = self._runs.load(run.id)

    def reviewer_account(
        self, team_id: str, reviewer: ReviewerSettings, *, make: bool
    ) -> str | None:
        """The reviewer agent's service account in the team, its user id (made when
        ``make``; None when it does not exist)."""
        name = reviewer.identity or f"reviewer-{reviewer.name}"
        try:
            return self._identity.get_user(name, team_id=team_id).id
        except NotFound:
            if not make:
                return None
        try:
            return self._identity.create_user(name, team_id, kind="service").id
        except Conflict:  # made meanwhile by another process
            return self._identity.get_user(name, team_id=team_id).id

    def now(self) -> float:
        return self._clock.now()

    def reclaim(self, review_id: str, revision: int, reviewer: str, seen_at: float) -> bool:
        """Take over a reviewer's claim whose run was never made (compare-and-set on when it
        was last touched: of several processes, one wins)."""
        with self._store.begin() as conn:
            done = conn.execute(
                review_verdicts.update()
                .where(
                    review_verdicts.c.review_id == review_id,
                    review_verdicts.c.revision == revision,
                    review_verdicts.c.reviewer == reviewer,
                    review_verdicts.c.run_id.is_(None),
                    review_verdicts.c.updated_at == seen_at,
                )
                .values(updated_at=self._clock.now())
            ).rowcount
        return bool(done)

    def reviewers_started(self, run_id: str) -> None:
        """Mark the revision of ``run_id``'s change as having its reviewer agents started
        (a run with no revision, a reviewer's own, gets none: nothing to mark)."""
        with self._store.begin() as conn:
            conn.execute(
                review_revisions.update()
                .where(review_revisions.c.run_id == run_id)
                .values(reviewers_at=self._clock.now())
            )

    def _verdicts(self, review_id: str) -> list[Verdict]:
        with self._store.connect() as conn:
            rows = conn.execute(
                select(review_verdicts)
                .where(review_verdicts.c.review_id == review_id)
                .order_by(review_verdicts.c.revision, review_verdicts.c.reviewer)
            )
            return [Verdict.from_row(r) for r in rows]

    # -- deciding --------------------------------------------------------------------------

    def authors(self, review: Review) -> frozenset[str]:
        """The people who count as the change's authors: every revision's requester and
        owner."""
        found = set()
        for run in review.runs.values():
            found |= {u for u in (run.requester_id, run.owner_id) if u is not None}
        return frozenset(found)

    def _decide(self, review: Review) -> Decision:
        findings = review.findings
        blocking = [c["message"] for c in findings.get("checks", []) if c.get("blocking")]
        owned = [
            OwnedPath(o["path"], tuple(o["owners"]), tuple(o["principals"]), o.get("line"))
            for o in findings.get("codeowners", {}).get("owned", [])
        ]
        revision = review.current.revision
        latest: dict[str, RunAction] = {}  # each person's latest verdict on this revision
        for action in review.actions:
            if action.revision == revision and action.action in ("approve", "request_changes"):
                latest[action.actor] = action
        approvals = [self._approval(a.actor) for a in latest.values() if a.action == "approve"]
        agents = [
            Approval(f"agent:{v.reviewer}", v.user_id, review.run.team_id)
            for v in review.verdicts
            if v.revision == revision and v.verdict == "approve" and v.user_id is not None
        ]
        blocked_by = [
            f"changes requested by {a.actor} on revision {revision}"
            for a in latest.values()
            if a.action == "request_changes" and review.pending is None
        ]
        if review.pending is not None:
            blocked_by.append(
                f"changes were requested: run {review.pending.run_id} (revision "
                f"{review.pending.revision}) is making them"
            )
        for verdict in review.verdicts:
            if verdict.revision != revision:
                continue
            if verdict.verdict == "pending":
                blocked_by.append(f"reviewer agent {verdict.reviewer} has not finished")
            elif verdict.verdict != "approve":
                said = "requested changes" if verdict.verdict == "changes_requested" else "failed"
                blocked_by.append(f"reviewer agent {verdict.reviewer} {said}")
        return decide(
            review.gate, blocking_checks=blocking, owned=owned, approvals=approvals,
            authors=self.authors(review), blocked_by=blocked_by, agent_approvals=agents,
        )  # fmt: skip

    def _approval(self, actor: str) -> Approval:
        if not actor.startswith("user:"):
            return Approval(actor, None, None)
        user_id = actor.removeprefix("user:")
        try:
            team_id = self._identity.get_user(user_id).team_id
        except NotFound:
            team_id = None
        return Approval(actor, user_id, team_id)

    # -- who -------------------------------------------------------------------------------

    def _may_see(self, caller: KeyInfo, review: Review) -> bool:
        if caller.role == "admin" or caller.team_id == review.run.team_id:
            return True
        return self._owns_some(caller, review)

    def _owns_some(self, caller: KeyInfo, review: Review) -> bool:
        mine = {f"user:{caller.user_id}", f"team:{caller.team_id}"}
        return any(
            mine & set(o["principals"])
            for o in review.findings.get("codeowners", {}).get("owned", [])
        )

    def _is_mine(self, caller: KeyInfo, review: Review) -> bool:
        if caller.user_id is not None and caller.user_id in self.authors(review):
            return True
        return self._owns_some(caller, review)

    # -- acting ----------------------------------------------------------------------------

    def _open(self, run_id: str, caller: KeyInfo, what: str) -> Review:
        _refuse_run_keys(caller, what)
        review = self.get(run_id, caller)
        if review.run.id != run_id and run_id in review.runs:
            raise Conflict(
                f"run {run_id}'s change was superseded by run {review.run.id} (revision "
                f"{review.current.revision}); {what} that one"
            )
        if review.run.state not in OPEN:
            raise Conflict(
                f"run {review.run.id} is {review.run.state.replace('_', ' ')}: its review is closed"
            )
        return review

    def approve(self, run_id: str, caller: KeyInfo, comment: str | None = None) -> Review:
        review = self._open(run_id, caller, "approve runs")
        if review.pending is not None:
            raise Conflict(
                f"changes were requested and run {review.pending.run_id} is making them: "
                "approve its revision once it ends"
            )
        self._ledger.record(review.run, "approve", actor_of(caller),
                            revision=review.current.revision, comment=_text(comment))  # fmt: skip
        return self._settle(review.run.id, caller)

    def reject(self, run_id: str, caller: KeyInfo, comment: str | None = None) -> Review:
        review = self._open(run_id, caller, "reject runs")
        actor = actor_of(caller)
        self._ledger.record(review.run, "reject", actor, revision=review.current.revision,
                            comment=_text(comment))  # fmt: skip
        reason = f"rejected by {actor}" + (f": {_first_line(comment)}" if comment else "")
        self._runs.transition(review.run.id, "rejected", actor=actor, reason=reason)
        return self.get(review.run.id, caller)

    def comment(
        self, run_id: str, caller: KeyInfo, text: str, *, path: str | None, line: int | None
    ) -> Review:
        review = self._open(run_id, caller, "comment on runs")
        if not text.strip():
            raise InvalidRequest("the comment is empty")
        if line is not None and path is None:
            raise InvalidRequest("a comment on a line names its path too (--path P --line N)")
        if line is not None and line < 1:
            raise InvalidRequest("--line counts from 1")
        changed = review.findings.get("diff", {}).get("paths", [])
        if path is not None and changed and path not in changed:
            raise InvalidRequest(
                f"{path[:200]} is not a path this change touches (it changes "
                f"{len(changed)} file{'s' if len(changed) != 1 else ''}: corral review show "
                f"{review.run.id})"
            )
        self._ledger.record(review.run, "comment", actor_of(caller),
                            revision=review.current.revision, comment=_text(text), path=path,
                            line=line)  # fmt: skip
        return self.get(review.run.id, caller)

    def request_changes(self, run_id: str, caller: KeyInfo, comment: str) -> tuple[Review, Run]:
        """Record the request and queue the follow-up run that makes the changes; the
        review and that run (the caller wakes the executor)."""
        review = self._open(run_id, caller, "request changes on runs")
        if caller.role != "admin" and caller.team_id != review.run.team_id:
            raise PermissionDenied(
                "only the run's own team (or the organisation admin) may ask for changes: the "
                "follow-up run is that team's work and spend; comment on the change instead"
            )
        if review.pending is not None:
            raise Conflict(f"run {review.pending.run_id} is already making requested changes")
        if not comment or not comment.strip():
            raise InvalidRequest("say what to change (--comment TEXT)")
        actor = actor_of(caller)
        self._ledger.record(review.run, "request_changes", actor,
                            revision=review.current.revision, comment=_text(comment))  # fmt: skip
        follow = self._runs.follow_up(review.run, self._task(review, comment), actor=actor)
        self._add_revision(review.id, review.revisions[-1].revision + 1, follow.id, actor)
        return self.get(review.run.id, caller), follow

    def agent_requests_changes(self, review_id: str, revision: int, reviewer: str) -> Run | None:
        """A reviewer agent asked for changes to ``revision``: the follow-up run that makes
        them (None when that revision is no longer the one under review, or changes are
        being made already)."""
        review = self.load(review_id)
        if (
            review is None
            or review.current.revision != revision
            or review.pending is not None
            or review.run.state not in OPEN
        ):
            return None
        said = next(v for v in review.verdicts if v.reviewer == reviewer and v.revision == revision)
        actor = f"reviewer:{reviewer}"
        asked = f"reviewer agent {reviewer} requested changes: {said.summary or ''}"
        follow = self._runs.follow_up(review.run, self._task(review, asked), actor=actor)
        self._add_revision(review.id, review.revisions[-1].revision + 1, follow.id, actor)
        return follow

    def _task(self, review: Review, comment: str) -> str:
        """The follow-up's task: the original task, then what the reviewers asked."""
        revision = review.current.revision
        notes = [
            f"- {a.path}:{a.line}: {a.comment}" if a.path and a.line
            else f"- {a.path}: {a.comment}" if a.path else f"- {a.comment}"
            for a in review.actions
            if a.revision == revision and a.action == "comment" and a.comment
        ]  # fmt: skip
        for verdict in review.verdicts:
            if verdict.revision == revision and verdict.verdict == "changes_requested":
                notes += [
                    f"- {c.get('path')}:{c.get('line')}: {c.get('text', '')} ({verdict.reviewer})"
                    for c in verdict.comments
                ]
        parts = [
            review.run.task.strip(),
            "",
            f"A reviewer asked for changes to the change you made (revision {revision}); "
            "it is already applied to this workspace. Make these changes:",
            comment.strip(),
        ]
        if notes:
            parts += ["", "Comments on the change:", *notes]
        return "\n".join(parts)[:150_000]

    def _settle(self, run_id: str, caller: KeyInfo) -> Review:
        """The review after an approval: its run approved once the gate passes."""
        review = self.get(run_id, caller)
        if review.decision.passed and review.run.state == "awaiting_review":
            with contextlib.suppress(Conflict):  # approved or ended meanwhile
                self._runs.transition(review.run.id, "approved", actor=actor_of(caller),
                                      reason="its review gate passed")  # fmt: skip
            review = self.get(run_id, caller)
        return review

    def check_deliverable(self, run_id: str, caller: KeyInfo) -> Review | None:
        """The review of a run about to be delivered, when its gate passes; ``Conflict``
        naming what is missing otherwise. None when gates are off."""
        if not self.enabled:
            return None
        review = self.get(run_id, caller)
        if review.run.id != run_id:
            raise Conflict(
                f"run {run_id}'s change was superseded by run {review.run.id} (revision "
                f"{review.current.revision}): deliver that one"
            )
        if not review.decision.passed:
            missing = "; ".join(review.decision.missing)
            raise Conflict(
                f"run {run_id} cannot be delivered until its review gate passes: {missing} "
                f"(corral review show {run_id})"
            )
        return review

    # -- reviewer agents -------------------------------------------------------------------

    def set_verdict(
        self,
        review_id: str,
        revision: int,
        reviewer: str,
        *,
        verdict: str,
        run_id: str | None = None,
        user_id: str | None = None,
        summary: str | None = None,
        comments: Sequence[dict[str, Any]] = (),
        insert_only: bool = False,
    ) -> bool:
        """A reviewer agent's verdict on a revision (made ``pending`` when its run is
        queued, then its outcome). ``insert_only``: only when there is none yet, False
        otherwise (a claim: each reviewer reviews a revision once)."""
        now = self._clock.now()
        values = {"run_id": run_id, "user_id": user_id, "verdict": verdict, "summary": summary,
                  "comments": list(comments), "updated_at": now}  # fmt: skip
        if insert_only:
            try:
                with self._store.begin() as conn:
                    conn.execute(
                        review_verdicts.insert().values(
                            review_id=review_id, revision=revision, reviewer=reviewer,
                            created_at=now, **values,
                        )
                    )  # fmt: skip
            except StoreError as exc:
                if _taken(exc):
                    return False
                raise
            return True
        with self._store.begin() as conn:
            done = conn.execute(
                review_verdicts.update()
                .where(
                    review_verdicts.c.review_id == review_id,
                    review_verdicts.c.revision == revision,
                    review_verdicts.c.reviewer == reviewer,
                )
                .values(**values)
            ).rowcount
            if not done:
                conn.execute(
                    review_verdicts.insert().values(
                        review_id=review_id, revision=revision, reviewer=reviewer,
                        created_at=now, **values,
                    )
                )  # fmt: skip
        return True


def _taken(exc: StoreError) -> bool:
    """The write lost a race: the row it makes exists already."""
    return isinstance(exc.__cause__, IntegrityError)


def _refuse_run_keys(caller: KeyInfo, what: str) -> None:
    if caller.run_id is not None:
        raise PermissionDenied(
            f"a run's key may not {what}: no agent approves, rejects or comments on a change "
            "(the run that wrote it least of all); use a person's key"
        )


def _text(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > MAX_COMMENT:
        raise InvalidRequest(f"the comment is longer than {MAX_COMMENT} characters")
    return text


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]


__all__ = ["OPEN", "REVIEWABLE", "Review", "Reviews", "Revision", "Verdict"]
