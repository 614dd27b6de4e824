"""Sandbox pressure: a run pressing against its sandbox's limits (a fork bomb, a memory
balloon), read from samples of its cgroups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from corral.guards.detectors._common import Thresholds, count, number
from corral.guards.model import Action, Finding, Sandbox, Signal, SubjectKind

MIB = 1 << 20


@dataclass(slots=True)
class _Pressure:
    refused_forks: int | None = None  # the counters at the last sample that reported them
    oom_kills: int | None = None
    samples: int = 0  # consecutive samples under pressure


def _ratio(used: int | None, limit: int | None) -> float | None:
    if used is None or limit is None or limit <= 0:
        return None
    return used / limit


def _grew(now: int | None, before: int | None) -> int:
    """How much a counter grew since the last sample; 0 on the first sample that reports it
    (the counter may predate this state: it was reset after a finding)."""
    return now - before if now is not None and before is not None and now > before else 0


class SandboxPressure:
    """Processes at ``processes`` of the limit or forks refused since the last sample (a
    fork bomb); memory at ``memory`` of the limit or processes killed by it (a balloon).
    It fires after ``samples`` samples in a row under pressure, at once when a fork was
    refused or a process killed (the limit already bit)."""

    name = "sandbox_pressure"
    signals: frozenset[str] = frozenset({"sandbox"})
    subjects: frozenset[SubjectKind] = frozenset({"run"})
    defaults: Mapping[str, float] = MappingProxyType(
        {"processes": 0.9, "memory": 0.9, "samples": 2}
    )
    actions: tuple[Action, ...] = ("sequester",)
    summary = "process count or memory near the sandbox's limits (fork bomb, memory balloon)"

    def __init__(self) -> None:
        self._thresholds = Thresholds(
            lambda limits: (
                number(limits, self.defaults, "processes"),
                number(limits, self.defaults, "memory"),
                count(limits, self.defaults, "samples"),
            )
        )

    def state(self) -> _Pressure:
        return _Pressure()

    def observe(self, state: Any, signal: Signal, limits: Mapping[str, float]) -> Finding | None:
        if not isinstance(signal, Sandbox):
            return None
        forks = _grew(signal.refused_forks, state.refused_forks)
        ooms = _grew(signal.oom_kills, state.oom_kills)
        if signal.refused_forks is not None:
            state.refused_forks = signal.refused_forks
        if signal.oom_kills is not None:
            state.oom_kills = signal.oom_kills
        procs = _ratio(signal.processes, signal.process_limit)
        memory = _ratio(signal.memory_bytes, signal.memory_limit)
        procs_at, memory_at, samples = self._thresholds(limits)
        on_procs = forks > 0 or (procs is not None and procs >= procs_at)
        on_memory = ooms > 0 or (memory is not None and memory >= memory_at)
        if not (on_procs or on_memory):
            state.samples = 0
            return None
        state.samples += 1
        if not (forks or ooms) and state.samples < samples:
            return None
        parts, numbers = [], {"samples": state.samples, "samples_threshold": samples}
        if on_procs:
            parts.append(_processes(signal, forks))
            numbers |= {"processes": signal.processes or 0, "processes_threshold": procs_at}
            numbers |= {"process_limit": signal.process_limit or 0, "refused_forks": forks}
        if on_memory:
            parts.append(_memory(signal, ooms))
            numbers |= {"memory_bytes": signal.memory_bytes or 0, "memory_threshold": memory_at}
            numbers |= {"memory_limit": signal.memory_limit or 0, "oom_kills": ooms}
        streak = f" for {state.samples} samples in a row" if state.samples > 1 else ""
        return Finding(self.name, f"the sandbox {' and '.join(parts)}{streak}", numbers)


def _processes(signal: Sandbox, forks: int) -> str:
    text = f"ran {signal.processes or 0:,} processes of its limit of {signal.process_limit or 0:,}"
    if forks:
        refused = "1 fork" if forks == 1 else f"{forks:,} forks"
        text += f" and was refused {refused} since the last sample"
    return text


def _memory(signal: Sandbox, ooms: int) -> str:
    used, limit = (signal.memory_bytes or 0) / MIB, (signal.memory_limit or 0) / MIB
    text = f"used {used:,.0f} MiB of memory of its limit of {limit:,.0f} MiB"
    if ooms:
        killed = f"{ooms:,} process" if ooms == 1 else f"{ooms:,} processes"
        text += f" and had {killed} killed by that limit since the last sample"
    return text
