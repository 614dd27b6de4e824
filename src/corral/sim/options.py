"""Simulator options: what a model name, a header or the config asks of one request.

A model name may carry options after ``+`` signs::

    sim-standard+fault=429            always answer 429
    sim-economy+fault=503@0.3         answer 503 three times in ten
    sim-standard+ttft=200+tps=50      200 ms to the first token, then 50 tokens/s
    sim-local+ctx=8192                an 8192-token context window

The same ``key=value+key=value`` grammar is accepted in the ``x-sim-options``
header. Parsing is pure: :func:`parse_model_name` and :func:`parse_faults` hold
no state and raise :class:`ValueError` with a message fit for a 400 answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

FaultKind = Literal[
    "429",
    "500",
    "503",
    "529",
    "timeout",
    "reset",
    "stall",
    "malformed",
    "context",
    "content_policy",
]

FAULT_KINDS: tuple[FaultKind, ...] = (
    "429",
    "500",
    "503",
    "529",
    "timeout",
    "reset",
    "stall",
    "malformed",
    "context",
    "content_policy",
)

_FAULT_ALIASES: dict[str, FaultKind] = {
    "rate_limit": "429",
    "overloaded": "529",
    "unavailable": "503",
    "server_error": "500",
    "context_length": "context",
    "policy": "content_policy",
}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault and the probability (0 < p <= 1) that a request suffers it."""

    kind: FaultKind
    probability: float = 1.0

    def __str__(self) -> str:
        if self.probability >= 1.0:
            return self.kind
        return f"{self.kind}@{self.probability:g}"


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Per-request behaviour; ``None`` means "not set here, use the next source"."""

    faults: tuple[FaultSpec, ...] = ()
    ttft_ms: float | None = None
    tps: float | None = None
    ctx: int | None = None
    timeout_s: float | None = None
    retry_after_s: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    tool_call: bool | None = None

    def over(self, base: ModelOptions) -> ModelOptions:
        """These options laid over ``base``: every field set here wins."""
        if base == _EMPTY:
            return self
        if self == _EMPTY:
            return base
        return ModelOptions(
            faults=self.faults or base.faults,
            ttft_ms=_pick(self.ttft_ms, base.ttft_ms),
            tps=_pick(self.tps, base.tps),
            ctx=_pick(self.ctx, base.ctx),
            timeout_s=_pick(self.timeout_s, base.timeout_s),
            retry_after_s=_pick(self.retry_after_s, base.retry_after_s),
            rpm=_pick(self.rpm, base.rpm),
            tpm=_pick(self.tpm, base.tpm),
            tool_call=_pick(self.tool_call, base.tool_call),
        )


_EMPTY = ModelOptions()


_T = TypeVar("_T")


def _pick(first: _T | None, second: _T | None) -> _T | None:
    return second if first is None else first


def parse_fault(text: str) -> FaultSpec:
    """Parse ``kind`` or ``kind@probability`` (e.g. ``503@0.3``) into a :class:`FaultSpec`."""
    kind_text, _, prob_text = text.strip().partition("@")
    kind_text = kind_text.strip().lower()
    kind = _FAULT_ALIASES.get(kind_text, kind_text)
    if kind not in FAULT_KINDS:
        known = ", ".join(FAULT_KINDS)
        raise ValueError(f"unknown simulator fault {kind_text!r} (known: {known})")
    probability = 1.0
    if prob_text:
        probability = _number(prob_text, "fault probability")
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"fault probability must be in (0, 1], got {prob_text!r}")
    return FaultSpec(kind, probability)


def parse_faults(text: str) -> tuple[FaultSpec, ...]:
    """Parse a comma-separated fault list such as ``429@0.1,503@0.05``."""
    return tuple(parse_fault(part) for part in text.split(",") if part.strip())


def parse_options(text: str) -> ModelOptions:
    """Parse ``key=value+key=value`` (the part of a model name after its first ``+``)."""
    values: dict[str, object] = {}
    for item in text.split("+"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if key not in _OPTIONS:
            raise ValueError(f"unknown simulator option {key!r} (known: {_KNOWN})")
        if not sep and key not in ("tool", "tools"):
            raise ValueError(f"simulator option {item!r} needs a value (key=value)")
        field, convert = _OPTIONS[key]
        values[field] = convert(value.strip() if sep else "1", key)
    return replace(_EMPTY, **values)  # type: ignore[arg-type]


def parse_model_name(name: str) -> tuple[str, ModelOptions]:
    """Split ``base+key=value+…`` into the base model name and its options.

    >>> parse_model_name("sim-economy+fault=503@0.3+ttft=50")[0]
    'sim-economy'
    """
    base, sep, rest = name.partition("+")
    if not sep:
        return name, _EMPTY
    return base, parse_options(rest)


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {text!r}")
    return value


def _non_negative(text: str, key: str) -> float:
    value = _number(text, key)
    if value < 0:
        raise ValueError(f"simulator option {key} must not be negative, got {text!r}")
    return value


def _positive_int(text: str, key: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"simulator option {key} must be an integer, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"simulator option {key} must be positive, got {text!r}")
    return value


def _flag(text: str, key: str) -> bool:
    return text.lower() not in ("0", "false", "no", "off")


def _faults(text: str, key: str) -> tuple[FaultSpec, ...]:
    return parse_faults(text)


_OPTIONS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "fault": ("faults", _faults),
    "faults": ("faults", _faults),
    "ttft": ("ttft_ms", _non_negative),
    "ttft_ms": ("ttft_ms", _non_negative),
    "tps": ("tps", _non_negative),
    "ctx": ("ctx", _positive_int),
    "timeout": ("timeout_s", _non_negative),
    "retry_after": ("retry_after_s", _non_negative),
    "rpm": ("rpm", _positive_int),
    "tpm": ("tpm", _positive_int),
    "tool": ("tool_call", _flag),
    "tools": ("tool_call", _flag),
}
_KNOWN = "fault, ttft, tps, ctx, timeout, retry_after, rpm, tpm, tool"
