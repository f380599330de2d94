"""dbkeel's pytest plugin (entry point ``pytest11: dbkeel``): isolated tests on the
real database. The machinery lives in :mod:`dbkeel.testing`; see docs/testing.md.

Inert until a test asks for one of its fixtures: importing this module imports only
pytest (it sits outside the ``dbkeel`` package for that); dbkeel, SQLAlchemy and the
driver are imported, and the test database created, when the first test that needs
them runs.

Configuration (``pyproject.toml`` ``[tool.pytest.ini_options]``, ``pytest.ini``)::

    dbkeel_metadata = "app.models:Base.metadata"   # tables to create, or:
    dbkeel_alembic = "alembic.ini"                 # alembic upgrade head, once per run
    dbkeel_manager = "app.db:db"                   # the app's DatabaseManager, sandboxed
    dbkeel_url = "postgresql+asyncpg://app@db/app_test"   # default: DATABASE_URL + _test

or, in ``conftest.py``, by overriding the session-scoped fixtures ``dbkeel_metadata``,
``dbkeel_app_manager`` and ``dbkeel_url``.
"""

from __future__ import annotations

import os
import types
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncSession

    from dbkeel.manager import DatabaseManager
    from dbkeel.testing.database import TestDatabase
    from dbkeel.testing.queries import QueryLog

__all__ = [
    "dbkeel_app_manager",
    "dbkeel_database",
    "dbkeel_metadata",
    "dbkeel_queries",
    "dbkeel_url",
    "pytest_addoption",
    "pytest_configure",
    "pytest_runtest_teardown",
]

_MARKER = (
    "dbkeel(transaction=True): transaction=False runs the test without the outer "
    "transaction (real commits) and empties the tables it wrote to afterwards"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbkeel", "dbkeel test database")
    group.addoption(
        "--dbkeel-url",
        default=None,
        help="URL of the test database (default: dbkeel_url, else DATABASE_URL + '_test').",
    )
    group.addoption(
        "--dbkeel-keep",
        action="store_true",
        help="keep the test database at the end of the run (it is recreated next run).",
    )
    group.addoption(
        "--dbkeel-allow-existing",
        action="store_true",
        help="use a test database that dbkeel did not create (never dropped).",
    )
    parser.addini("dbkeel_metadata", "import path of the MetaData to create, pkg.mod:attr")
    parser.addini("dbkeel_alembic", "alembic.ini to upgrade to head once per run")
    parser.addini("dbkeel_manager", "import path of the application's DatabaseManager")
    parser.addini("dbkeel_url", "URL of the test database")
    parser.addini("dbkeel_allow_existing", "use a database dbkeel did not create", type="bool")
    parser.addini("dbkeel_lock_timeout", "seconds a task waits for the test's connection")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    config.pluginmanager.register(_async_fixtures(_loop_scope(config)), "dbkeel-fixtures")


_NEXT_ITEM = pytest.StashKey["pytest.Item | None"]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # Before the fixtures are torn down: dbkeel_db's teardown looks at the next test.
    item.stash[_NEXT_ITEM] = nextitem


def _next_test_is_sandboxed(request: pytest.FixtureRequest) -> bool:
    """Whether the test after this one goes straight into a sandbox too: only then may
    this test's rollback wait for its first statement (dbkeel.testing.wire). Not if it
    is in another module or class (whose fixtures are set up first), may be skipped or
    not run (its fixtures then never start), or runs without the outer transaction."""
    nextitem = request.node.stash.get(_NEXT_ITEM, None)
    if (
        nextitem is None
        or nextitem.parent is not request.node.parent
        or "dbkeel_db" not in getattr(nextitem, "fixturenames", ())
    ):
        return False
    if any(any(nextitem.iter_markers(name)) for name in ("skip", "skipif", "xfail")):
        return False
    marker = nextitem.get_closest_marker("dbkeel")
    return marker is None or bool(marker.kwargs.get("transaction", True))


def _loop_scope(config: pytest.Config) -> str:
    """The event loop scope of pytest-asyncio's fixtures: dbkeel's async fixtures run in
    the same loop as the user's (a connection belongs to one loop)."""
    try:
        scope = config.getini("asyncio_default_fixture_loop_scope")
    except ValueError:  # pytest-asyncio is not installed
        return "function"
    return str(scope or "function")


def _import(path: str, what: str) -> Any:
    from dbkeel.exceptions import ConfigurationError

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{what} = {path!r} is not an import path: write 'package.module:attribute', "
            f"e.g. 'app.models:Base.metadata'."
        )
    import importlib

    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"{what} = {path!r}: {module_name} has no attribute {attribute!r}."
            ) from None
    return obj


# -- session-scoped configuration fixtures (override them in conftest.py) ----------------


@pytest.fixture(scope="session")
def dbkeel_metadata(pytestconfig: pytest.Config) -> MetaData | None:
    """The tables to create in the test database (ini ``dbkeel_metadata``)."""
    path = pytestconfig.getini("dbkeel_metadata")
    if not path:
        return None
    target = _import(str(path), "dbkeel_metadata")
    return getattr(target, "metadata", target)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def dbkeel_app_manager(pytestconfig: pytest.Config) -> DatabaseManager | None:
    """The application's own manager, put in every test's sandbox (ini ``dbkeel_manager``)."""
    path = pytestconfig.getini("dbkeel_manager")
    if not path:
        return None
    from dbkeel.exceptions import ConfigurationError
    from dbkeel.manager import DatabaseManager

    manager = _import(str(path), "dbkeel_manager")
    if not isinstance(manager, DatabaseManager):
        raise ConfigurationError(
            f"dbkeel_manager = {path!r} is a {type(manager).__name__}, not a DatabaseManager."
        )
    return manager


