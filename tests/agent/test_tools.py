"""The agent's tools on a real temporary workdir: results, errors, bounds, the path fence."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from corral.agent import TOOLS, Toolbox, tool_specs
from corral.agent import tools as tools_module


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    """A toolbox on a workdir holding a small project."""
    root = tmp_path / "work"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("def one():\n    return 1\n\ndef two():\n    return 2\n")
    (root / "README.md").write_text("# demo\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return Toolbox(root, command_timeout=10)


def call(box: Toolbox, name: str, **arguments: object) -> str:
    result = box.call(name, json.dumps(arguments))
    return result.text


def test_specs_describe_every_tool_with_its_required_arguments() -> None:
    """The tools sent to the model are the table's, with the argument names scripts use."""
    specs = {s["function"]["name"]: s["function"]["parameters"] for s in tool_specs()}
    assert list(specs) == list(TOOLS)
    assert specs["edit_file"]["required"] == ["path", "old", "new"]
    assert set(specs["run"]["properties"]) == {"command", "timeout"}
    assert specs["list_files"]["required"] == []


def test_list_files_is_recursive_and_skips_git(box: Toolbox) -> None:
    """list_files lists files under the path, relative to the workdir, never .git."""
    assert call(box, "list_files") == "README.md\npkg/mod.py"
    assert call(box, "list_files", path="pkg") == "pkg/mod.py"


def test_list_files_is_bounded(tmp_path: Path) -> None:
    """Past the bound, list_files says more files exist instead of listing them."""
    for n in range(tools_module.LIST_MAX_FILES + 5):
        (tmp_path / f"f{n:05}").touch()
    lines = call(Toolbox(tmp_path), "list_files").splitlines()
    assert len(lines) == tools_module.LIST_MAX_FILES + 1
    assert lines[-1] == "[more files not shown: only the first 1000 are listed]"


def test_read_and_write_files(box: Toolbox) -> None:
    """write_file creates parent folders; read_file returns the text written."""
    assert call(box, "write_file", path="new/dir/a.txt", content="héllo\n") == (
        "wrote 7 bytes to new/dir/a.txt"
    )
    assert call(box, "read_file", path="new/dir/a.txt") == "héllo\n"
    missing = box.call("read_file", json.dumps({"path": "nope.txt"}))
    assert not missing.ok
    assert missing.text.startswith("error: No such file or directory")


def test_search_answers_file_line_text(box: Toolbox) -> None:
    """search prints 'file:line: text' for each matching line, skipping .git."""
    assert (
        call(box, "search", pattern=r"def \w+")
        == "pkg/mod.py:1: def one():\npkg/mod.py:4: def two():"
    )
    assert call(box, "search", pattern="refs/heads") == "no matches"
    bad = box.call("search", json.dumps({"pattern": "("}))
    assert not bad.ok
    assert "invalid regular expression" in bad.text


def test_edit_file_replaces_exactly_one_occurrence(box: Toolbox) -> None:
    """edit_file replaces old with new when old occurs once."""
    assert call(box, "edit_file", path="pkg/mod.py", old="return 1", new="return 11") == (
        "edited pkg/mod.py: replaced 1 occurrence"
    )
    assert "return 11" in (box.workdir / "pkg" / "mod.py").read_text()


