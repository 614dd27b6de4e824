"""What a revision's change is held to that does not move once the run has ended: the
policy checks of its diff, the code owners of its paths (CODEOWNERS at the run's base
commit, read from the repository, never from the run's workspace), and the evidence check
of its report against its trajectory. Made once per revision (``Reviews`` keeps it) as
plain JSON, so a review reads the same however the settings or the agent's files change
afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pathspec

from corral.errors import ClientError, ConfigError, Conflict, NotFound
from corral.identity.service import IdentityService
from corral.review import checks as policy
from corral.review import codeowners, diffs, evidence
from corral.review.gate import Gate
from corral.runs import outputs
from corral.runs.artifacts import ArtifactStore
from corral.runs.model import Run
from corral.settings import ReviewConfig

ReadAt = Callable[[Run, Sequence[str], int], Mapping[str, bytes | int | None]]
"""Files at the run's base commit, from its repository: path → bytes, None (missing or not
a regular file) or its size (too large to read)."""
ToolSpans = Callable[[str], list[dict[str, Any]]]
"""A run's tool spans as the store holds them, in start order (bounded)."""
Body = Callable[[str], bytes | None]

MAX_PATHS = 5_000  # changed paths kept in the findings (the diff's counts say how many)
MAX_OWNED = 2_000  # owned paths kept


def check_config(config: ReviewConfig) -> None:
    """Refuse (``ConfigError``, at start-up) patterns and globs that could not be used."""
    layers: list[tuple[str, Any]] = [("[review]", config)]
    layers += [(f"[[review.rules]] #{i + 1}", rule) for i, rule in enumerate(config.rules)]
    for where, layer in layers:
        try:
            _patterns(tuple(layer.forbidden_patterns or ()))
        except ConfigError as exc:
            raise ConfigError(f"{where} forbidden_patterns: {exc.message}") from None
        try:
            pathspec.GitIgnoreSpec.from_lines(layer.protected_paths or ())
        except Exception as exc:  # pathspec raises its own errors for malformed globs
            raise ConfigError(f"{where} protected_paths: {exc}") from None


@functools.lru_cache(maxsize=256)
def _patterns(patterns: tuple[str, ...]) -> tuple[Any, ...]:
    return policy.compile_patterns(patterns)


