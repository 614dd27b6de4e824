"""A completed response's record survives SIGKILL of the gateway (journal before last byte)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from corral.clock import SystemClock
from corral.identity.service import IdentityService
from corral.settings import load_settings
from corral.store import Store
from corral.store.schema import spans
from tests.gateway.serve import start_server as start_gateway
from tests.services import free_port


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    # keep records in the journal only: the store sees them only after a replay
    return start_gateway(
        home, port, CORRAL_RECORD_FLUSH_INTERVAL="30", CORRAL_RECORD_BATCH_SIZE="100000"
    )


def drive(
    url: str, key: str, completed: list[str], stop: threading.Event, n: int, tag: int = 0
) -> None:
    """Send alternating streamed and whole requests, each asking something new (the same
    request again and again is a runaway guards suspend the key for); note the ids of
    completed responses."""
    with httpx.Client(base_url=url, timeout=10) as c:
        for i in range(n):
            if stop.is_set():
                return
            content = f"req {tag}-{i}"
            body = {"model": "sim-economy", "messages": [{"role": "user", "content": content}]}
            headers = {"authorization": f"Bearer {key}"}
            try:
                if i % 2:
                    with c.stream(
                        "POST",
                        "/v1/chat/completions",
                        json={**body, "stream": True},
                        headers=headers,
                    ) as r:
                        text = b"".join(r.iter_bytes())
                        if r.status_code == 200 and text.rstrip().endswith(b"data: [DONE]"):
                            completed.append(r.headers["x-corral-request-id"])
                else:
                    r = c.post("/v1/chat/completions", json=body, headers=headers)
                    if r.status_code == 200 and r.json().get("choices"):
                        completed.append(r.headers["x-corral-request-id"])
            except httpx.HTTPError:
                return  # the server was killed under us


def test_sigkill_under_load_loses_no_completed_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    proc = start_server(home, port)
    store = Store(load_settings(home=home).resolved_database_url)
    identity = IdentityService(store, SystemClock())
    team = identity.create_team("ops")
    user = identity.create_user("kim", team.id)
    _, key = identity.create_key(team.id, user.id)
    completed: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=drive, args=(f"http://127.0.0.1:{port}", key, completed, stop, 400, tag)
        )
        for tag in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(completed) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert len(completed) >= 50, "the load never got going"
    with store.connect() as conn:
        before = {r.request_id for r in conn.execute(select(spans.c.request_id))}
    assert len(before) < len(completed), "records reached the store without a replay; test is void"

    # A new process on the same home replays the dead process's journal at start-up.
    proc = start_server(home, free_port())
    try:
        with store.connect() as conn:
            rows = conn.execute(
                select(spans.c.request_id, spans.c.kind).where(spans.c.kind == "llm_request")
            ).fetchall()
        stored = [r.request_id for r in rows]
        missing = set(completed) - set(stored)
        assert not missing, f"{len(missing)} completed responses lost their record"
        assert len(stored) == len(set(stored)), "a replay duplicated records"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        store.close()
