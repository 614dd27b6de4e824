"""Route policy: which tier a request may use, from its team, task class and priority.

Rules come from ``[[route_policies]]``; the first one matching a request
applies. ``tier`` caps the tier (a request for a dearer model goes to that
tier's models instead); ``allowed_tiers`` limits the tiers (a request for
another tier goes to the first allowed one no dearer than it, or to the
cheapest allowed if all are dearer). Models without a tier are not governed.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.routing.catalog import Catalog
from corral.settings import RoutePolicyConfig


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes: ``model`` (a model or tier name) and why, if not where it asked."""

    model: str
    reason: str | None = None


class RoutePolicy:
    def __init__(
        self, catalog: Catalog, rules: list[RoutePolicyConfig], tier_order: list[str]
    ) -> None:
        self._catalog = catalog
        self._rules = list(rules)
        self._rank = {tier: i for i, tier in enumerate(tier_order)}
        for tier in catalog.tiers:
            self._rank.setdefault(tier, len(self._rank))

    def decide(
        self, model: str, *, team: str | None, task_class: str | None, priority: str | None
    ) -> Decision:
        """The model or tier a request for ``model`` is routed to."""
        if not self._rules:
            return Decision(model)
        asked = self._tier_of(model)
        if asked is None:
            return Decision(model)
        for i, rule in enumerate(self._rules, 1):
            if not _matches(rule, team, task_class, priority):
                continue
            tier = asked
            if rule.allowed_tiers is not None and tier not in rule.allowed_tiers:
                tier = self._allowed(tier, rule.allowed_tiers)
            if rule.tier is not None and self._rank.get(tier, 0) < self._rank.get(rule.tier, 0):
                tier = rule.tier
            if tier == asked or tier not in self._catalog.tiers:
                return Decision(model)
            return Decision(tier, f"route policy {i} ({_describe(rule)}): tier {asked} -> {tier}")
        return Decision(model)

    def _tier_of(self, model: str) -> str | None:
        if model in self._catalog.tiers:
            return model
        d = self._catalog.models.get(model)
        return d.tier if d is not None else None

    def _allowed(self, tier: str, allowed: list[str]) -> str:
        rank = self._rank.get(tier, 0)
        ordered = sorted(allowed, key=lambda t: self._rank.get(t, len(self._rank)))
        no_dearer = [t for t in ordered if self._rank.get(t, 0) >= rank]
        return no_dearer[0] if no_dearer else ordered[-1] if ordered else tier


def _matches(
    rule: RoutePolicyConfig, team: str | None, task_class: str | None, priority: str | None
) -> bool:
    return (
        (rule.team is None or rule.team == team)
        and (rule.task_class is None or rule.task_class == task_class)
        and (rule.priority is None or rule.priority == priority)
    )


def _describe(rule: RoutePolicyConfig) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (
            ("team", rule.team),
            ("task class", rule.task_class),
            ("priority", rule.priority),
        )
        if value is not None
    ]
    return ", ".join(parts) or "every request"


__all__ = ["Decision", "RoutePolicy"]
