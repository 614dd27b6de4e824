"""Each built-in detector fires exactly at its threshold, with its evidence, honours its
overrides, and fires again only after crossing again (the engine gives a fresh state)."""

from __future__ import annotations

import re

import pytest

from corral.guards.detectors import (
    Ceiling,
    CompactionThrash,
    ErrorStorm,
    FailingAction,
    IdleTurns,
    Oscillation,
    RepeatedRequest,
    RepeatedTool,
    SandboxPressure,
    StalledProgress,
    Velocity,
    builtin_detectors,
)
from corral.guards.model import ACTIONS, SIGNALS, Call, Progress, Sandbox, Signal
from tests.guards.streams import (
    Agent,
    bash,
    call,
    feed,
    limits,
    read,
    tool,
    turn,
)

A = "run_tests:3fa2b9c01d4e"
B = "read_file:0a1b2c3d4e5f"


def test_builtin_detectors_are_named_documented_and_well_formed() -> None:
    """Names are unique snake_case; signals, subjects and ladders come from the model's
    vocabularies; every default is a number; the summary is one line."""
    detectors = builtin_detectors()
    names = [d.name for d in detectors]
    assert len(set(names)) == len(names) == 11
    for d in detectors:
        assert re.fullmatch(r"[a-z][a-z_]*", d.name)
        assert d.signals
        assert d.signals <= set(SIGNALS)
        assert d.subjects
        assert d.subjects <= {"run", "key"}
        assert d.actions
        assert set(d.actions) <= set(ACTIONS)
        assert d.defaults
        assert all(isinstance(v, int | float) for v in d.defaults.values())
        assert d.summary
        assert "\n" not in d.summary
        if d.signals & {"sandbox", "progress"}:
            assert d.subjects == {"run"}  # sandbox and progress samples exist only for runs


# --- repeated_request ---------------------------------------------------------------------


def test_repeated_request_fires_at_the_fifth_copy_among_six_calls() -> None:
    """Five copies of one request with one other request among them: the fifth fires, the
    fourth does not; failed calls and calls without a turn count for nothing."""
    signals: list[Signal] = []
    for i in range(5):
        signals.append(call(i * 10, turn("same")))
        signals.append(call(i * 10 + 1, turn("same"), status="error"))  # a retry storm's
        signals.append(call(i * 10 + 2, None))
        if i == 1:
            signals.append(call(i * 10 + 3, turn("other")))
    found = feed(RepeatedRequest(), signals)
    assert [i for i, _ in found] == [len(signals) - 3]
    finding = found[0][1]
    assert dict(finding.numbers) == {"count": 5, "threshold": 5, "window": 6}
    assert finding.span_ids == tuple(
        s.span_id
        for s in signals
        if isinstance(s, Call) and s.status == "ok" and s.turn and s.turn.digest == "same"
    )
    assert finding.message == (
        "the same request (last turn same…) was sent 5 times in the last 6 successful calls"
    )


def test_a_side_request_every_other_call_is_not_a_loop() -> None:
    """Claude Code's quota check before each of a person's sessions: every other call, so
    at most three copies among any six calls."""
    signals = [call(i, turn("quota" if i % 2 == 0 else f"work-{i}")) for i in range(40)]
    assert feed(RepeatedRequest(), signals) == []


def test_repeated_request_needs_the_copies_within_the_window() -> None:
    """One request every third call: at most two copies in any six calls, never five."""
    signals = [call(i, turn("same" if i % 3 == 0 else f"o{i}")) for i in range(300)]
    assert feed(RepeatedRequest(), signals) == []
    assert len(feed(RepeatedRequest(), signals, window=13)) > 0


def test_repeated_request_override_and_fresh_state() -> None:
    """``repeats`` 3: fires on the third copy, then again only three copies later."""
    signals = [call(i, turn("same")) for i in range(9)]
    found = feed(RepeatedRequest(), signals, repeats=3)
    assert [i for i, _ in found] == [2, 5, 8]
    assert found[0][1].numbers["threshold"] == 3


# --- repeated_tool ------------------------------------------------------------------------


