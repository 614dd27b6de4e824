"""Agent runs: isolated, metered, owned workloads.

The executor (``executor``) runs queued runs through parts it is given: the
``scheduler`` (which run goes next), a ``launcher`` (how the agent's processes
start: ``sandbox`` is bubblewrap's low-level piece), an ``artifacts`` store
(logs, diff, report, artifacts), the after-run ``steps`` and the agent
``profiles``.
"""

from corral.runs.sandbox import Limits, Probe, Sandbox, probe, require

__all__ = ["Limits", "Probe", "Sandbox", "probe", "require"]
