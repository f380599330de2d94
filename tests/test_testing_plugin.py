"""dbkeel's pytest plugin, proven on a sample application's own test suite.

tests/plugin_sample is a small FastAPI application whose tests commit through the
application's module-level ``DatabaseManager``; each test signs up the same address, so
a commit that escaped one test fails the next. pytester runs that suite in a fresh
interpreter, as a user's CI would, on PostgreSQL, SQLite and MariaDB.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
from pathlib import Path

import aiosqlite  # noqa: F401
import asyncmy  # noqa: F401
import asyncpg  # noqa: F401
import pytest
import sqlalchemy.dialects.mysql.asyncmy
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from dbkeel.testing.provision import _admin_engine, _drop, with_suffix
from tests import conftest

# The drivers and SQLAlchemy's dialects for them are imported above, before any test:
# pytester removes the modules a test imported when it ends, and a C extension imported a
# second time (asyncpg) crashes, while a dialect module imported anew gives later tests
# classes that are not the ones their engines were built with.
SAMPLE = Path(__file__).parent / "plugin_sample"
# the sample suite: 17 tests, one of which fails on purpose
PASSED, FAILED = 16, 1


@pytest.fixture
def app_url(backend: str, test_databases: conftest.TestDatabases, tmp_path: Path) -> str:
    """The sample application's DATABASE_URL: a database name nobody uses; the plugin
    works in ``<name>_test`` and never touches this one."""
    server = make_url(test_databases.url(backend))  # fails clearly if the server is down
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}"
    name = f"dkp_{secrets.token_hex(4)}"
    return server.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def sample(pytester: pytest.Pytester, app_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(SAMPLE, pytester.path, dirs_exist_ok=True)
    monkeypatch.setenv("DATABASE_URL", app_url)
    return pytester.path


def _server_databases(url: URL) -> set[str]:
    async def names() -> set[str]:
        engine = _admin_engine(url)
        try:
            async with engine.connect() as conn:
                if url.get_backend_name() == "postgresql":
                    rows = await conn.execute(text("SELECT datname FROM pg_database"))
                else:
                    rows = await conn.execute(text("SHOW DATABASES"))
                return {str(r[0]) for r in rows}
        finally:
            await engine.dispose()

    return asyncio.run(names())


def _test_database_exists(app_url: str, suffix: str = "_test") -> bool:
    url = with_suffix(make_url(app_url), suffix)
    if url.get_backend_name() == "sqlite":
        return Path(url.database or "").exists()
    return url.database in _server_databases(url)


def _set_ini(path: Path, old: str, new: str) -> None:
    ini = path / "pyproject.toml"
    text_ = ini.read_text()
    assert old in text_
    ini.write_text(text_.replace(old, new))


def test_the_sample_suite_is_isolated(
    sample: Path, pytester: pytest.Pytester, app_url: str
) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=PASSED, failed=FAILED)
    result.stdout.fnmatch_lines(["*FAILED tests/test_isolation.py::test_a_failing_test_leaves*"])
    # the run's database is gone, and the application's own was never created
    assert not _test_database_exists(app_url)
    assert not _test_database_exists(app_url, suffix="")


def test_isolation_fails_when_the_rollback_is_removed(
    sample: Path, pytester: pytest.Pytester, app_url: str
) -> None:
    # The mutation check: a sandbox that commits instead of rolling back must make the
    # sample's isolation tests fail, or they prove nothing.
    (sample / "conftest.py").write_text(
        "from dbkeel.testing.sandbox import Sandbox\n\n"
        "async def _commit(self):\n"
        "    await self._transaction.commit()\n"
        "    if not self._keep_connection:\n"
        "        await self._connection.close()\n\n"
        "Sandbox._rollback = _commit\n"
        "Sandbox._hold_rollback = lambda self: False  # no rollback held back either\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) > FAILED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*FAILED tests/test_isolation.py::test_second_commit_is_inv*"])


def test_two_xdist_workers_get_a_database_each(
    sample: Path, pytester: pytest.Pytester, app_url: str, backend: str
) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=PASSED, failed=FAILED)
    for worker in ("gw0", "gw1"):
        assert not _test_database_exists(app_url, suffix=f"_test_{worker}")


def _session_loops(sample: Path) -> None:
    """One event loop for the whole run: the connection is kept from test to test."""
    _set_ini(
        sample,
        'asyncio_default_fixture_loop_scope = "function"\n'
        'asyncio_default_test_loop_scope = "function"',
        'asyncio_default_fixture_loop_scope = "session"\n'
        'asyncio_default_test_loop_scope = "session"',
    )


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("asyncio_mode", ["strict", "auto"])
def test_session_event_loops_and_strict_mode(
    sample: Path, pytester: pytest.Pytester, asyncio_mode: str
) -> None:
    # One loop for the whole run: the connection is reused from test to test.
    _set_ini(sample, 'asyncio_mode = "auto"', f'asyncio_mode = "{asyncio_mode}"')
    _session_loops(sample)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=PASSED, failed=FAILED)


_OWN_ENGINE_TESTS = """
import pytest
from app import service
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.asyncio


