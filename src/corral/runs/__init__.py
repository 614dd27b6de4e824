"""Agent runs: isolated, metered, owned workloads (issue 6). So far: the sandbox."""

from corral.runs.sandbox import Limits, Probe, Sandbox, probe, require

__all__ = ["Limits", "Probe", "Sandbox", "probe", "require"]
