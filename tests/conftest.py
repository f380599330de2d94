"""The real-database test rig.

Every portable test runs against PostgreSQL (asyncpg), SQLite (aiosqlite) and MariaDB
(asyncmy) through the ``backend`` / ``db`` fixtures. Each test run creates its own
database on each server (``dbkeel_t_<pid>_<random>``) and drops it at the end, so runs
can repeat, and run side by side, on the same servers. A server that cannot be reached
fails the test with the command that starts it: nothing is skipped silently.

Server URLs come from DBKEEL_TEST_POSTGRES_URL and DBKEEL_TEST_MARIADB_URL. PgBouncer
tests reach the same PostgreSQL database through DBKEEL_TEST_PGBOUNCER_URL (a
transaction-pooling PgBouncer that ``.ci/services`` starts on 127.0.0.1:6439).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel.testing.provision import _drop as drop

if TYPE_CHECKING:
    from tests.replica_rig import ReplicaCluster

# A sample application with its own test suite, run by tests/test_testing_plugin.py
collect_ignore = ["plugin_sample"]

BACKENDS = ("postgresql", "sqlite", "mariadb")
SERVER_URLS = {
    "postgresql": os.environ.get(
        "DBKEEL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get(
        "DBKEEL_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
    ),
}
PGBOUNCER_URL = os.environ.get(
    "DBKEEL_TEST_PGBOUNCER_URL", "postgresql+asyncpg://postgres@127.0.0.1:6439/test"
)
START_COMMANDS = {
    "postgresql": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mariadb": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}


def _admin(backend: str) -> AsyncEngine:
    """An engine on *backend*'s test server that may create and drop databases."""
    return create_async_engine(
        SERVER_URLS[backend], poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )


class TestDatabases:
    """Creates one database per server for this test run, on first use."""

    def __init__(self, tmp_dir: Path) -> None:
        self.name = f"dbkeel_t_{os.getpid()}_{secrets.token_hex(3)}"
        self.tmp_dir = tmp_dir
        self.urls: dict[str, str] = {}
        self.failures: dict[str, str] = {}

    def url(self, backend: str) -> str:
        if backend in self.failures:
            pytest.fail(self.failures[backend], pytrace=False)
        if backend not in self.urls:
            if backend == "sqlite":
                self.urls[backend] = f"sqlite+aiosqlite:///{self.tmp_dir / 'test.sqlite3'}"
            else:
                try:
                    asyncio.run(self._create(backend))
                except (OSError, Exception) as exc:  # any failure to reach the server
                    self.failures[backend] = (
                        f"The {backend} test server at {SERVER_URLS[backend]} is not "
                        f"reachable ({type(exc).__name__}: {exc}). Start it with:\n    "
                        f"{START_COMMANDS[backend]}\nor point DBKEEL_TEST_"
                        f"{'POSTGRES' if backend == 'postgresql' else 'MARIADB'}_URL at one."
                    )
                    pytest.fail(self.failures[backend], pytrace=False)
        return self.urls[backend]

    async def _create(self, backend: str) -> None:
        admin = _admin(backend)
        try:
            async with asyncio.timeout(10):
                async with admin.connect() as conn:
                    await conn.execute(text(f"CREATE DATABASE {self.name}"))
        finally:
            await admin.dispose()
        url = make_url(SERVER_URLS[backend]).set(database=self.name)
        self.urls[backend] = url.render_as_string(hide_password=False)

    async def _drop(self, backend: str) -> None:
        admin = _admin(backend)
        try:
            async with admin.connect() as conn:
                await drop(conn, self.name)
        finally:
            await admin.dispose()

    def drop_all(self) -> None:
        for backend in list(self.urls):
            if backend != "sqlite":
                asyncio.run(self._drop(backend))


@pytest.fixture(scope="session")
def test_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabases]:
    databases = TestDatabases(tmp_path_factory.mktemp("dbkeel"))
    yield databases
    databases.drop_all()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over the three databases."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, test_databases: TestDatabases) -> str:
    return test_databases.url(backend)


@pytest.fixture
def pg_url(test_databases: TestDatabases) -> str:
    return test_databases.url("postgresql")