async def test_a_sandboxed_signup(dbkeel_db):
    await service.signup("own@example.com")


async def test_an_engine_of_its_own_does_not_wait_for_it(dbkeel_database):
    engine = create_async_engine(dbkeel_database.settings.url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET lock_timeout = '2s'"))
            await conn.execute(text("INSERT INTO plg_user (email) VALUES ('own@example.com')"))
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_sandboxed_again(dbkeel_db):
    assert await service.count_users() == 0
    await service.signup("own@example.com")
"""


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_test_without_the_sandbox_does_not_wait_on_the_previous_one(
    sample: Path, pytester: pytest.Pytester
) -> None:
    # A sandboxed test's rollback may wait for the next test's first statement on its
    # connection (one round trip saved per test), but only if that next test is
    # sandboxed too: here its unique row would block the next test's own INSERT.
    _session_loops(sample)
    (sample / "tests" / "test_own_engine.py").write_text(_OWN_ENGINE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_own_engine.py")
    result.assert_outcomes(passed=3)


def test_a_database_it_did_not_create_is_refused(
    sample: Path, pytester: pytest.Pytester, app_url: str, backend: str
) -> None:
    test_url = with_suffix(make_url(app_url), "_test")
    foreign = test_url.render_as_string(hide_password=False)
    asyncio.run(_create_foreign_database(foreign))
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(errors=PASSED + FAILED)
        result.stdout.fnmatch_lines(["*was not created by dbkeel's pytest plugin*"])
        assert asyncio.run(_foreign_rows(foreign)) == 1

        # told explicitly: the schema is added, the tests run, the database stays
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--dbkeel-allow-existing")
        result.assert_outcomes(passed=PASSED, failed=FAILED)
        assert asyncio.run(_foreign_rows(foreign)) == 1
    finally:
        if backend == "sqlite":
            Path(test_url.database or "").unlink(missing_ok=True)
        else:
            asyncio.run(_drop_foreign_database(test_url))


async def _create_foreign_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        admin = _admin_engine(parsed)
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f"CREATE DATABASE {parsed.database}"))
        finally:
            await admin.dispose()
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE precious (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO precious VALUES (1)"))
    finally:
        await engine.dispose()


async def _foreign_rows(url: str) -> int:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM precious"))).scalar_one())
    finally:
        await engine.dispose()


async def _drop_foreign_database(url: URL) -> None:
    admin = _admin_engine(url)
    try:
        async with admin.connect() as conn:
            await _drop(conn, url.database or "")
    finally:
        await admin.dispose()


DDL_TEST = """
import pytest
from sqlalchemy import text

from dbkeel import SandboxError

pytestmark = pytest.mark.asyncio


async def test_ddl(dbkeel_db):
    async with dbkeel_db.get_session() as session:
        await session.execute(text("CREATE TABLE plg_ddl (id INTEGER PRIMARY KEY)"))
        await session.execute(text("INSERT INTO plg_ddl VALUES (1)"))


async def test_ddl_was_rolled_back(dbkeel_db):
    async with dbkeel_db.get_session() as session:
        await session.execute(text("CREATE TABLE plg_ddl (id INTEGER PRIMARY KEY)"))
"""


def test_ddl_inside_the_test_transaction(
    sample: Path, pytester: pytest.Pytester, backend: str
) -> None:
    (sample / "tests" / "test_ddl.py").write_text(DDL_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_ddl.py")
    if backend == "mariadb":
        # MariaDB would commit the test's transaction: refused before it reaches the server
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines(["*SandboxError*commit the open transaction before DDL*"])
    else:
        # transactional DDL: the table is rolled back with the test
        result.assert_outcomes(passed=2)


def test_the_plugin_is_inert_until_its_fixtures_are_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_nothing_was_imported():
            assert "sqlalchemy" not in sys.modules
            assert "dbkeel" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    help_text = pytester.runpytest_subprocess("--help")
    help_text.stdout.fnmatch_lines(["*--dbkeel-url*"])


def test_an_unreachable_server_is_named_without_its_password(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(SAMPLE, pytester.path, dirs_exist_ok=True)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://app:S3cretPw@127.0.0.1:{port}/shop")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_web.py")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [f"*cannot reach the postgresql server at 127.0.0.1:{port} to create the test database*"]
    )
    assert "S3cretPw" not in result.stdout.str() + result.stderr.str()


ALEMBIC_ENV = """
from dbkeel.migrations.env import run_migrations

from app.models import Base

run_migrations(Base.metadata)
"""
ALEMBIC_REVISION = """
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    from app.models import Base

    Base.metadata.create_all(op.get_bind())
"""


def test_the_schema_can_come_from_alembic(sample: Path, pytester: pytest.Pytester) -> None:
    (sample / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (sample / "migrations" / "versions").mkdir(parents=True)
    (sample / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    (sample / "migrations" / "versions" / "0001_initial.py").write_text(ALEMBIC_REVISION)
    _set_ini(
        sample,
        'dbkeel_metadata = "app.models:Base.metadata"',
        'dbkeel_alembic = "alembic.ini"',
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=PASSED, failed=FAILED)
