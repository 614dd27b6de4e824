"""The evidence check: what an agent's report claims, against what its trajectory shows.

Pure: ``extract_claims`` reads the report (free text, markdown, hostile: only
its first ``MAX_REPORT_CHARS`` are read and at most ``MAX_CLAIMS`` claims kept)
by deterministic rules, no model; ``check`` judges each claim against the
trajectory (``corral.review.trajectory.trajectory``, tool spans in start order)
as *supported* (with the span ids that show it), *contradicted*, or
*unverifiable*. ``steps=None`` means the run reported no trajectory: every
claim is unverifiable.

Claims (at most one of each kind per sentence, but one ``ran_command`` per
quoted command; text inside backticks is a command, never a claim's wording; a
fenced block right after a sentence ending in ``:`` gives that sentence its
command, from the block's first line, a ``$`` prompt dropped):

* ``tests_pass``: "all tests pass", "tests pass(ed)", "the suite is green",
  "N passed" — unless negated in its clause or the sentence counts failures.
* ``reproduced``: "reproduced the bug/issue/failure", "was able to reproduce…",
  with the first quoted command of the sentence when there is one.
* ``ran_command``: "ran/executed/re-ran `cmd`" (each command quoted right after
  the verb), or "I ran pytest -q" unquoted when the words name a test command
  or a known program.
* ``benchmark``: a sentence with a benchmark word (faster, slower, speedup,
  latency, throughput, benchmark, pNN, req/s…) and numbers with a unit, a
  multiplier or a percentage ("2.3x faster", "p99 12 ms", "from 120 ms to 80
  ms"; the percentile's own digits are not numbers).

Rules of ``check``. "After the last edit" means starting once that edit span
ended; "before the first edit", ending before it started. Edits are ``edit``
steps that did not fail (a refused edit changed nothing); a command that edits
and then runs tests (``sed -i … && pytest``) counts as a test after its own edit.
A test run's outcome is its exit code when the test is the command's last part
(``pytest | tail``, ``pytest; echo`` or ``pytest || true`` hide it); otherwise,
or with no exit code, its output: some ``N passed`` / ``OK`` / ``ok`` / ``test
result: ok`` and no ``N failed`` / ``FAILED`` / ``FAIL`` / ``N errors`` (else unknown).

* ``tests_pass``: the last test command (``trajectory.is_test_command``) after
  the last edit passed → supported (its span); failed → contradicted; its
  outcome unknown → unverifiable. No test command after the last edit →
  unverifiable, naming the last edit's span; no test command in the whole
  trajectory while commands ran → unverifiable, saying so.
* ``reproduced``: the quoted command (or, with none quoted, a test command, or
  any command when no test ran before the edit) ran before the first edit and
  failed → supported (that run's span, a failing test run's when there is
  one); a quoted command that never ran → contradicted; it ran only after the
  first edit, or succeeded before it → contradicted, saying which; its outcome
  unknown → unverifiable.
* ``ran_command``: a command containing the claimed one (whitespace
  normalised; a leading ``$`` prompt dropped) ran → supported (every matching
  span); none → contradicted.
* ``benchmark``: each number appears in some command's output (as written, or
  rounded to the claim's precision) → supported; otherwise unverifiable:
  outputs are cut, so numbers alone never contradict.

Whenever a "never ran" would rest on commands whose text was not recorded (the
team keeps no bodies, or the body budget ran out), the verdict is unverifiable
instead of contradicted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.review.trajectory import (
    MAX_COMMAND_CHARS,
    Executed,
    Shape,
    command_shape,
    is_test_command,
    trajectory,
)

__all__ = [
    "MAX_CLAIMS",
    "MAX_REPORT_CHARS",
    "Claim",
    "ClaimKind",
    "Executed",
    "Verdict",
    "VerdictKind",
    "check",
    "extract_claims",
    "is_test_command",
    "output_outcome",
    "tests_after_last_edit",
    "trajectory",
]

ClaimKind = Literal["tests_pass", "reproduced", "ran_command", "benchmark"]
VerdictKind = Literal["supported", "contradicted", "unverifiable"]

MAX_REPORT_CHARS = 100_000
MAX_CLAIMS = 100
MAX_SENTENCE_CHARS = 500
_MAX_SPAN_IDS = 20
_MAX_NUMBERS = 12


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of the report: its kind, the sentence it came from (cut), the command it
    names (cut) and, for benchmarks, the numbers as written."""

    kind: ClaimKind
    sentence: str
    command: str | None = None
    numbers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A claim's verdict, one sentence saying why, and the spans it rests on."""

    claim: Claim
    verdict: VerdictKind
    reason: str
    span_ids: tuple[str, ...] = ()


