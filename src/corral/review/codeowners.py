"""CODEOWNERS with GitHub's semantics, as pure data: no I/O and no store of its own.

``find(read)`` reads the first of ``.github/CODEOWNERS``, ``CODEOWNERS``, ``docs/CODEOWNERS``
that exists (``read`` gives a file's bytes at the run's base commit, or None), ``parse(text)``
turns a file into rules and problems, ``resolve(codeowners, lookup)`` maps each written owner
to a Corral principal, and ``CodeOwners.owners_of(path)`` answers who owns a changed path.

GitHub's rules ("About code owners", docs.github.com), followed here:

* the last matching pattern wins; a pattern with no owners un-owns what it matches;
* patterns follow gitignore (matched with ``pathspec``) except that ``!`` negation, ``[ ]``
  character ranges and a ``\\#`` escape of a leading ``#`` are not supported, and a final
  ``*`` segment after a directory (``docs/*``) matches files directly in it, not deeper;
* paths are case-sensitive; ``#`` starts a comment at the start of a line or as a token
  after the pattern; owners are ``@username``, ``@org/team-name`` or an email address;
* "If any line in your CODEOWNERS file contains invalid syntax, that line will be skipped":
  a line with an unsupported pattern or a malformed owner is reported and skipped whole
  (its well-formed owners do not apply either), and the rest of the file still applies;
* a file of 3 MB or more is not loaded: nothing is owned.

A well-formed owner that ``lookup`` cannot map is an ``unknown_owner`` problem, not a syntax
error: its rule still matches, with that owner unable to approve (``Ownership.unknown``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from pathspec.patterns.gitignore import GitIgnorePatternError
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

__all__ = [
    "LOCATIONS",
    "MAX_BYTES",
    "CodeOwners",
    "Ownership",
    "Problem",
    "ProblemKind",
    "Rule",
    "find",
    "parse",
    "resolve",
]

#: Where GitHub looks, in the order it looks; the first file found is the only one used.
LOCATIONS = (".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS")

#: GitHub loads CODEOWNERS files under 3 MB only.
MAX_BYTES = 3 * 1024 * 1024

ProblemKind = Literal["syntax", "unknown_owner", "unreadable"]

# A token runs to the next whitespace that is not escaped: `docs/a\ b.md` is one token.
_TOKEN = re.compile(r"(?:\\.|[^\s\\]|\\$)+")
_USER = re.compile(r"@[A-Za-z0-9][A-Za-z0-9_-]*")
_TEAM = re.compile(r"@[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ESCAPED = re.compile(r"\\.")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with the file, named for the person who fixes it.

    ``line`` is 1-based, or None for the whole file (``unreadable``: too large, not UTF-8).
    ``owner`` is the owner as written, for ``unknown_owner`` and malformed owners.
    """

    line: int | None
    kind: ProblemKind
    message: str
    owner: str | None = None


class _Matcher:
    """One pattern compiled once: gitignore matching with GitHub's final-``*`` rule."""

    __slots__ = ("_files_only", "_spec")

    def __init__(self, pattern: str) -> None:
        self._spec = GitIgnoreSpecPattern(pattern)
        self._files_only = _final_star_is_files_only(pattern)

    def __call__(self, path: str) -> bool:
        regex = self._spec.regex
        if regex is None:
            return False
        if self._files_only:
            # gitignore lets `docs/*` match the directory `docs/a`, and so everything below
            # it; GitHub matches only the files directly in docs. Requiring the pattern to
            # match the whole path, not a leading directory of it, is that difference.
            return regex.fullmatch(path) is not None
        return regex.search(path) is not None


def _final_star_is_files_only(pattern: str) -> bool:
    """True for `docs/*`, `/*`, `a/**/*`; False for `*`, `**/*` (everything) and `docs/*/`."""
    segments = pattern.split("/")
    if len(segments) == 1 or segments[-1] != "*":
        return False
    leading = [segment for segment in segments[:-1] if segment]
    return not leading or any(segment != "**" for segment in leading)


