"""Which detectors watch a team, with which thresholds and which escalation ladder.

The ``[guards]`` settings override a detector's defaults for everyone
(``[guards.detectors.NAME]``) and per team (``[[guards.teams]]``, by name or id). A
threshold or detector the settings name that no registered detector has is refused at
start-up (a typo must not silently leave a guard at its default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from corral.errors import ConfigError
from corral.guards.model import ACTIONS, Action, Detector
from corral.guards.ops import DetectorView
from corral.settings import DetectorSettings, GuardsConfig, GuardTeamSettings


@dataclass(frozen=True, slots=True)
class Rule:
    """One detector as it applies to one team."""

    detector: Detector
    limits: Mapping[str, float]  # read-only: detectors read a mapping's thresholds once
    actions: tuple[Action, ...]
    overridden: tuple[str, ...]

    def action_for(self, firing: int) -> Action:
        """The action of the ``firing``-th firing (1-based) on an incident."""
        return self.actions[min(firing, len(self.actions)) - 1]


class Policy:
    """The detectors and the settings, resolved per team (cached: teams are few)."""

    def __init__(self, config: GuardsConfig, detectors: Sequence[Detector]) -> None:
        self.config = config
        self.detectors = list(detectors)
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"two detectors are named {', '.join(twice)}; rename one")
        self._by_name = {d.name: d for d in self.detectors}
        _check(config.detectors, self._by_name, "[guards.detectors]")
        for team in config.teams:
            _check(team.detectors, self._by_name, f"[[guards.teams]] team {team.team!r}")
        self._rules: dict[tuple[str | None, str | None], tuple[Rule, ...]] = {}

    def team(self, team_id: str | None, team_name: str | None) -> GuardTeamSettings | None:
        for team in self.config.teams:
            if team.team in (team_id, team_name) and team.team is not None:
                return team
        return None

    def rules(self, team_id: str | None, team_name: str | None = None) -> tuple[Rule, ...]:
        """The enabled detectors for a team, with its thresholds and ladders."""
        cache_key = (team_id, team_name)
        found = self._rules.get(cache_key)
        if found is None:
            found = tuple(rule for rule in self._resolve(team_id, team_name) if rule is not None)
            if len(self._rules) > 10_000:  # teams are few; ids made up by no one
                self._rules.clear()
            self._rules[cache_key] = found
        return found

    def _resolve(self, team_id: str | None, team_name: str | None) -> Iterable[Rule | None]:
        team = self.team(team_id, team_name)
        if not self.config.enabled or (team is not None and team.enabled is False):
            return
        for detector in self.detectors:
            yield _rule(detector, self.config.detectors.get(detector.name), _of(team, detector))

    def views(self, team_id: str | None, team_name: str | None) -> list[DetectorView]:
        """Every detector as it applies to the team, the disabled ones too."""
        team = self.team(team_id, team_name)
        off = not self.config.enabled or (team is not None and team.enabled is False)
        views = []
        for detector in self.detectors:
            base = self.config.detectors.get(detector.name)
            override = _of(team, detector)
            rule = _rule(detector, base, override)
            probe = rule or _rule(detector, _on(base), _on(override))
            assert probe is not None
            views.append(
                DetectorView(
                    name=detector.name,
                    summary=detector.summary,
                    enabled=rule is not None and not off,
                    signals=tuple(sorted(detector.signals)),
                    subjects=tuple(sorted(detector.subjects)),
                    thresholds=dict(probe.limits),
                    actions=probe.actions,
                    overridden=probe.overridden,
                )
            )
        return views


def _of(team: GuardTeamSettings | None, detector: Detector) -> DetectorSettings | None:
    return team.detectors.get(detector.name) if team is not None else None


def _on(settings: DetectorSettings | None) -> DetectorSettings | None:
    return settings.model_copy(update={"enabled": True}) if settings is not None else None


def _rule(detector: Detector, *layers: DetectorSettings | None) -> Rule | None:
    """The detector with each layer's settings applied in order; None when one turns it off."""
    limits = dict(detector.defaults)
    actions: tuple[Action, ...] = tuple(detector.actions)
    overridden: list[str] = []
    for layer in layers:
        if layer is None:
            continue
        if layer.enabled is False:
            return None
        for name, value in layer.thresholds.items():
            limits[name] = float(value)
            if name not in overridden:
                overridden.append(name)
        if layer.actions:
            actions = tuple(layer.actions)
    return Rule(detector, MappingProxyType(limits), actions, tuple(overridden))


def _check(
    settings: Mapping[str, DetectorSettings], detectors: Mapping[str, Detector], where: str
) -> None:
    for name, given in settings.items():
        detector = detectors.get(name)
        if detector is None:
            known = ", ".join(sorted(detectors))
            raise ConfigError(f"{where}: no detector is named {name!r} (there are: {known})")
        unknown = sorted(set(given.thresholds) - set(detector.defaults))
        if unknown:
            known = ", ".join(sorted(detector.defaults)) or "none"
            raise ConfigError(
                f"{where}.{name}: {', '.join(unknown)} is not a threshold of {name} "
                f"(its thresholds: {known})"
            )
        if given.actions is not None and not given.actions:
            raise ConfigError(f"{where}.{name}: actions must name at least one of {ACTIONS}")