# -- claims -----------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE = re.compile(r"`([^`\n]{1,2000})`")
_TOKEN = re.compile(r"\x01(\d+)\x01")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=\S)|\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)")
_BULLET = re.compile(r"^\s*(?:[-*+>]|\d+[.)]|#+)\s+")
_NEGATION = re.compile(
    r"\b(?:not|never|no longer|cannot|unable|couldn't|didn't|don't|doesn't|won't|isn't|aren't"
    r"|wasn't|haven't|hasn't|without|none\s+of|no(?:\s+[\w-]+)?\s+tests?)\b"
)
_TESTS_PASS = (
    re.compile(r"\ball\b[^.;:,]{0,40}?\btests?\b[^.;:,]{0,20}?\b(?:pass\w*|succeed\w*|green)\b"),
    re.compile(
        r"\b(?:tests?|suite)\b\s+(?:now\s+|still\s+|all\s+)?(?:pass(?:ed|es)?|succeed(?:ed|s)?"
        r"|are\s+(?:all\s+)?(?:passing|green)|is\s+green)\b"
    ),
    re.compile(r"\b\d+\s+(?:tests?\s+)?passed\b"),
)
_QUOTED_PASSES = re.compile(  # "`python3 test_calc.py` passes": a test command that passes
    r"\x01(\d+)\x01\s+(?:now\s+|still\s+|all\s+)?(?:pass(?:es|ed)?|succeed(?:s|ed)?|is\s+green"
    r"|runs?\s+green)\b"
)
_COUNTED_FAILURES = re.compile(r"\b[1-9]\d*\s+(?:tests?\s+)?(?:failed|failing|errors?|failures?)\b")
_REPRODUCED = re.compile(
    r"\breproduced\b|\b(?:was|were|am)\s+able\s+to\s+reproduce\b|\bcould\s+reproduce\b"
)
_RAN = re.compile(r"\b(?:ran|executed|re-?ran|have\s+run|was\s+run)\b")
_RAN_QUOTED = re.compile(
    r"\b(?:ran|executed|re-?ran|have\s+run)\b:?\s+(?:[\w'-]+\s+){0,4}?"
    r"(\x01\d+\x01(?:\s*(?:,\s*and|,|and|then|&)\s*\x01\d+\x01)*)"
)
_RAN_UNQUOTED = re.compile(r"\b(?:i|we)\s+(?:ran|executed|re-?ran)\s+([^,;:\x01]{1,200})")
_PROGRAMS = frozenset(
    {"python", "python3", "node", "npm", "npx", "yarn", "pnpm", "make", "go", "cargo", "git"}
    | {"ruff", "mypy", "black", "flake8", "eslint", "tsc", "bash", "sh", "uv", "pip", "curl"}
)
_BENCH_CUE = re.compile(
    r"\b(?:faster|slower|speed-?up|quicker|latency|throughput|benchmark\w*|p\d{2,3}"
    r"|req/s|rps|qps|ops/s)\b|\d\s*[x×](?!\w)"
)
_UNIT = r"(?:[x×](?!\w)|%|ms\b|µs\b|us\b|ns\b|s\b|secs?\b|seconds?\b|minutes?\b|req/s|rps\b"
_UNIT += r"|qps\b|ops/s|[kmg]b/s|[kmg]i?b\b)"
_BENCH_NUMBER = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?)\s*{_UNIT}", re.IGNORECASE)
_FROM_TO = re.compile(r"\bfrom\s+(\d+(?:\.\d+)?)\b[^.;]{0,20}?\bto\s+(\d+(?:\.\d+)?)\b")


@dataclass(slots=True)
class _Sentence:
    text: str  # with the code spans masked as \x01N\x01
    code: list[str] = field(default_factory=list)

    def plain(self) -> str:
        """The sentence as written (code in backticks), cut."""
        text = _TOKEN.sub(lambda m: f"`{self.code[int(m.group(1))]}`", self.text)
        return " ".join(text.split())[:MAX_SENTENCE_CHARS]