@dataclass(frozen=True, slots=True)
class Rule:
    """One valid line: its pattern and its owners as written.

    ``principals`` is None until ``resolve``; then one entry per written owner, the Corral
    principal id (``user:…``, ``team:…``) or None where the lookup knew no one.
    """

    line: int
    pattern: str
    owners: tuple[str, ...]
    principals: tuple[str | None, ...] | None = None
    matcher: _Matcher | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # parse() compiles each pattern once and resolve() carries the matcher over; a rule
        # built by hand compiles here (GitIgnorePatternError for an invalid pattern).
        if self.matcher is None:
            object.__setattr__(self, "matcher", _Matcher(self.pattern))

    def matches(self, path: str) -> bool:
        """Whether this rule's pattern matches a repository-relative file path."""
        return self.matcher is not None and self.matcher(path)


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who owns one path: the rule that decided (None when none matched) and its owners.

    ``owners`` is empty when nothing matched or the last match had no owners (un-owned).
    After ``resolve``: ``principals`` are the owners Corral knows (any one may approve),
    ``unknown`` the written owners it does not; before it both are empty, ``resolved`` False.
    """

    path: str
    line: int | None
    pattern: str | None
    owners: tuple[str, ...]
    principals: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    resolved: bool = False

    @property
    def owned(self) -> bool:
        """Whether a code owner's approval is asked for this path."""
        return bool(self.owners)


@dataclass(frozen=True, slots=True)
class CodeOwners:
    """A parsed CODEOWNERS file. ``path`` is the file used, or None when none exists."""

    path: str | None
    rules: tuple[Rule, ...] = ()
    problems: tuple[Problem, ...] = ()
    resolved: bool = False

    def owners_of(self, path: str) -> Ownership:
        """Who owns ``path`` (repository-relative, as git prints it): the last match wins."""
        path = path.lstrip("/")
        for rule in reversed(self.rules):
            if rule.matches(path):
                return _ownership(path, rule, resolved=self.resolved)
        return Ownership(path, None, None, (), resolved=self.resolved)


def _ownership(path: str, rule: Rule, *, resolved: bool) -> Ownership:
    if rule.principals is None:
        return Ownership(path, rule.line, rule.pattern, rule.owners, resolved=resolved)
    known = tuple(dict.fromkeys(p for p in rule.principals if p is not None))
    unknown = tuple(o for o, p in zip(rule.owners, rule.principals, strict=True) if p is None)
    return Ownership(path, rule.line, rule.pattern, rule.owners, known, unknown, resolved)


def find(read: Callable[[str], bytes | None]) -> CodeOwners:
    """Parse the first CODEOWNERS that exists, in GitHub's order (``LOCATIONS``).

    ``read(path)`` returns the file's bytes at the run's base commit or None when missing.
    Only the first file found counts, even when it cannot be used: one of ``MAX_BYTES`` or
    more, or not UTF-8, yields an ``unreadable`` problem and no rules (nothing is owned).
    """
    for location in LOCATIONS:
        data = read(location)
        if data is None:
            continue
        if len(data) >= MAX_BYTES:
            message = (
                f"{location} is {len(data):,} bytes; GitHub does not load a CODEOWNERS file "
                "of 3 MB or more, so nothing is code-owned. Use wildcard patterns to shrink it."
            )
            return CodeOwners(location, problems=(Problem(None, "unreadable", message),))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = (
                f"{location} is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}), "
                "so nothing is code-owned. Save it as UTF-8."
            )
            return CodeOwners(location, problems=(Problem(None, "unreadable", message),))
        return parse(text, location)
    return CodeOwners(None)


