"""The model catalog: public model names → provider deployments, with prices.

Prices are USD per 1M tokens as configured; costs are computed in integer
nano-dollars so sums are exact. The price-table version is a hash of every
price and mapping, so a record's cost can always be traced to the table that
produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from random import Random

import orjson

from corral.errors import ConfigError, UnknownModel
from corral.settings import CapacityConfig, ModelConfig, Protocol, ProviderConfig, Settings

DEFAULT_PROTOCOLS: dict[str, tuple[Protocol, ...]] = {
    "openai": ("chat", "responses"),
    "anthropic": ("messages",),
    "google": ("gemini",),
    "openai-compatible": ("chat",),
    "sim": ("chat", "responses", "messages", "gemini"),
}

# What Corral serves when no provider is configured: the simulator's models,
# priced like the real tiers they stand in for so costs in the demo look real.
SIM_PROVIDER = "sim"
SIM_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig(
        name="sim-frontier",
        provider=SIM_PROVIDER,
        context_window=200_000,
        input_price=5.0,
        cached_input_price=0.5,
        cache_write_price=6.25,
        output_price=25.0,
        degrade_to="sim-standard",
        tier="frontier",
        fallbacks=["sim-standard"],
    ),
    ModelConfig(
        name="sim-standard",
        provider=SIM_PROVIDER,
        context_window=200_000,
        input_price=3.0,
        cached_input_price=0.3,
        cache_write_price=3.75,
        output_price=15.0,
        degrade_to="sim-economy",
        tier="standard",
        fallbacks=["sim-economy"],
    ),
    ModelConfig(
        name="sim-economy",
        provider=SIM_PROVIDER,
        context_window=128_000,
        input_price=0.25,
        cached_input_price=0.025,
        output_price=2.0,
        tier="economy",
    ),
    ModelConfig(
        name="sim-reasoning",
        provider=SIM_PROVIDER,
        context_window=200_000,
        input_price=1.25,
        cached_input_price=0.125,
        output_price=10.0,
        reasoning_price=10.0,
        degrade_to="sim-economy",
    ),
    ModelConfig(
        name="sim-local",
        provider=SIM_PROVIDER,
        context_window=32_768,
        input_price=0.0,
        output_price=0.0,
        tier="local",
    ),
)

# Prices are kept as integer femto-dollars (1e-15 USD) per token: USD 1 per 1M tokens is
# 1e9 fUSD a token, so any price with up to nine decimals is exact and costing a call is
# integer arithmetic on the hot path.
_FUSD_PER_TOKEN = Decimal(10**9)  # per (USD per 1M tokens)
_FUSD_PER_NUSD = 1_000_000
_COLUMNS = ("input", "cached_input", "cache_write", "output", "reasoning")


@dataclass(frozen=True, slots=True)
class Prices:
    """Femto-dollars per token for each non-overlapping token column."""

    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int

    @classmethod
    def from_config(cls, m: ModelConfig) -> Prices:
        def per_token(usd_per_million: float | None, fallback: float) -> int:
            value = fallback if usd_per_million is None else usd_per_million
            exact = Decimal(str(value)) * _FUSD_PER_TOKEN
            return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))

        return cls(
            input=per_token(m.input_price, 0),
            cached_input=per_token(m.cached_input_price, m.input_price),
            cache_write=per_token(m.cache_write_price, m.input_price),
            output=per_token(m.output_price, 0),
            reasoning=per_token(m.reasoning_price, m.output_price),
        )

    @classmethod
    def dearest(cls, prices: Iterable[Prices]) -> Prices:
        """Per column, the highest of several price lists (to reserve for any of them)."""
        rows = list(prices)
        return cls(*(max(getattr(p, f) for p in rows) for f in _COLUMNS))

    @property
    def worst_input(self) -> int:
        """The dearest price an input token can be billed at (uncached, cached or cache write)."""
        return max(self.input, self.cached_input, self.cache_write)

    @property
    def worst_output(self) -> int:
        """The dearest price an output token can be billed at (visible or reasoning)."""
        return max(self.output, self.reasoning)

    def worst_cost_nusd(self, input_tokens: int, output_tokens: int) -> int:
        """An upper bound of the cost of a call of this many input and output tokens."""
        total = self.worst_input * input_tokens + self.worst_output * output_tokens
        return -(-total // _FUSD_PER_NUSD)

    def usd_per_million(self) -> dict[str, float]:
        """The prices as configured: USD per 1M tokens for each column."""
        return {
            name: float(Decimal(getattr(self, name)) / _FUSD_PER_TOKEN)
            for name in ("input", "cached_input", "cache_write", "output", "reasoning")
        }

    def cost_nusd(
        self, input: int, cached_input: int, cache_write: int, output: int, reasoning: int
    ) -> int:
        """Cost in nano-dollars, rounded half up once over the whole call."""
        total = (
            self.input * input
            + self.cached_input * cached_input
            + self.cache_write * cache_write
            + self.output * output
            + self.reasoning * reasoning
        )
        return (total + _FUSD_PER_NUSD // 2) // _FUSD_PER_NUSD


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str
    base_url: str
    api_key_env: str | None
    protocols: frozenset[str]
    headers: tuple[tuple[str, str], ...]
    capacity: CapacityConfig | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One way to serve a public model name: a provider and its upstream model."""

    name: str
    provider: Provider
    upstream_model: str
    context_window: int
    prices: Prices
    max_output_tokens: int | None = None
    degrade_to: str | None = None
    tier: str | None = None
    weight: float = 1.0
    fallbacks: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.provider.name}/{self.upstream_model}"

    def speaks(self, protocol: str) -> bool:
        return protocol in self.provider.protocols


