"""The local blob store: keys, atomic writes, permissions, deletion by day, usage."""

from __future__ import annotations

import stat
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from corral.errors import InvalidRequest
from corral.traces.blobs import NO_TEAM, BlobBackend, BlobStore


def ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000_000


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_store_is_a_backend(blobs: BlobStore) -> None:
    """``BlobStore`` implements the ``BlobBackend`` protocol the writer and retention use."""
    backend: BlobBackend = blobs
    assert backend.usage() == {"bytes": 0, "files": 0}


def test_key_names_team_utc_day_span_and_part(blobs: BlobStore) -> None:
    """Keys are ``{team or _}/{UTC day of the start}/{span}.{part}``; days end at UTC midnight."""
    last = ns(2026, 3, 1, 23, 59, 59) + 999_999_999
    assert blobs.key_for("team_a1", last, "00f1", "request") == "team_a1/2026-03-01/00f1.request"
    assert blobs.key_for(None, last + 1, "00f1", "response") == "_/2026-03-02/00f1.response"


def test_round_trip_with_private_permissions(blobs: BlobStore) -> None:
    """What is put is got back; files are 0600 and every folder 0700; a missing key is None."""
    key = blobs.key_for("team_a", ns(2026, 1, 5), "abcdef0123456789", "request")
    blobs.put(key, b'{"model": "m"}')
    assert blobs.get(key) == b'{"model": "m"}'
    path = blobs.root / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (blobs.root, path.parent.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    missing = blobs.key_for("team_a", ns(2026, 1, 5), "ffff", "response")
    assert blobs.get(missing) is None


def test_put_replaces_and_leaves_no_temporary_files(blobs: BlobStore) -> None:
    """A second put replaces the body whole; no temporary file is left in the folder."""
    key = blobs.key_for(None, ns(2026, 1, 5), "aa", "response")
    blobs.put(key, b"first")
    blobs.put(key, b"second, longer")
    assert blobs.get(key) == b"second, longer"
    assert [p.name for p in (blobs.root / key).parent.iterdir()] == ["aa.response"]


def test_failed_put_keeps_the_previous_body(blobs: BlobStore) -> None:
    """A write that fails half-way leaves the previous body and no temporary file behind."""
    key = blobs.key_for(None, ns(2026, 1, 5), "aa", "request")
    blobs.put(key, b"kept")
    with pytest.raises(TypeError):
        blobs.put(key, "not bytes")  # type: ignore[arg-type]
    assert blobs.get(key) == b"kept"
    assert [p.name for p in (blobs.root / key).parent.iterdir()] == ["aa.request"]


def test_readers_never_see_a_partial_body(blobs: BlobStore) -> None:
    """While one thread rewrites a body, another only ever reads one of the whole versions."""
    key = blobs.key_for("t", ns(2026, 1, 5), "bb", "response")
    versions = (b"a" * 300_000, b"b" * 200_000)
    blobs.put(key, versions[0])
    seen: set[bytes | None] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(blobs.get(key))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(100):
            blobs.put(key, versions[i % 2])
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions)


@pytest.mark.parametrize(
    "key",
    [
        "../outside/2026-01-01/a.request",
        "/etc/2026-01-01/passwd.request",
        "team/2026-01-01/../../../x.request",
        "team/..",
        "team/2026-01-01/a.body",
        "team/2026-13-01/a.request",
        "team/2026-01-01/sub/a.request",
        "team/2026-01-01/a.request/",
        ".hidden/2026-01-01/a.request",
        "team\\..\\2026-01-01/a.request",
        "",
    ],
)
def test_invalid_keys_are_refused(blobs: BlobStore, key: str) -> None:
    """Keys that are not exactly ``team/day/span.part`` are refused for reads and writes."""
    with pytest.raises(InvalidRequest):
        blobs.get(key)
    with pytest.raises(InvalidRequest):
        blobs.put(key, b"x")
    assert not blobs.root.exists()


@pytest.mark.parametrize(
    ("team", "span", "part"),
    [
        ("../x", "aa", "request"),
        ("a/b", "aa", "request"),
        ("t", "../aa", "request"),
        ("t", "aa", "body"),
    ],
)
def test_key_for_refuses_ids_that_are_not_path_segments(
    blobs: BlobStore, team: str, span: str, part: str
) -> None:
    """A team or span id that could escape its folder, or an unknown part, makes no key."""
    with pytest.raises(InvalidRequest):
        blobs.key_for(team, 0, span, part)  # type: ignore[arg-type]


def put_days(blobs: BlobStore, team: str | None, days: list[int], size: int = 10) -> None:
    for day in days:
        for part in ("request", "response"):
            blobs.put(blobs.key_for(team, ns(2026, 1, day, 12), f"s{day}", part), b"x" * size)


def test_delete_days_before_removes_whole_older_folders(blobs: BlobStore) -> None:
    """Day folders strictly before the day go, with counts of files and bytes; others stay."""
    put_days(blobs, "team_a", [1, 2, 3, 4], size=10)
    put_days(blobs, None, [1, 2], size=7)
    assert blobs.delete_days_before("team_a", date(2026, 1, 3)) == (4, 40)
    assert sorted(p.name for p in (blobs.root / "team_a").iterdir()) == [
        "2026-01-03",
        "2026-01-04",
    ]
    assert blobs.usage() == {"bytes": 4 * 10 + 4 * 7, "files": 8}
    assert blobs.delete_days_before(None, date(2026, 1, 2)) == (2, 14)
    assert blobs.delete_days_before("team_unknown", date(2030, 1, 1)) == (0, 0)
    assert blobs.teams() == [NO_TEAM, "team_a"]


def test_usage_and_teams_ignore_writes_in_progress(blobs: BlobStore) -> None:
    """A temporary file of a write in progress is not counted as a body."""
    put_days(blobs, "team_b", [9], size=5)
    day = blobs.root / "team_b" / "2026-01-09"
    (day / ".s9.request.abc.tmp").write_bytes(b"partial")
    assert blobs.usage() == {"bytes": 10, "files": 2}
    assert blobs.teams() == ["team_b"]
    assert blobs.delete_days_before("team_b", date(2026, 1, 10)) == (2, 10)
    assert not day.exists()