def test_repeated_tool_from_requests_of_a_real_conversation() -> None:
    """An agent running the same command with the same output: the requests carry it back
    (read by the Messages adapter); the fourth execution fires, evidence the four calls
    that carried it. A retried request is not an execution."""
    agent = Agent("loop")
    agent.step(read("src/a.py", "x = 1"))
    for i in range(4):
        agent.step(bash("pytest -q", "1 failed: test_a"))
        if i == 1:
            agent.retry_once()
    calls = [s for s in agent.out if isinstance(s, Call)]
    found = feed(RepeatedTool(), calls)
    assert [i for i, _ in found] == [len(calls) - 1]
    finding = found[0][1]
    assert dict(finding.numbers) == {"count": 4, "threshold": 4}
    assert calls[3].status == "error"  # first to carry the second execution: it counts
    assert finding.span_ids == tuple(calls[i].span_id for i in (2, 3, 5, 6))
    assert re.fullmatch(
        r"the same tool call \(bash:[0-9a-f]{4}…\) returned the same result 4 times in a row",
        finding.message,
    )


def test_repeated_tool_from_spans_and_spans_win() -> None:
    """Once a subject reports tool spans, its requests are not read (no double count); a
    different result, or a span without a result, ends the streak."""
    detector = RepeatedTool()
    spans = [tool(A, "same") for _ in range(3)]
    calls = [call(i, turn(f"d{i}", [A], ["same"], messages=10 + 2 * i)) for i in range(5)]
    assert feed(detector, [*spans, *calls]) == []
    four = [tool(A, "same") for _ in range(4)]
    found = feed(detector, four)
    assert [i for i, _ in found] == [3]
    assert found[0][1].span_ids == tuple(s.span_id for s in four)
    broken = [tool(A, "same"), tool(A, "same"), tool(A, None), tool(A, "same"), tool(A, "same")]
    assert feed(detector, broken) == []
    assert feed(detector, [tool(A, "r1"), tool(A, "r2")] * 4) == []


def test_repeated_tool_switching_to_spans_restarts_the_count() -> None:
    """Three executions read from requests, then the agent's first span: counting starts
    again from the spans, so nothing is counted twice."""
    calls = [call(i, turn(f"d{i}", [A], ["same"], messages=10 + 2 * i)) for i in range(3)]
    spans = [tool(A, "same") for _ in range(4)]
    found = feed(RepeatedTool(), [*calls, *spans])
    assert [i for i, _ in found] == [6]


def test_repeated_tool_override_and_fresh_state() -> None:
    spans = [tool(A, "same") for _ in range(6)]
    assert [i for i, _ in feed(RepeatedTool(), spans, repeats=2)] == [1, 3, 5]
    assert [i for i, _ in feed(RepeatedTool(), spans)] == [3]


# --- failing_action -----------------------------------------------------------------------


def test_failing_action_fires_at_the_third_identical_failure() -> None:
    """The same action, the same error: the third fires. Another error, or a success in
    between, starts over."""
    spans = [tool(A, None, "e1"), tool(A, None, "e2"), tool(A, None, "e2"), tool(A, "ok")]
    spans += [tool(A, None, "e2") for _ in range(3)]
    found = feed(FailingAction(), spans)
    assert [i for i, _ in found] == [6]
    finding = found[0][1]
    assert finding.span_ids == tuple(s.span_id for s in spans[4:])
    assert dict(finding.numbers) == {"count": 3, "threshold": 3}
    assert "failed with the same error 3 times in a row" in finding.message


def test_failing_action_from_results_marked_as_errors() -> None:
    """Anthropic ``is_error`` results in real requests: the third identical failure fires;
    a failure is never a ``repeated_tool`` streak."""
    agent = Agent("failing")
    for _ in range(3):
        agent.step(bash("cat missing.txt", "cat: missing.txt: No such file", True))
    calls = [s for s in agent.out if isinstance(s, Call)]
    assert [i for i, _ in feed(FailingAction(), calls)] == [3]
    assert feed(RepeatedTool(), calls * 2) == []
    assert feed(FailingAction(), calls[:3]) == []


