"""The built-in detectors over whole fleets: healthy agents and people never trip them, each
scripted runaway is caught by its detector within its threshold, odd input never raises,
and a subject's state stays bounded however long its stream."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import fields, is_dataclass
from typing import Any

import pytest

from corral.guards.detectors import Velocity, builtin_detectors
from corral.guards.detectors.rates import TEAMS
from corral.guards.model import SIGNALS, Call, Progress, Sandbox, Signal, Subject, Tool
from tests.guards.streams import (
    Agent,
    bash,
    call,
    chat_session,
    edit,
    healthy_run,
    read,
    turn,
    watch,
)


def fleet() -> dict[Subject, list[Signal]]:
    """Twelve coding agents in team-a (half report tool spans), starting a minute apart at
    different speeds, and four people chatting through their keys in team-b."""
    streams: dict[Subject, list[Signal]] = {}
    for i in range(12):
        streams[Subject("run", f"healthy-{i}")] = healthy_run(
            f"h{i}", spans=i % 2 == 1, at=60.0 * i, step_s=4.0 + i
        )
    for i in range(4):
        streams[Subject("key", f"person-{i}")] = chat_session(f"p{i}", at=30.0 * i)
    return streams


def test_a_healthy_fleet_never_trips_a_detector() -> None:
    """Reads, edits, tests that fail differently, a retry, a mistyped path, git status
    twice, a compaction, parallel tool calls; people chatting for an hour: no finding."""
    streams = fleet()
    velocity = next(d for d in builtin_detectors() if d.name == "velocity")
    detectors = [d for d in builtin_detectors() if d.name != "velocity"] + [velocity]
    found = watch(streams, detectors)
    assert {s: f for s, f in found.items() if f} == {}
    assert isinstance(velocity, Velocity)
    assert velocity.baseline_samples("team-a") >= 30  # the velocity detector did judge


def runaways() -> dict[Subject, tuple[str, list[Signal]]]:
    """Each scripted runaway and the detector that should catch it first."""
    out: dict[Subject, tuple[str, list[Signal]]] = {}
    start = 900.0

    same = Agent("poll the build", at=start)  # a command agent: one request, in a loop
    for _ in range(10):
        same.request()
    out[Subject("run", "command-loop")] = ("repeated_request", same.out)

    person = Agent("summarise this", team_id="team-b", at=start)
    for _ in range(10):
        person.request()
    calls: list[Signal] = [s for s in person.out if isinstance(s, Call)]
    out[Subject("key", "person-hammering")] = ("repeated_request", [*calls])

    for spans in (False, True):
        loop = Agent("fix the tests", spans=spans, at=start)
        loop.step(read("src/a.py", "x = 1"))
        for _ in range(6):
            loop.step(bash("pytest -q", "1 failed: test_a"))
        out[Subject("run", f"repeat-tool-{spans}")] = ("repeated_tool", loop.out)

    failing = Agent("deploy", at=start)
    for _ in range(5):
        failing.step(bash("make deploy", "make: *** [deploy] Error 1", True))
    out[Subject("run", "failing")] = ("failing_action", failing.out)

    swing = Agent("refactor", spans=True, at=start)
    for _ in range(5):
        swing.step(read("a.py", "A"))
        swing.step(read("b.py", "B"))
    out[Subject("run", "oscillating")] = ("oscillation", swing.out)

    idle = Agent("write docs", at=start)
    idle.step(read("README.md", "# readme"))
    for i in range(4):
        idle.conversation.say(f"I will write the docs now ({i}).", "Continue.")
        idle.request()
    out[Subject("run", "idle")] = ("idle_turns", idle.out)

    thrash = Agent("big task", at=start)
    for i in range(40):
        thrash.step(read(f"f{i}.py", f"content {i} " * 50))
        if i % 6 == 5:
            thrash.conversation.compact(f"read {i} files")
            thrash.request()
    out[Subject("run", "thrashing")] = ("compaction_thrash", thrash.out)

    stalled = Agent("investigate", at=start, step_s=30.0)  # reads, never edits
    for i in range(60):
        stalled.step(read(f"src/m{i}.py", f"module {i} " * 200))
    out[Subject("run", "stalled")] = ("stalled_progress", stalled.out)

    spike: list[Signal] = [
        call(start + i, turn(f"s{i}", messages=10 + i), input_tokens=300_000) for i in range(20)
    ]
    out[Subject("run", "spend-spike")] = ("velocity", spike)

    storm: list[Signal] = [call(start + i, turn(f"e{i}"), status="refused") for i in range(30)]
    out[Subject("run", "error-storm")] = ("error_storm", storm)

    bomb: list[Signal] = [
        Sandbox(start + i, 50 << 20, 1 << 30, min(512, 5 * 4**i), 512, 1.0, max(0, 4**i - 100), 0)
        for i in range(8)
    ]
    out[Subject("run", "fork-bomb")] = ("sandbox_pressure", bomb)

    balloon: list[Signal] = [
        Sandbox(start + i, min(1 << 30, (100 << 20) * 2**i), 1 << 30, 3, 512, 1.0, 0, 0)
        for i in range(8)
    ]
    out[Subject("run", "memory-balloon")] = ("sandbox_pressure", balloon)
    return out


def test_each_runaway_is_caught_by_its_detector_and_no_healthy_run_is_touched() -> None:
    streams: dict[Subject, list[Signal]] = fleet()
    expected = runaways()
    streams |= {subject: signals for subject, (_, signals) in expected.items()}
    found = watch(streams, builtin_detectors())
    caught = {subject: found[subject][0].detector for subject in expected if found[subject]}
    assert caught == {subject: name for subject, (name, _) in expected.items()}
    assert {s: f for s, f in found.items() if f and s not in expected} == {}
    first = {subject.id: found[subject][0] for subject in expected}
    assert first["command-loop"].numbers["count"] == 5
    assert first["repeat-tool-False"].numbers["count"] == 4
    assert first["repeat-tool-True"].numbers["count"] == 4
    assert first["oscillating"].numbers["count"] == 6
    assert int(first["stalled"].numbers["count"]) >= 40
    assert int(first["stalled"].numbers["tokens"]) >= 400_000
    assert "memory" in first["memory-balloon"].message
    assert "processes" in first["fork-bomb"].message


ODD_NUMBERS: list[float] = [0, -1, 1, 2**70, -(2**70), math.nan, math.inf, -math.inf, 0.5, -0.5]


def odd(rng: random.Random) -> Signal:
    """A signal whose every field may be absurd (but of its declared type)."""
    pick = rng.choice

    def n() -> float:
        return pick(ODD_NUMBERS)

    def i() -> int:
        return pick([0, -5, 1, 3, 2**63, -(2**63)])

    def opt() -> int | None:
        return pick([None, 0, -1, 1, 2**62])

    kind = pick(list(SIGNALS))
    if kind == "call":
        t = (
            None
            if rng.random() < 0.2
            else turn(
                pick(["", "d", "x" * 1000]),
                [pick(["", ":", "a:", "a:b", "x" * 500]) for _ in range(rng.randrange(4))],
                [pick(["", "r"]) for _ in range(rng.randrange(4))],
                [rng.random() < 0.5 for _ in range(rng.randrange(4))],
                pick([True, False, None]),
                i(),
            )
        )
        return Call(
            n(),
            "",
            "",
            pick([None, "", "t"]),
            pick(["ok", "error", "refused", "?"]),
            i(),
            None,
            i(),
            i(),
            i(),
            t,
        )
    if kind == "tool":
        return Tool(
            n(), "", "", pick(["", "a:b", ":"]), pick([None, "", "r"]), pick([None, "", "e"])
        )
    if kind == "sandbox":
        return Sandbox(n(), opt(), opt(), opt(), opt(), pick([None, n()]), opt(), opt())
    return Progress(n(), pick(["", "a", "b"]), i())


def test_odd_input_and_odd_thresholds_never_raise() -> None:
    """Absurd signals and thresholds (NaN, infinities, negatives, zero, huge, not numbers,
    missing, not a mapping at all) never raise: a detector falls back to its defaults."""
    rng = random.Random(14)
    kinds = {cls: kind for kind, cls in SIGNALS.items()}
    for d in builtin_detectors():
        states = [d.state() for _ in range(3)]
        for _ in range(3_000):
            signal = odd(rng)
            if kinds[type(signal)] not in d.signals:
                continue
            limits: Any = {k: rng.choice([*ODD_NUMBERS, "x", None, True]) for k in d.defaults}
            limits = rng.choice([limits, {}, dict(d.defaults), None, 3])
            state = rng.choice(states)
            finding = d.observe(state, signal, limits)
            if finding is not None:
                assert finding.detector == d.name
                assert "\n" not in finding.message
                assert len(finding.span_ids) <= 20
                states[states.index(state)] = d.state()


def queues(value: Any, seen: set[int] | None = None) -> list[deque[Any]]:
    """Every deque in a state, however nested (dataclasses, dicts, tuples)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, deque):
        return [value, *[q for item in value for q in queues(item, seen)]]
    if is_dataclass(value) and not isinstance(value, type):
        return [q for f in fields(value) for q in queues(getattr(value, f.name), seen)]
    if isinstance(value, dict):
        return [q for item in value.values() for q in queues(item, seen)]
    return []


