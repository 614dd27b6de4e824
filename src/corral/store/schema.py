"""The store's tables, as SQLAlchemy Core.

Identity tables are small and read through caches; ``spans`` is the one
large table. Every span carries its identity chain (org, team, user, key,
run, owner) written once at ingest, so attributing cost never needs a join.
Token columns do not overlap: ``input_tokens`` excludes cache reads and
writes, ``output_tokens`` excludes reasoning. Money is an integer count of
nano-dollars (1e-9 USD) so sums are exact.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

teams = Table(
    "teams",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    # trajectory policy; NULL: the settings' default (trace_bodies, trace_retention_days)
    Column("body_capture", String(10), nullable=True),
    Column("retention_days", Float, nullable=True),
    UniqueConstraint("org_id", "name", name="uq_teams_org_name"),
)

# Users and service accounts are both principals; ``kind`` tells them apart.
users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False, default="user"),
    Column("email", String(320), nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("team_id", "name", name="uq_users_team_name"),
)

# ``role``: ``virtual`` keys call models, ``team_admin`` keys also manage their
# own team, the ``admin`` key manages the organisation. Only a SHA-256 of the
# secret is kept; ``prefix`` (the first characters) lets people recognise a key.
# ``parent_key_id``: the key a run's key was minted under (the one that submitted the
# run); the run's key never outlives it, calls only models it may call, and is charged
# to its budgets and limits too.
keys = Table(
    "keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),
    Column("name", String(200), nullable=True),
    Column("role", String(20), nullable=False),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=True),
    Column("run_id", String(40), nullable=True),
    Column("allowed_models", JSON, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(40), nullable=True),
    Column("parent_key_id", String(40), nullable=True),
    # the incident (``inc_...``) that suspended the key: refused until it is released
    Column("suspended_by", String(40), nullable=True),
    Index("ix_keys_updated_at", "updated_at"),
    Index("ix_keys_team_id", "team_id"),
    Index(
        "ix_keys_parent",
        "parent_key_id",
        sqlite_where=text("parent_key_id IS NOT NULL"),
        postgresql_where=text("parent_key_id IS NOT NULL"),
    ),
)

spans = Table(
    "spans",
    metadata,
    Column("span_id", String(16), primary_key=True),
    Column("trace_id", String(32), nullable=False),
    Column("parent_span_id", String(16), nullable=True),
    # run | step | tool | llm_request | attempt
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("request_id", String(40), nullable=True),
    Column("attempt", Integer, nullable=True),
    # identity chain, written once at ingest
    Column("org_id", String(40), nullable=True),
    Column("team_id", String(40), nullable=True),
    Column("user_id", String(40), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("run_id", String(40), nullable=True),
    Column("owner_id", String(40), nullable=True),
    # what was asked and what served it
    Column("protocol", String(16), nullable=True),
    Column("operation", String(32), nullable=True),
    Column("model_requested", String(200), nullable=True),
    Column("model_served", String(200), nullable=True),
    Column("provider", String(100), nullable=True),
    Column("deployment", String(200), nullable=True),
    Column("stream", Boolean, nullable=True),
    # outcome
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=True),
    Column("error_class", String(40), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("finish_reason", String(40), nullable=True),
    Column("response_id", String(200), nullable=True),
    # time
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("upstream_ms", Float, nullable=True),
    Column("overhead_ms", Float, nullable=True),
    # tokens, non-overlapping
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_input_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    # money
    Column("cost_nusd", BigInteger, nullable=False, default=0),
    Column("cost_source", String(16), nullable=True),
    Column("price_version", String(32), nullable=True),
    # who saw it: "gateway", or the reporting agent's service.name (OTLP ingest)
    Column("source", String(64), nullable=True),
    # an agent-reported llm_request the gateway also recorded: that record's span id.
    # Such a row stays in the tree but is left out of every roll-up.
    Column("duplicate_of", String(16), nullable=True),
    # raw bodies, as keys into the blob store (see corral.traces.blobs)
    Column("request_blob", String(200), nullable=True),
    Column("response_blob", String(200), nullable=True),
    Column("attributes", JSON, nullable=True),
    # Every index costs each insert (OTLP ingest writes tens of thousands of spans a second):
    # users' and keys' spans are found through their team's, and the ids most spans lack
    # (run, request, response) are indexed only where present.
    Index("ix_spans_team_start", "team_id", "start_ns"),
    Index("ix_spans_start", "start_ns"),
    Index("ix_spans_trace", "trace_id"),
    *(
        Index(
            f"ix_spans_{name.removesuffix('_id')}",
            name,
            sqlite_where=text(f"{name} IS NOT NULL"),
            postgresql_where=text(f"{name} IS NOT NULL"),
        )
        for name in ("run_id", "request_id", "response_id")
    ),
    # The gateway's records by the agent span they answer (traceparent): duplicate matching.
    Index(
        "ix_spans_gateway_parent",
        "parent_span_id",
        sqlite_where=text("kind = 'llm_request' AND source = 'gateway'"),
        postgresql_where=text("kind = 'llm_request' AND source = 'gateway'"),
    ),
)

# Hourly roll-ups of ``llm_request`` spans (duplicates left out), kept by the writer in the
# same transaction as the spans, so spend over a month reads hundreds of rows, not millions.
# Key columns hold "" rather than NULL so the upsert's conflict target always matches.
# The plain sums are what the gateway metered; ``reported_*`` what agents reported over
# OTLP (never spend). Latency is in ``span_latency`` (corral.traces.rollup).
span_rollups = Table(
    "span_rollups",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("org_id", String(40), primary_key=True),
    Column("team_id", String(40), primary_key=True),
    Column("user_id", String(40), primary_key=True),
    Column("key_id", String(40), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("provider", String(100), primary_key=True),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("errors", BigInteger, nullable=False, default=0),
    Column("cancelled", BigInteger, nullable=False, default=0),
    Column("refused", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_input_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("cost_nusd", BigInteger, nullable=False, default=0),
    Column("latency_ms_sum", Float, nullable=False, default=0.0),
    *(
        Column(f"reported_{name}", BigInteger, nullable=False, default=0)
        for name in (
            "requests",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_nusd",
        )
    ),
    Index("ix_span_rollups_team_hour", "team_id", "hour"),
)

# The latency histogram of the metered calls of each ``span_rollups`` row: one row per
# non-empty bucket of ``corral.traces.rollup.LATENCY_BOUNDS_NS`` (log-spaced), summed to merge.
span_latency = Table(
    "span_latency",
    metadata,
    Column("hour", BigInteger, primary_key=True),
    Column("org_id", String(40), primary_key=True),
    Column("team_id", String(40), primary_key=True),
    Column("user_id", String(40), primary_key=True),
    Column("key_id", String(40), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("provider", String(100), primary_key=True),
    Column("bucket", Integer, primary_key=True),
    Column("count", BigInteger, nullable=False, default=0),
    # Covering: a team's histograms over a window are read from the index alone.
    Index("ix_span_latency_team_hour", "team_id", "hour", "bucket", "count"),
)

# Budgets and rate limits set through the API/CLI (the config file's live in memory only).
# ``scope_kind`` is org | team | user | key | run; ``amount`` is nano-USD or tokens.
budgets = Table(
    "budgets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("scope_kind", String(8), nullable=False),
    Column("scope_id", String(40), nullable=False),
    Column("resource", String(8), nullable=False),
    Column("window", String(8), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("soft_fraction", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(40), nullable=True),
    UniqueConstraint("scope_kind", "scope_id", "resource", "window", name="uq_budgets_scope"),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("scope_kind", String(8), primary_key=True),
    Column("scope_id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("tpm", BigInteger, nullable=True),
    Column("concurrency", Integer, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(40), nullable=True),
)

# Route policy rules set through the API, applied after the config file's, by position.
route_policies = Table(
    "route_policies",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("position", Float, nullable=False),
    Column("team", String(200), nullable=True),
    Column("task_class", String(200), nullable=True),
    Column("priority", String(8), nullable=True),
    Column("tier", String(100), nullable=True),
    Column("allowed_tiers", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(40), nullable=True),
)

# Agent runs (corral.runs). ``state`` is one of corral.runs.model.STATES; every change of it
# is a row of ``run_events`` saying when, from what, to what, who or what caused it and why.
# ``executor`` names the process that admitted the run ("host:pid:started"); it writes
# ``heartbeat_at`` while the run is live, so another process can tell a dead one's runs.
runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("requester_id", String(40), nullable=True),
    Column("requested_by_key", String(40), nullable=True),
    Column("owner_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("profile", String(40), nullable=False),
    Column("repo", Text, nullable=False),
    Column("ref", String(200), nullable=False),
    Column("base_commit", String(64), nullable=True),
    Column("task", Text, nullable=False),
    Column("command", JSON, nullable=True),
    Column("model", String(200), nullable=False),
    Column("allowed_models", JSON, nullable=False),
    Column("priority", String(8), nullable=False),
    Column("budget_nusd", BigInteger, nullable=True),
    Column("timeout_s", Float, nullable=False),
    Column("handoff_from", String(40), nullable=True),
    # a review's follow-up run: the run whose change its workspace starts from (that run's
    # patch applied to its base commit), so its diff is the whole change again
    Column("continues_from", String(40), nullable=True),
    Column("sandbox", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("executor", String(200), nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("workspace_removed_at", Float, nullable=True),
    Column("delivered_to", Text, nullable=True),
    # who asked a live run to stop (its executor stops it, then records the cancellation)
    Column("cancel_requested", String(200), nullable=True),
    Index("ix_runs_team_created", "team_id", "created_at"),
    Index("ix_runs_state", "state"),
    Index("ix_runs_requested_by_key", "requested_by_key"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("runs.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("from_state", String(20), nullable=True),
    Column("to_state", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=True),
    Index("ix_run_events_run", "run_id", "id"),
)

# Guards (corral.guards). An incident is opened by a detector firing on a subject (a run, or
# a key that is not a run's) and collects later firings on it while it is open or
# acknowledged; ``evidence`` holds each firing (detector, numbers, span ids), ``actions`` what
# was done. ``owner_id`` is the run's owner, or the key's user. Every step of it (opened,
# fired, an action, ack, release, kill, a comment, a webhook delivery) is a row of
# ``incident_events`` naming who did it.
incidents = Table(
    "incidents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("team_id", String(40), nullable=True),
    Column("owner_id", String(40), nullable=True),
    Column("subject", String(10), nullable=False),  # "run" or "key"
    Column("run_id", String(40), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("detector", String(80), nullable=False),  # the one that opened it
    Column("state", String(20), nullable=False),  # open, acknowledged, released, killed
    Column("action", String(20), nullable=False),  # the strongest action taken so far
    Column("summary", Text, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Index("ix_incidents_team_opened", "team_id", "opened_at"),
    Index("ix_incidents_state", "state"),
    Index("ix_incidents_run", "run_id"),
    Index("ix_incidents_key", "key_id"),
)

incident_events = Table(
    "incident_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), ForeignKey("incidents.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("detail", Text, nullable=True),
    Column("data", JSON, nullable=True),
    Index("ix_incident_events_incident", "incident_id", "id"),
)

# Kill switches: ``scope`` is "org" (every team) or a team id; a row means the switch is on.
kill_switches = Table(
    "kill_switches",
    metadata,
    Column("scope", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("on_at", Float, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("comment", Text, nullable=True),
)

# The autonomy ledger: every human action on a run (approve, reject, comment, request
# changes, cancel, deliver, incident release, ...), who took it and when. Approvals and
# comments carry the review revision they were given on; a newer revision dismisses the
# approvals of the ones before it (``dismissed_at``), as a push does on GitHub.
run_actions = Table(
    "run_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("team_id", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(30), nullable=False),
    Column("revision", Integer, nullable=True),
    Column("comment", Text, nullable=True),
    Column("path", String(1000), nullable=True),
    Column("line", Integer, nullable=True),
    Column("at", Float, nullable=False),
    Column("dismissed_at", Float, nullable=True),
    Index("ix_run_actions_run", "run_id", "id"),
    Index("ix_run_actions_team_at", "team_id", "at"),
)

# A review's revisions: the change under review is the latest one's run's diff. A review is
# named by its first run; a follow-up run made by "request changes" adds a revision.
review_revisions = Table(
    "review_revisions",
    metadata,
    Column("review_id", String(40), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("run_id", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    # the gate's checks of this revision that do not change once made (policy checks, code
    # owners, evidence), kept so a review is judged once, not at every read
    Column("report", JSON, nullable=True),
    # when its reviewer agents were started (None: not yet; set even when there are none)
    Column("reviewers_at", Float, nullable=True),
    Index("ix_review_revisions_run", "run_id", unique=True),
)

# Reviewer agents' verdicts: a reviewer (named in the gate) reviews one revision as a run of
# its own, under its own service identity; ``verdict`` is "pending" until that run ends.
review_verdicts = Table(
    "review_verdicts",
    metadata,
    Column("review_id", String(40), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("reviewer", String(100), primary_key=True),
    Column("run_id", String(40), nullable=True),
    Column("user_id", String(40), nullable=True),
    Column("verdict", String(30), nullable=False),
    Column("summary", Text, nullable=True),
    Column("comments", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_review_verdicts_run", "run_id"),
)

# Settings the store keeps for itself (the generated admin key's hash, ...).
meta_kv = Table(
    "meta_kv",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)
