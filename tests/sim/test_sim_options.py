"""Model-name options and fault lists: a pure parser, tested without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.sim import FAULT_KINDS, FaultSpec, ModelOptions, parse_faults, parse_model_name


def test_plain_name_has_no_options() -> None:
    """A name without ``+`` is returned whole, with empty options."""
    assert parse_model_name("sim-standard") == ("sim-standard", ModelOptions())
    assert parse_model_name("claude-sonnet-4-5") == ("claude-sonnet-4-5", ModelOptions())


def test_fault_with_probability() -> None:
    """``fault=503@0.3`` gives a 503 fault drawn three times in ten."""
    base, options = parse_model_name("sim-economy+fault=503@0.3")
    assert base == "sim-economy"
    assert options.faults == (FaultSpec("503", 0.3),)


def test_latency_options() -> None:
    """``ttft`` is in milliseconds, ``tps`` in tokens per second."""
    _, options = parse_model_name("sim-standard+ttft=200+tps=50")
    assert options.ttft_ms == 200.0
    assert options.tps == 50.0
    assert options.faults == ()


def test_every_option_at_once() -> None:
    """All keys parse, and a bare ``tool`` flag means tool calls on."""
    _, options = parse_model_name(
        "m+fault=429,reset@0.5+ctx=8192+timeout=0.5+retry_after=2+rpm=60+tpm=1000+tool"
    )
    assert options == ModelOptions(
        faults=(FaultSpec("429"), FaultSpec("reset", 0.5)),
        ctx=8192,
        timeout_s=0.5,
        retry_after_s=2.0,
        rpm=60,
        tpm=1000,
        tool_call=True,
    )


def test_aliases() -> None:
    """Readable aliases map to the fault codes."""
    assert parse_faults("rate_limit,overloaded") == (FaultSpec("429"), FaultSpec("529"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("m+fault=418", "unknown simulator fault"),
        ("m+fault=429@1.5", "probability must be in (0, 1]"),
        ("m+fault=429@x", "must be a number"),
        ("m+speed=3", "unknown simulator option 'speed'"),
        ("m+ctx=0", "must be positive"),
        ("m+ctx", "needs a value"),
        ("m+ttft=-5", "must not be negative"),
        ("m+tps=nan", "must be finite"),
    ],
)
def test_bad_options_are_refused(name: str, message: str) -> None:
    """Typos are errors, not silently ignored options."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model_name(name)


def test_later_sources_override_earlier() -> None:
    """Options laid over others win field by field; unset fields fall through."""
    header = ModelOptions(tps=10.0)
    model = ModelOptions(ttft_ms=5.0, tps=99.0, faults=(FaultSpec("500"),))
    merged = header.over(model)
    assert merged.tps == 10.0
    assert merged.ttft_ms == 5.0
    assert merged.faults == (FaultSpec("500"),)


@given(
    kind=st.sampled_from(FAULT_KINDS),
    probability=st.floats(min_value=0.001, max_value=1.0),
    ttft=st.integers(min_value=0, max_value=10_000),
)
def test_round_trip(kind: str, probability: float, ttft: int) -> None:
    """A fault spec printed with ``str`` parses back to itself."""
    spec = parse_faults(f"{kind}@{probability!r}")[0]
    _, options = parse_model_name(f"sim-x+fault={spec}+ttft={ttft}")
    assert options.faults[0].kind == kind
    assert options.faults[0].probability == pytest.approx(probability, rel=1e-5)
    assert options.ttft_ms == ttft
