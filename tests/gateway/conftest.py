"""A real Corral (gateway + in-process simulator) on a loopback port, with a team and a key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from corral.app import CorralApp, create_app
from corral.identity.service import IdentityService
from corral.settings import load_settings
from corral.store.schema import spans
from corral.testing import ServerThread

T = TypeVar("T")
ADMIN_KEY = "sk-corral-admin-test-0123456789abcdef"


@dataclass
class Running:
    app: CorralApp
    url: str
    key: str
    key_id: str
    team_id: str
    user_id: str
    identity: IdentityService
    server: ServerThread
    clients: list[Any] = field(default_factory=list)

    def track(self, client: T) -> T:
        """Close ``client`` (an SDK or httpx client) when the test ends."""
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()

    def records(self, kind: str = "llm_request", *, wait_for: int = 1) -> list[Any]:
        """Stored spans of ``kind``, waiting (bounded) until at least ``wait_for`` exist."""
        deadline = time.monotonic() + 10
        while True:
            with self.app.store.connect() as conn:
                rows = conn.execute(
                    select(spans).where(spans.c.kind == kind).order_by(spans.c.start_ns)
                ).fetchall()
            if len(rows) >= wait_for or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def start_corral(home: Path, database_url: str | None = None, **settings: Any) -> Running:
    config = load_settings(
        home=home,
        database_url=database_url,
        admin_key=ADMIN_KEY,
        key_refresh_interval=0.1,
        record_flush_interval=0.05,
        **settings,
    )
    app = create_app(config)
    server = ServerThread(app).start()
    identity = IdentityService(app.store, app.clock)
    team = identity.create_team("payments")
    user = identity.create_user("ada", team.id)
    key, raw = identity.create_key(team.id, user.id, name="ada-laptop")
    return Running(app, server.url, raw, key.id, team.id, user.id, identity, server)


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Running]:
    running = start_corral(tmp_path / "home")
    try:
        yield running
    finally:
        running.stop()
