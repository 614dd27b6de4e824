"""CODEOWNERS as GitHub reads it ("About code owners", docs.github.com): where the file is,
how its lines parse, which pattern owns a path, and how written owners map to Corral."""

from __future__ import annotations

import pytest

from corral.review import codeowners
from corral.review.codeowners import (
    LOCATIONS,
    MAX_BYTES,
    CodeOwners,
    Problem,
    find,
    parse,
    resolve,
)

PRINCIPALS = {
    "@alice": "user:1",
    "@bob": "user:2",
    "@octo-org/octocats": "team:7",
    "@platform": "team:8",
    "docs@example.com": "user:3",
}


def owner(file: CodeOwners, path: str) -> tuple[str, ...]:
    return file.owners_of(path).owners


def syntax_lines(file: CodeOwners) -> list[int | None]:
    return [p.line for p in file.problems if p.kind == "syntax"]


# --- patterns -----------------------------------------------------------------------------


def test_star_alone_matches_everything() -> None:
    """`*` owns files at the root and at any depth."""
    file = parse("* @alice\n")
    for path in ("README.md", "src/a.py", "a/b/c/d.txt", ".github/workflows/ci.yml"):
        assert owner(file, path) == ("@alice",)


def test_extension_pattern_matches_at_any_depth() -> None:
    """`*.js` owns every .js file wherever it is, and nothing else."""
    file = parse("*.js @alice\n")
    assert owner(file, "app.js") == ("@alice",)
    assert owner(file, "web/static/deep/app.js") == ("@alice",)
    assert owner(file, "app.jsx") == ()
    assert owner(file, "web/app.ts") == ()


def test_anchored_directory_owns_everything_below_it() -> None:
    """`/build/logs/` owns build/logs at the root and all its subdirectories, only there."""
    file = parse("/build/logs/ @alice\n")
    assert owner(file, "build/logs/a.log") == ("@alice",)
    assert owner(file, "build/logs/2026/12/a.log") == ("@alice",)
    assert owner(file, "src/build/logs/a.log") == ()
    assert owner(file, "build/other.log") == ()


def test_directory_pattern_matches_a_directory_of_that_name_anywhere() -> None:
    """`apps/` owns any file in an apps directory anywhere in the repository."""
    file = parse("apps/ @alice\n")
    assert owner(file, "apps/main.py") == ("@alice",)
    assert owner(file, "services/web/apps/x/main.py") == ("@alice",)
    assert owner(file, "apps") == ()  # a file named apps is not a directory
    assert owner(file, "myapps/main.py") == ()


def test_docs_star_matches_files_directly_in_docs_only() -> None:
    """`docs/*` owns docs/getting-started.md but not docs/build-app/troubleshooting.md,
    where gitignore would match the directory docs/build-app and everything below it."""
    file = parse("docs/* docs@example.com\n")
    assert owner(file, "docs/getting-started.md") == ("docs@example.com",)
    assert owner(file, "docs/build-app/troubleshooting.md") == ()
    assert owner(file, "src/docs/a.md") == ()


def test_root_star_matches_root_files_only() -> None:
    """`/*` owns the files at the root, not the files in directories."""
    file = parse("/* @alice\n")
    assert owner(file, "Makefile") == ("@alice",)
    assert owner(file, "src/main.py") == ()


def test_double_star_directory_matches_anywhere() -> None:
    """`**/logs` owns /build/logs, /scripts/logs and /deeply/nested/logs."""
    file = parse("**/logs @alice\n")
    for path in ("logs/a", "build/logs/a", "scripts/logs/b", "deeply/nested/logs/c/d"):
        assert owner(file, path) == ("@alice",)
    assert owner(file, "build/catalogs/a") == ()


def test_pattern_without_owners_unowns_its_subtree() -> None:
    """`/apps/github` with no owners leaves that subdirectory un-owned under an owned /apps/."""
    file = parse("/apps/ @alice\n/apps/github\n")
    assert owner(file, "apps/web/index.js") == ("@alice",)
    unowned = file.owners_of("apps/github/index.js")
    assert (unowned.line, unowned.pattern, unowned.owners) == (2, "/apps/github", ())
    assert not unowned.owned


def test_subdirectory_with_its_own_owner() -> None:
    """`/apps/github @bob` after `/apps/ @alice` gives that subdirectory to @bob alone."""
    file = parse("/apps/ @alice\n/apps/github @bob\n")
    assert owner(file, "apps/github/index.js") == ("@bob",)
    assert owner(file, "apps/web/index.js") == ("@alice",)


