"""The settings of the governance layer: guards (``[guards]``) and review gates
(``[review]``), read as part of ``corral.settings.Settings``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

GuardAction = Literal["warn", "throttle", "sequester", "kill"]


class DetectorSettings(BaseModel):
    """One detector's settings under ``[guards.detectors.NAME]`` (or a team's)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        default=None, description="`false` turns the detector off (default: on)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Thresholds by name, replacing the detector's defaults "
        "(`corral guards show` lists them).",
    )
    actions: list[GuardAction] | None = Field(
        default=None,
        description="The escalation ladder: the n-th firing on an open incident takes the "
        "n-th action, the last repeating (`warn`, `throttle`, `sequester`, `kill`).",
    )


class GuardTeamSettings(BaseModel):
    """A team's overrides under ``[[guards.teams]]``."""

    model_config = ConfigDict(extra="forbid")

    team: str = Field(description="The team, by name or id.")
    enabled: bool | None = Field(default=None, description="`false`: no guard watches this team.")
    webhook_url: str | None = Field(
        default=None, description="Where this team's incidents are posted (instead of the org's)."
    )
    detectors: dict[str, DetectorSettings] = Field(
        default_factory=dict, description="Per-detector overrides for this team."
    )


class GuardsConfig(BaseModel):
    """Guards: detectors that watch every run and key, incidents, kill switches."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="`false` turns every detector off.")
    webhook_url: str | None = Field(
        default=None,
        description="Where incidents are posted as JSON (retried), for every team "
        "without a URL of its own.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs each webhook body: `x-corral-signature: sha256=<HMAC of the body>`.",
    )
    throttle_rpm: int = Field(
        default=6, ge=1, description="Calls per minute a throttled run or key may make."
    )
    sample_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between samples of a live run's sandbox (its cgroups); its "
        "workspace change is sampled every fifth time.",
    )
    queue_max: int = Field(
        default=100_000,
        gt=0,
        description="Signals waiting for the detectors; past it the "
        "oldest are dropped (counted) rather than the gateway slowed.",
    )
    detectors: dict[str, DetectorSettings] = Field(
        default_factory=dict, description="Per-detector settings, by detector name."
    )
    teams: list[GuardTeamSettings] = Field(default_factory=list, description="Per-team overrides.")


class ReviewerSettings(BaseModel):
    """A reviewer agent under ``reviewers = [...]``: an agent that reviews a change as a run
    of its own, under its own service account (``identity``), model and budget; its spend
    is the review's, never the writing run's."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="Its name on reviews (`code-review`)."
    )
    identity: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="The service account it runs as, made in the run's team on first use "
        "(default `reviewer-NAME`). Name it in CODEOWNERS (`@reviewer-NAME`) to make it a "
        "code-owner agent: its approval then counts for the paths it owns.",
    )
    profile: str = Field(default="corral", description="The agent profile it runs.")
    model: str | None = Field(
        default=None, description="Its model (default: the model the writing run used)."
    )
    reviews: Literal["change", "owned"] = Field(
        default="change",
        description="`change`: the whole change; `owned`: the changed paths its identity owns "
        "in CODEOWNERS (it is not run when it owns none).",
    )
    instructions: str | None = Field(
        default=None, max_length=20_000, description="What to look for, put before the change."
    )
    command: list[str] | None = Field(
        default=None, description="For the `command` profile: the command line."
    )
    images: bool = Field(
        default=True,
        description="Hand it the browser check's screenshots (`$CORRAL_HANDOFF/screenshots`; "
        "the reference agent shows them to its model with the task): `false` for a model "
        "without image input.",
    )
    budget_usd: float = Field(default=1.0, gt=0, description="What one review may spend.")
    timeout_s: float = Field(default=900.0, gt=0, description="Its wall clock.")


class WebPage(BaseModel):
    """A page a browser check captures."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="Its name.")
    path: str = Field(
        pattern=r"^/[^\s]{0,2000}$", description="Its path on the app (`/`, `/about.html`)."
    )


class WebCheckSettings(BaseModel):
    """A browser check under ``web``: when a change touches web code, its app is started in
    a sandbox from the changed workspace and headless Chromium captures named pages."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        min_length=1, description="Globs (gitignore style) of the web code: a change touching "
        "one is checked.",
    )  # fmt: skip
    command: list[str] = Field(
        min_length=1, description="Starts the app, run in the workspace inside the sandbox."
    )
    port: int = Field(ge=1024, le=65535, description="The port it listens on (loopback).")
    pages: list[WebPage] = Field(min_length=1, max_length=20, description="What to capture.")
    wait_s: float = Field(default=60.0, gt=0, le=600, description="How long it may take to start.")
    width: int = Field(default=1280, ge=200, le=4000, description="The browser's width.")
    height: int = Field(default=800, ge=200, le=4000, description="The browser's height.")


class GateSettings(BaseModel):
    """What a run's change must pass before it is delivered. ``[review]`` sets the defaults
    (a field it leaves out has the default named in its description), and each matching
    ``[[review.rules]]`` entry replaces the fields it sets."""

    model_config = ConfigDict(extra="forbid")

    approvals: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="People who must approve (default 1). The run's requester and owner "
        "never count: they are its authors.",
    )
    code_owners: bool | None = Field(
        default=None,
        description="Each changed path a CODEOWNERS file at the run's base commit owns needs "
        "an approval from one of its owners (default true).",
    )
    protected_paths: list[str] | None = Field(
        default=None,
        description="Globs (gitignore style) no run may change (default none).",
    )
    max_diff_lines: int | None = Field(
        default=None, ge=1, description="Lines added and removed, at most (default 5000)."
    )
    max_diff_files: int | None = Field(
        default=None, ge=1, description="Files changed, at most (default 200)."
    )
    forbidden_patterns: list[str] | None = Field(
        default=None,
        description="Regular expressions (Python `re`) no added line may match (default none).",
    )
    secrets: bool | None = Field(
        default=None, description="Fail a change whose added lines hold credentials (default true)."
    )
    tests_after_edit: bool | None = Field(
        default=None,
        description="Fail a change unless the run's trajectory shows a test command that "
        "passed after its last edit; needs an agent that reports tool spans (default false).",
    )
    evidence_blocks: bool | None = Field(
        default=None,
        description="A claim in the agent's report that its trajectory contradicts fails the "
        "gate; otherwise it is flagged to the reviewers (default false).",
    )
    reviewers: list[ReviewerSettings] | None = Field(
        default=None,
        description="Reviewer agents that must approve (default none); a rule's list "
        "replaces the one before it.",
    )
    web: WebCheckSettings | None = Field(
        default=None,
        description="A browser check of the change's web pages (default none).",
    )


class GateRule(GateSettings):
    """A rule under ``[[review.rules]]``: the teams and repositories it applies to."""

    team: str | None = Field(
        default=None, description="The team, by name or id (none: every team)."
    )
    repository: str | None = Field(
        default=None,
        description="A glob on the run's repository (its path or URL; `*` crosses `/`; none: "
        "every repository).",
    )


class ReviewConfig(GateSettings):
    """Review gates: the defaults every run's change is held to, and rules per team and
    repository."""

    enabled: bool = Field(
        default=True,
        description="`false`: no gate; a run awaiting review is delivered as it is.",
    )
    interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds between looks for changes newly awaiting review (judged, their "
        "reviewer agents started) and reviewer agents that finished (their verdicts read).",
    )
    rules: list[GateRule] = Field(
        default_factory=list,
        description="Every rule that matches a run applies, in order, each replacing the "
        "fields it sets.",
    )
