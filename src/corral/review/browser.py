"""The browser check as an agent profile: a run that starts the change's web app in the
sandbox and captures its pages (``corral.review.webshots`` is what runs inside).

The reviewer agents' machinery runs it (``corral.review.agents``) as the reviewer ``web``
when a change touches the gate's web paths; its screenshots are that run's artifacts, on
the review, and handed to the reviewer agents that run after it.
"""

from __future__ import annotations

import json
from pathlib import Path

from corral.errors import InvalidRequest
from corral.runs.outputs import RunFiles
from corral.runs.profiles import AgentContext, base_environment
from corral.settings import WebCheckSettings

NAME = "web-check"
REVIEWER = "web"
"""The reviewer name the check's verdict has on a review."""
SCREENSHOTS = "artifacts/screenshots/"
"""Where its screenshots are among the run's artifacts."""


def spec(web: WebCheckSettings) -> list[str]:
    """The run's command field: the check's settings as the one argument webshots reads."""
    return [json.dumps(web.model_dump(exclude={"paths"}))]


class BrowserCheck:
    name = NAME
    description = "A browser check: the change's web app started in the sandbox, pages captured"

    def check(self, ctx: AgentContext) -> None:
        if ctx.runtime is None:
            raise InvalidRequest("the browser check needs Corral's Python inside the sandbox")
        if not ctx.command or len(ctx.command) != 1:
            raise InvalidRequest("the browser check is started by review gates, not by hand")

    def command(self, ctx: AgentContext) -> list[str]:
        assert ctx.runtime is not None
        assert ctx.command
        return [*ctx.runtime.module("corral.review.webshots"), ctx.command[0]]

    def environment(self, ctx: AgentContext) -> dict[str, str]:
        return base_environment(ctx)

    def read_only(self, ctx: AgentContext) -> list[Path]:
        return ctx.runtime.read_only if ctx.runtime is not None else []

    def files(self, ctx: AgentContext) -> dict[str, str]:
        return {}

    def report(self, outputs: RunFiles) -> str | None:
        text = outputs.stdout().strip()
        return text or None