def test_paths_are_case_sensitive() -> None:
    """GitHub's file system is case-sensitive, and so are CODEOWNERS paths."""
    file = parse("/Docs/ @alice\n*.MD @bob\n")
    assert owner(file, "Docs/a.txt") == ("@alice",)
    assert owner(file, "docs/a.txt") == ()
    assert owner(file, "README.MD") == ("@bob",)
    assert owner(file, "README.md") == ()


def test_last_match_wins_across_overlapping_patterns() -> None:
    """Order matters: the last pattern that matches decides, not the most specific one."""
    file = parse("*.js @alice\n/web/ @bob\n* @platform\n/web/*.js @octo-org/octocats\n")
    assert owner(file, "web/app.js") == ("@octo-org/octocats",)
    assert owner(file, "web/app.css") == ("@platform",)  # `*` comes after `/web/`
    assert owner(file, "lib/app.js") == ("@platform",)
    assert file.owners_of("web/app.js").line == 4


def test_owners_on_separate_lines_do_not_add_up() -> None:
    """Two owners must share a line: a repeated pattern keeps only the last line's owners."""
    file = parse("*.go @alice\n*.go @bob\n")
    assert owner(file, "main.go") == ("@bob",)


def test_no_matching_rule_has_no_line_and_no_owners() -> None:
    file = parse("/src/ @alice\n")
    ownership = file.owners_of("README.md")
    assert (ownership.line, ownership.pattern, ownership.owners) == (None, None, ())
    assert not ownership.owned


def test_leading_slash_on_the_asked_path_is_ignored() -> None:
    file = parse("/src/ @alice\n")
    assert owner(file, "/src/a.py") == ("@alice",)


def test_escaped_spaces_belong_to_the_pattern() -> None:
    """`path\\ with\\ spaces/` is one pattern (GitHub honours the gitignore escape)."""
    file = parse("/path\\ with\\ spaces/ @alice @bob\n")
    assert file.rules[0].pattern == "/path\\ with\\ spaces/"
    assert file.rules[0].owners == ("@alice", "@bob")
    assert owner(file, "path with spaces/a.txt") == ("@alice", "@bob")
    assert owner(file, "path/a.txt") == ()
    assert file.problems == ()


def test_escaped_brackets_match_literally() -> None:
    """`\\[` and `\\]` are literal brackets, not a range, so the line is valid."""
    file = parse("pages/\\[org\\]/index.tsx @alice\n")
    assert file.problems == ()
    assert owner(file, "pages/[org]/index.tsx") == ("@alice",)
    assert owner(file, "pages/o/index.tsx") == ()


# --- lines, comments and syntax errors ----------------------------------------------------


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "# This is a comment.\n\n   \n\t# indented comment\n*.go @alice\n"
    file = parse(text)
    assert [(r.line, r.pattern, r.owners) for r in file.rules] == [(5, "*.go", ("@alice",))]
    assert file.problems == ()


def test_inline_comment_after_owners_is_ignored() -> None:
    """GitHub's own example: `*.js    @js-owner #This is an inline comment.`"""
    file = parse("*.js    @alice #This is an inline comment.\n")
    assert file.rules[0].owners == ("@alice",)
    assert file.problems == ()


def test_owner_forms_user_team_and_email_are_kept_as_written() -> None:
    file = parse("* @alice @octo-org/octocats docs@example.com @platform\n")
    assert file.rules[0].owners == ("@alice", "@octo-org/octocats", "docs@example.com", "@platform")
    assert file.problems == ()


def test_negation_is_a_syntax_error() -> None:
    file = parse("* @alice\n!*.md @bob\n")
    assert syntax_lines(file) == [2]
    assert "line 2" in file.problems[0].message
    assert "`!`" in file.problems[0].message
    assert owner(file, "README.md") == ("@alice",)


def test_character_range_is_a_syntax_error() -> None:
    file = parse("* @alice\n*.[ch] @bob\n")
    assert syntax_lines(file) == [2]
    assert "character range" in file.problems[0].message
    assert owner(file, "main.c") == ("@alice",)


def test_escaped_leading_hash_is_a_syntax_error() -> None:
    """gitignore's `\\#file` escape does not work in CODEOWNERS."""
    file = parse("* @alice\n\\#notes.md @bob\n")
    assert syntax_lines(file) == [2]
    assert "line 2" in file.problems[0].message
    assert owner(file, "#notes.md") == ("@alice",)


