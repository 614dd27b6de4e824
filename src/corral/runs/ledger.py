"""The autonomy ledger: every human action on a run, who took it and when, and what that
says of how autonomous the runs are.

A **human action** is one a person (or the org admin) takes on a run: approve, reject,
comment, request changes, restart, cancel, take over, deliver, release or kill an incident.
The services that take those actions record them here, in the same order they happen. The
**report** groups runs (by team, agent profile or owner) and counts, for the runs created
in a window: how many there were, how many were delivered, the human actions on them
(**interventions**: every action but an approval of the change that was delivered and the
delivery itself), and the **autonomy rate**: the share of runs delivered with no
intervention at all — only the final approval and the delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sqlalchemy import select

from corral.clock import Clock
from corral.errors import InvalidRequest
from corral.runs.model import Run
from corral.store import Store
from corral.store.schema import review_revisions, run_actions, runs

HumanAction = Literal[
    "approve",
    "reject",
    "comment",
    "request_changes",
    "restart",
    "cancel",
    "take_over",
    "deliver",
    "incident_release",
    "incident_kill",
]
HUMAN_ACTIONS: tuple[HumanAction, ...] = get_args(HumanAction)
GROUPS = ("team", "agent", "owner")
"""What the report may group runs by: team, agent profile, owner (any of them, in order)."""
_NOT_INTERVENTIONS = frozenset({"deliver"})
_REPORT_RUNS = 100_000  # runs one report reads at most (the newest in the window)


@dataclass(frozen=True, slots=True)
class RunAction:
    """One human action on a run."""

    id: int
    run_id: str
    team_id: str
    actor: str
    action: str
    revision: int | None
    comment: str | None
    path: str | None
    line: int | None
    at: float
    dismissed_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> RunAction:
        return cls(**{name: getattr(row, name) for name in cls.__slots__})

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class LedgerRow:
    """One group's figures."""

    group: dict[str, str]  # "team" / "agent" / "owner" → its value (ids; the API names them)
    runs: int = 0
    delivered: int = 0
    interventions: int = 0
    autonomous: int = 0  # delivered with no intervention
    actions: dict[str, int] = field(default_factory=dict)  # by kind, every human action

    @property
    def interventions_per_run(self) -> float:
        return self.interventions / self.runs if self.runs else 0.0

    @property
    def autonomy_rate(self) -> float:
        """Autonomous runs among the runs delivered (0 when none was)."""
        return self.autonomous / self.delivered if self.delivered else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "group": dict(self.group),
            "runs": self.runs,
            "delivered": self.delivered,
            "interventions": self.interventions,
            "interventions_per_run": round(self.interventions_per_run, 4),
            "autonomous": self.autonomous,
            "autonomy_rate": round(self.autonomy_rate, 4),
            "actions": dict(sorted(self.actions.items())),
        }


class Ledger:
    """Records human actions on runs and reports on them. Methods block."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def record(
        self,
        run: Run,
        action: HumanAction,
        actor: str,
        *,
        revision: int | None = None,
        comment: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ) -> RunAction:
        if action not in HUMAN_ACTIONS:
            raise ValueError(f"not a human action: {action!r}")
        values = {
            "run_id": run.id, "org_id": run.org_id, "team_id": run.team_id, "actor": actor,
            "action": action, "revision": revision, "comment": comment, "path": path,
            "line": line, "at": self._clock.now(),
        }  # fmt: skip
        with self._store.begin() as conn:
            new_id = conn.execute(run_actions.insert().values(**values)).inserted_primary_key
        assert new_id is not None
        values.pop("org_id")
        return RunAction(id=int(new_id[0]), dismissed_at=None, **values)  # type: ignore[arg-type]

    def actions(self, run_ids: Sequence[str]) -> list[RunAction]:
        """The human actions on these runs, oldest first."""
        if not run_ids:
            return []
        query = select(run_actions).where(run_actions.c.run_id.in_(list(run_ids)))
        with self._store.connect() as conn:
            rows = conn.execute(query.order_by(run_actions.c.id))
            return [RunAction.from_row(r) for r in rows]

    def dismiss_approvals(self, run_ids: Sequence[str], before_revision: int) -> int:
        """Dismiss the approvals given on revisions before ``before_revision``; how many."""
        where = (
            run_actions.c.run_id.in_(list(run_ids)),
            run_actions.c.action == "approve",
            run_actions.c.revision < before_revision,
            run_actions.c.dismissed_at.is_(None),
        )
        with self._store.begin() as conn:
            done = conn.execute(
                run_actions.update().where(*where).values(dismissed_at=self._clock.now())
            )
            return int(done.rowcount)

    def report(
        self,
        *,
        by: Sequence[str] = ("team",),
        since: float | None = None,
        teams: Sequence[str] | None = None,
    ) -> list[LedgerRow]:
        """Runs created since ``since`` (of ``teams``; None: every team), grouped ``by``.

        A review's follow-up runs (made by "request changes") are not runs of their own
        here: they count with the run whose review they continue, their actions with its, and
        that run is delivered when its last revision's run is."""
        unknown = [g for g in by if g not in GROUPS]
        if unknown or not by:
            raise InvalidRequest(f"group by one or more of {', '.join(GROUPS)} (not {unknown})")
        query = select(runs.c.id, runs.c.team_id, runs.c.profile, runs.c.owner_id, runs.c.state)
        if since is not None:
            query = query.where(runs.c.created_at >= since)
        if teams is not None:
            query = query.where(runs.c.team_id.in_(list(teams)))
        query = query.order_by(runs.c.created_at.desc()).limit(_REPORT_RUNS)
        with self._store.connect() as conn:
            found = list(conn.execute(query))
            roots = _review_roots(conn, [r.id for r in found])
        lineages: dict[str, list[Any]] = {}
        for run in found:
            lineages.setdefault(roots.get(run.id, run.id), []).append(run)
        by_run: dict[str, list[RunAction]] = {}
        for action in self.actions([r.id for r in found]):
            by_run.setdefault(action.run_id, []).append(action)
        rows: dict[tuple[str, ...], LedgerRow] = {}
        columns = {"team": "team_id", "agent": "profile", "owner": "owner_id"}
        for root_id, members in lineages.items():
            root = next((r for r in members if r.id == root_id), members[-1])
            key = tuple(str(getattr(root, columns[g])) for g in by)
            row = rows.get(key)
            if row is None:
                row = rows[key] = LedgerRow(dict(zip(by, key, strict=True)))
            row.runs += 1
            taken = [a for r in members for a in by_run.get(r.id, [])]
            for action in taken:
                row.actions[action.action] = row.actions.get(action.action, 0) + 1
            interventions = sum(1 for a in taken if _intervenes(a))
            row.interventions += interventions
            if any(r.state == "delivered" for r in members):
                row.delivered += 1
                row.autonomous += interventions == 0
        return sorted(rows.values(), key=lambda r: tuple(r.group.values()))


def _review_roots(conn: Any, run_ids: Sequence[str]) -> dict[str, str]:
    """Run id → the run whose review it continues, for the follow-up runs among these."""
    if not run_ids:
        return {}
    rows = conn.execute(
        select(review_revisions.c.run_id, review_revisions.c.review_id).where(
            review_revisions.c.run_id.in_(list(run_ids)),
            review_revisions.c.revision > 1,
        )
    )
    return {r.run_id: r.review_id for r in rows}


def _intervenes(action: RunAction) -> bool:
    if action.action in _NOT_INTERVENTIONS:
        return False
    if action.action == "approve":  # the final approval is not; one a revision dismissed is
        return action.dismissed_at is not None
    return True