def extract_claims(report: str) -> list[Claim]:
    """The report's claims in the order they appear (at most ``MAX_CLAIMS``); a claim said
    again (same kind, command and numbers) is kept once, from its first sentence."""
    claims: dict[tuple[str, str | None, tuple[str, ...]], Claim] = {}
    for sentence in _sentences(report[:MAX_REPORT_CHARS]):
        for claim in _claims_of(sentence):
            claims.setdefault((claim.kind, claim.command, claim.numbers), claim)
            if len(claims) >= MAX_CLAIMS:
                return list(claims.values())
    return list(claims.values())


def _sentences(report: str) -> list[_Sentence]:
    """Sentences of the prose; a fenced block is no prose, but gives the sentence before it
    (ending in ``:``) its command."""
    sentences: list[_Sentence] = []
    prose: list[str] = []
    block: list[str] | None = None
    for line in report.split("\n"):
        if not _FENCE.match(line):
            (prose if block is None else block).append(line)
        elif block is None:  # a block opens: the prose before it is complete
            sentences.extend(_split(prose))
            prose, block = [], []
        else:
            if sentences and not prose:
                _attach(sentences[-1], block)
            block = None
    sentences.extend(_split(prose))
    return sentences


def _attach(sentence: _Sentence, block: list[str]) -> None:
    if sentence.code or not sentence.text.rstrip().endswith(":"):
        return
    for line in block:
        command = line.strip().removeprefix("$ ").strip()
        if command:
            sentence.code.append(command[:MAX_COMMAND_CHARS])
            sentence.text += f" \x01{len(sentence.code) - 1}\x01"
            return


def _split(lines: list[str]) -> Iterator[_Sentence]:
    text = "\n".join(lines)
    code: list[str] = []

    def mask(match: re.Match[str]) -> str:
        code.append(match.group(1).strip()[:MAX_COMMAND_CHARS])
        return f"\x01{len(code) - 1}\x01"

    masked = _CODE.sub(mask, text.replace("\x01", ""))
    for piece in _SPLIT.split(masked):
        piece = _BULLET.sub("", piece).replace("**", "").replace("__", "").strip()
        if not piece:
            continue
        yield _own_code(piece, code)


def _own_code(piece: str, code: list[str]) -> _Sentence:
    """A sentence holding its own code spans, numbered from 0."""
    local: list[str] = []

    def renumber(match: re.Match[str]) -> str:
        local.append(code[int(match.group(1))])
        return f"\x01{len(local) - 1}\x01"

    return _Sentence(_TOKEN.sub(renumber, piece), local)


def _claims_of(sentence: _Sentence) -> Iterator[Claim]:
    lowered = sentence.text.lower()
    plain = sentence.plain()
    if _tests_pass(lowered):
        yield Claim("tests_pass", plain)
    else:
        for match in _QUOTED_PASSES.finditer(lowered):
            command = sentence.code[int(match.group(1))]
            if command_shape(command).test and not _negated(lowered, match):
                yield Claim("tests_pass", plain, command[:MAX_COMMAND_CHARS])
                break
    used: set[int] = set()
    reproduced = _REPRODUCED.search(lowered)
    if reproduced and not _negated(lowered, reproduced):
        first = _TOKEN.search(sentence.text)
        if first is not None:
            used.add(int(first.group(1)))
        yield Claim("reproduced", plain, sentence.code[int(first.group(1))] if first else None)
    yield from _ran(sentence, lowered, plain, used)
    if _BENCH_CUE.search(lowered):
        numbers = _benchmark_numbers(_TOKEN.sub(" ", sentence.text))
        if numbers:
            yield Claim("benchmark", plain, numbers=numbers)


def _negated(text: str, match: re.Match[str]) -> bool:
    """Whether the clause holding ``match`` negates it (a negation before it in the clause)."""
    start = max(text.rfind(mark, 0, match.start()) for mark in (",", ";", ":", " but ", "("))
    return bool(_NEGATION.search(text, max(start, 0), match.end()))


def _tests_pass(text: str) -> bool:
    if _COUNTED_FAILURES.search(text):
        return False
    return any(
        not _negated(text, match) for pattern in _TESTS_PASS for match in pattern.finditer(text)
    )