def test_failing_action_override() -> None:
    spans = [tool(A, None, "e") for _ in range(5)]
    assert [i for i, _ in feed(FailingAction(), spans, repeats=5)] == [4]


# --- oscillation --------------------------------------------------------------------------


def test_oscillation_fires_at_the_sixth_alternating_step() -> None:
    """A-B-A-B-A-B fires on the sixth step; the fifth does not; a third step breaks it."""
    steps = [tool(A, "ra"), tool(B, "rb")] * 3
    found = feed(Oscillation(), steps)
    assert [i for i, _ in found] == [5]
    assert found[0][1].span_ids == tuple(s.span_id for s in steps)
    assert dict(found[0][1].numbers) == {"count": 6, "threshold": 6}
    assert "alternated with the same results for 6 steps" in found[0][1].message
    assert feed(Oscillation(), steps[:5]) == []
    mixed = [tool(A, "ra"), tool(B, "rb"), tool(A, "ra"), tool(B, "rb"), tool(A, "rc")] * 3
    assert feed(Oscillation(), mixed) == []
    assert feed(Oscillation(), [tool(A, "ra")] * 12) == []  # one step repeated is not A-B


def test_oscillation_from_requests_and_override() -> None:
    """Alternation read from requests; ``length`` 4 fires at A-B-A-B."""
    calls = [
        call(i, turn(f"d{i}", [A if i % 2 == 0 else B], ["ra" if i % 2 == 0 else "rb"], [False]))
        for i in range(8)
    ]
    assert [i for i, _ in feed(Oscillation(), calls)] == [5]
    assert [i for i, _ in feed(Oscillation(), calls, length=4)] == [3, 7]


# --- idle_turns ---------------------------------------------------------------------------


def test_idle_turns_fires_at_the_third_turn_without_action() -> None:
    """Prose answers prompted again: the third fires; a side request (no assistant message)
    and a retry do not count; a tool call starts over."""
    agent = Agent("idle")
    agent.step(read("a.py", "x"))
    agent.conversation.say("I will now fix it.", "Go ahead.")
    agent.request()
    agent.conversation.say("I am fixing it.", "Please use the tools.")
    agent.request()
    agent.retry_once()
    side = call(99, turn("title", acted=None, messages=1))
    agent.conversation.say("Fixing it now.", "Use the edit tool.")
    agent.request()
    calls = [s for s in agent.out if isinstance(s, Call)]
    calls.insert(-1, side)
    found = feed(IdleTurns(), calls)
    assert [i for i, _ in found] == [len(calls) - 1]
    finding = found[0][1]
    assert dict(finding.numbers) == {"count": 3, "threshold": 3}
    assert finding.span_ids == tuple(calls[i].span_id for i in (2, 3, 6))
    assert IdleTurns().subjects == {"run"}
    reset = [call(i, turn(f"d{i}", acted=i % 3 == 2, messages=i)) for i in range(20)]
    assert feed(IdleTurns(), reset) == []


def test_idle_turns_override_and_fresh_state() -> None:
    calls = [call(i, turn(f"d{i}", acted=False, messages=i)) for i in range(10)]
    assert [i for i, _ in feed(IdleTurns(), calls, turns=5)] == [4, 9]


# --- compaction_thrash --------------------------------------------------------------------


def thrash(cycles: int, *, side: bool = False) -> list[Call]:
    """A conversation growing from 9 to 21 messages and compacted back, again and again."""
    calls = []
    sizes = [m for _ in range(cycles) for m in range(9, 23, 2)]
    for i, m in enumerate([20, *sizes]):
        calls.append(call(i, turn(f"d{i}", messages=m)))
        if side:
            calls.append(call(i, turn(f"t{i}", messages=2)))  # a title request
    return calls


