"""Typed, documented settings.

Sources, strongest first: explicit keyword arguments (the CLI's flags),
``CORRAL_*`` environment variables, the TOML file (``--config FILE``,
``$CORRAL_CONFIG``, or ``./corral.toml`` when it exists), then the defaults
below. Every field has a description; ``docs/configuration.md`` is generated
from this module (``make docs``) and a test fails when it is out of date.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from corral.errors import ConfigError
from corral.settings.governance import (
    DetectorSettings as DetectorSettings,
)
from corral.settings.governance import (
    GateRule as GateRule,
)
from corral.settings.governance import (
    GateSettings as GateSettings,
)
from corral.settings.governance import (
    GuardAction as GuardAction,
)
from corral.settings.governance import (
    GuardsConfig as GuardsConfig,
)
from corral.settings.governance import (
    GuardTeamSettings as GuardTeamSettings,
)
from corral.settings.governance import (
    ReviewConfig as ReviewConfig,
)
from corral.settings.governance import (
    ReviewerSettings as ReviewerSettings,
)
from corral.settings.governance import (
    WebCheckSettings as WebCheckSettings,
)
from corral.settings.governance import (
    WebPage as WebPage,
)

ProviderKind = Literal["openai", "anthropic", "google", "openai-compatible", "sim"]
Protocol = Literal["chat", "responses", "messages", "gemini"]
# What of a call's bodies is kept: the setting's values, and a team's own (its `body_capture`).
BodyMode = Literal["off", "metadata", "full"]
BODY_MODES: tuple[BodyMode, ...] = ("off", "metadata", "full")


class CapacityConfig(BaseModel):
    """A provider's capacity contract: reserved throughput, its price, and what happens past it."""

    model_config = ConfigDict(extra="forbid")

    reserved_rpm: int | None = Field(
        default=None, gt=0, description="Requests per minute reserved with the provider."
    )
    reserved_tpm: int | None = Field(
        default=None,
        gt=0,
        description="Tokens per minute reserved (counted as the worst case at admission).",
    )
    reserved_price_factor: float = Field(
        default=1.0,
        ge=0,
        description="Multiplies the catalog prices of requests served within the reserved "
        "capacity (e.g. 0.7 for a committed-use discount; 0 for capacity paid up front).",
    )
    overflow: Literal["payg", "spill", "queue", "refuse"] = Field(
        default="payg",
        description="Past the reserved capacity: `payg` keeps sending at catalog prices, "
        "`spill` moves on to the next deployment of the chain, `queue` waits for the next "
        "minute (within the request's deadline), `refuse` answers 429 if nothing else can "
        "serve.",
    )


