"""Store fixtures shared by the whole suite.

``store_url`` runs a test once against SQLite (a file in the test's temp
folder) and once against PostgreSQL. The PostgreSQL server is the one named by
``CORRAL_TEST_POSTGRES_URL`` when set; otherwise a throwaway server started
from the Debian package for the session (``initdb`` + ``pg_ctl``, as the
``postgres`` user when the suite runs as root, since ``initdb`` refuses root).
Each test gets a fresh database on it. Without PostgreSQL the postgres half is
skipped, except on CI (``CI=true``) where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import psycopg
import pytest
from psycopg import sql

from corral.settings import Settings, load_settings
from corral.store import Store
from corral.testing import ServerThread
from tests.services import free_port, missing_service

if TYPE_CHECKING:
    from corral.app import CorralApp
    from corral.clock import Clock
    from corral.gateway.hooks import GatewayHooks

ADMIN_KEY = "sk-corral-admin-test-0123456789abcdefghijklmnopqrstuv"


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server the suite may create and drop databases on."""

    base_url: str  # postgresql://user@host:port (no database)

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    def create_database(self) -> str:
        name = f"corral_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _missing_postgres(reason: str) -> NoReturn:
    missing_service("PostgreSQL", reason)


def _as_postgres(argv: list[str]) -> list[str]:
    """Run a PostgreSQL tool as the ``postgres`` user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def _local_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL from the Debian package; stop and delete it afterwards."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        _missing_postgres("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    bindir = Path(candidates[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            _missing_postgres("running as root and there is no 'postgres' user to run initdb")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", free_port()
    # Durability is pointless for a throwaway server and fsync dominates test time.
    options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -F -c full_page_writes=off"
    run = {"check": True, "capture_output": True, "timeout": 120}
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run(_as_postgres([*initdb, "-E", "UTF8", "--no-locale", "--no-sync"]), **run)
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-o", options]
        subprocess.run(_as_postgres([*pg_ctl, "-l", str(root / "log"), "-w", "start"]), **run)
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}")
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server for this session (external or started here)."""
    external = os.environ.get("CORRAL_TEST_POSTGRES_URL")
    if external:
        scheme, rest = external.split("://", 1)
        yield PostgresServer(f"{scheme}://{rest.split('/', 1)[0]}")
        return
    try:
        with _local_postgres() as server:
            yield server
    except subprocess.CalledProcessError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip()
        _missing_postgres(f"starting it failed: {stderr[-500:]}")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL as a user would write it in settings: SQLite file or a fresh Postgres DB."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A migrated ``Store`` on ``store_url``."""
    url = Settings(home=tmp_path, database_url=store_url).resolved_database_url
    s = Store(url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


@dataclass
class Corral:
    """A running Corral process (in a thread, on a real socket) and how to call it."""

    app: CorralApp
    server: ServerThread
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client for the admin API, authenticated with ``key`` (default: admin)."""
        headers = {"authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        """One GET with ``key`` (default: admin), on a connection of its own."""
        with self.client(key) as c:
            return c.get(path, **kwargs)


@contextlib.contextmanager
def run_corral(
    home: Path,
    database_url: str,
    *,
    clock: Clock | None = None,
    environ: dict[str, str] | None = None,
    hooks: GatewayHooks | None = None,
    **settings: object,
) -> Iterator[Corral]:
    """Start a real ``CorralApp`` on ``database_url`` and stop it afterwards (``hooks``: the
    gateway's guards, observers and listeners)."""
    from corral.app import CorralApp  # the whole application; only the tests that run it pay

    app = CorralApp(
        load_settings(home=home, database_url=database_url, admin_key=ADMIN_KEY, **settings),
        clock=clock,
        environ=environ,
        hooks=hooks,
    )
    with ServerThread(app) as server:
        yield Corral(app, server, ADMIN_KEY)


# No model calls go out in admin-API tests: point the catalog at a simulator
# address nothing listens on instead of starting the in-process one.
NO_SIM = "http://127.0.0.1:9"


StartCorral = Callable[..., contextlib.AbstractContextManager[Corral]]


@pytest.fixture
def start_corral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StartCorral:
    """``run_corral``, with no ``corral.toml`` or ``CORRAL_CONFIG`` of the developer's read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    return run_corral


@pytest.fixture
def corral(store_url: str, tmp_path: Path, start_corral: StartCorral) -> Iterator[Corral]:
    """A running Corral on ``store_url`` with the admin key ``ADMIN_KEY``."""
    with start_corral(tmp_path / "home", store_url, sim_url=NO_SIM) as running:
        yield running
