"""Where budgets and limits come from: the config file and the store.

Rules set in ``corral.toml`` live in memory (their scopes are resolved by
name at every reload, so a team created later picks its budget up); rules set
through the API live in the ``budgets`` and ``rate_limits`` tables. Every
process reloads both every ``quota_refresh_interval`` into an immutable
``RuleSet``, which turns a key into its chain of limited levels with a few
dictionary lookups. All methods of ``QuotaRules`` are blocking (run them in
a thread).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import delete, func, or_, select

from corral.clock import Clock
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.identity import KeyInfo
from corral.identity.service import DEFAULT_ORG_ID, IdentityService
from corral.quota._model import (
    NANO_PER_USD,
    WINDOW_WORDS,
    Budget,
    Level,
    LevelKind,
    Limits,
    Resource,
    Window,
)
from corral.quota._model import window_range as window_range
from corral.settings import BudgetConfig, LimitConfig, Settings
from corral.store import Store
from corral.store.schema import budgets as budgets_table
from corral.store.schema import keys as keys_table
from corral.store.schema import rate_limits, runs, spans, teams, users
from corral.traces.spans import GATEWAY

log = logging.getLogger(__name__)

Source = Literal["config", "store"]
MAX_AMOUNT = 2**53
"""Budgets stay below this (nano-USD or tokens): Redis's Lua counts exactly only up to it."""
SCOPE_KINDS: tuple[LevelKind, ...] = ("org", "team", "user", "key", "run")
_SPAN_COLUMN = {
    "org": spans.c.org_id,
    "team": spans.c.team_id,
    "user": spans.c.user_id,
    "key": spans.c.key_id,
    "run": spans.c.run_id,
}
_TOKENS = (
    spans.c.input_tokens
    + spans.c.cached_input_tokens
    + spans.c.cache_write_tokens
    + spans.c.output_tokens
    + spans.c.reasoning_tokens
)


@dataclass(frozen=True, slots=True)
class BudgetRule:
    level: Level
    budget: Budget
    source: Source
    id: str
    updated_at: float | None = None
    updated_by: str | None = None


@dataclass(frozen=True, slots=True)
class RateRule:
    level: Level
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    source: Source
    updated_at: float | None = None
    updated_by: str | None = None


Chain = tuple[tuple[Level, Limits], ...]


@dataclass(slots=True)
class RuleSet:
    """Every rule at one reload, indexed for the gateway's hot path."""

    budgets: tuple[BudgetRule, ...] = ()
    rates: tuple[RateRule, ...] = ()
    limits: dict[tuple[str, str], tuple[Level, Limits]] = field(default_factory=dict)
    _chains: dict[str, Chain] = field(default_factory=dict)

    @classmethod
    def build(cls, budgets: list[BudgetRule], rates: list[RateRule]) -> RuleSet:
        merged: dict[tuple[str, str], tuple[Level, list[Budget], dict[str, int | None]]] = {}
        for b in budgets:
            entry = merged.setdefault((b.level.kind, b.level.id), (b.level, [], {}))
            entry[1].append(b.budget)
        for r in rates:
            entry = merged.setdefault((r.level.kind, r.level.id), (r.level, [], {}))
            for name in ("rpm", "tpm", "concurrency"):
                value = getattr(r, name)
                if value is not None:  # a config rate and a stored rate: the stricter holds
                    old = entry[2].get(name)
                    entry[2][name] = value if old is None else min(old, value)
        limits = {
            scope: (
                level,
                Limits(
                    budgets=tuple(bs),
                    rpm=rates_of.get("rpm"),
                    tpm=rates_of.get("tpm"),
                    concurrency=rates_of.get("concurrency"),
                ),
            )
            for scope, (level, bs, rates_of) in merged.items()
        }
        return cls(tuple(budgets), tuple(rates), limits)

    def chain(self, key: KeyInfo) -> Chain:
        """The levels of ``key``'s identity chain that have limits, outermost first.

        A run's key has the key that submitted the run as a level too: a run spends within
        its requester's key budgets and limits, as well as its own.
        """
        cached = self._chains.get(key.key_id)
        if cached is not None:
            return cached
        out = []
        for kind, scope_id in (
            ("org", key.org_id),
            ("team", key.team_id),
            ("user", key.user_id),
            ("key", key.parent_key_id),
            ("key", key.key_id),
            ("run", key.run_id),
        ):
            if scope_id is not None:
                found = self.limits.get((kind, scope_id))
                if found is not None:
                    out.append(found)
        chain = tuple(out)
        if len(self._chains) < 100_000:
            self._chains[key.key_id] = chain
        return chain