class ProviderConfig(BaseModel):
    """An upstream that serves models: a supply contract, not a seat licence."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name the catalog refers to, e.g. `openai`.")
    kind: ProviderKind = Field(
        description="Wire family: `openai`, `anthropic`, `google` (the Gemini API), "
        "`openai-compatible` (vLLM, Ollama, llama.cpp server) or `sim` (Corral's simulator)."
    )
    base_url: str = Field(
        description="Base URL up to and including the version prefix's parent, "
        "e.g. `https://api.openai.com` (Corral appends `/v1/...`)."
    )
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the provider's secret. "
        "The secret itself never goes in the file.",
    )
    protocols: list[Protocol] | None = Field(
        default=None,
        description="Protocols this provider speaks; defaults by kind "
        "(openai: chat, responses; anthropic: messages; google: gemini; openai-compatible: "
        "chat; sim: all). A deployment serves every protocol: what its provider does not "
        "speak is translated (docs/protocols.md).",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent upstream on every request."
    )
    capacity: CapacityConfig | None = Field(
        default=None, description="The capacity contract, if any; see docs/routing.md."
    )


class ModelConfig(BaseModel):
    """A public model name mapped to a provider deployment, with its prices."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Public name clients ask for.")
    provider: str = Field(description="Name of a configured provider.")
    upstream_model: str | None = Field(
        default=None, description="Model name sent upstream; defaults to `name`."
    )
    context_window: int = Field(default=128_000, gt=0, description="Context window in tokens.")
    input_price: float = Field(ge=0, description="USD per 1M uncached input tokens.")
    cached_input_price: float | None = Field(
        default=None, ge=0, description="USD per 1M cache-read input tokens; defaults to input."
    )
    cache_write_price: float | None = Field(
        default=None, ge=0, description="USD per 1M cache-write tokens; defaults to input."
    )
    output_price: float = Field(ge=0, description="USD per 1M output tokens.")
    reasoning_price: float | None = Field(
        default=None, ge=0, description="USD per 1M reasoning tokens; defaults to output."
    )
    max_output_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Output cap Corral sets on a request that has none while a budget or TPM "
        "limit applies; defaults to `quota_default_max_output_tokens`.",
    )
    degrade_to: str | None = Field(
        default=None,
        description="The next cheaper model: where requests go once a soft budget limit is "
        "passed (see Budgets and limits).",
    )
    tier: str | None = Field(
        default=None,
        description="Tier this model belongs to (`frontier`, `standard`, `economy`, `local`, "
        "…). Clients may ask for the tier by name: its models, in config order, are tried.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        description="Share of traffic among deployments of the same `name` (list the name once "
        "per deployment).",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models (or tiers) tried, in order, when every deployment of this one fails "
        "with a fallback error class (see docs/routing.md).",
    )


ScopeKind = Literal["org", "team", "user", "key"]
Window = Literal["hour", "day", "month", "total"]


class _ScopedConfig(BaseModel):
    """Exactly one of ``org``, ``team``, ``user``, ``key`` names who a rule applies to."""

    model_config = ConfigDict(extra="forbid")

    org: bool = Field(default=False, description="`true`: the whole organisation.")
    team: str | None = Field(default=None, description="A team, by name or id.")
    user: str | None = Field(
        default=None, description="A user or service account, by id or unique name."
    )
    key: str | None = Field(default=None, description="A key, by id (`key_...`).")

    @property
    def scope(self) -> tuple[ScopeKind, str]:
        named: tuple[tuple[ScopeKind, str | None], ...] = (
            ("team", self.team),
            ("user", self.user),
            ("key", self.key),
        )
        given = [(kind, value) for kind, value in named if value is not None]
        if self.org:
            given.append(("org", ""))
        if len(given) != 1:
            raise ValueError("name exactly one of org = true, team, user or key")
        return given[0]

    def model_post_init(self, context: Any, /) -> None:
        self.scope  # noqa: B018 - validates


class BudgetConfig(_ScopedConfig):
    """A budget set in the config file (read-only through the API and CLI)."""

    usd: float | None = Field(default=None, ge=0, description="USD per window.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens per window (all kinds).")
    window: Window = Field(default="day", description="`hour`, `day`, `month` (UTC) or `total`.")
    soft_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Past this fraction of the budget, requests go to the model's `degrade_to`.",
    )

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs usd or tokens")


class LimitConfig(_ScopedConfig):
    """Rate and concurrency limits set in the config file."""

    rpm: int | None = Field(default=None, ge=0, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=0, description="Tokens per minute (counted as reserved at admission)."
    )
    concurrency: int | None = Field(default=None, ge=0, description="Requests in flight.")


class RoutePolicyConfig(BaseModel):
    """A rule of the route policy. The first rule matching a request applies."""

    model_config = ConfigDict(extra="forbid")

    team: str | None = Field(default=None, description="Match requests of this team (name).")
    task_class: str | None = Field(
        default=None, description="Match requests sending `x-corral-task-class` with this value."
    )
    priority: Literal["low", "normal", "high"] | None = Field(
        default=None, description="Match requests sending `x-corral-priority` with this value."
    )
    tier: str | None = Field(
        default=None,
        description="The dearest tier matching requests may use: a request for a dearer tier's "
        "model goes to this tier instead.",
    )
    allowed_tiers: list[str] | None = Field(
        default=None,
        description="The only tiers matching requests may use: a request for another tier's "
        "model goes to the first allowed tier no dearer than it.",
    )


