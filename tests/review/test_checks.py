"""The gate's policy checks, over real patches that git wrote in throwaway repositories."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import ConfigError
from corral.review import diffs
from corral.review.checks import (
    MAX_FINDINGS,
    ChecksConfig,
    Finding,
    compile_patterns,
    forbidden_patterns,
    max_diff,
    protected_paths,
    redact,
    run_checks,
    secrets,
    well_formed,
)
from corral.review.diffs import parse
from corral.runs.workspace import diff as workspace_diff
from corral.runs.workspace import prepare

_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/bin:/bin",
}

# Credentials assembled at run time, so no scanner mistakes this file for a leak.
AWS_KEY = "AKIA" + "Q3EXAMPLE7RTY2KZ"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITLAB = "glpat-" + "x7Yq2Lm9Pz4Rt8Kw1Vb3"
SLACK = "xoxb-" + "1234567890-0987654321-AbCdEfGhIjKl"
PASSWORD = "9fQ2xLr7Tb0wZ!mK"


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, env=_ENV, check=True
    ).stdout


Edit = Callable[[Path], None]


@pytest.fixture
def make_change(tmp_path: Path) -> Callable[[dict[str, bytes], Edit], bytes]:
    """A repository committed with ``files``; ``edit`` changes it; the patch between the two
    commits as runs make it (``git diff --binary``)."""

    def make(files: dict[str, bytes], edit: Edit) -> bytes:
        repo = tmp_path / f"repo{len(list(tmp_path.iterdir()))}"
        repo.mkdir()
        git(repo, "init", "--quiet")
        for name, data in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "--allow-empty", "-m", "base")
        edit(repo)
        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "--allow-empty", "-m", "change")
        return git(repo, "diff", "--binary", "--no-color", "HEAD~1", "HEAD")

    return make


def lines(n: int, word: str = "line") -> bytes:
    return b"".join(b"%s %d\n" % (word.encode(), i) for i in range(1, n + 1))


def every_kind(repo: Path) -> None:
    git(repo, "mv", "old name.py", "new name.py")
    (repo / "new name.py").write_bytes(lines(20) + b"appended\n")
    (repo / "gone.txt").unlink()
    (repo / "tool.sh").chmod(0o755)
    (repo / "logo.png").write_bytes(b"\x89PNG\x00\x01\x02\x03\x04")
    (repo / "docs/with space.md").write_bytes(b"one\nthree\n")
    (repo / "café.txt").write_bytes("é\n".encode())
    (repo / "added.py").write_bytes(b"x = 1\ny = 2\n")


BASE = {
    "old name.py": lines(20),
    "gone.txt": b"bye\n",
    "tool.sh": b"echo hi\n",
    "logo.png": b"\x89PNG\x00\xff\xfe",
    "docs/with space.md": b"one\ntwo\n",
}


def test_each_kind_of_change_is_read_with_its_names_modes_and_counts(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """A rename, a deletion, a binary file, a mode change, names with a space and with a
    non-ASCII character (git quotes it), and a new file: each with its old and new name."""
    change = parse(make_change(BASE, every_kind))
    assert not change.malformed
    assert not change.cut
    by_path = {f.path: f for f in change.files}
    assert set(by_path) == {
        "new name.py", "gone.txt", "tool.sh", "logo.png", "docs/with space.md", "café.txt",
        "added.py",
    }  # fmt: skip
    renamed = by_path["new name.py"]
    assert (renamed.status, renamed.old_path, renamed.paths) == (
        "renamed", "old name.py", ("old name.py", "new name.py"),
    )  # fmt: skip
    assert (renamed.added, renamed.removed) == (1, 0)
    assert renamed.added_lines == (diffs.AddedLine(21, "appended"),)
    gone = by_path["gone.txt"]
    assert (gone.status, gone.old_path, gone.new_path, gone.removed) == (
        "deleted", "gone.txt", None, 1,
    )  # fmt: skip
    tool = by_path["tool.sh"]
    assert (tool.status, tool.old_mode, tool.new_mode, tool.added) == (
        "modified", "100644", "100755", 0,
    )  # fmt: skip
    logo = by_path["logo.png"]
    assert logo.binary
    assert (logo.added, logo.removed) == (0, 0)
    spaced = by_path["docs/with space.md"]
    assert (spaced.old_path, spaced.added, spaced.removed) == ("docs/with space.md", 1, 1)
    assert spaced.added_lines == (diffs.AddedLine(2, "three"),)
    assert by_path["café.txt"].status == "added"
    assert by_path["added.py"].added_lines == (
        diffs.AddedLine(1, "x = 1"), diffs.AddedLine(2, "y = 2"),
    )  # fmt: skip
    assert (change.files_total, change.added, change.removed) == (7, 5, 2)


def test_added_lines_carry_their_line_numbers_in_the_new_file(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """Two hunks far apart: each added line is numbered as in the new file."""

    def edit(repo: Path) -> None:
        text = (repo / "a.py").read_bytes().split(b"\n")
        text[4:5] = [b"FIRST", b"SECOND"]  # line 5 replaced by two
        text[80] = b"THIRD"  # original line 80, one further down now
        (repo / "a.py").write_bytes(b"\n".join(text))

    change = parse(make_change({"a.py": lines(100)}, edit))
    (f,) = change.files
    assert [(x.number, x.text) for x in f.added_lines] == [
        (5, "FIRST"), (6, "SECOND"), (81, "THIRD"),
    ]  # fmt: skip
    assert (f.added, f.removed) == (3, 2)


def test_a_patch_the_run_cut_at_its_size_limit_is_read_up_to_the_cut(tmp_path: Path) -> None:
    """The workspace keeps whole lines of a too-large patch and says so in a last line: the
    change is marked cut (not malformed), and ``max_diff`` fails it."""
    source = tmp_path / "source"
    source.mkdir()
    git(source, "init", "--quiet")
    (source / "a.txt").write_bytes(b"a\n")
    git(source, "add", "-A")
    git(source, "commit", "--quiet", "-m", "base")
    ws = prepare(str(source), None, tmp_path / "runs", "run_1")
    (ws.path / "a.txt").write_bytes(lines(2000))
    (ws.path / "b.txt").write_bytes(lines(10))
    dest = tmp_path / "diff.patch"
    assert not workspace_diff(ws, dest, 4096).complete
    change = parse(dest.read_bytes())
    assert change.cut
    assert not change.malformed
    assert change.files[0].path == "a.txt"
    assert 100 < change.added < 2000
    result = max_diff(change, 5000, 200)
    assert not result.passed
    assert "larger than the server keeps" in result.message


def test_a_truncated_patch_yields_what_was_read_and_says_it_is_malformed(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """Cut in the middle of the last hunk: the files before it are whole, the flag is set,
    and ``well_formed`` fails naming the problem."""
    patch = make_change(BASE, every_kind)
    cut = patch[: patch.index(b"+x = 1\n") + 7]  # added.py sorts first: "+y = 2" is lost
    change = parse(cut + patch[patch.index(b'diff --git "a/caf') :])
    assert change.malformed
    assert "shorter than its header" in change.problems[0]
    assert {f.path for f in change.files} >= {"added.py", "café.txt", "tool.sh"}
    result = well_formed(change)
    assert not result.passed
    assert "malformed" in result.message
    assert well_formed(parse(patch)).passed


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\n\n\n",
        b"not a patch at all\n",
        b"diff --git \n@@ -1,5 +1,5 @@\n",
        b"diff --git a/x b/x\n@@ -99999999999 +1 @@\n+a\n",
        b'diff --git "a/\\',
        b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n+c\n+d\n-e\n",
        b"\xff\xfe\x00diff --git a/\xff b/\xff\n+++ b/\xff\n@@ -0,0 +1 @@\n+\xff\xff\n",
    ],
)
def test_malformed_input_never_raises(junk: bytes) -> None:
    """Whatever the agent wrote, ``parse`` returns; what it could not place is a problem."""
    change = parse(junk)
    assert change.files_total >= len(change.files)
    assert well_formed(change).passed is not change.malformed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=600))
def test_any_bytes_spliced_into_a_patch_never_raise(noise: bytes, at: int) -> None:
    """Random bytes inserted anywhere in a valid patch: parsed without an exception."""
    patch = (
        b"diff --git a/x.py b/x.py\nindex 1..2 100644\n--- a/x.py\n+++ b/x.py\n"
        b"@@ -1,3 +1,3 @@\n a\n-b\n+c\n d\n"
        b'diff --git "a/caf\\303\\251" "b/caf\\303\\251"\nnew file mode 100644\n'
        b"GIT binary patch\nliteral 3\nKcmZRmssaE3aRBuI\n\n"
    )
    change = parse(patch[:at] + noise + patch[at:])
    assert change.added + change.removed >= sum(len(f.added_lines) for f in change.files)


def test_a_huge_patch_keeps_bounded_counts_and_counts_the_rest() -> None:
    """Past the caps lines and files are counted, never kept; a huge line is kept cut."""
    big = diffs.MAX_LINES_PER_FILE + 500
    head = b"diff --git a/big.txt b/big.txt\n--- /dev/null\n+++ b/big.txt\n"
    hunk = b"@@ -0,0 +1,%d @@\n" % (big + 1)
    one = head + hunk + b"+" + b"y" * 2_000_000 + b"\n" + b"+x\n" * big
    many = b"".join(
        b"diff --git a/f%d b/f%d\n--- a/f%d\n+++ b/f%d\n@@ -1 +1 @@\n-a\n+b\n" % ((i,) * 4)
        for i in range(diffs.MAX_FILES + 100)
    )
    change = parse(one + many)
    assert not change.malformed
    assert change.files_total == diffs.MAX_FILES + 101
    assert len(change.files) == diffs.MAX_FILES
    first = change.files[0]
    assert (first.added, len(first.added_lines)) == (big + 1, diffs.MAX_LINES_PER_FILE)
    assert first.lines_dropped == big + 1 - diffs.MAX_LINES_PER_FILE
    kept = sum(len(f.added_lines) for f in change.files)
    assert kept <= diffs.MAX_LINES
    assert change.added == big + 1 + diffs.MAX_FILES + 100
    assert first.added_lines[0] == diffs.AddedLine(1, "y" * diffs.MAX_LINE_CHARS)
    assert max(len(x.text) for f in change.files for x in f.added_lines) == diffs.MAX_LINE_CHARS
    result = max_diff(change, 5000, 200)
    assert not result.passed
    assert len(result.findings) == 10
    scanned = secrets(change)
    assert not scanned.passed, "files and lines past the caps were never scanned"
    assert scanned.findings == (
        Finding(
            "big.txt", None, f"{first.lines_dropped} added lines past the scan limit were not read"
        ),
        Finding("", None, "101 files past the scan limit were not read"),
    )
    assert len(scanned.findings) <= MAX_FINDINGS


def test_a_changed_path_matching_a_protected_glob_fails_naming_path_and_glob(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """Old and new names both count (moving a file out of a protected folder is caught);
    a later ``!glob`` un-protects; nothing protected passes."""

    def edit(repo: Path) -> None:
        git(repo, "mv", "infra/prod.tf", "moved.tf")
        (repo / "src").mkdir()
        (repo / "src/app.py").write_bytes(b"print(1)\n")
        (repo / "infra/README.md").write_bytes(b"docs\n")

    change = parse(make_change({"infra/prod.tf": b"x\n"}, edit))
    failed = protected_paths(change, ["infra/", "!infra/README.md", "*.pem"])
    assert not failed.passed
    assert [(x.path, x.what) for x in failed.findings] == [
        ("infra/prod.tf", "matches protected glob 'infra/'")
    ]
    assert "infra/prod.tf ('infra/')" in failed.message
    assert "revert" in failed.message
    assert protected_paths(change, ["*.pem", ".github/**"]).passed
    with pytest.raises(ConfigError, match="protected_paths"):
        protected_paths(change, ["!"])


def test_max_diff_counts_added_and_removed_lines_and_files(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    def edit(repo: Path) -> None:
        (repo / "a.txt").write_bytes(lines(10, "new"))
        (repo / "b.txt").write_bytes(b"b\n")

    change = parse(make_change({"a.txt": lines(10)}, edit))
    assert (change.added, change.removed, change.files_total) == (11, 10, 2)
    assert max_diff(change, 21, 2).passed
    assert max_diff(change, None, None).passed
    too_many_lines = max_diff(change, 20, 2)
    assert not too_many_lines.passed
    assert "21 lines changed (at most 20)" in too_many_lines.message
    assert too_many_lines.findings[0] == Finding("a.txt", None, "20 lines changed")
    too_many_files = max_diff(change, None, 1)
    assert not too_many_files.passed
    assert "2 files changed (at most 1)" in too_many_files.message


def test_forbidden_patterns_match_added_lines_only_with_their_numbers(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """A removed line that matches does not count; each finding names file, line, pattern."""

    def edit(repo: Path) -> None:
        (repo / "a.py").write_bytes(b"import os\nbreakpoint()\nx = 1  # noqa\n")

    change = parse(make_change({"a.py": b"import os\npdb.set_trace()\n"}, edit))
    patterns = compile_patterns([r"breakpoint\(\)", r"#\s*noqa", r"pdb\.set_trace"])
    result = forbidden_patterns(change, patterns)
    assert not result.passed
    assert [(x.path, x.line) for x in result.findings] == [("a.py", 2), ("a.py", 3)]
    assert "a.py:2 (matches 'breakpoint\\\\(\\\\)')" in result.message
    assert forbidden_patterns(change, compile_patterns([r"pdb\.set_trace"])).passed


def test_an_invalid_forbidden_pattern_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'\(unclosed' is not a valid regular expression"):
        compile_patterns(["fine", "(unclosed"])


def test_secrets_are_found_and_never_echoed(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    """Each kind of credential is found on its line; findings and message show only the
    redacted form (first 4 characters and the length)."""
    added = [
        f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"',
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        f"token: {GITHUB}",
        f"GITLAB={GITLAB}",
        f'slack = "{SLACK}"',
        f'    "password": "{PASSWORD}",',
    ]

    def edit(repo: Path) -> None:
        (repo / "conf.py").write_text("\n".join(["# settings", *added]) + "\n")

    result = secrets(parse(make_change({}, edit)))
    assert not result.passed
    kinds = [(x.line, x.what.split(" ")[0]) for x in result.findings]
    assert kinds == [
        (2, "AWS"), (3, "private"), (4, "GitHub"), (5, "GitLab"), (6, "Slack"), (7, "credential"),
    ]  # fmt: skip
    everything = repr(result)
    for secret in (AWS_KEY, GITHUB, GITLAB, SLACK, PASSWORD):
        assert secret not in everything
        assert secret[4:12] not in everything
    assert redact(AWS_KEY) in result.findings[0].what
    assert redact(AWS_KEY) == "AKIA… (20 chars)"
    assert "revoke" in result.message


def test_placeholders_and_code_are_not_secrets(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    def edit(repo: Path) -> None:
        (repo / "conf.py").write_text(
            'password = "changeme"\n'
            "api_key = os.environ['API_KEY']\n"
            'token: "${GITHUB_TOKEN}"\n'
            "secret = self.secret_value_field\n"
            'password = "hunter2hunter2"\n'
            "AKIAEXAMPLE\n"
        )

    result = secrets(parse(make_change({}, edit)))
    assert result.passed, result.findings


def test_lines_past_the_scan_limit_fail_the_content_checks() -> None:
    """Lines counted but not kept were never scanned: those checks cannot pass."""
    big = diffs.MAX_LINES_PER_FILE + 1
    patch = b"diff --git a/a b/a\n--- /dev/null\n+++ b/a\n@@ -0,0 +1,%d @@\n" % big
    change = parse(patch + b"+ok\n" * big)
    assert change.lines_dropped == 1
    for result in (secrets(change), forbidden_patterns(change, compile_patterns(["nope"]))):
        assert not result.passed
        assert "past the scan limit" in result.message
        assert result.findings == (
            Finding("a", None, "1 added lines past the scan limit were not read"),
        )


def test_run_checks_runs_what_the_config_turns_on(
    make_change: Callable[[dict[str, bytes], Edit], bytes],
) -> None:
    def edit(repo: Path) -> None:
        (repo / "deploy").mkdir()
        (repo / "deploy/key.txt").write_text(f"aws = {AWS_KEY}\n")

    change = parse(make_change({}, edit))
    assert [r.name for r in run_checks(change, ChecksConfig(secrets=False))] == ["well_formed"]
    config = ChecksConfig(
        protected=("deploy/",),
        max_lines=10,
        max_files=10,
        forbidden=compile_patterns([re.escape("aws =")]),
    )
    results = {r.name: r.passed for r in run_checks(change, config)}
    assert results == {
        "well_formed": True,
        "protected_paths": False,
        "max_diff": True,
        "forbidden_patterns": False,
        "secrets": False,
    }