class QuotaRules:
    """Reads and writes budgets and rate limits; blocking."""

    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self._store = store
        self._clock = clock
        self._identity = IdentityService(store, clock)
        self._config_budgets = list(settings.budgets)
        self._config_limits = list(settings.limits)
        self._warned: set[str] = set()

    # -- scopes ------------------------------------------------------------------

    def level(self, kind: str, ref: str | None = None, *, team: str | None = None) -> Level:
        """Resolve a scope named by a person (a name or an id) to a ``Level``."""
        if kind == "org":
            return Level("org", DEFAULT_ORG_ID, "organisation")
        if ref is None:
            raise InvalidRequest(f"name the {kind} the rule applies to")
        if kind == "team":
            t = self._identity.get_team(ref)
            return Level("team", t.id, t.name)
        if kind == "user":
            team_id = self._identity.get_team(team).id if team else None
            u = self._identity.get_user(ref, team_id=team_id)
            return Level("user", u.id, u.name)
        if kind == "key":
            k = self._identity.get_key(ref)
            if k.role == "admin":
                raise InvalidRequest("the admin key cannot call models; limit a model key instead")
            return Level("key", k.id, k.name or k.prefix + "…")
        raise InvalidRequest(f"scope must be one of org, team, user, key; not {kind!r}")

    def _names(self, conn: Any, refs: dict[str, set[str]]) -> dict[tuple[str, str], str]:
        """Names of the scopes ``refs`` mentions (by id, or by name for teams and users).

        Only rows the rules name are read, so a reload costs the same with 10 keys or 1M.
        """
        names: dict[tuple[str, str], str] = {("org", DEFAULT_ORG_ID): "organisation"}
        for kind, table in (("team", teams), ("user", users)):
            wanted = sorted(refs.get(kind, ()))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = select(table.c.id, table.c.name).where(
                    table.c.id.in_(chunk) | table.c.name.in_(chunk)
                )
                for r in conn.execute(query):
                    names[kind, r.id] = r.name
        wanted = sorted(refs.get("key", ()))
        for start in range(0, len(wanted), 500):
            query = select(keys_table.c.id, keys_table.c.name, keys_table.c.prefix).where(
                keys_table.c.id.in_(wanted[start : start + 500])
            )
            for k in conn.execute(query):
                names["key", k.id] = k.name or k.prefix + "…"
        return names

    # -- loading -------------------------------------------------------------------

    def load(self) -> RuleSet:
        """Every rule, config and store, with scope names for messages."""
        with self._store.connect() as conn:
            budget_rows = conn.execute(select(budgets_table)).fetchall()
            rate_rows = conn.execute(select(rate_limits)).fetchall()
            refs: dict[str, set[str]] = {}
            for r in (*budget_rows, *rate_rows):
                refs.setdefault(r.scope_kind, set()).add(r.scope_id)
            for rule in (*self._config_budgets, *self._config_limits):
                kind, ref = rule.scope
                refs.setdefault(kind, set()).add(ref)
            names = self._names(conn, refs)

        def level(kind: str, scope_id: str) -> Level:
            return Level(kind, scope_id, names.get((kind, scope_id)))  # type: ignore[arg-type]

        budgets: list[BudgetRule] = []
        rates: list[RateRule] = []
        for i, bc in enumerate(self._config_budgets):
            lv = self._config_level(bc, names)
            if lv is not None:
                budgets.extend(_config_budgets(i, lv, bc))
        for lc in self._config_limits:
            lv = self._config_level(lc, names)
            if lv is not None:
                rates.append(RateRule(lv, lc.rpm, lc.tpm, lc.concurrency, "config"))
        configured = {
            (b.level.kind, b.level.id, b.budget.resource, b.budget.window) for b in budgets
        }
        for r in budget_rows:
            if (r.scope_kind, r.scope_id, r.resource, r.window) in configured:
                continue  # the config file wins; the API refuses to create such a row now
            budgets.append(
                BudgetRule(
                    level(r.scope_kind, r.scope_id),
                    Budget(r.resource, r.window, int(r.amount), r.soft_fraction),
                    "store",
                    r.id,
                    r.updated_at,
                    r.updated_by,
                )
            )
        for r in rate_rows:
            rates.append(
                RateRule(
                    level(r.scope_kind, r.scope_id),
                    r.rpm,
                    None if r.tpm is None else int(r.tpm),
                    r.concurrency,
                    "store",
                    r.updated_at,
                    r.updated_by,
                )
            )
        return RuleSet.build(budgets, rates)

    def _config_level(
        self, rule: BudgetConfig | LimitConfig, names: dict[tuple[str, str], str]
    ) -> Level | None:
        kind, ref = rule.scope
        if kind == "org":
            return Level("org", DEFAULT_ORG_ID, "organisation")
        matches = [sid for (k, sid), name in names.items() if k == kind and ref in (sid, name)]
        exact = [sid for sid in matches if sid == ref]
        if exact or len(matches) == 1:
            sid = (exact or matches)[0]
            return Level(kind, sid, names.get((kind, sid)))
        warn = f"{kind}:{ref}"
        if warn not in self._warned:
            self._warned.add(warn)
            why = "is ambiguous (use its id)" if matches else "does not exist (yet)"
            log.warning("config names %s %r, which %s; its rule is not applied", kind, ref, why)
        return None

    # -- writing -------------------------------------------------------------------

    def set_budget(
        self,
        level: Level,
        resource: Resource,
        window: Window,
        amount: int,
        *,
        soft_fraction: float | None = None,
        by: str | None = None,
    ) -> BudgetRule:
        """Create or replace the budget of ``level`` on ``resource`` per ``window``."""
        Budget(resource, window, amount, soft_fraction)  # validates
        if amount >= MAX_AMOUNT:
            raise InvalidRequest(
                f"a budget must be below {MAX_AMOUNT} units (nano-USD or tokens), not {amount}"
            )
        self._refuse_config(level, resource, window)
        now = self._clock.now()
        where = (
            (budgets_table.c.scope_kind == level.kind)
            & (budgets_table.c.scope_id == level.id)
            & (budgets_table.c.resource == resource)
            & (budgets_table.c.window == window)
        )
        values: dict[str, Any] = {
            "amount": amount,
            "soft_fraction": soft_fraction,
            "updated_at": now,
            "updated_by": by,
        }
        with self._store.begin() as conn:
            row = conn.execute(select(budgets_table.c.id).where(where)).first()
            if row is None:
                budget_id = "bud_" + uuid.uuid4().hex[:20]
                conn.execute(
                    budgets_table.insert().values(
                        id=budget_id,
                        org_id=DEFAULT_ORG_ID,
                        scope_kind=level.kind,
                        scope_id=level.id,
                        resource=resource,
                        window=window,
                        created_at=now,
                        **values,
                    )
                )
            else:
                budget_id = row.id
                conn.execute(budgets_table.update().where(where).values(**values))
        budget = Budget(resource, window, amount, soft_fraction)
        return BudgetRule(level, budget, "store", budget_id, now, by)

    def delete_budget(self, level: Level, resource: Resource, window: Window) -> None:
        self._refuse_config(level, resource, window)
        with self._store.begin() as conn:
            done = conn.execute(
                delete(budgets_table).where(
                    (budgets_table.c.scope_kind == level.kind)
                    & (budgets_table.c.scope_id == level.id)
                    & (budgets_table.c.resource == resource)
                    & (budgets_table.c.window == window)
                )
            ).rowcount
        if not done:
            raise NotFound(f"{level.label} has no {_budget_words(resource, window)}")

    def set_limits(
        self,
        level: Level,
        changes: dict[str, int | None],
        *,
        by: str | None = None,
    ) -> RateRule:
        """Set (a value) or clear (None) some of ``rpm``, ``tpm``, ``concurrency``."""
        unknown = set(changes) - {"rpm", "tpm", "concurrency"}
        if unknown:
            raise InvalidRequest(f"unknown limits: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if value is not None and value < 0:
                raise InvalidRequest(f"{name} must be >= 0, not {value}")
        now = self._clock.now()
        where = (rate_limits.c.scope_kind == level.kind) & (rate_limits.c.scope_id == level.id)
        with self._store.begin() as conn:
            row = conn.execute(select(rate_limits).where(where)).first()
            current = {
                name: getattr(row, name) if row is not None else None
                for name in ("rpm", "tpm", "concurrency")
            }
            current.update(changes)
            if all(v is None for v in current.values()):
                conn.execute(delete(rate_limits).where(where))
            elif row is None:
                conn.execute(
                    rate_limits.insert().values(
                        scope_kind=level.kind,
                        scope_id=level.id,
                        org_id=DEFAULT_ORG_ID,
                        updated_at=now,
                        updated_by=by,
                        **current,
                    )
                )
            else:
                conn.execute(
                    rate_limits.update()
                    .where(where)
                    .values(updated_at=now, updated_by=by, **current)
                )
        return RateRule(
            level, current["rpm"], current["tpm"], current["concurrency"], "store", now, by
        )

    def _refuse_config(self, level: Level, resource: str, window: str) -> None:
        for bc in self._config_budgets:
            if bc.scope[0] != level.kind or bc.window != window or getattr(bc, resource) is None:
                continue
            # The config names its scope as load() resolves it: an ambiguous name applies to
            # nobody, so it blocks nobody either.
            with self._store.connect() as conn:
                names = self._names(conn, {bc.scope[0]: {bc.scope[1]}})
            configured = self._config_level(bc, names)
            if configured is not None and configured.id == level.id:
                raise Conflict(
                    f"the {_budget_words(resource, window)} of {level.label} is set in the config "
                    "file; change it there"
                )

    # -- spend -----------------------------------------------------------------------

    def spent(self, level: Level, resource: Resource, window: Window, now: float) -> int:
        """What ``level`` spent of ``resource`` in the current ``window``, from the spans.

        Only the gateway's own records spend (``source`` gateway; NULL on rows stored before
        the column existed): what an agent reports over OTLP is a claim, never a charge.
        """
        return self._sum(resource, window, now, _SPAN_COLUMN[level.kind] == level.id)

    def spent_with_runs(self, level: Level, resource: Resource, window: Window, now: float) -> int:
        """``spent``, plus for a key what the runs it submitted spent with their own keys
        (their calls are charged to it at admission, so a restart must count them too)."""
        total = self.spent(level, resource, window, now)
        if level.kind != "key":
            return total
        submitted = select(runs.c.id).where(runs.c.requested_by_key == level.id)
        return total + self._sum(resource, window, now, spans.c.run_id.in_(submitted))

    def _sum(self, resource: Resource, window: Window, now: float, which: Any) -> int:
        """The metered spend of the spans ``which`` selects in the current ``window``."""
        _, start, _end = window_range(window, now)
        value = spans.c.cost_nusd if resource == "usd" else _TOKENS
        query = select(func.coalesce(func.sum(value), 0)).where(
            spans.c.kind == "llm_request",
            which,
            or_(spans.c.source == GATEWAY, spans.c.source.is_(None)),
        )
        if start is not None:
            query = query.where(spans.c.start_ns >= int(start * 1e9))
        with self._store.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


def _budget_words(resource: str, window: str) -> str:
    unit = "USD" if resource == "usd" else "token"
    return f"{WINDOW_WORDS.get(window, window)} {unit} budget"  # type: ignore[call-overload]


def _config_budgets(index: int, level: Level, bc: BudgetConfig) -> list[BudgetRule]:
    out = []
    if bc.usd is not None:
        amount = round(bc.usd * NANO_PER_USD)
        out.append(
            BudgetRule(
                level,
                Budget("usd", bc.window, amount, bc.soft_fraction),
                "config",
                f"cfg-{index}-usd",
            )
        )
    if bc.tokens is not None:
        out.append(
            BudgetRule(
                level,
                Budget("tokens", bc.window, bc.tokens, bc.soft_fraction),
                "config",
                f"cfg-{index}-tokens",
            )
        )
    return out


__all__ = ["SCOPE_KINDS", "BudgetRule", "Chain", "QuotaRules", "RateRule", "RuleSet"]
