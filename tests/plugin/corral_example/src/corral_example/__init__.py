"""An example Corral extension: one of each hook, registered through entry points only.

``pyproject.toml`` names ``plugin`` under the ``corral`` entry-point group; pluggy calls its
hooks once, when ``corral serve`` builds its application. It adds:

* the agent profile ``example-echo``: a shell command that writes ``report.md`` to the
  run's artifacts and the task to ``example-echo.txt`` in the workspace;
* a request guard that refuses a request with the header ``x-example-block: yes``
  (``PermissionDenied``, code ``example_blocked``) and annotates every other one with
  ``{"example": "seen"}``;
* a response observer counting each request's chunks, and a call listener that reports
  the count once the call's record is written;
* a span sink reporting the span ids of every stored batch;
* the after-run step ``example-step``, which stores ``artifacts/example-step.txt`` in the
  artifact store (the API serves the run's files under ``artifacts/``; the step runs after
  the agent's artifacts are collected, so its file replaces one the agent left there).

What the listener and the sink see is appended as JSON lines to the file named by
``CORRAL_EXAMPLE_OUT`` (read when the hooks are called), by a thread of its own: the
listener runs on the gateway's event loop and must not wait for a disk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import PermissionDenied
from corral.plugins import hookimpl
from corral.runs.profiles import AgentContext, base_environment

if TYPE_CHECKING:
    from corral.gateway.hooks import FinishedCall, Request
    from corral.protocols import Outcome
    from corral.runs.outputs import RunFiles
    from corral.runs.steps import StepContext
    from corral.settings import Settings

OUT = "CORRAL_EXAMPLE_OUT"
"""The environment variable naming the file the example's observations are appended to."""

BLOCK_HEADER = "x-example-block"
ARTIFACT = "artifacts/example-step.txt"
"""Where ``example-step`` leaves its file in the artifact store."""


class Outbox:
    """Appends JSON lines to a file from a thread of its own; ``send`` never waits. Without
    a file (``path`` None) what is sent is dropped."""

    def __init__(self, path: Path | None) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        if path is not None:
            threading.Thread(
                target=self._drain, args=(path,), name="corral-example-out", daemon=True
            ).start()
        self._on = path is not None

    def send(self, record: dict[str, Any]) -> None:
        if self._on:
            self._queue.put(record)

    def _drain(self, path: Path) -> None:
        with path.open("a", encoding="utf-8") as out:
            while True:
                out.write(json.dumps(self._queue.get()) + "\n")
                out.flush()


class EchoProfile:
    """``example-echo``: no agent CLI, a shell line that leaves a report and a change."""

    name = "example-echo"
    description = "the corral-example extension's profile: writes a report and one file"

    def check(self, ctx: AgentContext) -> None:
        return None

    def command(self, ctx: AgentContext) -> list[str]:
        script = (
            'echo done > "$CORRAL_ARTIFACTS/report.md" && '
            'printf "%s\\n" "$CORRAL_TASK" > "$1/example-echo.txt"'
        )
        return ["/bin/sh", "-c", script, self.name, ctx.workspace]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return {**base_environment(ctx), "CORRAL_TASK": ctx.task}

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return []

    def files(self, ctx: AgentContext) -> dict[str, str]:
        return {}

    def report(self, outputs: RunFiles) -> str | None:
        return outputs.artifact("report.md")


def block_marked(request: Request) -> Mapping[str, Any] | None:
    """The request guard: refuse a marked request, annotate the others."""
    if request.headers.get(BLOCK_HEADER, "").strip().lower() == "yes":
        raise PermissionDenied(
            f"refused by the corral-example guard: the request carries {BLOCK_HEADER}: yes",
            code="example_blocked",
        )
    return {"example": "seen"}


class ChunkCounter:
    """The response observer (``observe``) and call listener (``finished``) as one: counts
    each request's chunks as they are relayed, reports the count once the call is recorded."""

    def __init__(self, out: Outbox) -> None:
        self._out = out
        self._counts: dict[str, int] = {}

    def observe(self, request: Request, chunk: bytes, outcome: Outcome, elapsed: float) -> None:
        # On the request path, between the upstream and the client: a dict update, no more.
        self._counts[request.request_id] = self._counts.get(request.request_id, 0) + 1

    def finished(self, call: FinishedCall) -> None:
        span = call.span
        request_id = span["request_id"]
        self._out.send(
            {
                "kind": "call",
                "request_id": request_id,
                "status": span["status"],
                "chunks": self._counts.pop(request_id, 0),
            }
        )


class SpanIds:
    """The span sink: reports the ids of every stored batch (called from the writer's
    thread, after the batch is committed)."""

    def __init__(self, out: Outbox) -> None:
        self._out = out

    def offer(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._out.send({"kind": "spans", "span_ids": [row["span_id"] for row in rows]})


class ExampleStep:
    """The after-run step ``example-step``: leaves ``artifacts/example-step.txt`` in the
    store, served as the run's artifact."""

    name = "example-step"

    async def run(self, ctx: StepContext) -> None:
        # Corral's own steps ran first: the diff step left what it found in ``facts``.
        diff = ctx.facts.get("diff")
        files = "no diff" if diff is None else f"{diff.files} file(s) changed"
        text = f"example-step saw run {ctx.run.id} end with exit code {ctx.outcome.code}: {files}\n"
        await asyncio.to_thread(ctx.store.put, ctx.run.id, ARTIFACT, text.encode())


class Example:
    """The plug-in object pluggy registers. Its parts are made at the first hook call (the
    application's build), so the observer and the listener share one counter."""

    @functools.cached_property
    def out(self) -> Outbox:
        path = os.environ.get(OUT)
        return Outbox(Path(path) if path else None)

    @functools.cached_property
    def counter(self) -> ChunkCounter:
        return ChunkCounter(self.out)

    @hookimpl
    def corral_agent_profiles(self, settings: Settings) -> list[Any]:
        return [EchoProfile()]

    @hookimpl
    def corral_request_guards(self, settings: Settings) -> list[Any]:
        return [block_marked]

    @hookimpl
    def corral_response_observers(self, settings: Settings) -> list[Any]:
        return [self.counter.observe]

    @hookimpl
    def corral_call_listeners(self, settings: Settings) -> list[Any]:
        return [self.counter.finished]

    @hookimpl
    def corral_span_sinks(self, settings: Settings) -> list[Any]:
        return [SpanIds(self.out)]

    @hookimpl
    def corral_after_run_steps(self, settings: Settings) -> list[Any]:
        return [ExampleStep()]


plugin = Example()