def _ran(sentence: _Sentence, lowered: str, plain: str, used: set[int]) -> Iterator[Claim]:
    seen: set[int] = set(used)
    for match in _RAN_QUOTED.finditer(lowered):
        if _negated(lowered, match):
            continue
        for number in (int(n) for n in _TOKEN.findall(match.group(1))):
            if number not in seen:
                seen.add(number)
                yield Claim("ran_command", plain, sentence.code[number])
    if seen != used or not _RAN.search(lowered):
        return
    unquoted = _RAN_UNQUOTED.search(lowered)
    if unquoted and not _negated(lowered, unquoted):
        start = unquoted.start(1)
        words = sentence.text[start : start + len(unquoted.group(1))]
        command = re.split(r"\s+(?:and|then|to|which|so|before|after)\s+|[.!?]\s", words)[0]
        command = command.strip().rstrip(".!?")
        if _looks_like_command(command):
            yield Claim("ran_command", plain, command[:MAX_COMMAND_CHARS])


def _looks_like_command(text: str) -> bool:
    first = text.split(" ", 1)[0] if text else ""
    return bool(first) and (
        first in _PROGRAMS or first.startswith("./") or command_shape(text).test
    )


def _benchmark_numbers(text: str) -> tuple[str, ...]:
    """The numbers of a benchmark sentence, in order: "from N to M" and numbers with a unit."""
    found = [(m.start(g), m.group(g)) for m in _FROM_TO.finditer(text) for g in (1, 2)]
    found += [(m.start(1), m.group(1)) for m in _BENCH_NUMBER.finditer(text)]
    unique = list(dict.fromkeys(number for _, number in sorted(found)))
    return tuple(unique[:_MAX_NUMBERS])


# -- the check --------------------------------------------------------------------------------

_PASS_MARK = re.compile(
    r"\b[1-9]\d*\s+passed\b|^OK\b|^ok\s+\S|test result: ok\.|^PASS\b|^Tests?:\s.*\b\d+\s+passed",
    re.MULTILINE,
)
_FAIL_MARK = re.compile(
    r"\b[1-9]\d*\s+(?:failed|errors?|failures?)\b|^FAILED\b|^FAIL\b|test result: FAILED"
    r"|\bFAILED \(|^Tests?:\s.*\b[1-9]\d*\s+failed",
    re.MULTILINE,
)
_OUTPUT_NUMBER = re.compile(r"(?<![\w.])-?\d{1,30}(?:\.\d{1,30})?")


class _Trajectory:
    """The steps with what every rule asks of them: edits, test runs, shapes, outcomes."""

    def __init__(self, steps: Sequence[Executed]) -> None:
        self.steps = list(steps)
        self.shapes: dict[int, Shape] = {
            index: command_shape(step.command)
            for index, step in enumerate(self.steps)
            if step.command
        }
        self.edits = [i for i, s in enumerate(self.steps) if s.kind == "edit" and s.ok is not False]
        self.tests = [i for i, shape in self.shapes.items() if shape.test]
        self._test_set = frozenset(self.tests)
        self._numbers: list[tuple[int, list[float]]] | None = None
        self.commands = [i for i, s in enumerate(self.steps) if s.command or s.kind == "command"]
        self.untold = sum(1 for s in self.steps if s.kind == "command" and not s.command)

    def after(self, index: int, edit: int) -> bool:
        """Whether step ``index`` started once edit ``edit`` was done."""
        if index == edit:
            return self.shapes[index].test_after_edit if index in self.shapes else False
        return self.steps[index].start_ns >= self.steps[edit].end_ns

    def before(self, index: int, edit: int) -> bool:
        return index != edit and self.steps[index].end_ns <= self.steps[edit].start_ns

    def test_outcome(self, index: int) -> bool | None:
        """Whether a test run passed: by its exit code when that is the test's, else by its
        output; None when neither tells."""
        step, shape = self.steps[index], self.shapes[index]
        if shape.test_last and step.exit_code is not None:
            return step.exit_code == 0
        if shape.test_last and step.ok is not None:
            return step.ok
        return output_outcome(step.output)

    def failed(self, index: int) -> bool | None:
        if index in self._test_set:
            outcome = self.test_outcome(index)
            return None if outcome is None else not outcome
        ok = self.steps[index].ok
        return None if ok is None else not ok

    def matching(self, claimed: str) -> list[int]:
        wanted = _normal(claimed.removeprefix("$ "))[:MAX_COMMAND_CHARS]
        if not wanted:
            return []
        return [i for i in self.commands if self.steps[i].command and wanted in self.text(i)]

    def text(self, index: int) -> str:
        return _normal(self.steps[index].command or "")

    def numbers(self) -> list[tuple[int, list[float]]]:
        """Each command step's output numbers (parsed once for all benchmark claims)."""
        if self._numbers is None:
            self._numbers = [(i, _numbers_in(self.steps[i].output)) for i in self.commands]
        return self._numbers

    def describe(self, index: int) -> str:
        step = self.steps[index]
        if step.command:
            return f"span {step.span_id} (`{_short(step.command)}`{_exit(step)})"
        where = f" on {', '.join(step.paths[:3])}" if step.paths else ""
        return f"span {step.span_id} ({step.tool}{where})"


