"""The reference agent's errors, each with the exit code it ends the process with.

The agent runs inside run sandboxes where only the standard library, httpx and
OpenTelemetry are importable, so it keeps this small tree of its own rather
than importing ``corral.errors``::

    AgentError                 exit 1
    ├── UsageError             exit 2: a flag or environment variable is missing or wrong
    ├── GatewayError           exit 1: the gateway refused the call or could not be reached
    └── Interrupted            exit 1: SIGINT or SIGTERM arrived

Tool failures never become exceptions outside ``corral.agent.tools``: they are
returned to the model as the tool's result.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the errors that end an agent run."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(AgentError):
    """The command line or the environment lacks something; the message names what to set."""

    exit_code = 2


class GatewayError(AgentError):
    """The gateway answered with an error (``status`` set) or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Interrupted(AgentError):
    """The process was asked to stop (SIGINT or SIGTERM) while the loop ran."""


class ToolError(AgentError):
    """A tool could not do what was asked; its message becomes the tool's result."""
