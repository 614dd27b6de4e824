"""Identity: the organisation, its teams, users, service accounts and keys.

Everything here is synchronous and talks to the store directly; the admin API
calls it from its thread pool. IDs are short prefixed random strings
(``team_…``, ``usr_…``, ``key_…``); names are unique per organisation (teams)
and per team (users). A key's secret is returned once by ``create_key`` and
never again: the store keeps only ``hash_key`` of it.

``bootstrap`` runs at every start-up. It makes sure the default organisation
and the organisation admin key exist; when ``CORRAL_ADMIN_KEY`` is unset and no
admin key exists yet it mints one and returns it so the caller can print it
once. Several processes may bootstrap one database at the same time: fixed
primary keys make the losers' inserts fail, and they then read what the
winner wrote.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.exc import IntegrityError

from corral.clock import Clock
from corral.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StoreError,
)
from corral.identity.keys import KEY_PREFIX, hash_key, mint_key, shown_prefix
from corral.settings import BODY_MODES, Settings
from corral.store import Store
from corral.store.schema import keys as keys_table
from corral.store.schema import orgs, teams, users

DEFAULT_ORG_ID = "org_default"
DEFAULT_ORG_NAME = "default"
ADMIN_KEY_ID = "key_admin"
ADMIN_KEY_PREFIX = KEY_PREFIX + "admin-"

# Team and user names double as command-line arguments, so they are plain tokens.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$"
DURATION_PATTERN = r"^\d{1,9}[smhdw]$"
MAX_KEY_LIFETIME = 10 * 365 * 86400.0
MAX_REF_LENGTH = 200
MAX_RETENTION_DAYS = 3650

UserKind = Literal["user", "service"]
KeyRole = Literal["virtual", "team_admin"]

_NAME = re.compile(NAME_PATTERN)
_DURATION = re.compile(r"^(\d{1,9})([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class Team:
    """A team; ``body_capture`` and ``retention_days`` are its trajectory policy (None: the
    settings' ``trace_bodies`` / ``trace_retention_days``)."""

    id: str
    org_id: str
    name: str
    created_at: float
    body_capture: str | None = None
    retention_days: float | None = None


@dataclass(frozen=True, slots=True)
class User:
    """A person or a service account (``kind == "service"``) inside one team."""

    id: str
    org_id: str
    team_id: str
    name: str
    kind: str
    email: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Key:
    """A key's metadata. ``key_hash`` is kept for cache eviction and never shown."""

    id: str
    prefix: str
    name: str | None
    role: str
    org_id: str
    team_id: str | None
    user_id: str | None
    run_id: str | None
    allowed_models: tuple[str, ...] | None
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    updated_at: float
    created_by: str | None
    key_hash: str = field(repr=False)
    parent_key_id: str | None = None
    suspended_by: str | None = None  # the incident that suspended it

    @classmethod
    def from_row(cls, row: Any) -> Key:
        models = row.allowed_models
        return cls(
            id=row.id,
            prefix=row.prefix,
            name=row.name,
            role=row.role,
            org_id=row.org_id,
            team_id=row.team_id,
            user_id=row.user_id,
            run_id=row.run_id,
            allowed_models=tuple(models) if models is not None else None,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            created_by=row.created_by,
            key_hash=row.key_hash,
            parent_key_id=row.parent_key_id,
            suspended_by=row.suspended_by,
        )


def new_id(kind: str) -> str:
    """A short random id such as ``team_3f9a0c12d4e5``."""
    return f"{kind}_{secrets.token_hex(6)}"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d`` or ``2w``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(
            f"invalid duration {_show(text)}: use a number and a unit, e.g. 30m, 24h, 7d or 2w"
        )
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_since(text: str, now: float) -> float:
    """The start of a window: a duration back from ``now``, ``all``, or an ISO-8601 time."""
    text = text.strip()
    if text == "all":
        return 0.0
    if _DURATION.fullmatch(text):
        return max(0.0, now - parse_duration(text))
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:  # a time without an offset is read as UTC
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp())
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidRequest(
            f"invalid since {_show(text)}: use a duration (24h, 7d), 'all', "
            "or an ISO-8601 time (2025-01-31T00:00:00Z)"
        ) from exc