def output_outcome(output: str) -> bool | None:
    """A test run's outcome from its output: failures shown → False; passes and no failure
    → True; else None."""
    if _FAIL_MARK.search(output):
        return False
    return True if _PASS_MARK.search(output) else None


def check(claims: Sequence[Claim], steps: Sequence[Executed] | None) -> list[Verdict]:
    """Each claim's verdict against ``steps`` (the trajectory in start order, or None when the
    run reported none), by the rules in the module docstring."""
    if steps is None:
        reason = "no trajectory was reported for this run, so no claim can be checked"
        return [Verdict(claim, "unverifiable", reason) for claim in claims]
    trail = _Trajectory(steps)
    rules = {
        "tests_pass": _check_tests_pass,
        "reproduced": _check_reproduced,
        "ran_command": _check_ran,
        "benchmark": _check_benchmark,
    }
    return [rules[claim.kind](claim, trail) for claim in claims]


def _check_tests_pass(claim: Claim, trail: _Trajectory) -> Verdict:
    found = _last_test_after_last_edit(trail)
    return Verdict(claim, found.verdict, found.reason, found.span_ids)


@dataclass(frozen=True, slots=True)
class _Found:
    verdict: VerdictKind
    reason: str
    span_ids: tuple[str, ...]


def _last_test_after_last_edit(trail: _Trajectory) -> _Found:
    last_edit = trail.edits[-1] if trail.edits else None
    after = [i for i in trail.tests if last_edit is None or trail.after(i, last_edit)]
    if after:
        run = after[-1]
        ids = (trail.steps[run].span_id,)
        which = "last test run after the last edit" if last_edit is not None else "last test run"
        outcome = trail.test_outcome(run)
        if outcome is None:
            reason = f"the outcome of the {which}, {trail.describe(run)}, was not reported"
            return _Found("unverifiable", reason, ids)
        verdict: VerdictKind = "supported" if outcome else "contradicted"
        reason = f"the {which}, {trail.describe(run)}, {'passed' if outcome else 'failed'}"
        return _Found(verdict, reason, ids)
    if last_edit is None or not trail.tests:  # (with no edit, every test run is "after")
        return _Found("unverifiable", _no_test_run(trail), ())
    untold = f"; {trail.untold} command spans have no recorded text" if trail.untold else ""
    reason = (
        f"no test command ran after the last edit, {trail.describe(last_edit)}; "
        f"the last test run was {trail.describe(trail.tests[-1])}, before it{untold}"
    )
    return _Found("unverifiable", reason, (trail.steps[last_edit].span_id,))


def _no_test_run(trail: _Trajectory) -> str:
    if trail.untold:
        return (
            "no recorded command is a test run, but "
            f"{trail.untold} command spans have no recorded text"
        )
    if trail.commands:
        return f"no test command ran in the whole trajectory ({len(trail.commands)} commands ran)"
    return "no command ran in the whole trajectory"


