"""What a run is: its fields, its states and the transitions between them.

::

    queued ──► admitted ──► running ──► awaiting_review ──► approved ──► delivered
       │           │          │ ▲             │   └────────► rejected
       └───────────┴──────────┼─┼─► cancelled / failed        └─► delivered (no review gate yet)
                              ▼ │        ▲
                          sequestered ───┘  (guards froze it; released: running again;
                                             killed: failed)

Every transition is stored with when, who or what caused it (``actor``) and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from corral.errors import Conflict

State = Literal[
    "queued",
    "admitted",
    "running",
    "awaiting_review",
    "approved",
    "rejected",
    "delivered",
    "failed",
    "cancelled",
    "sequestered",
]
STATES: tuple[State, ...] = get_args(State)
LIVE: frozenset[State] = frozenset({"admitted", "running"})
"""States in which a run takes one of its executor's slots (and counts against its team's
limit): a sequestered run is frozen and takes none."""
HELD: frozenset[State] = LIVE | {"sequestered"}
"""States in which an executor holds the run: it keeps its heartbeat fresh, and a dead
executor's run in one of them is failed by recovery."""
ACTIVE: frozenset[State] = frozenset({"queued", "admitted", "running", "sequestered"})
"""States a run has not left yet: ``--wait`` waits while the run is in one of these, and a
cancel stops it."""

TRANSITIONS: dict[State, frozenset[State]] = {
    "queued": frozenset({"admitted", "cancelled", "failed"}),
    "admitted": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"awaiting_review", "failed", "cancelled", "sequestered"}),
    "awaiting_review": frozenset({"approved", "rejected", "delivered"}),
    "approved": frozenset({"delivered", "rejected"}),
    # awaiting_review: its agent exited in the instant before it could be frozen
    "sequestered": frozenset({"running", "failed", "cancelled", "awaiting_review"}),
    "rejected": frozenset(),
    "delivered": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
"""Queue order: lower first; within a priority, first come first served."""


def check_transition(run_id: str, old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, frozenset()):  # type: ignore[call-overload]
        raise Conflict(f"run {run_id} is {old.replace('_', ' ')}; it cannot become {new}")


@dataclass(frozen=True, slots=True)
class Run:
    """One run as stored. Times are Unix seconds; money is nano-USD."""

    id: str
    org_id: str
    team_id: str
    requester_id: str | None
    requested_by_key: str | None
    owner_id: str
    profile: str
    repo: str
    ref: str
    base_commit: str | None
    task: str
    command: list[str] | None
    model: str
    allowed_models: list[str]
    priority: str
    budget_nusd: int | None
    timeout_s: float
    handoff_from: str | None
    continues_from: str | None  # a review's follow-up: the run whose change it starts from
    sandbox: str
    state: str
    reason: str | None
    key_id: str | None
    executor: str | None
    heartbeat_at: float | None
    exit_code: int | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    updated_at: float
    workspace_removed_at: float | None
    delivered_to: str | None
    cancel_requested: str | None

    @classmethod
    def from_row(cls, row: Any) -> Run:
        return cls(**{name: getattr(row, name) for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One transition of a run's state."""

    at: float
    from_state: str | None
    to_state: str
    actor: str
    reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> RunEvent:
        return cls(row.at, row.from_state, row.to_state, row.actor, row.reason)