class Settings(BaseSettings):
    """Everything Corral reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", extra="forbid", validate_default=True, frozen=True
    )

    home: Path = Field(
        default=Path(".corral"),
        description="State folder: the SQLite database, the record journal, generated secrets.",
    )
    host: str = Field(default="127.0.0.1", description="Address `corral serve` listens on.")
    port: int = Field(default=4100, ge=0, le=65535, description="Port `corral serve` listens on.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store. Default: SQLite (WAL) at "
        "`$CORRAL_HOME/corral.db`; `postgresql://user:pass@host/db` for Postgres.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        description="The organisation admin key. When unset, one is generated at first start, "
        "printed once, and only its hash is kept.",
    )
    sim_url: str | None = Field(
        default=None,
        description="With no providers configured, serve the simulator's models from this external "
        "`corral sim` instead of the in-process one.",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="Largest request body the gateway accepts."
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Largest request body the admin API accepts (413 past it, checked before "
        "the body is read, and only once the key is).",
    )
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a connection has to send a whole request head; then it is "
        "answered 408 and closed (slow or half-open clients).",
    )
    http_idle_timeout: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Seconds a kept-alive connection may stay idle between requests (never "
        "during a response: streams are not cut). Behind a load balancer, set it above the "
        "balancer's own idle timeout.",
    )
    http_max_connections: int = Field(
        default=1000,
        gt=0,
        description="Open connections this process serves; past it a new connection is "
        "answered 503 with `Retry-After` and closed, and the open ones are served as before.",
    )
    upstream_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to open a connection to a provider."
    )
    upstream_read_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds to wait for the next byte from a provider before giving up.",
    )
    upstream_max_connections: int = Field(
        default=1000, gt=0, description="Pooled keep-alive connections to providers, in all."
    )
    record_batch_size: int = Field(
        default=1000, gt=0, description="Prediction records written to the store per batch."
    )
    record_flush_interval: float = Field(
        default=0.2, gt=0, description="Seconds between batch writes of prediction records."
    )
    key_refresh_interval: float = Field(
        default=0.25,
        gt=0,
        le=1.0,
        description="Seconds between checks for revoked or changed keys; revocation takes effect "
        "on every process within this interval.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (`redis://host:6379/0`) for budgets and limits shared by several "
        "`corral serve` processes. Unset: the embedded backend (exact within one process).",
    )
    tier_order: list[str] = Field(
        default_factory=lambda: ["frontier", "standard", "economy", "local"],
        description="Tiers from dearest to cheapest; route policies cap and degrade along it.",
    )
    route_policies: list[RoutePolicyConfig] = Field(
        default_factory=list, description="Route policy rules; see the Route policies section."
    )
    route_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Upstream attempts per request across retries and fallbacks, in all.",
    )
    route_deadline: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a request may take across all its attempts before the gateway "
        "answers with a timeout.",
    )
    upstream_first_byte_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds to wait for a provider's response to start (headers) before the "
        "attempt counts as timed out and the next deployment is tried.",
    )
    breaker_failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A deployment's circuit opens when this fraction of its recent attempts "
        "failed (with at least `breaker_min_attempts` in `breaker_window`).",
    )
    breaker_min_attempts: int = Field(
        default=5, ge=1, description="Attempts in the window before a circuit may open."
    )
    breaker_window: float = Field(
        default=30.0, gt=0, description="Seconds of attempts a circuit breaker looks back on."
    )
    breaker_cooldown: float = Field(
        default=15.0,
        gt=0,
        description="Seconds an open circuit skips its deployment before letting one probe "
        "through (half-open).",
    )
    quota_fail_open: bool = Field(
        default=False,
        description="When the quota backend is unreachable, admit requests unchecked (and record "
        "that) instead of refusing them with 503.",
    )
    quota_lease_ttl: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a reservation lives unless renewed. The process running a request "
        "renews its lease at half-life, so this bounds how long a dead process's reservations "
        "and concurrency slots linger.",
    )
    quota_settle_grace: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds after a lease expires during which its settlement is still charged.",
    )
    quota_default_max_output_tokens: int = Field(
        default=8192,
        gt=0,
        description="Output cap set on requests that have none when a budget or TPM limit "
        "applies, so the reservation bounds the spend.",
    )
    quota_input_bytes_per_token: float = Field(
        default=2.0,
        gt=0,
        description="Input is estimated offline as request bytes divided by this; lower is more "
        "conservative (1.0 bounds any byte-level BPE tokenizer).",
    )
    quota_refresh_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between reloads of budgets and limits from the store; a change "
        "takes effect on every process within this interval.",
    )
    trace_bodies: BodyMode = Field(
        default="full",
        description="Raw request/response bodies kept for each LLM call, unless a team says "
        "otherwise (`corral teams set --bodies`): `full` (redacted, capped), `metadata` (size, "
        "digest and shape only) or `off`.",
    )
    trace_body_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="Largest body kept in the blob store; a larger one is cut there with a "
        "marker saying how much was dropped.",
    )
    trace_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Days spans and bodies are kept, unless a team says otherwise "
        "(`corral teams set --retention-days`).",
    )
    trace_retention_interval: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds between retention passes (deleting spans and bodies past their "
        "team's window, in batches).",
    )
    blob_dir: Path | None = Field(
        default=None, description="Blob store folder for raw bodies. Default: `$CORRAL_HOME/blobs`."
    )
    ingest_queue_max: int = Field(
        default=50_000,
        gt=0,
        description="Spans accepted but not yet stored beyond which OTLP ingest answers 429 with "
        "Retry-After (gateway records are always journaled).",
    )
    otlp_export_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`) that every "
        "stored span is also sent to, as protobuf. Unset: no export.",
    )
    otlp_export_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Headers sent with each export (for example an `authorization` the "
        "collector expects).",
    )
    otlp_export_queue_max: int = Field(
        default=100_000,
        gt=0,
        description="Spans waiting for export beyond which the oldest are dropped and counted "
        '(`corral_otlp_export_spans_total{outcome="dropped"}`); export never slows the gateway.',
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics to anyone who can reach the port. Off: a scrape must send "
        "`Authorization: Bearer` with `metrics_token` or the org admin key (the metrics name "
        "teams and their spend).",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="A bearer token that may read /metrics and nothing else: give it to "
        "Prometheus (`authorization.credentials`) instead of the admin key.",
    )
    metrics_max_teams: int = Field(
        default=100,
        gt=0,
        description="Distinct `team` label values on /metrics; further teams are reported as "
        "`other` so cardinality stays bounded (models are bounded by the catalog).",
    )
    runs_dir: Path | None = Field(
        default=None,
        description="Folder of run workspaces, scratch folders and artifacts. Default: "
        "`$CORRAL_HOME/runs`. Made 0700, Corral's alone; it may sit anywhere (under a 0700 "
        "home too): each run reaches only its own folders, through its sandbox's binds.",
    )
    artifact_dir: Path | None = Field(
        default=None,
        description="Folder of the artifact store: each run's logs, diff, report and "
        "artifacts, written and read through it. Default: `$CORRAL_HOME/artifacts`. Made "
        "0700. Servers sharing the database and this folder all serve every run's outputs.",
    )
    run_slots: int = Field(
        default=2, ge=0, description="Runs this process executes at once (0: it runs none)."
    )
    run_team_concurrency: int = Field(
        default=2,
        gt=0,
        description="Live runs (admitted or running) a team may have at once, across processes; "
        "further runs wait in the queue, first come first served.",
    )
    run_team_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Per-team overrides of `run_team_concurrency`, by team name "
        "(`run_team_limits = { payments = 4 }`).",
    )
    run_repo_roots: list[Path] = Field(
        default_factory=list,
        description="Folders every team's runs may clone from and deliver into (`--repo PATH`), "
        "unless `run_team_repo_roots` names the team; `{team}` in a folder becomes the team's "
        "name (`/srv/repos/{team}`). Empty: any folder the server can read, fine on a "
        "one-person machine; set it where several teams share a server, so one cannot clone "
        "another's checkout. Corral's runs folder is never allowed. Checked at submit and "
        "again when the run starts.",
    )
    run_team_repo_roots: dict[str, list[Path]] = Field(
        default_factory=dict,
        description="Per-team `run_repo_roots`, by team name, replacing it for that team "
        '(`run_team_repo_roots = { payments = ["/srv/repos/payments"] }`).',
    )
    run_repo_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts runs may clone from and deliver to by URL (https, http, ssh, "
        "git): names like `github.com`, `*.corp.example` for its subdomains, `*` for any. "
        "Empty (the default): no URL, so the server never connects anywhere on a run's "
        "behalf. Redirects are not followed.",
    )
    run_repo_ssh_key: Path | None = Field(
        default=None,
        description="The private key ssh URLs authenticate with. Unset: none (the server's "
        "own keys, ssh config and agent are never used).",
    )
    run_default_timeout: float = Field(
        default=1800.0, gt=0, description="Wall-clock limit of a run without `--timeout`, seconds."
    )
    run_max_timeout: float = Field(
        default=86400.0, gt=0, description="The longest `--timeout` a run may ask for, seconds."
    )
    run_default_model: str | None = Field(
        default=None,
        description="The model an agent is given without `--model`. Default: the catalog's "
        "first model.",
    )
    run_memory_mb: int = Field(default=4096, gt=0, description="Memory cap of a run (cgroup), MiB.")
    run_processes: int = Field(
        default=256, gt=0, description="Processes and threads a run may have at once (cgroup)."
    )
    run_open_files: int = Field(
        default=1024, gt=0, description="Open files per process of a run (RLIMIT_NOFILE)."
    )
    run_cpu_seconds: int = Field(
        default=3600, gt=0, description="CPU seconds per process of a run (RLIMIT_CPU)."
    )
    run_uid: int = Field(
        default=65534,
        ge=1,
        description="The unprivileged uid (and gid) agents run as when Corral runs as root. "
        "Otherwise they run as Corral's own uid.",
    )
    run_grace: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between SIGTERM and SIGKILL when a run is cancelled or times out.",
    )
    run_heartbeat_interval: float = Field(
        default=2.0, gt=0, description="How often a process records that its live runs are alive."
    )
    run_stale_after: float = Field(
        default=30.0,
        gt=0,
        description="A live run whose process has not recorded a heartbeat for this long is "
        "marked failed by another process (its executor died).",
    )
    run_agent_path: str | None = Field(
        default=None,
        description="Where agent CLIs (claude, codex, aider, gemini) are looked up, in PATH "
        "syntax. Default: the server's PATH.",
    )
    run_workspace_retention: float = Field(
        default=86400.0,
        ge=0,
        description="Seconds a finished run's workspace (the clone) is kept for inspection; "
        "0 removes it as the run ends. Artifacts (diff, logs, report) are kept.",
    )
    run_disk_mb: int = Field(
        default=2048,
        gt=0,
        description="Disk a run may use, MiB: its workspace (the clone included), scratch, "
        "artifacts and logs, measured every few seconds while it runs and as it ends; past it "
        "the run is stopped and failed. Also the largest file a run's processes may write "
        "(RLIMIT_FSIZE).",
    )
    run_log_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Bytes of a run's stdout, and of its stderr, the server keeps; past it the "
        "log ends with a marker and the rest of the output is read and dropped.",
    )
    run_diff_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="The largest diff a run's change may have; a larger one is not kept whole: "
        "the run awaits review saying so, and cannot be delivered.",
    )
    run_report_max_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Bytes of an agent's report (report.md, its last message) the server reads "
        "and keeps; past it the report ends with a marker.",
    )
    unsafe_no_sandbox: bool = Field(
        default=False,
        description="Run agents without the sandbox, as Corral's own user with the host's "
        "files and network (`corral serve --unsafe-no-sandbox`). For development only; every "
        "run records it.",
    )
    sim_script: Path | None = Field(
        default=None,
        description="Scripted conversations for the in-process simulator (see "
        "docs/simulator.md); the demo's runs use one.",
    )
    budgets: list[BudgetConfig] = Field(
        default_factory=list, description="Budgets; see the Budgets section."
    )
    limits: list[LimitConfig] = Field(
        default_factory=list, description="Rate and concurrency limits; see the Limits section."
    )
    access_log: bool = Field(default=False, description="Log every HTTP request (never keys).")
    providers: list[ProviderConfig] = Field(
        default_factory=list, description="Upstream providers; see the Providers section."
    )
    models: list[ModelConfig] = Field(
        default_factory=list, description="The model catalog; see the Models section."
    )
    guards: GuardsConfig = Field(
        default_factory=GuardsConfig, description="Guards; see the Guards section."
    )
    review: ReviewConfig = Field(
        default_factory=ReviewConfig, description="Review gates; see the Review section."
    )

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("database_url must be a sqlite:// or postgresql:// URL")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgres://"):
                url = "postgresql://" + url.removeprefix("postgres://")
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{self.home.resolve() / 'corral.db'}"


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from flags (``overrides``), environment, TOML file and defaults."""
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    elif os.environ.get("CORRAL_CONFIG"):
        path = Path(os.environ["CORRAL_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"CORRAL_CONFIG points at {path}, which does not exist")
    else:
        default = Path("corral.toml")
        path = default if default.is_file() else None

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return _FromFile(**clean)
    except ValueError as exc:  # pydantic.ValidationError and TOML decode errors
        where = f" (file {path})" if path else ""
        raise ConfigError(f"invalid settings{where}: {exc}") from exc