@pytest.fixture
def pgbouncer_url(test_databases: TestDatabases) -> str:
    """This run's PostgreSQL test database, reached through PgBouncer (transaction mode)."""
    database = make_url(test_databases.url("postgresql")).database
    url = make_url(PGBOUNCER_URL).set(database=database)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 6432), timeout=2).close()
    except OSError as exc:
        pytest.fail(
            f"PgBouncer at {PGBOUNCER_URL} is not reachable ({exc}). Start it (Debian's "
            f"pgbouncer package, transaction pooling, in front of 127.0.0.1:5432) with:\n"
            f"    bash .ci/services\nor point DBKEEL_TEST_PGBOUNCER_URL at one.",
            pytrace=False,
        )
    return url.render_as_string(hide_password=False)


@pytest.fixture
def mariadb_url(test_databases: TestDatabases) -> str:
    return test_databases.url("mariadb")


# -- test modules written on dbkeel's own pytest plugin (dbkeel.testing, issue 15) -------
# Their models' Base classes share this MetaData (``metadata = PLUGIN_METADATA``): the
# plugin creates its tables once per backend per run, and every test runs in its own
# transaction, rolled back at the end, instead of creating and dropping tables per test.
# A test asks for ``dbkeel_db``; it then runs once per backend, like ``db``'s tests.
PLUGIN_METADATA = MetaData()


@pytest.fixture(scope="session")
def dbkeel_metadata() -> MetaData:
    return PLUGIN_METADATA


@pytest.fixture(scope="session", params=BACKENDS)
def dbkeel_url(request: pytest.FixtureRequest, test_databases: TestDatabases) -> str:
    """A database the plugin creates (and drops) next to this run's own, per backend."""
    server = test_databases.url(request.param)  # fails naming the server if unreachable
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{test_databases.tmp_dir / 'plugin_test.sqlite3'}"
    url = make_url(server).set(database=f"{test_databases.name}_plugin")
    return url.render_as_string(hide_password=False)


def make_settings(url: str, **overrides: Any) -> DatabaseSettings:
    """Test-profile settings for *url* (NullPool) unless overridden."""
    values: dict[str, Any] = {
        "database_url": url,
        "environment": "test",
        "app_name": "dbkeel-tests",
    }
    values.update(overrides)
    return DatabaseSettings(**values)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dbkeel`` as a user would: a subprocess, no DATABASE_* leaking in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    base.pop("ENVIRONMENT", None)
    base.update({"COLUMNS": "200", "NO_COLOR": "1", "DBKEEL_DEMO_BULK_ROWS": "3000"})
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dbkeel", *args],
        env=base,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[DatabaseManager]:
    """An initialized DatabaseManager on the parametrized backend."""
    async with DatabaseManager(make_settings(db_url)) as manager:
        yield manager


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[DatabaseManager]:
    """An initialized DatabaseManager on PostgreSQL (for PostgreSQL-only behaviour)."""
    async with DatabaseManager(make_settings(pg_url)) as manager:
        yield manager


@pytest.fixture(autouse=True)
async def fail_on_unhandled_loop_errors() -> AsyncIterator[None]:
    """An exception nobody awaited (a task that died, a callback that raised) fails the test."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(previous)
    assert not errors, f"unhandled event-loop errors: {errors}"


CreateTables = Callable[[DatabaseManager, MetaData], Awaitable[None]]


@pytest.fixture
async def create_tables() -> AsyncIterator[CreateTables]:
    """Factory: create a MetaData's tables on a manager's database; dropped after the test."""
    created: list[tuple[DatabaseManager, MetaData]] = []

    async def create(manager: DatabaseManager, metadata: MetaData) -> None:
        async with manager.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        created.append((manager, metadata))

    yield create
    for manager, metadata in reversed(created):
        if manager.is_initialized:
            async with manager.engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ReplicaCluster]:
    """A throwaway PostgreSQL primary with two streaming replicas on spare ports (never
    the shared server), built once per session by tests that need it, with a table
    ``items``; dropped at the end."""
    from tests.replica_rig import ReplicaCluster

    rig = ReplicaCluster.build(n_replicas=2)
    try:
        rig.primary.psql("CREATE TABLE items (id int PRIMARY KEY, value text)")
        # Reads go to a replica as soon as it is within the lag limit, which it can be
        # before it has replayed this CREATE TABLE ("relation items does not exist", once
        # in CI): every replica has the table before any test runs.
        rig.wait_replayed("SELECT to_regclass('items') IS NOT NULL")
        yield rig
    finally:
        rig.drop()
