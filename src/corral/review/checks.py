"""The gate's policy checks over a run's change (``corral.review.diffs.Change``).

Each check is a pure function ``(change, settings) -> CheckResult``: it reads nothing but
what it is given. ``run_checks`` runs the ones a ``ChecksConfig`` turns on.

Pattern and secret checks read added lines only, as ``diffs.parse`` kept them: at most
``diffs.MAX_LINE_CHARS`` characters of a line, which bounds the cost of one regex match
for patterns without nested repetition (Python's ``re`` has no timeout: a pattern such as
``(a+)+$`` is the operator's to avoid). Lines past the parser's caps were counted but not
kept; those checks fail then, since they cannot vouch for what they did not read.

Why not ``detect-secrets`` (Yelp, 1.5.0): it does scan one string offline
(``scan_line``) at ~70 µs a line with six plugins chosen, but its plugins are chosen through
a process-wide settings object that ``scan_line`` and ``transient_settings`` rewrite (two
reviews checked at once in threads would change each other's plugins), ``analyze_line``
may call the provider to verify a key depending on those settings, its default plugin set
flagged 44,000 strings in 10,000 synthetic code lines (5 s), and its last release is from 2024.
The rules below are the few it would be used for, with the same redaction everywhere.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pathspec

from corral.errors import ConfigError
from corral.review.diffs import AddedLine, Change, FileChange

__all__ = [
    "MAX_FINDINGS",
    "SECRET_RULES",
    "CheckResult",
    "ChecksConfig",
    "Finding",
    "SecretRule",
    "compile_patterns",
    "forbidden_patterns",
    "max_diff",
    "protected_paths",
    "redact",
    "run_checks",
    "secrets",
    "well_formed",
]

MAX_FINDINGS = 100
"""Findings kept per check (the message says how many there were)."""


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int | None  # in the new file; None for the whole file
    what: str  # never the secret itself


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    message: str  # one sentence for the reviewer, naming what to fix
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class ChecksConfig:
    """Which checks run and their limits; None or empty turns a check off (``well_formed``
    always runs). ``forbidden`` comes from ``compile_patterns``."""

    protected: tuple[str, ...] = ()
    max_lines: int | None = None
    max_files: int | None = None
    forbidden: tuple[re.Pattern[str], ...] = ()
    secrets: bool = True


def run_checks(change: Change, config: ChecksConfig) -> list[CheckResult]:
    """The results of every check ``config`` turns on, in a fixed order."""
    results = [well_formed(change)]
    if config.protected:
        results.append(protected_paths(change, config.protected))
    if config.max_lines is not None or config.max_files is not None:
        results.append(max_diff(change, config.max_lines, config.max_files))
    if config.forbidden:
        results.append(forbidden_patterns(change, config.forbidden))
    if config.secrets:
        results.append(secrets(change))
    return results


def well_formed(change: Change) -> CheckResult:
    """Fails when the patch could not be read whole: the other checks saw only part of it."""
    if not change.malformed:
        return CheckResult("well_formed", True, "The patch was read whole.")
    findings = tuple(Finding("", None, problem) for problem in change.problems)
    return CheckResult(
        "well_formed",
        False,
        f"The patch is malformed ({change.problems_total} problems, first: "
        f"{change.problems[0]}); the checks saw only part of it: reject the run or run it again.",
        findings,
    )


def protected_paths(change: Change, globs: Sequence[str]) -> CheckResult:
    """Fails when a changed file's old or new name matches ``globs`` (gitignore style, in
    order: a later ``!pattern`` un-protects what an earlier one protected). An invalid glob
    is the operator's error: ``ConfigError``."""
    try:
        spec = pathspec.GitIgnoreSpec.from_lines(globs)
    except ValueError as exc:  # pathspec's GitIgnorePatternError is a ValueError
        raise ConfigError(f"review protected_paths: {exc}") from exc
    found: list[Finding] = []
    for f in change.files:
        for path in f.paths:
            hit = spec.check_file(path)
            if hit.include and hit.index is not None:
                found.append(Finding(path, None, f"matches protected glob {globs[hit.index]!r}"))
    if not found:
        return CheckResult("protected_paths", True, "No protected path is changed.")
    named = ", ".join(f"{x.path} ({x.what.removeprefix('matches protected glob ')})" for x in found)
    return _failed(
        "protected_paths",
        f"The change touches protected paths: {_cut(named)}; revert those files.",
        found,
    )


def max_diff(change: Change, max_lines: int | None, max_files: int | None) -> CheckResult:
    """Fails past ``max_lines`` lines added and removed or ``max_files`` files (None: no
    limit), or when the run's patch was cut at the server's size limit."""
    lines = change.added + change.removed
    over = []
    if max_lines is not None and lines > max_lines:
        over.append(f"{lines} lines changed (at most {max_lines})")
    if max_files is not None and change.files_total > max_files:
        over.append(f"{change.files_total} files changed (at most {max_files})")
    if change.cut:
        over.append("the patch was larger than the server keeps")
    if not over:
        return CheckResult("max_diff", True, f"{lines} lines in {change.files_total} files.")
    largest = sorted(change.files, key=lambda f: f.added + f.removed, reverse=True)[:10]
    found = [Finding(f.path, None, f"{f.added + f.removed} lines changed") for f in largest]
    return _failed(
        "max_diff", f"The change is too large: {'; '.join(over)}; split it into smaller runs.",
        found,
    )  # fmt: skip


def compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Compile the configured forbidden patterns once; raise ``ConfigError`` naming the
    first that is not a valid Python regular expression."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(
                f"review forbidden_patterns: {pattern!r} is not a valid regular expression ({exc})"
            ) from exc
    return tuple(compiled)


def forbidden_patterns(change: Change, patterns: Sequence[re.Pattern[str]]) -> CheckResult:
    """Fails when an added line matches one of ``patterns`` (``re.search``); each finding
    names the file, the new line number and the pattern."""
    found: list[Finding] = []
    for f, line in _added(change):
        for pattern in patterns:
            if pattern.search(line.text):
                found.append(Finding(f.path, line.number, f"matches {pattern.pattern!r}"))
    return _line_check(
        "forbidden_patterns", change, found,
        passed="No added line matches a forbidden pattern.",
        failed="added lines match forbidden patterns: {where}; remove them.",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SecretRule:
    name: str
    pattern: re.Pattern[str]
    entropy: bool = False  # the captured value must look random (see _looks_random)


SECRET_RULES: tuple[SecretRule, ...] = (
    SecretRule("AWS access key id", re.compile(r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b")),
    SecretRule(
        "private key block",
        re.compile(r"(-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----)"),
    ),
    SecretRule("GitHub token", re.compile(r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255})\b")),
    SecretRule("GitHub token", re.compile(r"\b(github_pat_[A-Za-z0-9_]{22,255})\b")),
    SecretRule("GitLab token", re.compile(r"\b((?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_-]{20,})")),
    SecretRule("Slack token", re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})")),
    SecretRule(
        "Slack webhook",
        re.compile(r"(https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+)"),
    ),
    # `password = "…"`, `api_key: …`, `"client_secret": "…"`, `SECRET_TOKEN=…`: a keyword
    # ending a name, then = : or =>, then a value of 12+ plain characters that looks random
    SecretRule(
        "credential assignment",
        re.compile(
            r"(?i)(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
            r"[\"']?\s{0,4}(?:=>|:=|=|:)\s{0,4}[\"'`]?([A-Za-z0-9+/=_\-!@#%^&*~.]{12,200})"
        ),
        entropy=True,
    ),
)
"""What ``secrets`` looks for: well-known credential formats, and generic assignments whose
value looks random (placeholders like ``changeme`` or ``${API_KEY}`` do not)."""


def secrets(change: Change) -> CheckResult:
    """Fails when an added line holds a credential (``SECRET_RULES``). A finding names the
    file, the line, the kind and a redacted form (``redact``), never the value."""
    found = [
        Finding(f.path, line.number, f"{name} {redact(value)}")
        for f, line in _added(change)
        for name, value in _line_secrets(line.text)
    ]
    return _line_check(
        "secrets", change, found,
        passed="No credential found in added lines.",
        failed="credentials in added lines: {where}; remove them and revoke each.",
    )  # fmt: skip


def _line_check(
    name: str, change: Change, found: list[Finding], *, passed: str, failed: str
) -> CheckResult:
    """A check of added lines: its findings, or past the scan limit a failure saying so
    (it cannot vouch for lines it did not read). ``failed`` follows the count of findings
    and has ``{where}`` for them."""
    unread = _unread(change)
    if not found and not unread:
        return CheckResult(name, True, passed)
    where = ", ".join(f"{x.path}:{x.line} ({x.what})" for x in found[:MAX_FINDINGS])
    message = (
        f"{len(found)} " + failed.format(where=_cut(where))
        if found
        else "Some added lines were past the scan limit; split the change so all are read."
    )
    return _failed(name, message, [*unread, *found])


def _line_secrets(text: str) -> Iterator[tuple[str, str]]:
    """Each credential on a line once: a generic assignment whose value a specific rule
    already named (``token: ghp_…``) is not reported again."""
    taken: list[tuple[int, int]] = []
    for rule in SECRET_RULES:
        for match in rule.pattern.finditer(text):
            start, end = match.span(1)
            if rule.entropy and (
                not _looks_random(match[1]) or any(s < end and start < e for s, e in taken)
            ):
                continue
            taken.append((start, end))
            yield rule.name, match[1]


def redact(value: str) -> str:
    """A secret as a reviewer may see it: its first 4 characters and its length."""
    return f"{value[:4]}… ({len(value)} chars)"


def _looks_random(value: str) -> bool:
    """Letters and digits mixed, and at least 3.5 bits of Shannon entropy a character:
    ``hunter2hunter2`` and ``my_secret_value`` do not qualify, ``9fQ2xLr7Tb0wZ`` does."""
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return False
    counts = Counter(value)
    bits = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return bits >= 3.5


def _added(change: Change) -> Iterator[tuple[FileChange, AddedLine]]:
    for f in change.files:
        for line in f.added_lines:
            yield f, line


def _unread(change: Change) -> list[Finding]:
    """What the parser's caps kept from the content checks, as findings."""
    unread = [
        Finding(f.path, None, f"{f.lines_dropped} added lines past the scan limit were not read")
        for f in change.files
        if f.lines_dropped
    ]
    if change.files_total > len(change.files):
        skipped = change.files_total - len(change.files)
        unread.append(Finding("", None, f"{skipped} files past the scan limit were not read"))
    return unread


def _failed(name: str, message: str, found: list[Finding]) -> CheckResult:
    return CheckResult(name, False, message, tuple(found[:MAX_FINDINGS]))


def _cut(listing: str, most: int = 600) -> str:
    """A listing short enough for one sentence; the findings hold every item."""
    return listing if len(listing) <= most else listing[:most].rsplit(", ", 1)[0] + ", …"