def test_compaction_thrash_fires_at_the_fifth_compaction_in_forty_calls() -> None:
    calls = thrash(6)
    found = feed(CompactionThrash(), calls)
    drops = [i for i, c in enumerate(calls) if c.turn and c.turn.messages == 9]
    assert [i for i, _ in found] == [drops[4]]
    assert found[0][1].span_ids == tuple(calls[i].span_id for i in drops[:5])
    assert dict(found[0][1].numbers) == {"count": 5, "threshold": 5, "window": 40}
    assert found[0][1].message == "the conversation was compacted 5 times in the last 30 requests"
    assert [i for i, _ in feed(CompactionThrash(), thrash(6, side=True))] == [2 * drops[4]]
    assert [i for i, _ in feed(CompactionThrash(), calls, compactions=2)] == [8, 22, 36]


def test_compaction_thrash_window_and_growth() -> None:
    """Compactions spread wider than the window, or a conversation that only grows, never
    fire; the window override narrows it."""
    slow = [call(i, turn(f"d{i}", messages=9 + (i % 12))) for i in range(300)]
    assert feed(CompactionThrash(), slow) == []  # one compaction every 12 calls: 4 in 40
    assert feed(CompactionThrash(), slow, window=60) != []
    grows = [call(i, turn(f"d{i}", messages=2 + i)) for i in range(300)]
    assert feed(CompactionThrash(), grows) == []
    assert feed(CompactionThrash(), thrash(6), window=20) == []


def test_compaction_thrash_ignores_a_subagent_interleaved() -> None:
    """A main conversation at 40+ messages and a subagent's at 5-9, alternating: each drop
    is undone when the main conversation comes back, so nothing fires."""
    calls = []
    for i in range(100):
        calls.append(call(i, turn(f"m{i}", messages=40 + i)))
        for j in range(3):
            calls.append(call(i, turn(f"s{i}.{j}", messages=5 + 2 * j)))
    assert feed(CompactionThrash(), calls) == []


# --- stalled_progress ---------------------------------------------------------------------


def test_stalled_progress_fires_at_forty_calls_and_the_token_floor() -> None:
    """The 40th call without a change of the workspace, at 400,000 tokens, fires; calls
    before the first sample do not count; a change starts over."""
    signals: list[Signal] = [call(i, turn(f"early{i}")) for i in range(50)]  # no sample yet
    signals += [Progress(100, "fp-1", 10), call(101, turn("x"), input_tokens=9_900)]
    signals.append(Progress(102, "fp-2", 20))  # the agent edited a file
    signals += [call(103 + i, turn(f"d{i}"), input_tokens=9_900) for i in range(40)]
    signals.insert(-5, Progress(140, "fp-2", 20))  # the same change, sampled again
    found = feed(StalledProgress(), signals)
    assert [i for i, _ in found] == [len(signals) - 1]
    finding = found[0][1]
    assert dict(finding.numbers) == {
        "count": 40,
        "threshold": 40,
        "tokens": 400_000,
        "tokens_threshold": 400_000,
        "diff_size": 20,
    }
    calls = [s.span_id for s in signals if isinstance(s, Call)]
    assert finding.span_ids == tuple(calls[-20:])  # the most recent 20 of the 40
    assert finding.message == (
        "40 calls used 400,000 tokens while the workspace change did not move (its size stays 20)"
    )


def test_stalled_progress_needs_the_tokens_too() -> None:
    """Many cheap calls do not fire until their tokens reach the floor; overrides apply."""
    signals: list[Signal] = [Progress(0, "fp", 0)]
    signals += [call(i, turn(f"d{i}"), input_tokens=4_900) for i in range(100)]
    assert [i for i, _ in feed(StalledProgress(), signals)] == [80]
    assert [i for i, _ in feed(StalledProgress(), signals, turns=10, tokens=50_000)] == [10]
    # A fresh state waits for the next sample, then counts again from it.
    again = [*signals[:11], Progress(11, "fp", 0), *signals[11:]]
    found = feed(StalledProgress(), again, turns=10, tokens=50_000)
    assert [i for i, _ in found] == [10, 21]


# --- velocity -----------------------------------------------------------------------------


