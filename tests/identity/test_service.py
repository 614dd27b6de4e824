"""The identity service against both stores: teams, users, keys, the admin key, usage."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from corral.clock import ManualClock
from corral.errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from corral.identity.keys import KeyCache, hash_key, shown_prefix
from corral.identity.service import (
    ADMIN_KEY_ID,
    ADMIN_KEY_PREFIX,
    IdentityService,
    bootstrap,
    parse_duration,
    parse_since,
)
from corral.settings import Settings
from corral.store import Store
from corral.store.schema import keys as keys_table


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def svc(store: Store, clock: ManualClock) -> IdentityService:
    service = IdentityService(store, clock)
    service.ensure_default_org()
    return service


def _settings(tmp_path: Path, admin_key: str | None = None) -> Settings:
    return Settings(home=tmp_path, admin_key=admin_key)


def test_team_names_are_unique_and_teams_resolve_by_id_or_name(svc: IdentityService) -> None:
    """A team is found by id or name; a second team with the same name is a conflict."""
    team = svc.create_team("payments")
    assert team.id.startswith("team_")
    assert svc.get_team("payments") == team
    assert svc.get_team(team.id) == team
    with pytest.raises(Conflict, match="payments"):
        svc.create_team("payments")
    svc.create_team("search")
    assert [t.name for t in svc.list_teams()] == ["payments", "search"]
    assert svc.list_teams(team_id=team.id) == [team]
    with pytest.raises(NotFound):
        svc.get_team("nope")


@pytest.mark.parametrize(
    "name", ["", "has space", "-leading", "x" * 101, "nul\x00", "\ud800", "trailing\n"]
)
def test_bad_team_names_are_refused(svc: IdentityService, name: str) -> None:
    """Names are plain tokens; anything else is a 400 naming the rule."""
    with pytest.raises(InvalidRequest, match="team name"):
        svc.create_team(name)


def test_lookups_with_unusable_values_are_not_found(svc: IdentityService) -> None:
    """Values no name could have (NUL, lone surrogates, very long) never reach the database."""
    for ref in ["a\x00b", "\udcff", "y" * 1000]:
        with pytest.raises(NotFound):
            svc.get_team(ref)
        with pytest.raises(NotFound):
            svc.get_key(ref)
        with pytest.raises(NotFound):
            svc.get_user(ref)


def test_users_are_unique_per_team(svc: IdentityService) -> None:
    """The same user name may exist in two teams; by name alone it is then ambiguous."""
    payments, search = svc.create_team("payments"), svc.create_team("search")
    alice = svc.create_user("alice", "payments", email="alice@example.com")
    bot = svc.create_user("ci-bot", payments.id, kind="service")
    assert alice.id.startswith("usr_")
    assert alice.kind == "user"
    assert bot.kind == "service"
    with pytest.raises(Conflict, match="already exists in team 'payments'"):
        svc.create_user("alice", "payments")
    other_alice = svc.create_user("alice", "search")
    assert svc.get_user("alice", team_id=search.id) == other_alice
    assert svc.get_user(alice.id) == alice
    with pytest.raises(Conflict, match="more than one"):
        svc.get_user("alice")
    assert [u.name for u in svc.list_users(team_id=payments.id)] == ["alice", "ci-bot"]
    assert len(svc.list_users()) == 3
    with pytest.raises(NotFound, match="team 'nope'"):
        svc.create_user("bob", "nope")
    with pytest.raises(NotFound, match="in team 'search'"):
        svc.get_user("ci-bot", team_id=search.id)


def test_create_key_returns_the_secret_once_and_stores_its_hash(
    svc: IdentityService, store: Store, clock: ManualClock
) -> None:
    svc.create_team("payments")
    alice = svc.create_user("alice", "payments")
    key, raw = svc.create_key(
        "payments", "alice", name="laptop", models=["m1", "m2", "m1"], expires_at=clock.now() + 60
    )
    assert raw.startswith("sk-corral-")
    assert key.id.startswith("key_")
    assert key.user_id == alice.id
    assert key.role == "virtual"
    assert key.prefix == shown_prefix(raw)
    assert key.allowed_models == ("m1", "m2")
    with store.connect() as conn:
        row = conn.execute(select(keys_table).where(keys_table.c.id == key.id)).one()
    assert row.key_hash == hash_key(raw)
    assert svc.get_key(key.id) == key
    assert svc.list_keys(user_id=alice.id) == [key]


def test_create_key_checks_owner_role_and_expiry(svc: IdentityService, clock: ManualClock) -> None:
    svc.create_team("payments")
    svc.create_team("search")
    svc.create_user("alice", "payments")
    with pytest.raises(NotFound, match="user 'alice' not found in team 'search'"):
        svc.create_key("search", "alice")
    with pytest.raises(InvalidRequest, match="future"):
        svc.create_key("payments", "alice", expires_at=clock.now() - 1)
    with pytest.raises(InvalidRequest, match="10 years"):
        svc.create_key("payments", "alice", expires_at=clock.now() + 20 * 365 * 86400)
    with pytest.raises(InvalidRequest, match="role"):
        svc.create_key("payments", "alice", role="admin")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="key name"):
        svc.create_key("payments", "alice", name="bell\x07")
    key, _ = svc.create_key("payments", "alice", role="team_admin")
    assert key.role == "team_admin"


def test_revoke_sets_revoked_and_updated_at(svc: IdentityService, clock: ManualClock) -> None:
    """The key cache refresher polls updated_at, so revocation must move it."""
    svc.create_team("payments")
    svc.create_user("alice", "payments")
    key, _ = svc.create_key("payments", "alice")
    clock.advance(10)
    revoked = svc.revoke_key(key.id)
    assert revoked.revoked_at == clock.now()
    assert revoked.updated_at == clock.now() > key.updated_at
    clock.advance(10)
    assert svc.revoke_key(key.id) == revoked  # revoking twice changes nothing
    with pytest.raises(NotFound):
        svc.revoke_key("key_missing")


def test_key_cache_refuses_a_key_revoked_elsewhere(
    svc: IdentityService, store: Store, clock: ManualClock
) -> None:
    """A cached key is refused once the refresher has seen its revocation."""
    svc.create_team("payments")
    svc.create_user("alice", "payments")
    key, raw = svc.create_key("payments", "alice")
    cache = KeyCache(store, clock)
    assert asyncio.run(cache.authenticate(raw)).key_id == key.id
    svc.revoke_key(key.id)
    cache.refresh_once()
    with pytest.raises(AuthenticationFailed, match="revoked"):
        asyncio.run(cache.authenticate(raw))


def test_bootstrap_mints_the_admin_key_once(store: Store, tmp_path: Path) -> None:
    clock = ManualClock()
    raw = bootstrap(store, _settings(tmp_path), clock)
    assert raw is not None
    assert raw.startswith(ADMIN_KEY_PREFIX)
    assert shown_prefix(raw).startswith("sk-corral-admi")
    assert bootstrap(store, _settings(tmp_path), clock) is None
    info = asyncio.run(KeyCache(store, clock).authenticate(raw))
    assert info.role == "admin"
    assert info.key_id == ADMIN_KEY_ID
    info.require_admin("team_anything")


def test_bootstrap_uses_and_follows_the_configured_admin_key(store: Store, tmp_path: Path) -> None:
    """CORRAL_ADMIN_KEY replaces the stored hash when it changes; the old key stops working."""
    clock = ManualClock()
    first, second = "first-admin-secret-123456", "second-admin-secret-123456"
    assert bootstrap(store, _settings(tmp_path, first), clock) is None
    assert bootstrap(store, _settings(tmp_path, first), clock) is None
    clock.advance(5)
    bootstrap(store, _settings(tmp_path, second), clock)
    cache = KeyCache(store, clock)
    assert asyncio.run(cache.authenticate(second)).role == "admin"
    with pytest.raises(AuthenticationFailed):
        asyncio.run(cache.authenticate(first))
    with store.connect() as conn:
        row = conn.execute(select(keys_table).where(keys_table.c.id == ADMIN_KEY_ID)).one()
    assert row.prefix == "(env)"  # a hand-made secret shows nothing of itself
    assert row.updated_at == clock.now()
    with pytest.raises(ConfigError, match="16"):
        bootstrap(store, _settings(tmp_path, "short"), clock)


def test_admin_key_cannot_be_revoked(store: Store, tmp_path: Path) -> None:
    clock = ManualClock()
    bootstrap(store, _settings(tmp_path), clock)
    with pytest.raises(PermissionDenied, match="CORRAL_ADMIN_KEY"):
        IdentityService(store, clock).revoke_key(ADMIN_KEY_ID)


def test_concurrent_bootstraps_mint_one_admin_key(store_url: str, tmp_path: Path) -> None:
    """Two processes starting together on one database: exactly one prints a key."""
    url = Settings(home=tmp_path, database_url=store_url).resolved_database_url
    stores = [Store(url) for _ in range(4)]
    stores[0].migrate()
    results: list[str | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def start(s: Store) -> None:
        barrier.wait()
        try:
            results.append(bootstrap(s, _settings(tmp_path), ManualClock()))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    assert len([r for r in results if r is not None]) == 1


def test_team_and_user_names(svc: IdentityService) -> None:
    """Names are read for the ids asked for; unknown ids are left out, none asked reads none."""
    pay, search = svc.create_team("payments"), svc.create_team("search")
    alice = svc.create_user("alice", pay.id)
    bot = svc.create_user("ci", search.id, kind="service")
    assert svc.team_names([pay.id, search.id, "team_gone"]) == {
        pay.id: "payments",
        search.id: "search",
    }
    assert svc.team_names([]) == {}
    assert svc.user_names({alice.id, bot.id, pay.id}) == {alice.id: "alice", bot.id: "ci"}
    assert svc.user_names(iter(())) == {}


def test_parse_duration_and_since() -> None:
    now = 1_800_000_000.0
    assert parse_duration("90s") == 90
    assert parse_duration("7d") == 7 * 86400
    assert parse_since("24h", now) == now - 86400
    assert parse_since("all", now) == 0.0
    assert parse_since("2027-01-14T08:00:00Z", now) == 1_799_913_600.0
    assert parse_since("2027-01-14T08:00:00", now) == 1_799_913_600.0
    assert parse_since("999999999w", now) == 0.0
    for bad in ["", "7", "7y", "-1d", "1.5h", "yesterday", "\x00"]:
        with pytest.raises(InvalidRequest):
            parse_since(bad, now)
    with pytest.raises(InvalidRequest, match="duration"):
        parse_duration("soon")
