"""The simulator's configuration: one frozen object, given to :func:`create_sim_app`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corral.errors import ConfigError
from corral.sim.options import FaultSpec
from corral.sim.script import Script

STANDARD_MODELS: tuple[str, ...] = (
    "sim-frontier",
    "sim-standard",
    "sim-economy",
    "sim-reasoning",
    "sim-local",
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulator behaves when a request does not say otherwise.

    Per-request headers (``x-sim-*``) and model-name options (``+key=value``)
    override these. Numbers are deterministic for a given request and
    ``seed``; faults drawn with a probability use a generator seeded by
    ``seed`` too, so a given sequence of requests meets the same faults.
    """

    ttft_ms: float = 0.0
    """Delay before the response starts (the first token), in milliseconds."""
    tokens_per_second: float = 0.0
    """Output pacing after the first token; 0 sends everything at once."""
    seed: int = 0
    """Seed for generated answers and for drawing probabilistic faults."""
    script: Script | str | Path | None = None
    """Scripted conversations: a parsed :class:`Script` or a TOML/JSON file to load."""
    default_faults: tuple[FaultSpec, ...] = ()
    """Faults applied to every request, each with its probability."""
    fault_timeout_s: float = 300.0
    """How long the ``timeout`` and ``stall`` faults keep the client waiting."""
    retry_after_s: float = 1.0
    """The ``Retry-After`` sent with injected 429, 503 and 529 answers."""
    context_window: int | None = None
    """Context window of every model in tokens; ``None`` means unlimited."""
    rpm: int = 0
    """Requests per minute allowed per model (token bucket); 0 means unlimited."""
    tpm: int = 0
    """Tokens (input and output) per minute allowed per model; 0 means unlimited."""
    cache_min_tokens: int = 1024
    """Shortest prompt prefix that prompt caching stores or reports."""
    cache_ttl_s: float = 300.0
    """How long a cached prefix lives after its last use."""
    cache_entries: int = 65_536
    """Prefix hashes kept in the LRU, across all models."""
    chunk_words: int = 4
    """Words per streamed text delta (a word is a token or more)."""
    models: tuple[str, ...] = STANDARD_MODELS
    """Names listed by ``GET /v1/models``; any other name is answered too."""

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tokens_per_second", "fault_timeout_s", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"simulator setting {name} must not be negative")
        for name in ("rpm", "tpm", "cache_min_tokens", "cache_entries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"simulator setting {name} must not be negative")
        if self.chunk_words < 1:
            raise ConfigError("simulator setting chunk_words must be at least 1")
        if self.context_window is not None and self.context_window < 1:
            raise ConfigError("simulator setting context_window must be positive")