def parse_until(text: str, now: float) -> float:
    """The end of a window: ``now``, a duration back from ``now``, or an ISO-8601 time."""
    text = text.strip()
    if text == "now":
        return now
    if text != "all":
        with suppress(InvalidRequest):
            return parse_since(text, now)
    raise InvalidRequest(
        f"invalid until {_show(text)}: use 'now', a duration back from now (1h, 7d) "
        "or an ISO-8601 time (2025-01-31T00:00:00Z)"
    )


class IdentityService:
    """Reads and writes the identity tables of one store; all methods are blocking."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    # -- organisation ------------------------------------------------------------

    def ensure_default_org(self) -> None:
        """Create the default organisation unless it exists (safe to race)."""
        with self._store.connect() as conn:
            if conn.execute(select(orgs.c.id).where(orgs.c.id == DEFAULT_ORG_ID)).first():
                return
        try:
            with self._store.begin() as conn:
                conn.execute(
                    orgs.insert().values(
                        id=DEFAULT_ORG_ID, name=DEFAULT_ORG_NAME, created_at=self._clock.now()
                    )
                )
        except StoreError as exc:
            if not _is_conflict(exc):  # otherwise another process created it first
                raise

    # -- teams -------------------------------------------------------------------

    def create_team(self, name: str) -> Team:
        _check_name("team", name)
        team = Team(new_id("team"), DEFAULT_ORG_ID, name, self._clock.now())
        with self._conflict_as(f"team {name!r} already exists") as conn:
            if conn.execute(
                select(teams.c.id).where(teams.c.org_id == DEFAULT_ORG_ID, teams.c.name == name)
            ).first():
                raise Conflict(f"team {name!r} already exists")
            conn.execute(teams.insert().values(**asdict(team)))
        return team

    def list_teams(self, *, team_id: str | None = None) -> list[Team]:
        query = select(teams).order_by(teams.c.name)
        if team_id is not None:
            query = query.where(teams.c.id == team_id)
        with self._store.connect() as conn:
            return [_team(row) for row in conn.execute(query)]

    def get_team(self, ref: str) -> Team:
        """A team by id or by name."""
        if _usable_ref(ref):
            with self._store.connect() as conn:
                rows = conn.execute(
                    select(teams).where((teams.c.id == ref) | (teams.c.name == ref))
                ).fetchall()
            if rows:
                return _team(min(rows, key=lambda r: r.id != ref))  # an id match wins
        raise NotFound(f"team {_show(ref)} not found")

    def team_names(self, ids: Iterable[str]) -> dict[str, str]:
        """The names of the teams among ``ids`` (ids not found are left out)."""
        return self._names(teams, ids)

    def set_team_policy(self, team: str, changes: Mapping[str, object]) -> Team:
        """Change a team's trajectory policy: ``body_capture`` ("off", "metadata", "full")
        and ``retention_days`` (days, more than 0, at most ten years); None restores the
        default. Only the keys present in ``changes`` change."""
        found = self.get_team(team)
        values = _policy_values(changes)
        if values:
            with self._store.begin() as conn:
                conn.execute(teams.update().where(teams.c.id == found.id).values(**values))
        return self.get_team(found.id)

    # -- users and service accounts ------------------------------------------------

    def create_user(
        self, name: str, team: str, *, kind: UserKind = "user", email: str | None = None
    ) -> User:
        """Create a user (or a service account) in ``team`` (an id or a name)."""
        _check_name("user", name)
        if kind not in ("user", "service"):
            raise InvalidRequest(f"user kind must be 'user' or 'service', not {_show(kind)}")
        if email is not None:
            _check_text("email", email, 320)
        owner = self.get_team(team)
        user = User(new_id("usr"), owner.org_id, owner.id, name, kind, email, self._clock.now())
        taken = f"{'service account' if kind == 'service' else 'user'} {name!r} already exists "
        taken += f"in team {owner.name!r}"
        with self._conflict_as(taken) as conn:
            if conn.execute(
                select(users.c.id).where(users.c.team_id == owner.id, users.c.name == name)
            ).first():
                raise Conflict(taken)
            conn.execute(users.insert().values(**asdict(user)))
        return user

    def list_users(self, *, team_id: str | None = None) -> list[User]:
        query = select(users).order_by(users.c.name, users.c.id)
        if team_id is not None:
            query = query.where(users.c.team_id == team_id)
        with self._store.connect() as conn:
            return [_user(row) for row in conn.execute(query)]

    def get_user(self, ref: str, *, team_id: str | None = None) -> User:
        """A user by id, or by name (within ``team_id`` when given; else it must be unique)."""
        rows: list[Any] = []
        if _usable_ref(ref):
            query = select(users).where((users.c.id == ref) | (users.c.name == ref))
            if team_id is not None:
                query = query.where(users.c.team_id == team_id)
            with self._store.connect() as conn:
                rows = list(conn.execute(query))
        by_id = [row for row in rows if row.id == ref]
        if by_id:
            return _user(by_id[0])
        if len(rows) > 1:
            raise Conflict(
                f"more than one user is named {ref!r}; name the team too, or use the user's id"
            )
        if not rows:
            where = "" if team_id is None else f" in team {self._team_name(team_id)!r}"
            raise NotFound(f"user {_show(ref)} not found{where}")
        return _user(rows[0])

    def user_by_email(self, email: str) -> User | None:
        """The one user with this email (case-insensitive), or None (none, or several)."""
        if not email or len(email) > 320:
            return None
        with self._store.connect() as conn:
            rows = conn.execute(
                select(users).where(func.lower(users.c.email) == email.lower()).limit(2)
            ).fetchall()
        return _user(rows[0]) if len(rows) == 1 else None

    def user_names(self, ids: Iterable[str]) -> dict[str, str]:
        """The names of the users and service accounts among ``ids`` (others left out)."""
        return self._names(users, ids)

    def _names(self, table: Table, ids: Iterable[str]) -> dict[str, str]:
        wanted = set(ids)
        if not wanted:
            return {}
        query = select(table.c.id, table.c.name).where(table.c.id.in_(wanted))
        with self._store.connect() as conn:
            return {row.id: row.name for row in conn.execute(query)}

    # -- keys --------------------------------------------------------------------

    def create_key(
        self,
        team: str,
        user: str,
        *,
        name: str | None = None,
        models: Iterable[str] | None = None,
        expires_at: float | None = None,
        role: KeyRole = "virtual",
        created_by: str | None = None,
        run_id: str | None = None,
        parent: str | None = None,
    ) -> tuple[Key, str]:
        """Mint a key for ``user`` in ``team`` (ids or names); return it and its secret.

        The secret is returned here once and never stored. A key with ``run_id`` speaks for
        that run (corral.runs mints one as a run starts and revokes it as it ends). A key
        with ``parent`` (a run's key: the key that submitted the run) calls only models the
        parent may call, expires no later than it, is revoked with it, and is refused here
        (``PermissionDenied``) when the parent is revoked or expired already.
        """
        now = self._clock.now()
        _check_new_key(role, name, expires_at, now)
        owner_team = self.get_team(team)
        owner = self.get_user(user, team_id=owner_team.id)
        raw = mint_key()
        wanted = tuple(dict.fromkeys(models)) if models is not None else None
        with self._store.begin() as conn:
            if parent is not None:
                wanted, expires_at = _inherit(conn, parent, wanted, expires_at, now)
            key = Key(
                id=new_id("key"),
                prefix=shown_prefix(raw),
                name=name,
                role=role,
                org_id=owner_team.org_id,
                team_id=owner_team.id,
                user_id=owner.id,
                run_id=run_id,
                allowed_models=wanted,
                expires_at=expires_at,
                revoked_at=None,
                created_at=now,
                updated_at=now,
                created_by=created_by,
                key_hash=hash_key(raw),
                parent_key_id=parent,
            )
            conn.execute(keys_table.insert().values(**_key_values(key)))
        return key, raw

    def list_keys(self, *, team_id: str | None = None, user_id: str | None = None) -> list[Key]:
        query = select(keys_table).order_by(keys_table.c.created_at, keys_table.c.id)
        if team_id is not None:
            query = query.where(keys_table.c.team_id == team_id)
        if user_id is not None:
            query = query.where(keys_table.c.user_id == user_id)
        with self._store.connect() as conn:
            return [Key.from_row(row) for row in conn.execute(query)]

    def get_key(self, key_id: str) -> Key:
        if _usable_ref(key_id):
            with self._store.connect() as conn:
                row = conn.execute(select(keys_table).where(keys_table.c.id == key_id)).first()
            if row is not None:
                return Key.from_row(row)
        raise NotFound(f"key {_show(key_id)} not found")

    def revoke_key(self, key_id: str) -> Key:
        """Revoke a key, and the keys minted under it (the keys of the runs it submitted);
        every process refuses them once its key cache polls ``updated_at``.

        Revoking a revoked key changes nothing. The organisation admin key
        cannot be revoked here: it is replaced by changing ``CORRAL_ADMIN_KEY``.
        """
        key = self.get_key(key_id)
        if key.role == "admin":
            raise PermissionDenied(
                "the organisation admin key cannot be revoked; set a new CORRAL_ADMIN_KEY "
                "and restart to replace it"
            )
        if key.revoked_at is not None:
            return key
        now = self._clock.now()
        with self._store.begin() as conn:
            # the parent first: a run's key minted meanwhile waits on its row (_inherit)
            for column in (keys_table.c.id, keys_table.c.parent_key_id):
                conn.execute(
                    keys_table.update()
                    .where(column == key.id, keys_table.c.revoked_at.is_(None))
                    .values(revoked_at=now, updated_at=now)
                )
        return self.get_key(key.id)

    def suspend_key(self, key_id: str, incident_id: str) -> bool:
        """Suspend a key for ``incident_id`` (guards): every process refuses it once its key
        cache polls, until ``restore_key``. A key already suspended keeps its first
        incident; the admin key is never suspended. Whether this call suspended it."""
        now = self._clock.now()
        with self._store.begin() as conn:
            done = conn.execute(
                keys_table.update()
                .where(
                    keys_table.c.id == key_id,
                    keys_table.c.suspended_by.is_(None),
                    keys_table.c.role != "admin",
                )
                .values(suspended_by=incident_id, updated_at=now)
            ).rowcount
        return bool(done)

    def restore_key(self, key_id: str, incident_id: str, *, extend_by: float = 0.0) -> bool:
        """Lift the suspension ``incident_id`` put on a key (another incident's stays);
        ``extend_by`` seconds are added to its expiry, if it has one (a run's key: the time
        its run was frozen does not count against it)."""
        now = self._clock.now()
        values: dict[str, Any] = {"suspended_by": None, "updated_at": now}
        if extend_by > 0:
            values["expires_at"] = keys_table.c.expires_at + extend_by
        with self._store.begin() as conn:
            done = conn.execute(
                keys_table.update()
                .where(keys_table.c.id == key_id, keys_table.c.suspended_by == incident_id)
                .values(**values)
            ).rowcount
        return bool(done)

    # -- the organisation admin key ------------------------------------------------

    def set_admin_key(self, raw: str) -> None:
        """Make ``raw`` (from ``CORRAL_ADMIN_KEY``) the organisation admin key."""
        if len(raw) < 16:
            raise ConfigError("CORRAL_ADMIN_KEY must be at least 16 characters long")
        for attempt in range(2):
            try:
                self._upsert_admin_key(raw)
                return
            except StoreError as exc:
                # Another process inserted the row between our read and our write:
                # read again and update it. A second conflict is a real one.
                if not _is_conflict(exc) or attempt == 1:
                    raise ConfigError(
                        f"cannot store CORRAL_ADMIN_KEY: {exc.message} (is it the same secret "
                        "as another key?)"
                    ) from exc

    def _upsert_admin_key(self, raw: str) -> None:
        digest, now = hash_key(raw), self._clock.now()
        # A short or hand-made admin key shows nothing of itself: its first
        # characters could be a large part of the secret.
        prefix = shown_prefix(raw) if raw.startswith(KEY_PREFIX) and len(raw) >= 36 else "(env)"
        with self._store.begin() as conn:
            row = conn.execute(
                select(keys_table.c.key_hash, keys_table.c.revoked_at).where(
                    keys_table.c.id == ADMIN_KEY_ID
                )
            ).first()
            if row is None:
                conn.execute(keys_table.insert().values(**_admin_values(digest, prefix, now)))
            elif row.key_hash != digest or row.revoked_at is not None:
                conn.execute(
                    keys_table.update()
                    .where(keys_table.c.id == ADMIN_KEY_ID)
                    .values(key_hash=digest, prefix=prefix, revoked_at=None, updated_at=now)
                )

    def ensure_admin_key(self) -> str | None:
        """Mint the admin key unless one exists; return the secret only when minted here."""
        with self._store.connect() as conn:
            if conn.execute(select(keys_table.c.id).where(keys_table.c.id == ADMIN_KEY_ID)).first():
                return None
        raw = ADMIN_KEY_PREFIX + secrets.token_urlsafe(30)
        values = _admin_values(hash_key(raw), shown_prefix(raw), self._clock.now())
        try:
            with self._store.begin() as conn:
                conn.execute(keys_table.insert().values(**values))
        except StoreError as exc:
            if _is_conflict(exc):  # another process minted it first and prints its own
                return None
            raise
        return raw

    def _team_name(self, team_id: str) -> str:
        with self._store.connect() as conn:
            name = conn.execute(select(teams.c.name).where(teams.c.id == team_id)).scalar()
        return str(name) if name is not None else team_id

    @contextmanager
    def _conflict_as(self, message: str) -> Iterator[Connection]:
        """A transaction whose unique-constraint failures become ``Conflict(message)``."""
        try:
            with self._store.begin() as conn:
                yield conn
        except StoreError as exc:
            if _is_conflict(exc):
                raise Conflict(message) from exc
            raise


def bootstrap(store: Store, settings: Settings, clock: Clock) -> str | None:
    """Ensure the default organisation and the admin key; return a newly minted admin key.

    With ``settings.admin_key`` set, that key becomes (or stays) the admin key
    and nothing is returned. Without it, a key is minted only if none exists;
    the caller prints the returned secret once, since it is never shown again.
    """
    service = IdentityService(store, clock)
    service.ensure_default_org()
    if settings.admin_key is not None:
        service.set_admin_key(settings.admin_key.get_secret_value())
        return None
    return service.ensure_admin_key()


def utc(ts: float | None) -> datetime | None:
    """An epoch timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def _admin_values(digest: str, prefix: str, now: float) -> dict[str, Any]:
    return {
        "id": ADMIN_KEY_ID,
        "key_hash": digest,
        "prefix": prefix,
        "name": "organisation admin",
        "role": "admin",
        "org_id": DEFAULT_ORG_ID,
        "created_at": now,
        "updated_at": now,
    }


def _key_values(key: Key) -> dict[str, Any]:
    values = asdict(key)
    models = values.pop("allowed_models")
    values["allowed_models"] = list(models) if models is not None else None
    return values


def _team(row: Any) -> Team:
    return Team(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        created_at=row.created_at,
        body_capture=row.body_capture,
        retention_days=row.retention_days,
    )


def _user(row: Any) -> User:
    return User(
        id=row.id,
        org_id=row.org_id,
        team_id=row.team_id,
        name=row.name,
        kind=row.kind,
        email=row.email,
        created_at=row.created_at,
    )


def _is_conflict(exc: StoreError) -> bool:
    return isinstance(exc.__cause__, IntegrityError)


def _policy_values(changes: Mapping[str, object]) -> dict[str, object]:
    unknown = sorted(set(changes) - {"body_capture", "retention_days"})
    if unknown:
        raise InvalidRequest(
            f"unknown team policy field {unknown[0]!r}: give body_capture, retention_days or both"
        )
    out: dict[str, object] = {}
    if "body_capture" in changes:
        mode = changes["body_capture"]
        if mode is not None and mode not in BODY_MODES:
            raise InvalidRequest(
                f"body_capture must be 'off', 'metadata' or 'full' (or null for the default), "
                f"not {_show(str(mode))}"
            )
        out["body_capture"] = mode
    if "retention_days" in changes:
        days = changes["retention_days"]
        if days is not None and (
            isinstance(days, bool)
            or not isinstance(days, int | float)
            or not 0 < days <= MAX_RETENTION_DAYS
        ):
            raise InvalidRequest(
                f"retention_days must be a number of days above 0 and at most "
                f"{MAX_RETENTION_DAYS} (or null for the default), not {_show(str(days))}"
            )
        out["retention_days"] = None if days is None else float(days)
    return out


def _inherit(
    conn: Connection,
    parent_id: str,
    models: tuple[str, ...] | None,
    expires_at: float | None,
    now: float,
) -> tuple[tuple[str, ...] | None, float | None]:
    """The models and expiry of a key minted under ``parent_id``: within the parent's.

    The parent's row is locked (PostgreSQL) until the new key is stored, so a revocation
    of the parent either comes first and is seen here, or comes after and revokes the
    new key with it.
    """
    row = conn.execute(
        select(keys_table).where(keys_table.c.id == parent_id).with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"the parent key {_show(parent_id)} no longer exists")
    if row.revoked_at is not None:
        raise PermissionDenied(f"the parent key {row.id} has been revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise PermissionDenied(f"the parent key {row.id} has expired")
    if row.allowed_models is not None:
        allowed = set(row.allowed_models)
        models = tuple(
            m for m in (row.allowed_models if models is None else models) if m in allowed
        )
    if row.expires_at is not None:
        expires_at = row.expires_at if expires_at is None else min(expires_at, row.expires_at)
    return models, expires_at


def _check_new_key(role: str, name: str | None, expires_at: float | None, now: float) -> None:
    if role not in ("virtual", "team_admin"):
        raise InvalidRequest(f"key role must be 'virtual' or 'team_admin', not {_show(role)}")
    if name is not None:
        _check_text("key name", name, 200)
    if expires_at is not None and not now < expires_at <= now + MAX_KEY_LIFETIME:
        raise InvalidRequest("expires_at must be in the future and at most 10 years away")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid {kind} name {_show(name)}: use 1-100 letters, digits and . _ @ + -, "
            "starting with a letter or a digit"
        )


def _check_text(what: str, text: str, limit: int) -> None:
    """Refuse text a database or a terminal would mangle: control characters, lone surrogates."""
    ok = 0 < len(text) <= limit and text.isprintable()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise InvalidRequest(f"invalid {what}: use 1-{limit} printable characters")


def _usable_ref(ref: str) -> bool:
    """Whether a lookup value could name anything (NUL bytes upset Postgres, for one)."""
    if not 0 < len(ref) <= MAX_REF_LENGTH or "\x00" in ref:
        return False
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: str) -> str:
    """A caller's value quoted for an error message, cut short and made printable."""
    # repr escapes control characters and lone surrogates, so the message stays encodable.
    return repr(value if len(value) <= 60 else value[:57] + "...")