def baseline(detector: Velocity, team: str, values: list[int], minute: int = 0) -> None:
    """Each value one subject's tokens in ``minute``; a call of the next minute closes it."""
    for i, tokens in enumerate(values):
        state = detector.state()
        for c in (
            call(minute * 60 + 1, input_tokens=tokens, output_tokens=0, team_id=team),
            call(minute * 60 + 61, input_tokens=10, output_tokens=0, team_id=team),
        ):
            assert detector.observe(state, c, limits(detector)) is None, i


def test_velocity_fires_inside_the_minute_at_z_eight() -> None:
    """A team of 30 subject-minutes, half 20,000 and half 40,000 tokens (median 30,000, MAD
    10,000): a minute fires when it reaches 30,000 + 8 × 1.4826 × 10,000 = 148,608 tokens,
    at the call that crosses it, not the one before."""
    detector = Velocity()
    baseline(detector, "team-a", [20_000, 40_000] * 15)
    assert detector.baseline_samples("team-a") == 30
    state = detector.state()
    first = call(200, input_tokens=148_000, output_tokens=0, cost_nusd=0)
    second = call(210, input_tokens=609, output_tokens=0, cost_nusd=0)
    assert detector.observe(state, first, limits(detector)) is None
    finding = detector.observe(state, second, limits(detector))
    assert finding is not None
    assert finding.span_ids == (first.span_id, second.span_id)
    assert finding.numbers["tokens"] == 148_609
    assert finding.numbers["threshold"] == 8
    assert finding.numbers["samples"] == 30
    assert finding.numbers["z_tokens"] == pytest.approx(8.0, abs=0.01)
    assert finding.message.startswith("148,609 tokens in one minute, against a median of 30,000")


def test_velocity_needs_samples_the_floor_and_its_own_team() -> None:
    """29 samples are too few; another team's baseline does not count; a spike under the
    token floor does not fire; spend alone can fire."""
    detector = Velocity()
    baseline(detector, "team-a", [20_000, 40_000] * 14 + [30_000])
    spike = [call(200, input_tokens=500_000, output_tokens=0)]
    assert feed(detector, spike) == []
    assert feed(detector, [call(200, input_tokens=500_000, team_id="team-b")]) == []
    baseline(detector, "team-a", [30_000], minute=1)
    assert [i for i, _ in feed(detector, spike)] == [0]
    quiet = Velocity()
    baseline(quiet, "team-q", [100, 200] * 20)
    assert feed(quiet, [call(300, input_tokens=19_000, team_id="team-q")]) == []
    assert [i for i, _ in feed(quiet, [call(300, input_tokens=20_000, team_id="team-q")])] == [0]
    spend = Velocity()
    baseline(spend, "team-s", [50_000] * 40)  # cost 3,000 nano-USD per token
    pricey = call(300, input_tokens=50_000, output_tokens=0, cost_nusd=10**9, team_id="team-s")
    [(_, finding)] = feed(spend, [pricey])
    assert finding.message.startswith("$1.00 in one minute, against a median of $0.15")


def test_velocity_overrides() -> None:
    detector = Velocity()
    baseline(detector, "team-a", [20_000, 40_000] * 5)
    spike = [call(200, input_tokens=100_000, output_tokens=0, cost_nusd=0)]
    assert feed(detector, spike) == []
    assert [i for i, _ in feed(detector, spike, min_samples=10, z=4)] == [0]


# --- ceiling ------------------------------------------------------------------------------


def test_ceiling_fires_above_the_tokens_or_dollars_of_one_minute() -> None:
    """2,000,000 tokens in a minute is allowed, one more is not; the next minute starts
    from zero; $5.00 is allowed, a nano-dollar more is not."""
    first = [call(i, input_tokens=499_999, output_tokens=1, cost_nusd=0) for i in range(4)]
    second = [call(60 + i, input_tokens=499_999, output_tokens=1, cost_nusd=0) for i in range(4)]
    second.append(call(119, input_tokens=1, output_tokens=0, cost_nusd=0))
    found = feed(Ceiling(), [*first, *second])
    assert [i for i, _ in found] == [8]
    finding = found[0][1]
    assert finding.numbers["tokens"] == 2_000_001
    assert finding.numbers["tokens_threshold"] == 2_000_000
    assert finding.span_ids == tuple(c.span_id for c in second)
    assert finding.message == "2,000,001 tokens in one minute, above the ceiling of 2,000,000"
    dollars = [call(i, input_tokens=1, output_tokens=0, cost_nusd=10**9) for i in range(5)]
    dollars.append(call(5, input_tokens=1, output_tokens=0, cost_nusd=1))
    [(i, finding)] = feed(Ceiling(), dollars)
    assert i == 5
    assert finding.message == "$5.00 spent in one minute, above the ceiling of $5.00"
    assert finding.numbers["usd"] == pytest.approx(5.000000001)
    assert [i for i, _ in feed(Ceiling(), dollars, usd_per_minute=2)] == [2, 5]


