"""Which gate a run's change must pass, and whether the approvals given so far pass it.

The gate of a run is the ``[review]`` defaults with every matching ``[[review.rules]]``
entry applied in order (a rule replaces the fields it sets). Whether it passes is decided
from what does not change for a revision of the change (its policy checks, the code owners
of its paths, its evidence report: ``Findings``, made once per revision) and what does
(approvals, rejections, reviewer verdicts).

**Who counts.** An approval counts when it is not dismissed (a newer revision dismisses the
approvals of the ones before) and its author is not the change's: the run's requester and
its owner are authors (they may approve, but never count, as on GitHub where an author
cannot approve their own pull request); a run's key never approves at all (refused before
it gets here). Each code-owned changed path needs an approval from one of its owners: a
user owner by that user, a team owner by any member of the team.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.settings import GateSettings, ReviewConfig, ReviewerSettings, WebCheckSettings

DEFAULTS: Mapping[str, Any] = {
    "approvals": 1,
    "code_owners": True,
    "protected_paths": [],
    "max_diff_lines": 5_000,
    "max_diff_files": 200,
    "forbidden_patterns": [],
    "secrets": True,
    "tests_after_edit": False,
    "evidence_blocks": False,
    "reviewers": [],
    "web": None,
}
"""What a field ``[review]`` leaves out is (settings.GateSettings says the same in words)."""


@dataclass(frozen=True, slots=True)
class Gate:
    """The gate one run's change must pass (every field resolved)."""

    approvals: int
    code_owners: bool
    protected_paths: tuple[str, ...]
    max_diff_lines: int
    max_diff_files: int
    forbidden_patterns: tuple[str, ...]
    secrets: bool
    tests_after_edit: bool
    evidence_blocks: bool
    reviewers: tuple[ReviewerSettings, ...] = ()
    web: WebCheckSettings | None = None
    rules: tuple[str, ...] = ()  # the rules that applied, e.g. "review.rules[1]"

    def as_json(self) -> dict[str, Any]:
        found = {name: _plain(getattr(self, name)) for name in self.__slots__}
        found["reviewers"] = [r.model_dump(exclude={"command"}) for r in self.reviewers]
        found["web"] = None if self.web is None else self.web.model_dump()
        return found


def gate_for(config: ReviewConfig, team_id: str, team_name: str | None, repo: str) -> Gate:
    """The gate of a run of ``team`` on ``repo``."""
    values: dict[str, Any] = dict(DEFAULTS)
    _apply(values, config)
    applied = []
    for i, rule in enumerate(config.rules):
        if rule.team is not None and rule.team not in (team_id, team_name):
            continue
        if rule.repository is not None and not fnmatch.fnmatchcase(repo, rule.repository):
            continue
        _apply(values, rule)
        applied.append(f"review.rules[{i}]")
    return Gate(
        approvals=int(values["approvals"]),
        code_owners=bool(values["code_owners"]),
        protected_paths=tuple(values["protected_paths"]),
        max_diff_lines=int(values["max_diff_lines"]),
        max_diff_files=int(values["max_diff_files"]),
        forbidden_patterns=tuple(values["forbidden_patterns"]),
        secrets=bool(values["secrets"]),
        tests_after_edit=bool(values["tests_after_edit"]),
        evidence_blocks=bool(values["evidence_blocks"]),
        reviewers=tuple(values["reviewers"]),
        web=values["web"],
        rules=tuple(applied),
    )


def _apply(values: dict[str, Any], layer: GateSettings) -> None:
    for name in DEFAULTS:
        value = getattr(layer, name)
        if value is not None:
            values[name] = value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- deciding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval that stands (not dismissed), by a principal (``user:ID``, ``admin``)."""

    actor: str
    user_id: str | None  # the approving person, when a person approved
    team_id: str | None  # that person's team


@dataclass(frozen=True, slots=True)
class OwnedPath:
    """A changed path CODEOWNERS owns: its owners as written and as Corral principals
    (``user:ID`` / ``team:ID``; owners Corral does not know are left out: reported)."""

    path: str
    owners: tuple[str, ...]
    principals: tuple[str, ...]
    line: int | None


@dataclass(slots=True)
class Decision:
    """Whether the gate passes, and what is missing when it does not (one sentence each)."""

    missing: list[str] = field(default_factory=list)
    approvals: int = 0  # approvals that count
    authors_approved: list[str] = field(default_factory=list)  # approvals that do not count
    owners: list[dict[str, Any]] = field(default_factory=list)  # per owned path: who approved

    @property
    def passed(self) -> bool:
        return not self.missing

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "missing": list(self.missing),
            "approvals": self.approvals,
            "authors_approved": list(self.authors_approved),
            "owners": list(self.owners),
        }


def decide(
    gate: Gate,
    *,
    blocking_checks: Sequence[str],
    owned: Sequence[OwnedPath],
    approvals: Iterable[Approval],
    authors: frozenset[str],
    blocked_by: Sequence[str] = (),
    agent_approvals: Iterable[Approval] = (),
    name_of: Callable[[str], str] = str,
) -> Decision:
    """The gate's decision. ``blocking_checks``: the failed checks' sentences;
    ``authors``: the user ids that count as the change's authors (requester, owner);
    ``blocked_by``: sentences for what else holds it (a rejection, changes requested by a
    reviewer agent); ``agent_approvals``: reviewer agents that approved, which count for
    the paths their identities own (code-owner agents), never as people's approvals;
    ``name_of``: a principal as people read it."""
    decision = Decision(missing=list(blocking_checks) + list(blocked_by))
    counted: list[Approval] = []
    for approval in approvals:
        if approval.user_id is not None and approval.user_id in authors:
            decision.authors_approved.append(approval.actor)
        elif all(a.actor != approval.actor for a in counted):
            counted.append(approval)
    decision.approvals = len(counted)
    if len(counted) < gate.approvals:
        decision.missing.append(
            f"{gate.approvals} approval{'s' if gate.approvals != 1 else ''} needed, "
            f"{len(counted)} given (the run's requester and owner do not count)"
        )
    if gate.code_owners:
        agents = list(agent_approvals)
        for path in owned:
            if not path.principals:
                continue  # owned only by owners Corral does not know: reported, not blocking
            by = [a.actor for a in (*counted, *agents) if _owns(path.principals, a)]
            decision.owners.append(
                {"path": path.path, "owners": list(path.owners), "approved_by": by}
            )
            if not by:
                names = ", ".join(path.owners) or ", ".join(map(name_of, path.principals))
                decision.missing.append(f"{path.path} needs an approval from one of {names}")
    return decision


def _owns(principals: Sequence[str], approval: Approval) -> bool:
    if approval.user_id is not None and f"user:{approval.user_id}" in principals:
        return True
    return approval.team_id is not None and f"team:{approval.team_id}" in principals
