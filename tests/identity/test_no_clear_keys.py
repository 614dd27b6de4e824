"""Acceptance: the database never contains a key in clear."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from corral.clock import ManualClock
from corral.identity.keys import KEY_PREFIX
from corral.identity.service import IdentityService, bootstrap
from corral.settings import Settings
from corral.store import Store
from corral.store.schema import metadata


def _all_text(store: Store) -> str:
    """Every value of every row of every table, as one string."""
    parts: list[str] = []
    with store.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                parts.extend(repr(value) for value in row)
    return "\n".join(parts)


def test_no_table_holds_a_raw_key(store: Store, tmp_path: Path) -> None:
    """After minting the admin key and several virtual keys, no secret appears anywhere.

    The secret part after the shown prefix is searched too, so a key stored
    without its ``sk-corral-`` prefix would be caught as well.
    """
    clock = ManualClock()
    admin = bootstrap(store, Settings(home=tmp_path, admin_key=None), clock)
    assert admin is not None
    svc = IdentityService(store, clock)
    svc.create_team("payments")
    svc.create_user("alice", "payments")
    svc.create_user("deploy-bot", "payments", kind="service")
    raws = [admin]
    for user in ["alice", "deploy-bot", "alice"]:
        key, raw = svc.create_key("payments", user, name=f"{user}-key", models=["sim-economy"])
        raws.append(raw)
    svc.revoke_key(key.id)
    dump = _all_text(store)
    assert "payments" in dump
    assert "alice-key" in dump  # the scan does see the data
    for raw in raws:
        secret = raw[len(KEY_PREFIX) + 4 :]
        assert raw not in dump
        assert secret not in dump
        assert secret[:16] not in dump