def parse(text: str, path: str | None = None) -> CodeOwners:
    """Rules and syntax problems of one CODEOWNERS text; ``path`` names it in messages.

    Lines end at LF or CRLF. A line with a syntax problem is skipped whole; the others apply.
    """
    name = path or "CODEOWNERS"
    rules: list[Rule] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        tokens = _TOKEN.findall(raw.removesuffix("\r"))
        if not tokens or tokens[0].startswith("#"):
            continue
        pattern, owners = tokens[0], _owner_tokens(tokens[1:])
        found = _pattern_problems(name, number, pattern)
        found += [_bad_owner(name, number, o) for o in owners if not _is_owner(o)]
        if found:
            problems.extend(found)
            continue
        matcher = _compile(name, number, pattern)
        if isinstance(matcher, Problem):
            problems.append(matcher)
            continue
        rules.append(Rule(number, pattern, owners, matcher=matcher))
    return CodeOwners(path, tuple(rules), tuple(problems))


def _owner_tokens(tokens: list[str]) -> tuple[str, ...]:
    """The owners before an inline comment (a token starting with ``#``)."""
    owners: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            break
        owners.append(token)
    return tuple(owners)


def _is_owner(token: str) -> bool:
    return any(form.fullmatch(token) for form in (_USER, _TEAM, _EMAIL))


def _pattern_problems(name: str, line: int, pattern: str) -> list[Problem]:
    """The gitignore features CODEOWNERS does not support, as GitHub documents them."""
    where = f"{name} line {line}: pattern `{pattern}`"
    reason = None
    if pattern.startswith("\\#"):
        reason = "escapes a leading `#` with `\\`, which CODEOWNERS does not support"
    elif pattern.startswith("!"):
        reason = "negates with `!`, which CODEOWNERS does not support"
    elif "[" in (bare := _ESCAPED.sub("", pattern)) or "]" in bare:
        reason = (
            "uses a `[ ]` character range, which CODEOWNERS does not support; "
            "escape a literal `[` or `]` with `\\`"
        )
    elif pattern == "/":
        reason = "never matches anything; did you mean `*`?"
    if reason is None:
        return []
    return [Problem(line, "syntax", f"{where} {reason}. The line is skipped.")]


def _bad_owner(name: str, line: int, owner: str) -> Problem:
    message = (
        f"{name} line {line}: owner `{owner}` is not an @username, @org/team-name or email "
        "address. The line is skipped."
    )
    return Problem(line, "syntax", message, owner)


def _compile(name: str, line: int, pattern: str) -> _Matcher | Problem:
    try:
        return _Matcher(pattern)
    except GitIgnorePatternError as exc:
        message = (
            f"{name} line {line}: pattern `{pattern}` is not valid ({exc}). The line is skipped."
        )
        return Problem(line, "syntax", message)


def resolve(codeowners: CodeOwners, lookup: Callable[[str], str | None]) -> CodeOwners:
    """Map every written owner to a Corral principal id with ``lookup`` (once per owner).

    An owner ``lookup`` maps to None becomes an ``unknown_owner`` problem naming its line;
    its rule still applies with the owners that did map. Resolving again replaces earlier
    results.
    """
    owners = {owner for rule in codeowners.rules for owner in rule.owners}
    principals: Mapping[str, str | None] = {owner: lookup(owner) for owner in sorted(owners)}
    name = codeowners.path or "CODEOWNERS"
    rules = tuple(
        replace(rule, principals=tuple(principals[o] for o in rule.owners))
        for rule in codeowners.rules
    )
    unknown = [
        _unknown(name, rule.line, owner)
        for rule in rules
        for owner in dict.fromkeys(rule.owners)
        if principals[owner] is None
    ]
    kept = [p for p in codeowners.problems if p.kind != "unknown_owner"]
    problems = sorted(kept + unknown, key=lambda p: p.line or 0)
    return CodeOwners(codeowners.path, rules, tuple(problems), resolved=True)


def _unknown(name: str, line: int, owner: str) -> Problem:
    message = (
        f"{name} line {line}: unknown owner {owner}: no Corral user or team matches it, so it "
        "cannot approve. Add it to Corral or remove it from the line."
    )
    return Problem(line, "unknown_owner", message, owner)