class Catalog:
    """Resolves public model names; immutable once built."""

    def __init__(
        self, providers: list[ProviderConfig], models: list[ModelConfig], *, sim_url: str | None
    ) -> None:
        if not providers:
            if sim_url is None:
                raise ConfigError("no providers configured and no simulator URL to fall back on")
            providers = [ProviderConfig(name=SIM_PROVIDER, kind="sim", base_url=sim_url)]
            if not models:
                models = list(SIM_MODELS)
        self.providers: dict[str, Provider] = {}
        for p in providers:
            if p.name in self.providers:
                raise ConfigError(f"provider {p.name!r} is configured twice")
            self.providers[p.name] = Provider(
                name=p.name,
                kind=p.kind,
                base_url=p.base_url.rstrip("/"),
                api_key_env=p.api_key_env,
                protocols=frozenset(p.protocols or DEFAULT_PROTOCOLS[p.kind]),
                headers=tuple(p.headers.items()),
                capacity=p.capacity,
            )
        # A public name may have several deployments (weighted); ``models`` maps each name
        # to its first, ``deployments`` to all of them.
        self.deployments: dict[str, tuple[Deployment, ...]] = {}
        for m in models:
            provider = self.providers.get(m.provider)
            if provider is None:
                raise ConfigError(f"model {m.name!r} names unknown provider {m.provider!r}")
            d = Deployment(
                name=m.name,
                provider=provider,
                upstream_model=m.upstream_model or m.name,
                context_window=m.context_window,
                prices=Prices.from_config(m),
                max_output_tokens=m.max_output_tokens,
                degrade_to=m.degrade_to,
                tier=m.tier,
                weight=m.weight,
                fallbacks=tuple(m.fallbacks),
            )
            same = self.deployments.get(m.name, ())
            if any(x.id == d.id for x in same):
                raise ConfigError(f"model {m.name!r} has deployment {d.id!r} configured twice")
            self.deployments[m.name] = (*same, d)
        self.models: dict[str, Deployment] = {n: ds[0] for n, ds in self.deployments.items()}
        self.tiers: dict[str, tuple[str, ...]] = {}
        for name, d in self.models.items():
            if d.tier is not None:
                self.tiers[d.tier] = (*self.tiers.get(d.tier, ()), name)
        for tier in self.tiers:
            if tier in self.models:
                raise ConfigError(f"{tier!r} is both a tier and a model name; rename one")
        for name, ds in self.deployments.items():
            for d in ds:
                if d.degrade_to is not None and d.degrade_to not in self.models:
                    raise ConfigError(
                        f"model {name!r} degrades to {d.degrade_to!r}, which is not in the catalog"
                    )
                for f in d.fallbacks:
                    if f not in self.models and f not in self.tiers:
                        raise ConfigError(
                            f"model {name!r} falls back to {f!r}, which is neither a model nor "
                            "a tier in the catalog"
                        )
        self.price_version = _price_version(providers, models)

    @classmethod
    def from_settings(cls, settings: Settings, *, sim_url: str | None) -> Catalog:
        return cls(list(settings.providers), list(settings.models), sim_url=sim_url)

    def resolve(self, model: str) -> Deployment:
        """The first deployment of a model, or of a tier's first model."""
        names = self.names_for(model)
        return self.models[names[0]]

    def prices_for(self, model: str) -> Prices | None:
        """The price of a model an agent reported: a public name, or a deployment's upstream
        model name (an agent calling the provider directly reports that); None if unknown."""
        deployment = self.models.get(model)
        if deployment is None:
            deployment = next(
                (d for ds in self.deployments.values() for d in ds if d.upstream_model == model),
                None,
            )
        return deployment.prices if deployment is not None else None

    def names_for(self, model: str) -> tuple[str, ...]:
        """The models a requested name stands for: itself, or a tier's models in order."""
        if model in self.models:
            return (model,)
        tier = self.tiers.get(model)
        if tier:
            return tier
        raise UnknownModel(
            f"model {model!r} is not in this gateway's catalog; GET /v1/models lists the "
            "models (and tiers) your key may use"
        )

    def chain(self, model: str, rng: Random) -> list[Deployment]:
        """Every deployment a request for ``model`` may try, in order.

        The model's deployments come first, ordered by a weighted draw (so traffic splits by
        ``weight``), then those of its ``fallbacks`` (models or tiers), depth first; each
        deployment appears once.
        """
        out: list[Deployment] = []
        seen_models: set[str] = set()
        seen: set[str] = set()

        def add(name: str) -> None:
            if name in seen_models:
                return
            seen_models.add(name)
            for d in _weighted_order(self.deployments[name], rng):
                if d.id + "|" + d.name not in seen:
                    seen.add(d.id + "|" + d.name)
                    out.append(d)
            for f in self.deployments[name][0].fallbacks:
                for n in self.names_for(f):
                    add(n)

        for name in self.names_for(model):
            add(name)
        return out


def _weighted_order(deployments: tuple[Deployment, ...], rng: Random) -> list[Deployment]:
    """A weighted random order without replacement (Efraimidis-Spirakis keys)."""
    if len(deployments) == 1:
        return [deployments[0]]
    keyed = [(rng.random() ** (1.0 / d.weight), i) for i, d in enumerate(deployments)]
    return [deployments[i] for _, i in sorted(keyed, reverse=True)]


def _price_version(providers: list[ProviderConfig], models: list[ModelConfig]) -> str:
    payload = orjson.dumps(
        {
            "providers": sorted((p.name, p.kind) for p in providers),
            "models": sorted(
                (m.model_dump(mode="json") for m in models), key=lambda d: str(d["name"])
            ),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return "pt-" + hashlib.sha256(payload).hexdigest()[:12]