@pytest.fixture(scope="session")
def dbkeel_url(pytestconfig: pytest.Config) -> str | None:
    """The test database's URL (``--dbkeel-url``, ini ``dbkeel_url``); None: derived from
    ``DATABASE_URL`` (``<name>_test``, plus the xdist worker id)."""
    return pytestconfig.getoption("dbkeel_url") or pytestconfig.getini("dbkeel_url") or None


@pytest.fixture(scope="session")
def dbkeel_database(
    pytestconfig: pytest.Config,
    dbkeel_url: str | None,
    dbkeel_metadata: MetaData | None,
) -> Iterator[TestDatabase]:
    """The test database of this run (and xdist worker): created with its schema before
    the first test that needs it, dropped at the end unless ``--dbkeel-keep``."""
    from dbkeel.testing.database import TestDatabase

    alembic = pytestconfig.getini("dbkeel_alembic") or None
    allow = bool(
        pytestconfig.getoption("dbkeel_allow_existing")
        or pytestconfig.getini("dbkeel_allow_existing")
    )
    timeout = pytestconfig.getini("dbkeel_lock_timeout") or "10"
    database = TestDatabase.provision(
        url=dbkeel_url,
        worker=os.environ.get("PYTEST_XDIST_WORKER"),
        metadata=dbkeel_metadata,
        alembic_ini=str(pytestconfig.rootpath / str(alembic)) if alembic else None,
        allow_existing=allow,
        lock_timeout=float(str(timeout)),
    )
    try:
        yield database
    finally:
        if not pytestconfig.getoption("dbkeel_keep"):
            database.drop()


@pytest.fixture
def dbkeel_queries(dbkeel_db: DatabaseManager) -> Iterator[QueryLog]:
    """The statements this test sends to the database (``dbkeel.testing.QueryLog``):
    ``with dbkeel_queries.assert_max(2): ...`` fails listing the SQL if a block sends
    more; ``len(dbkeel_queries)`` and ``dbkeel_queries.statements`` for the whole test.
    The sandbox's own SAVEPOINTs are not counted."""
    from dbkeel.testing.queries import QueryLog

    with QueryLog(dbkeel_db) as log:
        yield log


# -- async fixtures, in the loop scope of the user's pytest-asyncio configuration --------


def _async_fixtures(scope: str) -> types.ModuleType:
    """The async fixtures, made once the loop scope is known (pytest_configure)."""
    module = types.ModuleType("dbkeel.testing._fixtures")
    try:
        import pytest_asyncio
    except ImportError:
        message = (
            "dbkeel's database fixtures are async and need pytest-asyncio: "
            "pip install pytest-asyncio"
        )

        def missing() -> None:
            pytest.fail(message, pytrace=False)

        for name in ("dbkeel_db", "dbkeel_session"):
            setattr(module, name, pytest.fixture(name=name)(missing))
        return module

    # A connection belongs to one event loop: the base manager lives as long as the loop
    # the user's async fixtures run in (one test with the default, the run with
    # asyncio_default_fixture_loop_scope = "session").
    @pytest_asyncio.fixture(scope=scope, loop_scope=scope)  # type: ignore[call-overload,untyped-decorator]
    async def _dbkeel_base(dbkeel_database: TestDatabase) -> AsyncIterator[DatabaseManager]:
        manager = await dbkeel_database.manager()
        try:
            yield manager
        finally:
            await dbkeel_database.release(manager)
            await manager.close()

    @pytest_asyncio.fixture(loop_scope=scope)  # type: ignore[call-overload,untyped-decorator]
    async def dbkeel_db(
        request: pytest.FixtureRequest,
        _dbkeel_base: DatabaseManager,
        dbkeel_app_manager: DatabaseManager | None,
        dbkeel_database: TestDatabase,
    ) -> AsyncIterator[DatabaseManager]:
        """A DatabaseManager whose sessions run inside this test's transaction."""
        transaction = _transaction_mode(request)
        async with dbkeel_database.isolated(
            _dbkeel_base, transaction=transaction, app_manager=dbkeel_app_manager
        ) as manager:
            yield manager
        if not _next_test_is_sandboxed(request):
            # the next test may reach the database without the sandbox: nothing of this
            # one may hold a lock meanwhile
            await dbkeel_database.settle(_dbkeel_base)

    @pytest_asyncio.fixture(loop_scope=scope)  # type: ignore[call-overload,untyped-decorator]
    async def dbkeel_session(dbkeel_db: DatabaseManager) -> AsyncIterator[AsyncSession]:
        """A session of ``dbkeel_db`` for the test's own queries; closed, not committed,
        at the end (``await dbkeel_session.commit()`` releases its SAVEPOINT)."""
        session = dbkeel_db.session_factory()
        try:
            yield session
        finally:
            await session.close()

    module._dbkeel_base = _dbkeel_base  # type: ignore[attr-defined]
    module.dbkeel_db = dbkeel_db  # type: ignore[attr-defined]
    module.dbkeel_session = dbkeel_session  # type: ignore[attr-defined]
    return module


def _transaction_mode(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker("dbkeel")
    if marker is None:
        return True
    unknown = set(marker.kwargs) - {"transaction"}
    if marker.args or unknown:
        pytest.fail(
            f"@pytest.mark.dbkeel takes only transaction=True|False, got "
            f"{marker.args or ''}{sorted(unknown) if unknown else ''}",
            pytrace=False,
        )
    return bool(marker.kwargs.get("transaction", True))