class Findings:
    """Makes a revision's findings (``Reviews``' ``FindingsMaker``)."""

    def __init__(
        self,
        *,
        artifacts: ArtifactStore,
        identity: IdentityService,
        read_at: ReadAt,
        tool_spans: ToolSpans,
        body: Body,
        max_diff_bytes: int,
        max_report_bytes: int,
    ) -> None:
        self._artifacts = artifacts
        self._identity = identity
        self._read_at = read_at
        self._tool_spans = tool_spans
        self._body = body
        self._max_diff = max_diff_bytes
        self._max_report = max_report_bytes

    def __call__(self, run: Run, gate: Gate) -> dict[str, Any]:
        change = diffs.parse(self._read(run.id, "diff.patch", self._max_diff))
        results = policy.run_checks(
            change,
            policy.ChecksConfig(
                protected=gate.protected_paths,
                max_lines=gate.max_diff_lines,
                max_files=gate.max_diff_files,
                forbidden=_patterns(gate.forbidden_patterns),
                secrets=gate.secrets,
            ),
        )
        checks = [_check(r, blocking=True) for r in results]
        owners = self._owners(run, change) if gate.code_owners else None
        if owners is not None and owners.get("unreadable"):
            checks.append(
                {"name": "code_owners", "passed": False, "blocking": True,
                 "message": owners["unreadable"], "findings": []}
            )  # fmt: skip
        spans = self._tool_spans(run.id)
        steps = evidence.trajectory(spans, self._body) if spans else None
        checks.append(_tests_after_edit(steps, blocking=gate.tests_after_edit))
        proof = self._evidence(run, steps)
        contradicted = [c for c in proof["claims"] if c["verdict"] == "contradicted"]
        checks.append(
            {
                "name": "evidence",
                "passed": not contradicted,
                "blocking": gate.evidence_blocks and bool(contradicted),
                "message": (
                    f"{len(contradicted)} claim{'s' if len(contradicted) != 1 else ''} of the "
                    "report the run's trajectory contradicts: "
                    + "; ".join(f"{c['text'][:120]!r} ({c['reason']})" for c in contradicted[:5])
                    if contradicted
                    else "no claim of the report is contradicted by the run's trajectory"
                ),
                "findings": [],
            }
        )
        return {
            "diff": {
                "paths": sorted({p for f in change.files for p in f.paths})[:MAX_PATHS],
                "files": change.files_total,
                "added": change.added,
                "removed": change.removed,
                "cut": change.cut,
                "malformed": change.malformed,
            },
            "checks": checks,
            "codeowners": owners or {"enabled": False, "owned": []},
            "evidence": proof,
        }

    def _read(self, run_id: str, name: str, cap: int) -> bytes:
        try:
            with self._artifacts.open(run_id, name) as opened:
                return opened.read_at(0, cap)
        except outputs.Unreadable:
            return b""

    # -- code owners -----------------------------------------------------------------------

    def _owners(self, run: Run, change: diffs.Change) -> dict[str, Any]:
        """Who owns each changed path (both names of a rename), and the file's problems."""
        if run.base_commit is None:
            return {"unreadable": f"run {run.id} has no base commit to read CODEOWNERS at"}
        try:
            found = self._read_at(run, codeowners.LOCATIONS, codeowners.MAX_BYTES)
        except ClientError as exc:
            return {
                "unreadable": "CODEOWNERS could not be read from the repository at the base "
                f"commit, so no owner can be required: {exc.message}"
            }
        rules = _codeowners(found)
        rules = codeowners.resolve(rules, self._principal)
        owned: list[dict[str, Any]] = []
        unowned = 0
        for path in sorted({p for f in change.files for p in f.paths}):
            who = rules.owners_of(path)
            if not who.owned:
                unowned += 1
                continue
            if len(owned) < MAX_OWNED:
                owned.append({
                    "path": path, "owners": list(who.owners), "principals": list(who.principals),
                    "unknown": list(who.unknown), "line": who.line, "pattern": who.pattern,
                })  # fmt: skip
        return {
            "enabled": True,
            "file": rules.path,
            "problems": [
                {"line": p.line, "kind": p.kind, "message": p.message, "owner": p.owner}
                for p in rules.problems
            ],
            "owned": owned,
            "unowned": unowned,
        }

    def _principal(self, owner: str) -> str | None:
        """``@user`` → ``user:ID``; ``@org/team`` (or ``@team`` naming no user) →
        ``team:ID``; an email → its user's ``user:ID``; None when Corral has none."""
        try:
            if owner.startswith("@") and "/" in owner:
                return f"team:{self._identity.get_team(owner.rpartition('/')[2]).id}"
            if owner.startswith("@"):
                name = owner[1:]
                try:
                    return f"user:{self._identity.get_user(name).id}"
                except NotFound:
                    return f"team:{self._identity.get_team(name).id}"
            user = self._identity.user_by_email(owner)
            return None if user is None else f"user:{user.id}"
        except (NotFound, Conflict):  # none, or a name several users have: unknown
            return None

    # -- evidence --------------------------------------------------------------------------

    def _evidence(self, run: Run, steps: Sequence[evidence.Executed] | None) -> dict[str, Any]:
        """The report's claims, each checked against the trajectory (None: none reported)."""
        report = self._read(run.id, "report.md", self._max_report).decode(errors="replace")
        verdicts = evidence.check(evidence.extract_claims(report), steps)
        return {
            "trajectory": steps is not None,
            "steps": len(steps or ()),
            "claims": [_verdict(v) for v in verdicts],
        }


def _tests_after_edit(
    steps: Sequence[evidence.Executed] | None, *, blocking: bool
) -> dict[str, Any]:
    """The policy check "tests must have run after the last edit", from the trajectory."""
    passed, message, span_ids = evidence.tests_after_last_edit(steps)
    return {
        "name": "tests_after_edit", "passed": passed, "blocking": blocking and not passed,
        "message": message, "findings": [], "span_ids": list(span_ids),
    }  # fmt: skip


def _codeowners(found: Mapping[str, bytes | int | None]) -> codeowners.CodeOwners:
    for path in codeowners.LOCATIONS:
        data = found.get(path)
        if isinstance(data, int):  # too large to read: GitHub does not load it either
            return codeowners.CodeOwners(path=path, problems=(codeowners.Problem(
                None, "unreadable",
                f"{path} is {data:,} bytes, over GitHub's 3 MB limit: it is not loaded",
            ),))  # fmt: skip
        if data is not None:
            return codeowners.find(functools.partial(_only, path, data))
    return codeowners.CodeOwners(path=None)


def _only(path: str, data: bytes, asked: str) -> bytes | None:
    return data if asked == path else None


def _check(result: policy.CheckResult, *, blocking: bool) -> dict[str, Any]:
    return {
        "name": result.name,
        "passed": result.passed,
        "blocking": blocking and not result.passed,
        "message": result.message,
        "findings": [{"path": f.path, "line": f.line, "what": f.what} for f in result.findings],
    }


def _verdict(v: evidence.Verdict) -> dict[str, Any]:
    return {
        "kind": v.claim.kind,
        "text": v.claim.sentence,
        "numbers": list(v.claim.numbers),
        "command": v.claim.command,
        "verdict": v.verdict,
        "reason": v.reason,
        "span_ids": list(v.span_ids),
    }