@pytest.mark.parametrize("bad", ["alice", "@", "@alice@bob", "team/name", "@-x"])
def test_malformed_owner_is_a_syntax_error_and_skips_the_line(bad: str) -> None:
    """The line is skipped whole, as GitHub documents: its valid owners do not apply."""
    file = parse(f"* @platform\n/src/ @alice {bad}\n")
    [problem] = file.problems
    assert (problem.line, problem.kind, problem.owner) == (2, "syntax", bad)
    assert f"`{bad}`" in problem.message
    assert "line 2" in problem.message
    assert owner(file, "src/main.py") == ("@platform",)


def test_syntax_error_line_is_skipped_while_later_lines_apply() -> None:
    file = parse("* @platform\n!/src/ @alice\n/src/ @bob\n/lib/ nobody\n/lib/x/ @alice\n")
    assert syntax_lines(file) == [2, 4]
    assert [r.line for r in file.rules] == [1, 3, 5]
    assert owner(file, "src/a.py") == ("@bob",)
    assert owner(file, "lib/a.py") == ("@platform",)
    assert owner(file, "lib/x/a.py") == ("@alice",)


def test_lone_slash_pattern_is_reported() -> None:
    """`/` matches nothing; GitHub suggests `*`."""
    file = parse("/ @alice\n")
    assert syntax_lines(file) == [1]
    assert "`*`" in file.problems[0].message
    assert file.rules == ()


def test_crlf_line_endings() -> None:
    file = parse("# owners\r\n* @alice\r\n/apps/ @bob @platform\r\n/apps/github\r\n")
    assert file.problems == ()
    assert [(r.line, r.pattern, r.owners) for r in file.rules] == [
        (2, "*", ("@alice",)),
        (3, "/apps/", ("@bob", "@platform")),
        (4, "/apps/github", ()),
    ]
    assert owner(file, "apps/web/a.js") == ("@bob", "@platform")
    assert owner(file, "apps/github/a.js") == ()


def test_github_docs_example_file() -> None:
    """The example file of "About code owners", path by path."""
    text = """\
# This is a comment.
*       @global-owner1 @global-owner2
*.js    @js-owner #This is an inline comment.
*.go docs@example.com
*.txt @octo-org/octocats
/build/logs/ @doctocat
docs/*  docs@example.com
apps/ @octocat
/docs/ @doctocat
/scripts/ @doctocat @octocat
**/logs @octocat
/apps/ @octocat
/apps/github
"""
    file = parse(text)
    assert file.problems == ()
    assert owner(file, "main.py") == ("@global-owner1", "@global-owner2")
    assert owner(file, "web/app.js") == ("@js-owner",)
    assert owner(file, "cmd/main.go") == ("docs@example.com",)
    assert owner(file, "notes/a.txt") == ("@octo-org/octocats",)
    assert owner(file, "build/logs/x/a.log") == ("@octocat",)  # **/logs comes later
    assert owner(file, "docs/getting-started.md") == ("@doctocat",)  # /docs/ comes later
    assert owner(file, "scripts/deploy.sh") == ("@doctocat", "@octocat")
    assert owner(file, "services/apps/a.py") == ("@octocat",)
    assert owner(file, "apps/github/a.py") == ()


# --- finding the file ---------------------------------------------------------------------


@pytest.mark.parametrize("location", LOCATIONS)
def test_each_location_is_read(location: str) -> None:
    file = find({location: b"* @alice\n"}.get)
    assert file.path == location
    assert owner(file, "a.py") == ("@alice",)


def test_locations_are_searched_github_dir_then_root_then_docs() -> None:
    everything = {
        ".github/CODEOWNERS": b"* @alice\n",
        "CODEOWNERS": b"* @bob\n",
        "docs/CODEOWNERS": b"* @platform\n",
    }
    assert find(everything.get).path == ".github/CODEOWNERS"
    del everything[".github/CODEOWNERS"]
    assert find(everything.get).path == "CODEOWNERS"
    del everything["CODEOWNERS"]
    assert find(everything.get).path == "docs/CODEOWNERS"


def test_only_the_first_file_found_is_read() -> None:
    asked: list[str] = []

    def read(path: str) -> bytes | None:
        asked.append(path)
        return b"* @bob\n" if path == "CODEOWNERS" else None

    assert owner(find(read), "a.py") == ("@bob",)
    assert asked == [".github/CODEOWNERS", "CODEOWNERS"]


def test_no_file_owns_nothing() -> None:
    nothing: dict[str, bytes] = {}
    file = find(nothing.get)
    assert (file.path, file.rules, file.problems) == (None, (), ())
    assert not file.owners_of("a.py").owned