def _check_reproduced(claim: Claim, trail: _Trajectory) -> Verdict:
    first_edit = trail.edits[0] if trail.edits else None
    edit_text = f"the first edit, {trail.describe(first_edit)}" if first_edit is not None else ""

    def before(i: int) -> bool:
        return first_edit is None or trail.before(i, first_edit)

    if claim.command is None:  # a test run when one ran before the edit, else any command
        candidates = [i for i in trail.tests if before(i)]
        candidates = candidates or [i for i in trail.commands if before(i)]
        what = "no command"
    else:
        matches = trail.matching(claim.command)
        if not matches:
            return _never_ran(claim, trail)
        candidates = [i for i in matches if before(i)]
        what = f"`{_short(claim.command)}`"
        if not candidates:
            reason = f"{what} ran only after {edit_text}: {_describe_all(trail, matches)}"
            return Verdict(claim, "contradicted", reason, _ids(trail, matches))
    failed = [i for i in candidates if trail.failed(i) is True]
    when = f"before {edit_text}" if first_edit is not None else "(no file was edited)"
    if failed:
        best = next((i for i in failed if i in trail.tests), failed[0])
        reason = f"{trail.describe(best)} failed {when}"
        return Verdict(claim, "supported", reason, _ids(trail, [best]))
    if not candidates:
        return Verdict(claim, "contradicted", f"{what} ran {when}", ())
    if any(trail.failed(i) is None for i in candidates):
        reason = f"the outcome of {_describe_all(trail, candidates)} {when} was not reported"
        return Verdict(claim, "unverifiable", reason, _ids(trail, candidates))
    reason = f"{_describe_all(trail, candidates)} succeeded {when}: nothing failed to reproduce"
    return Verdict(claim, "contradicted", reason, _ids(trail, candidates))


def _check_ran(claim: Claim, trail: _Trajectory) -> Verdict:
    matches = trail.matching(claim.command or "")
    if matches:
        reason = f"it ran as {_describe_all(trail, matches)}"
        return Verdict(claim, "supported", reason, _ids(trail, matches))
    return _never_ran(claim, trail)


def _never_ran(claim: Claim, trail: _Trajectory) -> Verdict:
    command = f"`{_short(claim.command or '')}`"
    if trail.untold:
        reason = (
            f"no recorded command matches {command}, but {trail.untold} command spans "
            "have no recorded text"
        )
        return Verdict(claim, "unverifiable", reason)
    reason = f"{command} never ran ({len(trail.commands)} commands ran in the trajectory)"
    return Verdict(claim, "contradicted", reason)


def _check_benchmark(claim: Claim, trail: _Trajectory) -> Verdict:
    found: dict[str, str] = {}
    for number in claim.numbers:
        for index, values in trail.numbers():
            if _appears(number, values):
                found[number] = trail.steps[index].span_id
                break
    missing = [n for n in claim.numbers if n not in found]
    if missing:
        reason = f"{', '.join(missing)} appears in no command's output (outputs are cut)"
        return Verdict(claim, "unverifiable", reason, tuple(dict.fromkeys(found.values())))
    spans = tuple(dict.fromkeys(found.values()))
    reason = f"every number appears in command output: span {', '.join(spans)}"
    return Verdict(claim, "supported", reason, spans)


def _numbers_in(output: str) -> list[float]:
    return [float(n) for n in _OUTPUT_NUMBER.findall(output)]


def _appears(number: str, values: list[float]) -> bool:
    """Whether ``number`` is among ``values``, as written or rounded to its precision."""
    places = len(number.partition(".")[2])
    wanted = float(number)
    return any(abs(round(value, places) - wanted) < 1e-9 for value in values)


def tests_after_last_edit(steps: Sequence[Executed] | None) -> tuple[bool, str, tuple[str, ...]]:
    """The gate's "tests must have run after the last edit" policy: ``(passed, message,
    span_ids)``. Passed when a test command ran after the last edit and passed, or when no
    file was edited (said so); None (no trajectory) fails."""
    if steps is None:
        return False, "no trajectory was reported for this run", ()
    trail = _Trajectory(steps)
    if not trail.edits:
        return True, "no file was edited, so no test run was needed after an edit", ()
    found = _last_test_after_last_edit(trail)
    return found.verdict == "supported", found.reason, found.span_ids


def _ids(trail: _Trajectory, indexes: Sequence[int]) -> tuple[str, ...]:
    return tuple(trail.steps[i].span_id for i in indexes[:_MAX_SPAN_IDS])


def _describe_all(trail: _Trajectory, indexes: Sequence[int]) -> str:
    shown = ", ".join(trail.describe(i) for i in indexes[:3])
    return shown + (f" and {len(indexes) - 3} more" if len(indexes) > 3 else "")


def _exit(step: Executed) -> str:
    return f", exit code {step.exit_code}" if step.exit_code is not None else ""


def _normal(text: str) -> str:
    return " ".join(text.split())


def _short(command: str, limit: int = 80) -> str:
    text = _normal(command)
    return text if len(text) <= limit else text[: limit - 1] + "…"
