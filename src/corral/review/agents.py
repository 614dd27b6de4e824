"""Reviewer agents: agents that review a change as runs of their own, never the run that
wrote it.

Each reviewer the gate names (``[review] reviewers``) reviews each revision once: a run
continuing the change (the writer's patch applied to its base commit, its artifacts handed
over) under the reviewer's own service account (made in the writer's team on first use),
with its own model, budget and key. Its calls are metered to that run, so the review shows
what its reviewers cost and the writer's run never pays for them.

A reviewer answers in its report (``report.md``; the reference agent's last message): one
line ``VERDICT: approve`` or ``VERDICT: changes_requested``, and its comments one per line
as ``path:line: text``. No verdict line, a run that failed or was stopped: ``error``, which
holds the gate like changes requested (a person can still ask for changes or reject). A
reviewer's "changes requested" hands its comments to a follow-up run, as a person's does.
A code-owner agent is a reviewer whose service account CODEOWNERS names: its approval
counts for the paths it owns.

``ReviewerAgents.tick`` does the work (the app calls it on a timer, in every process):
judge each run newly awaiting review and launch its reviewers; read the verdicts of the
reviewer runs that ended. Several processes may tick at once: a verdict row is claimed
before its run is made, so each reviewer runs once per revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pathspec
from sqlalchemy import select

from corral.errors import ClientError, Conflict
from corral.identity.service import IdentityService
from corral.review import browser
from corral.review.service import Review, Reviews
from corral.runs import outputs
from corral.runs.artifacts import ArtifactStore
from corral.runs.model import ACTIVE, Run
from corral.runs.service import RunService
from corral.settings import ReviewerSettings, WebCheckSettings
from corral.store import Store
from corral.store.schema import review_revisions, review_verdicts, runs

log = logging.getLogger(__name__)

SYSTEM = "review"
"""How reviewer agents' doings appear in runs' histories."""
_VERDICT = re.compile(
    r"^\W*verdict\W*[:=]?\s*(approve[sd]?|lgtm|changes?[ _-]requested|request[ _-]changes|"
    r"reject(?:ed)?)\b",
    re.IGNORECASE | re.MULTILINE,
)
_COMMENT = re.compile(r"^\s*[-*]?\s*`?([^\s:`]{1,500}):(\d{1,9})`?\s*[:—-]\s*(.{1,2000})$", re.M)
_REPORT = 200_000  # bytes of a reviewer's report read
_DIFF_IN_TASK = 100_000  # characters of the diff put in its task
_BATCH = 50  # runs judged, verdicts read per tick
_STALE_CLAIM = 120.0  # seconds a claimed reviewer may wait for its run to be made


@dataclass(frozen=True, slots=True)
class Said:
    verdict: str  # approve, changes_requested, error
    summary: str
    comments: list[dict[str, Any]]


def read_verdict(report: str) -> Said:
    """A reviewer's verdict and comments from its report (the last verdict line wins)."""
    found = list(_VERDICT.finditer(report))
    summary = report.strip()[:500]
    comments = [
        {"path": m.group(1), "line": int(m.group(2)), "text": m.group(3).strip()}
        for m in _COMMENT.finditer(report)
    ][:100]
    if not found:
        return Said("error", "its report gives no verdict line (VERDICT: approve, or VERDICT: "
                    "changes_requested): " + summary[:300], comments)  # fmt: skip
    word = found[-1].group(1).lower()
    verdict = "approve" if word.startswith(("approve", "lgtm")) else "changes_requested"
    return Said(verdict, summary, comments)


