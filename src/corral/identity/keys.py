"""Virtual keys: minting, hashing, and the in-memory cache the gateway reads.

A key is ``sk-corral-`` followed by 40 URL-safe random characters. Only its
SHA-256 is stored (the secret has 240 bits of entropy, so a slow password
hash would add latency and no safety). The gateway never touches the
database on the hot path: ``KeyCache`` answers from memory, loads a miss once
in a worker thread, and a refresher re-reads keys changed in the last few
seconds so a revocation made by any process takes effect everywhere within
``key_refresh_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from corral.clock import Clock
from corral.errors import AuthenticationFailed, ModelNotAllowed, PermissionDenied
from corral.store import Store
from corral.store.schema import keys as keys_table
from corral.store.schema import teams

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-corral-"
PREFIX_SHOWN = len(KEY_PREFIX) + 4
_NEGATIVE_TTL = 1.0
_REFRESH_OVERLAP = 5.0  # seconds of updated_at re-read each poll; tolerates commit delay and skew
_REVALIDATE_AFTER = 60.0  # a cached key is re-read at least this often, whatever else happens
_MAX_LOOKUPS = 4  # concurrent store reads for keys not in memory
_MAX_ENTRIES = 100_000  # a flood of made-up keys must not grow the cache without bound

ROLES = ("virtual", "team_admin", "admin")

_WITH_TEAM = select(keys_table, teams.c.name.label("team_name")).outerjoin(
    teams, teams.c.id == keys_table.c.team_id
)


def mint_key() -> str:
    """A new secret key. Show it once; store only ``hash_key`` of it."""
    return KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(raw: str) -> str:
    """The part of a key that may be shown and logged to recognise it."""
    return raw[:PREFIX_SHOWN]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a key is allowed to do and who it speaks for: the identity chain."""

    key_id: str
    role: str
    org_id: str
    team_id: str | None
    user_id: str | None
    run_id: str | None
    name: str | None
    allowed_models: frozenset[str] | None
    expires_at: float | None
    revoked_at: float | None
    team_name: str | None = None  # for route policies, which name teams
    parent_key_id: str | None = None  # a run's key: the key that submitted the run
    suspended_by: str | None = None  # the incident that suspended it (guards)

    def check_model(self, model: str) -> None:
        if self.allowed_models is not None and model not in self.allowed_models:
            allowed = ", ".join(sorted(self.allowed_models)) or "none"
            raise ModelNotAllowed(
                f"model {model!r} is not allowed for this key (allowed: {allowed})"
            )

    def may_call_models(self) -> bool:
        return self.team_id is not None and self.user_id is not None

    def require_admin(self, team_id: str | None = None) -> None:
        """Allow the org admin always, a team admin only for ``team_id``."""
        if self.role == "admin":
            return
        if self.role == "team_admin" and team_id is not None and team_id == self.team_id:
            return
        raise PermissionDenied(
            "this key may not manage that resource: an admin key or that team's admin key is needed"
        )

    @classmethod
    def from_row(cls, row: Any) -> KeyInfo:
        allowed = row.allowed_models
        return cls(
            key_id=row.id,
            role=row.role,
            org_id=row.org_id,
            team_id=row.team_id,
            user_id=row.user_id,
            run_id=row.run_id,
            name=row.name,
            allowed_models=frozenset(allowed) if allowed is not None else None,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            team_name=getattr(row, "team_name", None),
            parent_key_id=row.parent_key_id,
            suspended_by=row.suspended_by,
        )


@dataclass(slots=True)
class _Entry:
    info: KeyInfo | None  # None: no such key (negative entry)
    loaded_at: float


class KeyCache:
    """Authenticates raw keys from memory; refreshed from the store in the background."""

    def __init__(self, store: Store, clock: Clock, *, refresh_interval: float = 0.25) -> None:
        self._store = store
        self._clock = clock
        self._interval = refresh_interval
        self._entries: dict[str, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_poll: float | None = None
        # Store lookups of keys not in memory, at once: a flood of made-up keys queues here
        # instead of taking every database connection (cached keys never wait).
        self._lookups = asyncio.Semaphore(_MAX_LOOKUPS)

    async def authenticate(self, raw: str | None) -> KeyInfo:
        """Return the key's identity, or raise ``AuthenticationFailed`` naming why."""
        if not raw:
            raise AuthenticationFailed(
                "no API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        digest = hash_key(raw)
        now = self._clock.now()
        entry = self._entries.get(digest)
        if entry is None or (
            now - entry.loaded_at > (_NEGATIVE_TTL if entry.info is None else _REVALIDATE_AFTER)
        ):
            info = await self._lookup(digest)
            entry = _Entry(info, now)
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries = {d: e for d, e in self._entries.items() if e.info is not None}
            self._entries[digest] = entry
        return self._check(entry.info, raw, now)

    async def _lookup(self, digest: str) -> KeyInfo | None:
        async with self._lookups:
            return await asyncio.to_thread(self._load, digest)

    def _check(self, info: KeyInfo | None, raw: str, now: float) -> KeyInfo:
        if info is None:
            raise AuthenticationFailed(f"invalid API key {shown_prefix(raw)}…: no such key")
        if info.revoked_at is not None:
            raise AuthenticationFailed(f"API key {info.key_id} has been revoked")
        if info.expires_at is not None and now >= info.expires_at:
            raise AuthenticationFailed(f"API key {info.key_id} expired; create a new one")
        if info.suspended_by is not None:
            raise PermissionDenied(
                f"API key {info.key_id} is suspended by incident {info.suspended_by}: a guard "
                f"stopped its traffic; its owner or a team admin can see why and release it "
                f"(corral incidents show {info.suspended_by})",
                code="key_suspended",
            )
        return info

    def _load(self, digest: str) -> KeyInfo | None:
        with self._store.connect() as conn:
            row = conn.execute(_WITH_TEAM.where(keys_table.c.key_hash == digest)).first()
        return KeyInfo.from_row(row) if row is not None else None

    def forget(self, digest: str) -> None:
        """Drop one entry now (the process that revoked a key need not wait for the poll)."""
        self._entries.pop(digest, None)

    def refresh_once(self) -> int:
        """Re-read keys changed since the last poll (with overlap); returns how many changed."""
        now = self._clock.now()
        since = (self._last_poll if self._last_poll is not None else now) - _REFRESH_OVERLAP
        with self._store.connect() as conn:
            rows = conn.execute(_WITH_TEAM.where(keys_table.c.updated_at >= since)).fetchall()
        self._last_poll = now
        for row in rows:
            if row.key_hash in self._entries:
                self._entries[row.key_hash] = _Entry(KeyInfo.from_row(row), now)
        return len(rows)

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="corral-key-refresh")

    async def stop(self) -> None:
        """Stop polling; waits for a poll in flight so no connection is left checked out."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            if self._stopping.is_set():
                return
            try:
                await asyncio.to_thread(self.refresh_once)
            except Exception:  # the store may be briefly unavailable; keep polling
                log.exception("key refresh failed; retrying")
