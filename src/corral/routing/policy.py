"""Route policy: which tier a request may use, from its team, task class and priority.

Rules come from ``[[route_policies]]``; the first one matching a request
applies. ``tier`` caps the tier (a request for a dearer model goes to that
tier's models instead); ``allowed_tiers`` limits the tiers (a request for
another tier goes to the first allowed one no dearer than it, or to the
cheapest allowed if all are dearer). Models without a tier are not governed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from corral.errors import ConfigError, InvalidRequest, NotFound
from corral.routing.catalog import Catalog
from corral.settings import RoutePolicyConfig
from corral.store import Store
from corral.store.schema import route_policies


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule set through the API: its id and position, after the config file's rules."""

    id: str
    position: float
    rule: RoutePolicyConfig
    created_at: float
    created_by: str | None


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
        self._config = list(rules)
        self._rules = list(rules)
        self.stored: tuple[StoredRule, ...] = ()
        self._rank = {tier: i for i, tier in enumerate(tier_order)}
        for tier in catalog.tiers:
            self._rank.setdefault(tier, len(self._rank))
        for i, rule in enumerate(self._config, 1):
            try:
                self.check(rule)
            except InvalidRequest as exc:
                raise ConfigError(f"route_policies[{i}]: {exc.message}") from exc

    def set_stored(self, stored: list[StoredRule]) -> None:
        """Replace the rules from the store (they follow the config file's, by position)."""
        self.stored = tuple(sorted(stored, key=lambda r: (r.position, r.id)))
        self._rules = self._config + [r.rule for r in self.stored]

    def rules(self) -> list[tuple[int, str, str | None, RoutePolicyConfig]]:
        """Every rule in the order they apply: (number, source, id, rule)."""
        out: list[tuple[int, str, str | None, RoutePolicyConfig]] = [
            (i, "config", None, rule) for i, rule in enumerate(self._config, 1)
        ]
        base = len(out)
        out += [(base + i, "store", r.id, r.rule) for i, r in enumerate(self.stored, 1)]
        return out

    def check(self, rule: RoutePolicyConfig) -> None:
        """Refuse a rule naming tiers the catalog does not have (raises ``InvalidRequest``)."""
        named = [rule.tier] if rule.tier else []
        named += rule.allowed_tiers or []
        unknown = sorted({t for t in named if t not in self._catalog.tiers})
        if unknown:
            known = ", ".join(sorted(self._catalog.tiers)) or "none"
            raise InvalidRequest(f"no such tier: {', '.join(unknown)} (tiers: {known})")
        if rule.tier is None and rule.allowed_tiers is None:
            raise InvalidRequest("a route policy needs tier, allowed_tiers or both")

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


def load_stored(store: Store) -> list[StoredRule]:
    """The rules set through the API (blocking)."""
    with store.connect() as conn:
        rows = conn.execute(select(route_policies)).fetchall()
    return [
        StoredRule(
            r.id,
            r.position,
            RoutePolicyConfig(
                team=r.team,
                task_class=r.task_class,
                priority=r.priority,
                tier=r.tier,
                allowed_tiers=r.allowed_tiers,
            ),
            r.created_at,
            r.created_by,
        )
        for r in rows
    ]


def add_stored(
    store: Store, rule: RoutePolicyConfig, *, now: float, by: str | None, position: float | None
) -> str:
    """Append a rule (or put it at ``position``); returns its id (blocking)."""
    rule_id = "rp_" + uuid.uuid4().hex[:16]
    with store.begin() as conn:
        if position is None:
            top = conn.execute(select(func.max(route_policies.c.position))).scalar()
            position = (top or 0.0) + 1.0
        conn.execute(
            route_policies.insert().values(
                id=rule_id,
                position=position,
                team=rule.team,
                task_class=rule.task_class,
                priority=rule.priority,
                tier=rule.tier,
                allowed_tiers=rule.allowed_tiers,
                created_at=now,
                created_by=by,
            )
        )
    return rule_id


def remove_stored(store: Store, rule_id: str) -> None:
    with store.begin() as conn:
        done = conn.execute(delete(route_policies).where(route_policies.c.id == rule_id)).rowcount
    if not done:
        raise NotFound(f"no route policy {rule_id!r} (config-file rules cannot be removed here)")


__all__ = ["Decision", "RoutePolicy", "StoredRule", "add_stored", "load_stored", "remove_stored"]