# --- error_storm --------------------------------------------------------------------------


def test_error_storm_fires_at_twenty_failures_within_a_minute() -> None:
    """20 failures (errors and refusals) within 60 s fire on the 20th; successes in between
    do not count; failures 4 s apart (76 s for 20) never do."""
    signals = []
    for i in range(20):
        signals.append(call(i * 3, status="error" if i % 2 else "refused"))
        signals.append(call(i * 3 + 1))
    found = feed(ErrorStorm(), signals)
    assert [i for i, _ in found] == [38]
    finding = found[0][1]
    assert finding.numbers["count"] == 20
    assert finding.numbers["threshold"] == 20
    assert finding.numbers["seconds"] == 57
    assert finding.span_ids == tuple(s.span_id for s in signals[::2])[-20:]
    assert finding.message.startswith("20 calls failed within 57 seconds (most with HTTP")
    slow = [call(i * 4, status="error") for i in range(200)]
    assert feed(ErrorStorm(), slow) == []
    assert [i for i, _ in feed(ErrorStorm(), slow, errors=5, window_s=16)][:2] == [4, 9]


# --- sandbox_pressure ---------------------------------------------------------------------


def sample(
    at: float, procs: int = 5, mem: int = 100 << 20, forks: int = 0, ooms: int = 0
) -> Sandbox:
    return Sandbox(at, mem, 1 << 30, procs, 100, 1.0, forks, ooms)


def test_sandbox_pressure_processes_for_two_samples() -> None:
    """90 of 100 processes twice in a row fires on the second; once does not."""
    samples = [sample(0), sample(1, 90), sample(2, 50), sample(3, 90), sample(4, 95)]
    found = feed(SandboxPressure(), samples)
    assert [i for i, _ in found] == [4]
    finding = found[0][1]
    assert finding.numbers["processes"] == 95
    assert finding.numbers["process_limit"] == 100
    assert finding.numbers["processes_threshold"] == 0.9
    assert finding.span_ids == ()
    assert finding.message == (
        "the sandbox ran 95 processes of its limit of 100 for 2 samples in a row"
    )


def test_sandbox_pressure_refused_forks_and_oom_kills_fire_at_once() -> None:
    """A fork refused since the last sample is a fork bomb: it fires on that sample. The
    first sample only sets the baseline (the counters predate a fresh state)."""
    bomb = [sample(0, forks=3), sample(1, forks=3), sample(2, 40, forks=9)]
    [(i, finding)] = feed(SandboxPressure(), bomb)
    assert i == 2
    assert finding.numbers["refused_forks"] == 6
    assert "was refused 6 forks since the last sample" in finding.message
    balloon = [sample(0), sample(1, mem=(1 << 30) - (50 << 20), ooms=1)]
    [(i, finding)] = feed(SandboxPressure(), balloon)
    assert i == 1
    assert finding.numbers["oom_kills"] == 1
    assert finding.message == (
        "the sandbox used 974 MiB of memory of its limit of 1,024 MiB and had 1 process "
        "killed by that limit since the last sample"
    )
    memory = [sample(i, mem=int(0.95 * (1 << 30))) for i in range(4)]
    assert [i for i, _ in feed(SandboxPressure(), memory)] == [1, 3]
    assert [i for i, _ in feed(SandboxPressure(), memory, memory=0.96)] == []
    assert [i for i, _ in feed(SandboxPressure(), memory, samples=3)] == [2]
