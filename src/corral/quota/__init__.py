"""Budgets, rate limits and concurrency over the identity chain.

One atomic admission per request covers every level (org, team, user, key,
run): it checks RPM, TPM, concurrency and budgets, then reserves the granted
amounts as a *lease* that the caller settles exactly once with the actual
spend. Leases expire, so a crash or a lost settlement cannot leak budget.
Two backends share one behaviour: ``EmbeddedQuota`` (one process, in memory)
and ``RedisQuota`` (many processes, one Lua script per admission). See
``docs/quotas.md`` for the consistency each limit gives.
"""

from corral.quota._embedded import EmbeddedQuota
from corral.quota._model import (
    Budget,
    BudgetUsage,
    Grant,
    Level,
    LevelUsage,
    LimitExceeded,
    Limits,
    QuotaBackend,
    QuotaUnavailable,
    window_bounds,
)
from corral.quota._redis import RedisQuota

__all__ = [
    "Budget",
    "BudgetUsage",
    "EmbeddedQuota",
    "Grant",
    "Level",
    "LevelUsage",
    "LimitExceeded",
    "Limits",
    "QuotaBackend",
    "QuotaUnavailable",
    "RedisQuota",
    "window_bounds",
]