class ReviewerAgents:
    def __init__(
        self,
        *,
        store: Store,
        reviews: Reviews,
        runs: RunService,
        identity: IdentityService,
        artifacts: ArtifactStore,
    ) -> None:
        self._store = store
        self._reviews = reviews
        self._runs = runs
        self._identity = identity
        self._artifacts = artifacts

    async def run_forever(self, interval: float, wake: Callable[[], None]) -> None:
        """``tick`` every ``interval`` seconds, waking the executor when it queued runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(self.tick):
                    wake()
            except Exception:
                log.exception("review: a look at the reviews failed; looking again")

    def tick(self) -> list[str]:
        """Judge new changes, launch their reviewers, read ended reviewers' verdicts; the
        runs queued (the caller wakes the executor when there are any). Blocking."""
        queued: list[str] = []
        if not self._reviews.enabled:
            return queued
        for run_id in self._unjudged():
            try:
                review = self._reviews.load(run_id)
                if review is not None and review.run.id == run_id:
                    queued += self.launch(review)
                self._reviews.reviewers_started(run_id)
            except Exception:  # one odd run must not stop the others' reviews
                log.exception("review: judging run %s failed", run_id)
        for row in self._pending():
            try:
                queued += self._settle(row)
            except Exception:
                log.exception("review: reading reviewer %s of %s failed", row.reviewer,
                              row.review_id)  # fmt: skip
        return queued

    def _unjudged(self) -> list[str]:
        """Runs awaiting review whose reviewers have not been started (their change has no
        revision yet, or one whose ``reviewers_at`` is unset), reviewer agents' own runs
        left out."""
        started = select(review_revisions.c.run_id).where(
            review_revisions.c.reviewers_at.is_not(None)
        )
        reviewers = select(review_verdicts.c.run_id).where(review_verdicts.c.run_id.is_not(None))
        query = (
            select(runs.c.id)
            .where(
                runs.c.state == "awaiting_review",
                runs.c.id.not_in(started),
                runs.c.id.not_in(reviewers),
            )
            .order_by(runs.c.updated_at)
            .limit(_BATCH)
        )
        with self._store.connect() as conn:
            return [r.id for r in conn.execute(query)]

    def _pending(self) -> list[Any]:
        query = select(review_verdicts).where(review_verdicts.c.verdict == "pending").limit(_BATCH)
        with self._store.connect() as conn:
            return list(conn.execute(query))

    # -- launching ---------------------------------------------------------------------------

    def launch(self, review: Review) -> list[str]:
        """Queue a run for each reviewer of the review's gate that has not reviewed its
        current revision (the browser check first, when the change touches web code: the
        reviewer agents then get its screenshots); their ids."""
        queued: list[str] = []
        web = self._web(review)
        if web is not None:
            if self._claim(review, browser.REVIEWER):
                queued.append(self._start_web(review, web))
            verdict = next((v for v in review.verdicts if v.reviewer == browser.REVIEWER
                            and v.revision == review.current.revision), None)  # fmt: skip
            if verdict is None or verdict.verdict == "pending":
                return queued  # the reviewer agents start once its screenshots are there
        for reviewer in review.gate.reviewers:
            owned = self._owned_by(review, reviewer)
            if reviewer.reviews == "owned" and not owned:
                continue  # a code-owner agent with nothing of its own in this change
            if not self._claim(review, reviewer.name):
                continue  # reviewed already, or being launched by another process
            try:
                run = self._start(review, reviewer, owned)
            except ClientError as exc:
                self._reviews.set_verdict(
                    review.id, review.current.revision, reviewer.name, verdict="error",
                    summary=f"its run could not be made: {exc.message}",
                )  # fmt: skip
                continue
            queued.append(run.id)
        return queued

    def _owned_by(self, review: Review, reviewer: ReviewerSettings) -> list[str]:
        user = self._reviews.reviewer_account(review.run.team_id, reviewer, make=False)
        if user is None:
            return []
        mine = {f"user:{user}"}
        return [
            o["path"]
            for o in review.findings.get("codeowners", {}).get("owned", [])
            if mine & set(o["principals"])
        ]

    def _claim(self, review: Review, reviewer: str) -> bool:
        return self._reviews.set_verdict(
            review.id, review.current.revision, reviewer, verdict="pending", insert_only=True
        )

    def _web(self, review: Review) -> WebCheckSettings | None:
        """The gate's browser check, when the change touches its web paths."""
        web = review.gate.web
        if web is None:
            return None
        spec = pathspec.GitIgnoreSpec.from_lines(web.paths)
        paths = review.findings.get("diff", {}).get("paths", [])
        return web if any(spec.match_file(p) for p in paths) else None

    def _start_web(self, review: Review, web: WebCheckSettings) -> str:
        writer = review.run
        account = ReviewerSettings(name=browser.REVIEWER)
        user = self._reviews.reviewer_account(writer.team_id, account, make=True)
        run = self._runs.follow_up(
            writer,
            f"Browser check of run {writer.id}'s change: start the app ({' '.join(web.command)}) "
            f"and capture {', '.join(p.name for p in web.pages)}.",
            actor=SYSTEM,
            reason=f"the browser check of run {writer.id}'s change (revision "
            f"{review.current.revision}): it touches web code",
            requester_id=None, requested_by_key=None, owner_id=user, profile=browser.NAME,
            command=browser.spec(web), allowed_models=[writer.model], budget_nusd=1,
            timeout_s=web.wait_s + 60 * len(web.pages) + 120,
        )  # fmt: skip
        self._reviews.set_verdict(
            review.id, review.current.revision, browser.REVIEWER, verdict="pending",
            run_id=run.id, user_id=user,
        )  # fmt: skip
        return run.id

    def _start(self, review: Review, reviewer: ReviewerSettings, owned: Sequence[str]) -> Run:
        writer = review.run
        user = self._reviews.reviewer_account(writer.team_id, reviewer, make=True)
        model = reviewer.model or writer.model
        web = next((v for v in review.verdicts if v.reviewer == browser.REVIEWER
                    and v.revision == review.current.revision and v.run_id), None)  # fmt: skip
        # its screenshots, handed over (the writer's artifacts are then not)
        handoff = {"handoff_from": web.run_id} if web is not None and reviewer.images else {}
        run = self._runs.follow_up(
            writer,
            self._task(review, reviewer, owned),
            actor=SYSTEM,
            reason=f"reviewer agent {reviewer.name} reviews run {writer.id}'s change "
            f"(revision {review.current.revision})",
            requester_id=None, requested_by_key=None, owner_id=user, profile=reviewer.profile,
            command=reviewer.command, model=model, allowed_models=[model],
            budget_nusd=round(reviewer.budget_usd * 1e9), timeout_s=reviewer.timeout_s,
            **handoff,
        )  # fmt: skip
        self._reviews.set_verdict(
            review.id, review.current.revision, reviewer.name, verdict="pending",
            run_id=run.id, user_id=user,
        )  # fmt: skip
        return run

    def _task(self, review: Review, reviewer: ReviewerSettings, owned: Sequence[str]) -> str:
        writer = review.run
        diff = self._read(writer.id, "diff.patch", _DIFF_IN_TASK + 1)
        if len(diff) > _DIFF_IN_TASK:
            diff = diff[:_DIFF_IN_TASK] + "\n[… the diff is cut here; the whole change is in "
            diff += "this workspace]\n"
        what = (
            f"the changes to the paths you own as a code owner: {', '.join(owned[:50])}"
            if reviewer.reviews == "owned"
            else "the whole change"
        )
        parts = [
            f"You are {reviewer.name}, a reviewer agent. Another agent wrote a change; review "
            f"{what}. You did not write it, and you must not change it: read it, and run what "
            "you need to judge it.",
            reviewer.instructions or "",
            f"The task the writer was given:\n{writer.task.strip()[:20_000]}",
            "The change is applied in this workspace; its diff against the base commit:",
            diff,
            self._screenshots_note(review, reviewer),
            "End your answer with your comments, one per line as `path:line: comment`, then "
            "one line `VERDICT: approve` or `VERDICT: changes_requested`.",
        ]
        return "\n\n".join(p for p in parts if p)

    def _screenshots_note(self, review: Review, reviewer: ReviewerSettings) -> str:
        web = next((v for v in review.verdicts if v.reviewer == browser.REVIEWER
                    and v.revision == review.current.revision and v.run_id), None)  # fmt: skip
        if web is None or not reviewer.images:
            return ""
        return (
            "Screenshots of the app's pages with this change are PNG files in "
            "$CORRAL_HANDOFF/screenshots (report.json says which page each is): look at "
            "them if you can read images."
        )

    def _read(self, run_id: str, name: str, cap: int) -> str:
        try:
            with self._artifacts.open(run_id, name) as opened:
                return opened.read_at(0, cap).decode(errors="replace")
        except outputs.Unreadable:
            return ""

    # -- verdicts ------------------------------------------------------------------------

    def _settle(self, row: Any) -> list[str]:
        """A pending verdict whose run ended: read it; hand changes requested to a
        follow-up run. The runs queued."""
        if row.run_id is None:  # claimed, its run not made yet, or the maker stopped
            return self._restart(row)
        run = self._runs.load(row.run_id)
        if run.state in ACTIVE:
            return []
        if row.reviewer == browser.REVIEWER:
            said = self._web_verdict(run)
        elif run.state == "awaiting_review":
            said = read_verdict(self._read(run.id, "report.md", _REPORT))
        else:
            said = Said("error", f"its run ended {run.state}: {run.reason or ''}".strip(), [])
        self._reviews.set_verdict(
            row.review_id, row.revision, row.reviewer, verdict=said.verdict, run_id=run.id,
            user_id=row.user_id, summary=said.summary, comments=said.comments,
        )  # fmt: skip
        if run.state == "awaiting_review":
            with contextlib.suppress(Conflict):  # moved meanwhile by another process
                self._runs.transition(
                    run.id, "delivered", actor=SYSTEM, delivered_to=f"review {row.review_id}",
                    reason=f"its verdict ({said.verdict}) is on review {row.review_id}",
                )  # fmt: skip
        if row.reviewer == browser.REVIEWER:  # its screenshots are there: the reviewers next
            review = self._reviews.load(row.review_id)
            if review is not None and review.current.revision == row.revision:
                return self.launch(review)
            return []
        if said.verdict != "changes_requested":
            return []
        follow = self._reviews.agent_requests_changes(row.review_id, row.revision, row.reviewer)
        return [] if follow is None else [follow.id]

    def _restart(self, row: Any) -> list[str]:
        """A claim whose run was never made (the process that claimed it stopped before
        making it): after ``_STALE_CLAIM`` seconds, claimed again here and its run made."""
        if self._reviews.now() - row.updated_at < _STALE_CLAIM:
            return []
        if not self._reviews.reclaim(row.review_id, row.revision, row.reviewer, row.updated_at):
            return []  # another process took it over
        review = self._reviews.load(row.review_id)
        if review is None or review.current.revision != row.revision:
            self._reviews.set_verdict(
                row.review_id, row.revision, row.reviewer, verdict="error",
                summary="its revision was replaced before its run was made",
            )  # fmt: skip
            return []
        if row.reviewer == browser.REVIEWER:
            web = self._web(review)
            return [] if web is None else [self._start_web(review, web)]
        reviewer = next((r for r in review.gate.reviewers if r.name == row.reviewer), None)
        if reviewer is None:  # no longer in the gate
            self._reviews.set_verdict(
                row.review_id, row.revision, row.reviewer, verdict="error",
                summary="no longer a reviewer of this gate",
            )  # fmt: skip
            return []
        return [self._start(review, reviewer, self._owned_by(review, reviewer)).id]

    def _web_verdict(self, run: Run) -> Said:
        """The browser check's outcome: every page captured (approve), or what failed."""
        try:
            report = json.loads(self._read(run.id, f"{browser.SCREENSHOTS}report.json", _REPORT))
            pages = [p for p in report.get("pages", []) if isinstance(p, dict)]
        except (ValueError, AttributeError):
            report, pages = {}, []
        # The report is written inside the sandbox, where the change's own app runs: every
        # value in it is cut to size and typed before it reaches the review.
        comments = [
            {"path": str(p.get("path", ""))[:200], "line": 0,
             "text": f"{str(p.get('name'))[:64]}: " + (
                 f"HTTP {p['status']}, titled {str(p.get('title'))[:200]!r}"
                 if isinstance(p.get("status"), int)
                 else str(p.get("error", "not captured"))[:300])}
            for p in pages[:50]
        ]  # fmt: skip
        captured = [p for p in pages if isinstance(p.get("status"), int) and p["status"] < 400]
        if run.exit_code == 0 and pages and len(captured) == len(pages):
            return Said("approve", f"{len(pages)} pages captured", comments)
        if not report.get("started", True) or not pages:
            why = (
                self._read(run.id, "stdout.log", 2_000).strip()
                or _tail(self._read(run.id, "stderr.log", _REPORT), 600)
                or (run.reason or "")
            )
            return Said("error", f"the app could not be checked: {why[:400]}", comments)
        return Said("error", f"{len(pages) - len(captured)} of {len(pages)} pages failed",
                    comments)  # fmt: skip


def _tail(text: str, chars: int) -> str:
    return text.strip()[-chars:]


__all__ = ["ReviewerAgents", "Said", "read_verdict"]