def test_file_at_the_size_cap_is_not_loaded() -> None:
    """GitHub loads files under 3 MB; at or over it nothing is owned, and a problem says so."""
    big = b"* @alice\n" + b"#" * (MAX_BYTES - 9)
    assert len(big) == MAX_BYTES
    file = find({"CODEOWNERS": big, "docs/CODEOWNERS": b"* @bob\n"}.get)
    assert file.path == "CODEOWNERS"
    assert file.rules == ()
    [problem] = file.problems
    assert (problem.line, problem.kind) == (None, "unreadable")
    assert "3 MB" in problem.message
    assert "CODEOWNERS" in problem.message
    assert not file.owners_of("a.py").owned


def test_file_just_under_the_size_cap_is_loaded() -> None:
    under = b"* @alice\n" + b"#" * (MAX_BYTES - 10)
    assert owner(find({"CODEOWNERS": under}.get), "a.py") == ("@alice",)


def test_invalid_utf8_owns_nothing() -> None:
    file = find({".github/CODEOWNERS": b"* @alice\n/caf\xe9/ @bob\n"}.get)
    assert file.rules == ()
    [problem] = file.problems
    assert (problem.line, problem.kind) == (None, "unreadable")
    assert "UTF-8" in problem.message
    assert ".github/CODEOWNERS" in problem.message
    assert not file.owners_of("a.py").owned


def test_utf8_byte_order_mark_is_not_part_of_the_first_pattern() -> None:
    file = find({"CODEOWNERS": "\ufeff/café/ @alice\n".encode()}.get)
    assert owner(file, "café/menu.txt") == ("@alice",)


# --- mapping owners to Corral -------------------------------------------------------------


def test_team_owner_resolves_to_a_team_principal() -> None:
    file = resolve(parse("*.txt @octo-org/octocats\n"), PRINCIPALS.get)
    ownership = file.owners_of("notes/a.txt")
    assert ownership.owners == ("@octo-org/octocats",)
    assert ownership.principals == ("team:7",)
    assert ownership.unknown == ()
    assert ownership.resolved
    assert file.problems == ()


def test_every_owner_form_resolves_and_duplicates_collapse() -> None:
    file = resolve(parse("* @alice docs@example.com @platform @alice\n"), PRINCIPALS.get)
    assert file.owners_of("a").principals == ("user:1", "user:3", "team:8")
    assert file.rules[0].principals == ("user:1", "user:3", "team:8", "user:1")


def test_unknown_owner_is_reported_with_its_line_and_the_rule_still_applies() -> None:
    file = resolve(parse("* @alice\n/src/ @bob @ghost\n/lib/ @ghost\n"), PRINCIPALS.get)
    assert [(p.line, p.kind, p.owner) for p in file.problems] == [
        (2, "unknown_owner", "@ghost"),
        (3, "unknown_owner", "@ghost"),
    ]
    assert "line 2" in file.problems[0].message
    assert "@ghost" in file.problems[0].message
    src = file.owners_of("src/a.py")
    assert (src.line, src.owners, src.principals, src.unknown) == (
        2,
        ("@bob", "@ghost"),
        ("user:2",),
        ("@ghost",),
    )
    lib = file.owners_of("lib/a.py")
    assert lib.owned
    assert lib.principals == ()
    assert lib.unknown == ("@ghost",)


def test_lookup_is_asked_once_per_distinct_owner() -> None:
    asked: list[str] = []

    def lookup(written: str) -> str | None:
        asked.append(written)
        return PRINCIPALS.get(written)

    resolve(parse("* @alice\n*.js @alice @bob\n*.go @bob\n"), lookup)
    assert sorted(asked) == ["@alice", "@bob"]


def test_resolving_again_replaces_the_unknown_owner_problems() -> None:
    parsed = parse("* @alice @carol\n!x @bob\n")
    first = resolve(parsed, PRINCIPALS.get)
    assert [p.kind for p in first.problems] == ["unknown_owner", "syntax"]
    again = resolve(first, {**PRINCIPALS, "@carol": "user:4"}.get)
    assert [p.kind for p in again.problems] == ["syntax"]
    assert again.owners_of("a").principals == ("user:1", "user:4")


def test_before_resolve_ownership_says_it_is_unresolved() -> None:
    ownership = parse("* @alice\n").owners_of("a.py")
    assert ownership.owners == ("@alice",)
    assert (ownership.resolved, ownership.principals, ownership.unknown) == (False, (), ())


def test_resolve_keeps_file_problems() -> None:
    file = find({"CODEOWNERS": b"\xff"}.get)
    assert resolve(file, PRINCIPALS.get).problems == file.problems


def test_public_names() -> None:
    assert sorted(codeowners.__all__) == sorted(
        [
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
    )
    assert Problem(1, "syntax", "m").owner is None
