"""The store: one SQLAlchemy engine, migrated to head at start-up.

SQLite runs in WAL mode with a busy timeout so several processes can share
one file; Postgres takes an advisory lock around migrations so replicas that
start together do not race.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, SQLAlchemyError

from corral.errors import InvalidRequest, StoreError
from corral.store.files import private_sqlite

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 0x436F7272  # "Corr": the advisory lock id migrations take on Postgres


class Store:
    """Owns the engine. Everything that reads or writes the database goes through it."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.dialect == "sqlite":
            path = make_url(url).database  # None or "" for an in-memory database
            if path and path != ":memory:" and not path.startswith("file:"):
                private_sqlite(Path(path))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open the store at {_redact(url)}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def describe(self) -> str:
        """The URL with any password hidden, fit for a banner or a log line."""
        return _redact(self.url)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the newest revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store at {_redact(self.url)}: {exc}") from exc

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; database errors become ``StoreError`` (see ``store_error``)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OverflowError) as exc:
            raise store_error(exc) from exc

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads; database errors become ``StoreError``."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OverflowError) as exc:
            raise store_error(exc) from exc

    def close(self) -> None:
        self.engine.dispose()


def store_error(exc: Exception) -> StoreError | InvalidRequest:
    """What a caller is told of a database error: never the SQL, its parameters or the
    driver's detail (which quote other rows' values). The log keeps the driver's detail,
    not the statement's parameters (bodies may be among them).

    A value the database cannot hold (a number out of range: SQLite raises ``OverflowError``
    before SQLAlchemy sees it) is the caller's to fix: a 400. A connection problem is a 503
    that says so; anything else a 503 that names only the class of the error.
    """
    log.warning("store error: %s: %s", exc.__class__.__name__, getattr(exc, "orig", exc))
    if isinstance(exc, OverflowError | DataError):
        return InvalidRequest("a value is out of the range the store can hold")
    kind = exc.__class__.__name__
    if isinstance(exc, OperationalError | InterfaceError):
        return StoreError(f"the store is unreachable or busy ({kind}); retry shortly")
    return StoreError(f"the store refused the operation ({kind}); the server log has the details")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # 32 MiB of page cache a connection (the default is 2 MiB): span inserts touch random
    # pages of several indexes, and a store of millions of spans outgrows 2 MiB at once.
    cur.execute("PRAGMA cache_size=-32768")
    cur.close()


def _redact(url: str) -> str:
    """Hide the password in a database URL before it reaches a message or a log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
