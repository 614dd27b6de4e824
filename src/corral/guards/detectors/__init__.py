"""The built-in detectors, by family: ``loops`` (the same thing again), ``progress`` (work
that gets nowhere), ``rates`` (too much, too fast) and ``sandbox`` (limits pressed).

Each is pure logic over one subject's signals: no I/O and no clock (times come from the
signals), bounded state, and it never raises on odd input. docs/guards.md describes each
one's signal, default thresholds and how to tune them.
"""

from __future__ import annotations

from corral.guards.detectors.loops import (
    FailingAction,
    IdleTurns,
    Oscillation,
    RepeatedRequest,
    RepeatedTool,
)
from corral.guards.detectors.progress import CompactionThrash, StalledProgress
from corral.guards.detectors.rates import Ceiling, ErrorStorm, Velocity
from corral.guards.detectors.sandbox import SandboxPressure
from corral.guards.model import Detector


def builtin_detectors() -> list[Detector]:
    """A fresh instance of every built-in detector (``Velocity`` keeps the teams' baselines
    on its instance: one per process)."""
    return [
        RepeatedRequest(),
        RepeatedTool(),
        FailingAction(),
        Oscillation(),
        IdleTurns(),
        CompactionThrash(),
        StalledProgress(),
        Velocity(),
        Ceiling(),
        ErrorStorm(),
        SandboxPressure(),
    ]


__all__ = [
    "Ceiling",
    "CompactionThrash",
    "ErrorStorm",
    "FailingAction",
    "IdleTurns",
    "Oscillation",
    "RepeatedRequest",
    "RepeatedTool",
    "SandboxPressure",
    "StalledProgress",
    "Velocity",
    "builtin_detectors",
]
