"""What the admin API and the CLI may ask of guards (``corral.guards.engine.Guards`` does it).

Acknowledging only records; releasing thaws a sequestered run (or lifts a key's suspension
and throttle) and restores its key; killing ends the run ``failed`` (the reason names the
incident) or leaves a key suspended for good. A kill switch stops a team's, or the whole
organisation's, agent traffic until it is switched off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from corral.guards.incidents import Incident, IncidentService


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """A switch that is on: ``team_id`` None is the organisation's."""

    team_id: str | None
    on_at: float
    actor: str
    comment: str | None


@dataclass(frozen=True, slots=True)
class DetectorView:
    """A detector as it applies to a team: its thresholds after the overrides."""

    name: str
    summary: str
    enabled: bool
    signals: tuple[str, ...]
    subjects: tuple[str, ...]
    thresholds: Mapping[str, float]
    actions: tuple[str, ...]
    overridden: tuple[str, ...]  # the threshold names the settings changed for this team


class GuardOps(Protocol):
    @property
    def incidents(self) -> IncidentService: ...

    async def acknowledge(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        """Open → acknowledged (someone is on it); nothing else changes."""
        ...

    async def release(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        """Thaw and resume the run, restore its key (or the key's); the incident is released."""
        ...

    async def kill(self, incident_id: str, *, actor: str, comment: str | None) -> Incident:
        """End the run failed, naming the incident (a key stays suspended); killed."""
        ...

    async def kill_switch(
        self, team_id: str | None, on: bool, *, actor: str, comment: str | None
    ) -> list[KillSwitch]:
        """Switch a team's (``team_id``) or the organisation's (None) traffic off (``on``)
        or back on; the switches on afterwards."""
        ...

    def switches_on(self) -> list[KillSwitch]:
        """The switches on now."""
        ...

    def effective(self, team_id: str | None) -> list[DetectorView]:
        """Every detector with the thresholds that apply to ``team_id`` (None: the defaults)."""
        ...
