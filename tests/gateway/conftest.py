"""A real Corral (gateway + in-process simulator) on a loopback port, with a team and a key."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from corral.app import CorralApp
from corral.identity.service import IdentityService
from corral.store.schema import spans
from tests.conftest import ADMIN_KEY, Corral, StartCorral, run_corral

T = TypeVar("T")

__all__ = ["ADMIN_KEY", "Running", "corral", "gateway_corral"]


@dataclass
class Running:
    """A live Corral with one team (payments), one user (ada) and her virtual key."""

    corral: Corral
    key: str
    key_id: str
    team_id: str
    user_id: str
    identity: IdentityService
    clients: list[Any] = field(default_factory=list)

    @property
    def app(self) -> CorralApp:
        return self.corral.app

    @property
    def url(self) -> str:
        return self.corral.url

    def track(self, client: T) -> T:
        """Close ``client`` (an SDK or httpx client) when the test ends."""
        self.clients.append(client)
        return client

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


@contextlib.contextmanager
def gateway_corral(home: Path, database_url: str, **settings: Any) -> Iterator[Running]:
    """Start Corral with fast key refresh and flushes, and a team, user and key in it."""
    settings = {"key_refresh_interval": 0.1, "record_flush_interval": 0.05, **settings}
    with run_corral(home, database_url, **settings) as corral:
        identity = IdentityService(corral.app.store, corral.app.clock)
        team = identity.create_team("payments")
        user = identity.create_user("ada", team.id)
        key, raw = identity.create_key(team.id, user.id, name="ada-laptop")
        running = Running(corral, raw, key.id, team.id, user.id, identity)
        try:
            yield running
        finally:
            for client in running.clients:
                client.close()


@pytest.fixture
def corral(tmp_path: Path, store_url: str, start_corral: StartCorral) -> Iterator[Running]:
    """A live gateway on SQLite and, in a second run, on PostgreSQL."""
    with gateway_corral(tmp_path / "home", store_url) as running:
        yield running
