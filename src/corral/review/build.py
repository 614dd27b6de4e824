"""The review service as ``CorralApp`` assembles it: its collaborators chosen from the
settings (the repositories' policies, the artifact and blob stores, the spans)."""

from __future__ import annotations

from collections.abc import Sequence

from corral.clock import Clock
from corral.identity.service import IdentityService
from corral.review.findings import Findings, check_config
from corral.review.service import Reviews
from corral.runs import workspace as workspaces
from corral.runs.artifacts import ArtifactStore
from corral.runs.ledger import Ledger
from corral.runs.model import Run
from corral.runs.service import RunService
from corral.settings import Settings
from corral.store import Store
from corral.traces.query import BlobReader, run_spans

MAX_TOOL_SPANS = 20_000
"""Tool spans of one run the evidence check reads at most (the first ones)."""


def build(
    *,
    settings: Settings,
    store: Store,
    clock: Clock,
    identity: IdentityService,
    runs: RunService,
    ledger: Ledger,
    artifacts: ArtifactStore,
    blobs: BlobReader,
) -> Reviews:
    """The review service; ``ConfigError`` for a pattern or glob in ``[review]`` that could
    never be used."""
    check_config(settings.review)
    runs_dir = (settings.runs_dir or settings.home / "runs").resolve()

    def read_at(run: Run, paths: Sequence[str], max_bytes: int) -> dict[str, bytes | int | None]:
        team = identity.get_team(run.team_id).name
        policy = workspaces.team_policy(settings, team, runs_dir)
        assert run.base_commit is not None  # checked by the caller
        return workspaces.read_at(run.repo, run.base_commit, paths, max_bytes, policy)

    findings = Findings(
        artifacts=artifacts,
        identity=identity,
        read_at=read_at,
        tool_spans=lambda run_id: run_spans(store, run_id, ("tool",), MAX_TOOL_SPANS),
        body=blobs.get,
        max_diff_bytes=settings.run_diff_max_bytes,
        max_report_bytes=settings.run_report_max_bytes,
    )
    return Reviews(
        store=store, clock=clock, identity=identity, runs=runs, ledger=ledger,
        config=settings.review, findings=findings,
    )  # fmt: skip
