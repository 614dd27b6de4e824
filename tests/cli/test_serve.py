"""``corral serve`` as a real process: a port in use, the one-time admin key, file modes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from corral.settings import Settings
from corral.store import Store
from corral.store.schema import keys


def _environ(home: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_HOME=str(home), CORRAL_DATABASE_URL=database_url, CORRAL_RUN_SLOTS="0")
    return env


def _admin_keys(home: Path, database_url: str) -> int:
    store = Store(Settings(home=home, database_url=database_url).resolved_database_url)
    try:
        store.migrate()  # the failed start may have left no schema at all
        with store.connect() as conn:
            return len(conn.execute(select(keys.c.id).where(keys.c.role == "admin")).all())
    finally:
        store.close()


@contextmanager
def _serving(
    home: Path, database_url: str, port: int, until: str = "  models:", then: int = 0
) -> Iterator[tuple[str, list[str]]]:
    """A running ``corral serve``; its URL and what it printed up to the line holding
    ``until`` and ``then`` lines more (the banner is printed once it serves)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve", "--port", str(port)],
        env=_environ(home, database_url),
        cwd=home.parent,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        found: int | None = None
        while found is None or len(lines) <= found + then:
            assert time.monotonic() < deadline, lines
            line = proc.stderr.readline()
            assert line or proc.poll() is None, lines
            lines.append(line.rstrip("\n"))
            if found is None and until in line:
                found = len(lines) - 1
        yield f"http://127.0.0.1:{port}", lines
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_in_use_fails_before_the_admin_key_is_made(store_url: str, tmp_path: Path) -> None:
    """Before: start-up minted and stored the one-time admin key, then the bind failed and
    the key was lost; no later start printed one."""
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = subprocess.run(
            [sys.executable, "-m", "corral", "serve", "--port", str(port)],
            env=_environ(home, store_url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert failed.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in failed.stderr
    assert "admin key" not in failed.stderr
    assert _admin_keys(home, store_url) == 0

    with _serving(home, store_url, _free_port(), "admin key (shown once", 1) as (url, lines):
        key = lines[-1].strip()
        me = httpx.get(f"{url}/api/v1/me", headers={"authorization": f"Bearer {key}"})
        assert me.status_code == 200, me.text
    assert _admin_keys(home, store_url) == 1


def test_corral_home_is_private(tmp_path: Path) -> None:
    """The database (key hashes, every team's usage), its WAL, the journal (bodies before
    redaction): no one but the service user may read them, whatever the umask."""
    home = tmp_path / "home"
    old = os.umask(0o022)
    try:
        with _serving(home, f"sqlite:///{home / 'corral.db'}", _free_port()) as (url, _):
            headers = {"authorization": "Bearer sk-corral-wrong"}
            httpx.get(f"{url}/api/v1/teams", headers=headers)  # something to write
            modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]}
    finally:
        os.umask(old)
    assert modes[home] == 0o700
    for name in ("corral.db", "corral.db-wal", "corral.db-shm"):
        assert modes[home / name] == 0o600, (name, oct(modes[home / name]))
    assert modes[home / "journal"] == 0o700
    runs = home / "runs"  # the runs folder's mode is the executor's (the run's uid enters it)
    open_to_others = {
        str(p.relative_to(home)): oct(m)
        for p, m in modes.items()
        if m & 0o077 and p != runs and runs not in p.parents and not p.is_socket()
    }
    assert open_to_others == {}


def test_the_access_log_never_holds_a_key_sent_in_the_query(tmp_path: Path) -> None:
    """Google's clients may put the key in ``?key=``; uvicorn logs the path with its query."""
    home = tmp_path / "home"
    port = _free_port()
    env = {**_environ(home, f"sqlite:///{tmp_path / 'c.db'}"), "CORRAL_ACCESS_LOG": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.STDOUT,
        stdout=subprocess.PIPE,
        text=True,
    )
    secret = "sk-corral-secret-in-the-query-0123456789"
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/metrics", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.2)
        answer = httpx.get(f"{url}/v1beta/models", params={"alt": "json", "key": secret})
        assert answer.status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)  # uvicorn's access log goes to stdout
    assert "/v1beta/models?alt=json&key=[redacted]" in out, out[-2000:]
    assert secret not in out
