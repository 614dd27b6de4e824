"""After-run steps: what happens to a run between its agent's exit and its verdict.

The executor runs an ordered list of steps (its ``steps`` argument; by default
``default_steps()``: the diff, then the report). Each step is an object with a
``name`` and ``async def run(ctx)``; the ``StepContext`` gives it the run, its
workspace, the artifact store, the run's profile and settings, how the agent
ended, and ways to leave a note in the run's reason (``note``), to fail the run
saying why (``fail``), and to hand facts to later steps (``facts``). A step that
raises fails the run, its name in the reason, and the steps after it do not run.
Review gates (a later issue) are steps appended to this list; extensions append
theirs through entry points.

Steps read the run's folder only through ``corral.runs.outputs`` (the agent
made those files) and write what they keep to the artifact store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.runs import outputs
from corral.runs import workspace as workspaces
from corral.runs.artifacts import ArtifactStore
from corral.runs.model import Run
from corral.runs.profiles import Profile
from corral.runs.scheduler import SYSTEM
from corral.settings import Settings
from corral.traces.spans import SPAN_DEFAULTS, run_trace


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the agent ended: its exit status, who stopped it (``(state, actor, reason)``)
    when Corral did, and what the limits refused or killed, in words."""

    code: int | None
    stopped: tuple[str, str, str] | None = None
    limits: tuple[str, ...] = ()


@dataclass(slots=True)
class StepContext:
    """What an after-run step works with."""

    run: Run
    workspace: workspaces.Workspace
    store: ArtifactStore
    profile: Profile
    settings: Settings
    outcome: Outcome
    over_quota: str | None = None  # why the run is over its disk quota, if it is
    facts: dict[str, Any] = field(default_factory=dict)  # what steps tell later steps
    notes: list[str] = field(default_factory=list)
    failure: str | None = None

    def note(self, text: str) -> None:
        """Add ``text`` to the reason the run ends with."""
        self.notes.append(text)

    def fail(self, reason: str) -> None:
        """Fail the run (unless Corral already stopped it), saying ``reason``."""
        if self.failure is None:
            self.failure = reason


class AfterRunStep(Protocol):
    name: str

    async def run(self, ctx: StepContext) -> None: ...


class DiffStep:
    """The change against the base commit, as ``diff.patch`` in the store (skipped for a run
    over its disk quota: it fails, and its change is not worth diffing)."""

    name = "diff"

    async def run(self, ctx: StepContext) -> None:
        if ctx.over_quota is not None:
            return
        await asyncio.to_thread(self._diff, ctx)

    @staticmethod
    def _diff(ctx: StepContext) -> None:
        ws, cap = ctx.workspace, ctx.settings.run_diff_max_bytes
        out = ws.root / "output"
        out.mkdir(exist_ok=True)
        change = workspaces.diff(ws, out / "diff.patch", cap)
        with outputs.Folder(ws.root) as folder:
            ctx.store.collect(ctx.run.id, folder, "output/diff.patch", "diff.patch",
                              budget=cap + 2**16)  # fmt: skip
        if not change.complete:  # delivery refuses a run whose patch was not kept whole
            ctx.store.put(ctx.run.id, outputs.DIFF_TOO_LARGE, f"{cap}\n".encode())
        ctx.facts["diff"] = change


class ReportStep:
    """The profile's report, read from the run's files, as ``report.md`` in the store."""

    name = "report"

    async def run(self, ctx: StepContext) -> None:
        await asyncio.to_thread(self._report, ctx)

    @staticmethod
    def _report(ctx: StepContext) -> None:
        with outputs.Folder(ctx.workspace.root) as folder:
            files = outputs.RunFiles(
                folder,
                max_bytes=ctx.settings.run_report_max_bytes,
                stdout_tail=lambda n: _store_tail(ctx, "stdout.log", n),
            )
            report = ctx.profile.report(files)
        if report is not None:
            ctx.store.put(ctx.run.id, "report.md", report.encode())


def _store_tail(ctx: StepContext, name: str, n: int) -> bytes:
    with ctx.store.open(ctx.run.id, name) as opened:
        return opened.tail(n)


def default_steps() -> list[AfterRunStep]:
    """Today's steps, in order: the diff, then the report."""
    return [DiffStep(), ReportStep()]


async def run_steps(steps: list[AfterRunStep], ctx: StepContext) -> None:
    """Run ``steps`` in order; one that raises fails the run naming it, and ends the list."""
    for step in steps:
        try:
            await step.run(ctx)
        except Exception as exc:
            ctx.fail(f"the after-run step {step.name!r} failed: {exc}")
            return


def verdict(ctx: StepContext) -> tuple[str, str, str]:
    """The run's final (state, actor, reason) from how it ended and what the steps found."""
    outcome, s = ctx.outcome, ctx.settings
    if outcome.stopped is not None:
        return outcome.stopped
    if ctx.over_quota is not None:
        return "failed", SYSTEM, ctx.over_quota
    if outcome.code != 0:
        limits = list(outcome.limits)
        if _signal_of(outcome.code) == signal.SIGXFSZ:
            limits.append(f"a file reached the run's disk quota ({s.run_disk_mb} MiB, run_disk_mb)")
        reason = f"the agent {_ended(outcome.code)}"
        if limits:
            reason += ": " + "; ".join(limits)
        return "failed", SYSTEM, _with_notes(reason, ctx)
    if ctx.failure is not None:
        return "failed", SYSTEM, _with_notes(ctx.failure, ctx)
    change: workspaces.DiffResult | None = ctx.facts.get("diff")
    files = change.files if change is not None else 0
    said = f"{files} file{'s' if files != 1 else ''} changed" if files else "no change"
    if change is not None and not change.complete:
        cap = outputs.size_in_words(s.run_diff_max_bytes)
        said += (
            f"; its diff is larger than {cap} (run_diff_max_bytes), too large to keep "
            "whole: it cannot be delivered"
        )
    return "awaiting_review", SYSTEM, _with_notes(f"the agent finished: {said}", ctx)


def _with_notes(reason: str, ctx: StepContext) -> str:
    return "; ".join([reason, *ctx.notes])


def _signal_of(code: int | None) -> int | None:
    """The signal that ended a process: the relay reports one as 128 + its number."""
    if code is None:
        return None
    return -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None


def _ended(code: int | None) -> str:
    """How a process ended, in words."""
    if code is None:
        return "ended without an exit status"
    number = _signal_of(code)
    if number is not None:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(number).name}"
    return f"exited with code {code}"


def run_span(run: Run) -> dict[str, Any]:
    """The run's root span, recorded as it ends."""
    trace_id, root = run_trace(run.id)
    start = run.started_at or run.created_at
    return {
        **SPAN_DEFAULTS,
        "span_id": root,
        "trace_id": trace_id,
        "kind": "run",
        "name": f"run {run.profile}",
        "org_id": run.org_id,
        "team_id": run.team_id,
        "user_id": run.owner_id,
        "key_id": run.key_id,
        "run_id": run.id,
        "owner_id": run.owner_id,
        "model_requested": run.model,
        "status": "ok" if run.state == "awaiting_review" else "error",
        "error_message": None if run.state == "awaiting_review" else run.reason,
        "start_ns": int(start * 1e9),
        "end_ns": int((run.ended_at or start) * 1e9),
        "source": "corral",
        "attributes": {
            "run.state": run.state,
            "run.profile": run.profile,
            "run.exit_code": run.exit_code,
            "run.sandbox": run.sandbox,
            "run.repo": run.repo,
            "run.base_commit": run.base_commit,
        },
    }
