"""Request and response bodies of the admin API, as they appear in its OpenAPI document.

Times are ISO-8601 UTC strings. Keys are shown by id and ``prefix`` only; the
secret appears once, in the answer to ``POST /api/v1/keys``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.identity.service import DURATION_PATTERN, NAME_PATTERN

Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=100)]
Ref = Annotated[
    str, Field(min_length=1, max_length=200, description="An id or a name.", examples=["payments"])
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    type: str = Field(description="Stable machine-readable error type.")
    message: str = Field(description="What went wrong and what to do about it.")


class ErrorBody(BaseModel):
    """Every error the admin API returns has this shape."""

    error: ErrorDetail


class TeamIn(_In):
    name: Name = Field(description="Unique in the organisation.", examples=["payments"])


class Team(BaseModel):
    id: str
    name: str
    org_id: str
    created_at: datetime


class UserIn(_In):
    name: Name = Field(description="Unique in its team.", examples=["alice"])
    team: Ref = Field(description="The team, by id or name.")
    kind: Literal["user", "service"] = Field(
        default="user", description="`service` makes a service account."
    )
    email: str | None = Field(default=None, min_length=3, max_length=320)


class User(BaseModel):
    id: str
    name: str
    kind: str
    email: str | None
    team_id: str
    team: str = Field(description="The team's name.")
    org_id: str
    created_at: datetime


class KeyIn(_In):
    team: Ref = Field(description="The owning team, by id or name.")
    user: Ref = Field(description="The owning user or service account, by id or name.")
    name: str | None = Field(default=None, min_length=1, max_length=200, examples=["laptop"])
    models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None,
        max_length=200,
        description="Models the key may call; all models when absent.",
    )
    expires_in: str | None = Field(
        default=None,
        pattern=DURATION_PATTERN,
        description="Lifetime such as `90m`, `24h`, `7d` or `2w`.",
        examples=["7d"],
    )
    expires_at: datetime | None = Field(
        default=None, description="Expiry time (alternative to `expires_in`)."
    )
    role: Literal["virtual", "team_admin"] = Field(
        default="virtual",
        description="`virtual` keys call models; `team_admin` keys also manage their team.",
    )


class Key(BaseModel):
    id: str
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    name: str | None
    role: str
    org_id: str
    team_id: str | None
    team: str | None = Field(description="The team's name.")
    user_id: str | None
    user: str | None = Field(description="The user's or service account's name.")
    allowed_models: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None
    suspended_by: str | None = Field(
        default=None, description="The incident that suspended the key (refused until released)."
    )
    created_at: datetime
    updated_at: datetime


class KeyCreated(Key):
    key: str = Field(description="The secret. Shown in this answer only; store it now.")


class Me(BaseModel):
    """The calling key and who it speaks for."""

    key: Key
    team: Team | None
    user: User | None


class Provider(BaseModel):
    name: str
    kind: str
    base_url: str
    protocols: list[str]
    api_key_env: str | None = Field(description="Name of the variable holding the secret.")
    api_key_set: bool = Field(description="Whether that variable is set in Corral's environment.")


class Prices(BaseModel):
    """USD per 1M tokens for each non-overlapping token column."""

    input: float
    cached_input: float
    cache_write: float
    output: float
    reasoning: float


class Model(BaseModel):
    name: str
    provider: str
    upstream_model: str
    context_window: int
    prices: Prices
    price_version: str


class UsageRow(BaseModel):
    """Totals for one combination of the grouping; only the fields of that grouping are
    present (a team, user or key with its id)."""

    team: str | None = None
    team_id: str | None = None
    user: str | None = None
    user_id: str | None = None
    key: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    day: str | None = Field(default=None, description="`YYYY-MM-DD`, UTC.")
    hour: datetime | None = Field(default=None, description="The hour's start, UTC.")
    requests: int = Field(description="Calls that went upstream (refused ones excluded).")
    errors: int | None = None
    error_rate: float | None = Field(default=None, description="`errors / requests`.")
    cancelled: int | None = Field(default=None, description="Calls the client abandoned.")
    refused: int | None = Field(default=None, description="Calls refused at admission.")
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float = Field(description="USD, rounded to 9 decimal places (nano-dollars).")
    latency_p50_ms: float | None = Field(
        default=None, description="Nearest-rank percentile, within 4 % of the true one."
    )
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    reported: dict[str, int | float] | None = Field(
        default=None,
        description="What agents reported over OTLP for calls the gateway has no record of: "
        "requests, the five token counts and cost_usd. Shown beside the figures above (the "
        "gateway's, what budgets count), never added to them.",
    )


class Usage(BaseModel):
    by: str = Field(description="The grouping as asked: one dimension or a comma list.")
    dimensions: list[str] = Field(description="The grouping's dimensions, in order.")
    since: datetime
    until: datetime | None = Field(description="The window's end (excluded); null: none.")
    rows: list[UsageRow]


# -- budgets and limits ----------------------------------------------------------

ScopeKind = Literal["org", "team", "user", "key"]
Resource = Literal["usd", "tokens"]
Window = Literal["hour", "day", "month", "total"]
Amount = int | float
"""USD (a number with up to 9 decimals) for ``usd``, an integer for ``tokens``."""
MAX_RATE = 2**31 - 1


class ScopeIn(_In):
    """Who a budget or limit applies to, named as a person would."""

    kind: ScopeKind
    ref: Ref | None = Field(
        default=None,
        description="The team (id or name), user (id or unique name) or key (id); "
        "absent for `org`.",
    )
    team: Ref | None = Field(
        default=None, description="For `user` only: the user's team, when the name is not unique."
    )


class BudgetIn(_In):
    scope: ScopeIn
    resource: Resource
    window: Window = Field(
        default="day", description="Calendar window in UTC; `total` never resets."
    )
    limit: float = Field(
        ge=0,
        strict=True,
        allow_inf_nan=False,
        description="USD per window for `usd` (up to 9 decimals), tokens per window for `tokens`.",
        examples=[50],
    )
    soft_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Past this fraction of the budget, requests go to the model's `degrade_to`.",
    )


class LimitsIn(_In):
    """Only the limits present in the body change; `null` clears one."""

    scope: ScopeIn
    rpm: int | None = Field(default=None, ge=0, le=MAX_RATE, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=0, le=2**53 - 1, description="Tokens per minute (reserved at admission)."
    )
    concurrency: int | None = Field(
        default=None, ge=0, le=MAX_RATE, description="Requests in flight."
    )


class QuotaScope(BaseModel):
    kind: str = Field(description="`org`, `team`, `user`, `key` or `run`.")
    id: str
    name: str | None


class BudgetStatus(BaseModel):
    """A budget and its current window's counter; amounts in USD for `usd`, tokens for `tokens`."""

    id: str
    scope: QuotaScope
    resource: Resource
    window: Window
    limit: Amount
    soft_fraction: float | None
    spent: Amount
    reserved: Amount = Field(description="Held by requests in flight.")
    remaining: Amount = Field(description="`limit - spent - reserved`, at least 0.")
    window_id: str = Field(examples=["day:2026-11-28"])
    resets_at: datetime | None = Field(description="When the window ends; null for `total`.")
    source: Literal["config", "store"] = Field(
        description="`config`: set in corral.toml, read-only here; `store`: set through the API."
    )
    updated_at: datetime | None


class LimitStatus(BaseModel):
    scope: QuotaScope
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    source: Literal["config", "store"]
    updated_at: datetime | None


class Budgets(BaseModel):
    budgets: list[BudgetStatus]
    limits: list[LimitStatus] = Field(description="Rate and concurrency limits of the same scopes.")