@pytest.mark.parametrize(
    ("old", "said"), [("return 3", "'old' was not found"), ("return", "'old' was found 2 times")]
)
def test_edit_file_refuses_zero_or_several_occurrences(box: Toolbox, old: str, said: str) -> None:
    """edit_file with old found 0 or 2 times changes nothing and says how many it found."""
    before = (box.workdir / "pkg" / "mod.py").read_text()
    result = box.call("edit_file", json.dumps({"path": "pkg/mod.py", "old": old, "new": "x"}))
    assert not result.ok
    assert said in result.text
    assert "exactly once" in result.text
    assert (box.workdir / "pkg" / "mod.py").read_text() == before
    assert box.failures["edit_file"] == 1


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("read_file", {"path": "../outside.txt"}),
        ("read_file", {"path": "/etc/passwd"}),
        ("write_file", {"path": "../../evil.txt", "content": "x"}),
        ("list_files", {"path": ".."}),
        ("search", {"pattern": "x", "path": "/"}),
        ("read_file", {"path": "link/outside.txt"}),
    ],
)
def test_paths_outside_the_workdir_are_refused(
    box: Toolbox, tmp_path: Path, name: str, arguments: dict[str, str]
) -> None:
    """A path that resolves outside the workdir (.., absolute, a symlink) is an error result."""
    (tmp_path / "outside.txt").write_text("secret")
    (box.workdir / "link").symlink_to(tmp_path)
    result = box.call(name, json.dumps(arguments))
    assert not result.ok
    assert "is outside the workdir" in result.text
    assert "secret" not in result.text
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("name", "arguments", "said"),
    [
        ("delete_everything", "{}", "unknown tool 'delete_everything'; the tools are list_files"),
        ("read_file", "{not json", "the arguments are not valid JSON"),
        ("read_file", "[1]", "the arguments must be a JSON object"),
        ("read_file", "{}", "bad arguments (missing path)"),
        ("read_file", '{"path": "a", "mode": "r"}', "bad arguments (unknown mode)"),
        ("read_file", '{"path": 3}', "argument 'path' must be a string"),
        ("run", '{"command": "true", "timeout": "soon"}', "argument 'timeout' must be a number"),
    ],
)
def test_bad_calls_are_error_results(box: Toolbox, name: str, arguments: str, said: str) -> None:
    """Unknown tools and malformed arguments come back as error results, never exceptions."""
    result = box.call(name, arguments)
    assert not result.ok
    assert said in result.text


def test_run_reports_output_and_exit_code(box: Toolbox) -> None:
    """run answers the combined stdout and stderr, then the exit code, run in the workdir."""
    text = call(box, "run", command="ls; echo oops >&2; exit 3")
    assert text == "README.md\npkg\noops\n\n[exit code 3]"
    assert [(r.command, r.exit_code) for r in box.commands] == [("ls; echo oops >&2; exit 3", 3)]


def test_run_caps_output_keeping_head_and_tail(box: Toolbox) -> None:
    """A flood of output keeps its start and its end around a note of the bytes cut."""
    text = call(
        box, "run", command="echo START; head -c 100000 /dev/zero | tr '\\0' a; echo; echo END"
    )
    assert text.startswith("START\n")
    assert text.endswith("END\n\n[exit code 0]")
    assert "bytes of output cut ...]" in text
    limit = tools_module.OUTPUT_HEAD_BYTES + tools_module.OUTPUT_TAIL_BYTES
    assert len(text) < limit + 200


def test_run_timeout_kills_the_process_group(tmp_path: Path) -> None:
    """At the timeout the command and what it started in the background are killed."""
    box = Toolbox(tmp_path, command_timeout=0.5)
    started = time.monotonic()
    text = call(box, "run", command="sleep 30 & echo $! > bg.pid; echo started; sleep 30")
    assert time.monotonic() - started < 5
    assert text == "started\n\n[timed out after 0.5s: the command and its children were killed]"
    assert box.commands[0].exit_code is None
    background = int((tmp_path / "bg.pid").read_text())
    deadline = time.monotonic() + 5
    while alive(background):
        assert time.monotonic() < deadline, "the background process survived"
        time.sleep(0.02)


def test_run_timeout_asked_by_the_model_is_capped(tmp_path: Path) -> None:
    """A model asking for more than --command-timeout gets --command-timeout."""
    box = Toolbox(tmp_path, command_timeout=0.5)
    text = call(box, "run", command="sleep 30", timeout=3600)
    assert text.endswith("[timed out after 0.5s: the command and its children were killed]")


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workdir_symlink_is_resolved(tmp_path: Path) -> None:
    """A workdir given through a symlink still accepts its own files."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_text("a")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    box = Toolbox(tmp_path / "alias")
    assert call(box, "read_file", path="a.txt") == "a"