def endless(count: int) -> Any:
    """A runaway-looking stream that never stops: new digests, actions and results, calls
    in every minute, sandbox and progress samples, failures, compactions."""
    for i in range(count):
        at = float(i)
        r = i % 7
        if r == 0:
            yield Tool(at, f"s{i}", "t", f"t:{i % 13}", f"r{i % 11}", None if i % 3 else "e")
        elif r == 1:
            yield Sandbox(at, 10 << 20, 1 << 30, 3, 512, at, i // 100, 0)
        elif r == 2:
            yield Progress(at, f"fp{i // 5000}", i)
        else:
            yield call(
                at,
                turn(f"d{i}", [f"a:{i % 5}"], [f"r{i % 3}"], [i % 4 == 0], i % 2 == 0, 4 + i % 97),
                status="error" if i % 9 == 0 else "ok",
                span_id=f"c{i}",
            )


@pytest.mark.slow
def test_a_million_signals_keep_every_state_bounded() -> None:
    """A million signals, each given to the detectors that read it, one subject: the
    findings do not matter, only that no state grows (each deque within its bound, the
    evidence within 20, the velocity baselines within their history)."""
    detectors = builtin_detectors()
    kinds = {cls: kind for kind, cls in SIGNALS.items()}
    readers = {kind: [d for d in detectors if kind in d.signals] for kind in SIGNALS}
    states = {d.name: d.state() for d in detectors}
    for signal in endless(1_000_000):
        for d in readers[kinds[type(signal)]]:
            if d.observe(states[d.name], signal, d.defaults) is not None:
                states[d.name] = d.state()
    for d in detectors:
        bound = max([20, *(int(v) for v in d.defaults.values())])
        for queue in queues(states[d.name]):
            assert queue.maxlen is not None
            assert queue.maxlen <= bound, d.name
    assert len(states["repeated_request"].counts) <= 10  # one per request in the window
    velocity = next(d for d in detectors if isinstance(d, Velocity))
    assert velocity.baseline_samples("team-a") == 500
    assert velocity.teams == 1
    teams = Velocity()
    state = teams.state()
    for i in range(TEAMS + 50):
        teams.observe(state, call(60.0 * i, team_id=f"t{i}"), teams.defaults)
    assert teams.teams == TEAMS


def test_tools_and_edits_by_spans_and_calls_agree() -> None:
    """The same agent read from its requests or from its tool spans: the same findings."""
    for spans in (False, True):
        agent = Agent("loop", spans=spans)
        agent.step(edit("a.py", "x", "y"))
        for _ in range(4):
            agent.step(bash("pytest", "1 failed"))
        found = watch({Subject("run", "r"): agent.out}, builtin_detectors())
        assert [f.detector for f in found[Subject("run", "r")]] == ["repeated_tool"]
