"""``DatabaseManager``: owns the engine and the session factory of one database.

Lifecycle is explicit: create, ``await initialize()`` once (it proves the connection),
use ``get_session()``, ``await close()``. Or let ``async with`` do both::

    from dbkeel import DatabaseManager, DatabaseSettings

    async with DatabaseManager(DatabaseSettings(database_url=URL)) as db:
        async with db.get_session() as session:      # commits on success
            session.add(User(name="ada"))
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from sqlalchemy import MetaData, text
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dbkeel._masking import scrub_secrets
from dbkeel._translate import commit, mysql_errno, sqlstate, translate_errors
from dbkeel.engine import create_engine
from dbkeel.exceptions import ConfigurationError, DatabaseUnavailableError, ManagerStateError
from dbkeel.mixins.session import DbkeelSession
from dbkeel.monitoring.health import HealthReport, check_health
from dbkeel.monitoring.pool import PoolMonitor
from dbkeel.monitoring.slow_queries import SlowQueryLog
from dbkeel.settings import DatabaseSettings

if TYPE_CHECKING:
    from types import TracebackType

    from dbkeel.encryption.keys import KeyProvider
    from dbkeel.insight.context import InsightContext
    from dbkeel.replicas import ReplicaRouter

__all__ = ["DatabaseManager"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_State = Literal["new", "ready", "closed"]


@dataclass(slots=True)
class _Serving:
    """The engine state a manager serves sessions from: its own, or a test's (lent)."""

    state: _State = "new"
    engine: AsyncEngine | None = None
    session_factory: async_sessionmaker[AsyncSession] | None = None
    read_only_factory: async_sessionmaker[AsyncSession] | None = None
    router: ReplicaRouter | None = None
    # lent by dbkeel.testing (Sandbox.attach): initialize() and close() leave it alone
    lent: bool = False


# Errors that will not go away by waiting: fail at once instead of burning the budget.
_PERMANENT_SQLSTATE_CLASSES = ("28", "3D")  # auth failure, database does not exist
_PERMANENT_MYSQL_ERRNOS = {1044, 1045, 1049, 1698}  # access denied, unknown database


class DatabaseManager:
    """Engine, pool and session factory for one database, with a checked lifecycle.

    *settings* defaults to ``DatabaseSettings()`` (the environment), read when
    :meth:`initialize` runs, so creating a manager at import time costs nothing.
    *key_provider* supplies the keys of encrypted columns (default: the settings).
    *metadata* (``Base.metadata``) names the models this manager serves: their encrypted
    columns then need keys at startup (a ``ConfigurationError`` otherwise), and other
    databases' encrypted models loaded in the same process are none of its business.
    Without it, missing keys for loaded encrypted models are a startup warning, and
    using such a column raises ``KeyRingError``.

    Example::

        db = DatabaseManager(metadata=Base.metadata)
        await db.initialize()
        async with db.get_session() as session:
            user = await session.get(User, user_id)
        await db.close()
    """

    def __init__(
        self,
        settings: DatabaseSettings | None = None,
        *,
        key_provider: KeyProvider | None = None,
        metadata: MetaData | None = None,
    ) -> None:
        if metadata is not None and not isinstance(metadata, MetaData):
            hint = "Base.metadata" if hasattr(metadata, "metadata") else "a sqlalchemy.MetaData"
            raise ConfigurationError(
                f"DatabaseManager(metadata={metadata!r}) is not a MetaData: it names the "
                f"tables of the models this manager serves. Pass {hint}."
            )
        self._settings = settings
        # Encrypted columns: keys come from this provider (a KMS, a vault) instead of the
        # DATABASE_ENCRYPTION_KEYS setting; it is called once, in initialize().
        self._key_provider = key_provider
        # The models this manager serves: the startup key check looks only at their
        # tables (None: at every encrypted column loaded in the process).
        self._metadata = metadata
        # What sessions are served from; Sandbox.attach swaps it whole (_lend).
        self._serving = _Serving()
        self._init_lock = asyncio.Lock()
        self._monitor: PoolMonitor | None = None
        self._leak_watch: asyncio.Task[None] | None = None
        # Read replicas (DATABASE_REPLICA_URLS): routing and probing live in dbkeel.replicas.
        self._prober: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        url = self._settings.masked_url if self._settings is not None else "<from environment>"
        return f"<DatabaseManager {url} {self._serving.state}>"

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def settings(self) -> DatabaseSettings:
        """The settings in use (loaded from the environment on first access)."""
        if self._settings is None:
            self._settings = DatabaseSettings()
        return self._settings

    @property
    def is_initialized(self) -> bool:
        """True between a successful :meth:`initialize` and :meth:`close`."""
        return self._serving.state == "ready"

    async def initialize(self) -> Self:
        """Create the engine and session factory and prove the database answers.

        Retries ``SELECT 1`` with jittered exponential backoff within
        ``settings.initialize_timeout`` (10 s by default), then raises
        :class:`DatabaseUnavailableError`. Authentication failures and unknown databases
        fail at once. Calling it again on a ready manager does nothing.

        The key ring of encrypted columns is resolved here, once (from *key_provider* or
        ``DATABASE_ENCRYPTION_KEYS``): if the models define encrypted columns and no keys
        are configured, :class:`ConfigurationError` is raised before any connection.
        """
        async with self._init_lock:
            # Filled in below even if a test's sandbox is lent this manager meanwhile.
            serving = self._serving
            if serving.state == "ready":
                return self
            if serving.state == "closed":
                raise ManagerStateError(
                    "DatabaseManager.initialize() was called after close(): a closed "
                    "manager cannot be reopened. Create a new DatabaseManager instead."
                )
            settings = self.settings
            if settings.uses_default_url:
                logger.info(
                    "DATABASE_URL is not set: using the embedded SQLite database %s "
                    "(ENVIRONMENT=%s)",
                    settings.masked_url,
                    settings.environment,
                    extra={"app_name": settings.app_name},
                )
            # Keys first: a model with encrypted columns but no key ring fails at startup,
            # before an engine exists, not at its first row.
            from dbkeel.encryption.registry import install_key_ring, load_key_ring

            key_ring = await load_key_ring(settings, self._key_provider, self._metadata)
            engine = create_engine(settings)
            install_key_ring(engine, key_ring)
            if settings.effective_monitoring:
                # Before the first connection, so its connect time is counted too.
                self._start_monitoring(engine, settings)
            try:
                await self._prove_connection(engine, settings)
                if self._closed_meanwhile():
                    raise ManagerStateError(
                        "DatabaseManager.close() was called while initialize() was still "
                        "connecting; the new engine was disposed. Create a new manager to "
                        "connect again."
                    )
            except BaseException:
                # Includes CancelledError: never leave a half-built engine behind.
                await _shielded(self._shutdown(engine))
                raise
            from dbkeel.replicas.readonly import read_only_factory, session_factory

            session_class: type[DbkeelSession] = DbkeelSession
            if settings.replica_urls:
                from dbkeel.replicas.setup import start_replicas

                serving.router, self._prober = await start_replicas(settings, engine, key_ring)
                session_class = serving.router.sync_session_class
            from dbkeel.insight.install import install_insight

            # N+1 detection listens on a subclass of the session class chosen above
            session_class = install_insight(engine, settings, session_class)
            serving.engine = engine
            # soft-deleted rows hidden from get(), stale rows named in errors
            serving.session_factory = session_factory(engine, session_class)
            serving.read_only_factory = read_only_factory(engine)
            serving.state = "ready"
            return self

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections. Safe to call twice.

        An ``initialize()`` still connecting when ``close()`` is called disposes of its
        own engine and raises :class:`ManagerStateError` instead of coming up.
        """
        serving = self._serving
        if serving.lent:
            return  # the test's sandbox owns the engine; it ends with the test
        engine, serving.engine, serving.session_factory = serving.engine, None, None
        serving.state = "closed"
        if serving.router is not None:
            from dbkeel.replicas.setup import stop_replicas

            router, serving.router, prober, self._prober = serving.router, None, self._prober, None
            await _shielded(stop_replicas(router, prober))
        # One shielded task: a cancelled shutdown must still stop the leak watcher and
        # close the sockets.
        await _shielded(self._shutdown(engine))

    def _lend(
        self,
        engine: AsyncEngine,
        factory: async_sessionmaker[AsyncSession],
        read_only_factory: async_sessionmaker[AsyncSession],
    ) -> Callable[[], None]:
        """Serve sessions from *factory* until the returned function is called.

        Used by :class:`dbkeel.testing.Sandbox` to put a test's transaction behind the
        application's own manager; the application's engine, if any, is left untouched.
        """
        own = self._serving
        self._serving = _Serving("ready", engine, factory, read_only_factory, lent=True)

        def restore() -> None:
            self._serving = own

        return restore

    def _closed_meanwhile(self) -> bool:
        # A method, not an inline check: close() can run while initialize() awaits, which
        # the type checker's narrowing of self._serving.state cannot know.
        return self._serving.state == "closed"

    async def _shutdown(self, engine: AsyncEngine | None) -> None:
        await self._stop_leak_watch()
        if engine is not None:
            await engine.dispose()

    def query_stats(self, operation: str | None = None) -> AbstractContextManager[InsightContext]:
        """Collect the statements of the enclosed block: count, durations, rows, shapes.

        *operation* names the route or job (low cardinality; used in comment tags).
        N+1 loads in the block are detected per ``DATABASE_NPLUSONE``. Example::

            with db.query_stats("GET /orders") as q:
                await list_orders(db)
            q.statements, q.total_s, q.top_shapes(3)
        """
        from dbkeel.insight.context import track

        return track(operation)

    async def __aenter__(self) -> Self:
        return await self.initialize()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- access -------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The ``AsyncEngine``; raises :class:`ManagerStateError` before initialize()."""
        if self._serving.engine is None:
            raise self._not_ready("engine")
        return self._serving.engine

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The ``async_sessionmaker`` (``expire_on_commit=False``, ``autoflush=True``)."""
        if self._serving.session_factory is None:
            raise self._not_ready("session_factory")
        return self._serving.session_factory

    def get_session(
        self, *, read_only: bool = False, after: str | None = None
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on any error.

        ``read_only=True``: a read-only transaction (``SET TRANSACTION READ ONLY``) on a
        usable replica when ``DATABASE_REPLICA_URLS`` is set, else on the primary; a
        write in it raises :class:`ReadOnlyTransactionError`. *after*, a token from
        :meth:`consistency_token`, makes it see that write (see docs/replicas.md).

        Database failures arrive as dbkeel errors (the original is ``__cause__``): a pool
        timeout as :class:`PoolExhaustedError`, a stale version as
        :class:`ConcurrentUpdateError`, a statement timeout as
        :class:`StatementTimeoutError`, a lost or refused connection as
        :class:`DatabaseUnavailableError`, a COMMIT of unknown outcome as
        :class:`CommitOutcomeUnknownError`; other errors are re-raised unchanged.
        The session is always closed and its connection returned, even when the task is
        cancelled.

        Example::

            async with db.get_session() as session:
                session.add(order)
        """
        return _SessionScope(self, read_only, after)

    async def _read_session(self, after: str | None) -> AsyncSession:
        if self._serving.router is not None:
            return await self._serving.router.read_session(after)
        if after is not None:
            from dbkeel.replicas.tokens import parse_token

            parse_token(after)  # a malformed token fails the same with or without replicas
        if self._serving.read_only_factory is None:
            raise self._not_ready("get_session")
        return self._serving.read_only_factory()

    async def consistency_token(self) -> str:
        """An opaque string naming this context's last committed write.

        Hand it to a later request (header, cookie) and pass it back as
        ``get_session(read_only=True, after=token)``: that read then sees the write, on
        whichever node it lands. Right after a write this may read the primary's WAL
        position (one round trip); see docs/replicas.md.

        Example::

            response.headers["X-Consistency"] = await db.consistency_token()
        """
        router = self._serving.router
        if router is not None:
            return await router.token()
        from dbkeel.replicas.tokens import last_write, make_token

        return make_token(last_write())

    @property
    def router(self) -> ReplicaRouter | None:
        """The replica router (None without DATABASE_REPLICA_URLS)."""
        return self._serving.router

    async def run_in_transaction(
        self,
        fn: Callable[[AsyncSession], Awaitable[T]],
        *,
        retries: int = 5,
        backoff: float = 0.05,
    ) -> T:
        """Run ``await fn(session)`` in a fresh transaction, retrying it on conflicts.

        See :func:`dbkeel.retry.run_in_transaction`.

        Example::

            async def bump(session: AsyncSession) -> None:
                (await session.get(Counter, 1)).value += 1

            await db.run_in_transaction(bump, retries=10)
        """
        from dbkeel.retry import run_in_transaction

        return await run_in_transaction(self, fn, retries=retries, backoff=backoff)

    @property
    def monitor(self) -> PoolMonitor | None:
        """The :class:`~dbkeel.PoolMonitor` of the primary's pool, if monitoring is on."""
        return self._monitor

    @property
    def monitors(self) -> list[PoolMonitor]:
        """Every pool's monitor, the primary's first, then each replica's (empty with
        monitoring off). Their ``node`` option (``primary``, ``replica-1``...) labels the
        Prometheus series and OpenTelemetry attributes.

        Example::

            for monitor in db.monitors:
                register_prometheus(monitor)
        """
        found = [self._monitor] if self._monitor is not None else []
        if self._serving.router is not None:
            found += [n.monitor for n in self._serving.router.nodes if n.monitor is not None]
        return found

    async def health(self) -> HealthReport:
        """Reachability, round-trip latency, server version and pool status, as a dict.

        With replicas, ``report["nodes"]`` lists every node (primary first) with its
        role, state (``ok``, ``lagging``, ``down``, ``not-in-recovery``) and lag.

        Never raises for a database failure (``reachable`` is False and ``error`` says
        why), so it suits readiness endpoints; raises :class:`ManagerStateError` before
        initialize() or after close().

        Example::

            report = await db.health()
            status_code = 200 if report["reachable"] else 503
        """
        report = await check_health(self.engine, timeout=self.settings.connect_timeout)
        if self._serving.router is not None:
            state = "ok" if report["reachable"] else "down"
            report["nodes"] = self._serving.router.describe(state, self.settings.masked_url)
        return report

    # -- internals ----------------------------------------------------------------------

    def _start_monitoring(self, engine: AsyncEngine, settings: DatabaseSettings) -> None:
        self._monitor = PoolMonitor.setup_listeners(
            engine, PoolMonitor.options_from_settings(settings)
        )
        if settings.slow_query_threshold > 0:
            SlowQueryLog.setup(
                engine,
                settings.slow_query_threshold,
                log_parameters=settings.log_parameters,
                app_name=settings.app_name,
            )
        # A leaked connection never comes back, so no pool event would report it: look.
        self._leak_watch = asyncio.get_running_loop().create_task(
            self._watch_leaks(min(settings.leak_threshold / 4, 10.0)), name="dbkeel-leak-watch"
        )

    async def _watch_leaks(self, interval: float) -> None:
        # Every pool's monitor, replicas' included (they exist only after startup).
        while True:
            await asyncio.sleep(interval)
            for monitor in self.monitors:
                monitor.check_leaks()

    async def _stop_leak_watch(self) -> None:
        task, self._leak_watch = self._leak_watch, None
        if task is not None:
            task.cancel()
            # Wait for it to finish so no pending task outlives the manager (or its loop).
            await asyncio.gather(task, return_exceptions=True)

    def _not_ready(self, what: str) -> ManagerStateError:
        if self._serving.state == "closed":
            return ManagerStateError(
                f"DatabaseManager.{what} was used after close(). Create a new "
                f"DatabaseManager, or do not close it while it is still in use."
            )
        return ManagerStateError(
            f"DatabaseManager.{what} was used before initialize(). Call "
            f"`await db.initialize()` at startup, or use `async with DatabaseManager() as db:`."
        )

    async def _prove_connection(self, engine: AsyncEngine, settings: DatabaseSettings) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.initialize_timeout
        delay = settings.initialize_backoff
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0.05)):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                return
            except (ValueError, TypeError, ArgumentError) as exc:
                # The driver refused its arguments (e.g. an unknown URL query option):
                # a configuration mistake that no amount of waiting fixes.
                raise ConfigurationError(
                    f"The {settings.url.drivername} driver refused the connection settings "
                    f"from DATABASE_URL ({settings.masked_url}): "
                    f"{_scrub(str(exc), settings)}. Fix the URL's query options or "
                    f"driver arguments."
                ) from None
            except (OSError, DBAPIError, TimeoutError) as exc:
                permanent = _is_permanent(exc)
                remaining = deadline - loop.time()
                if permanent or remaining <= delay:
                    raise _unavailable(settings, attempt, exc, permanent) from None
                logger.warning(
                    "database not reachable yet (attempt %d, %s); retrying in %.2f s",
                    attempt,
                    type(exc).__name__,
                    delay,
                    extra={"app_name": settings.app_name, "attempt": attempt},
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)


def _refused_startup_parameter(exc: BaseException) -> str | None:
    """The startup parameter a connection pooler refused, if that is what *exc* is."""
    # PgBouncer answers a parameter it does not know (jit, statement_timeout...) with
    # FATAL 08P01 "unsupported startup parameter: jit", on every attempt.
    message = str(getattr(exc, "orig", None) or exc)
    marker = "unsupported startup parameter:"
    if sqlstate(exc) != "08P01" or marker not in message:
        return None
    named = message.split(marker, 1)[1].split()
    return named[0] if named else "?"


def _is_permanent(exc: BaseException) -> bool:
    if _refused_startup_parameter(exc) is not None:
        return True
    if (
        isinstance(exc, DBAPIError)
        and not isinstance(exc, (OperationalError, InterfaceError))
        and not exc.connection_invalidated
        and sqlstate(exc) is None
    ):
        return True  # e.g. a ProgrammingError from a session setting: waiting won't help
    state = sqlstate(exc)
    if state is not None and state[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return True
    return mysql_errno(exc) in _PERMANENT_MYSQL_ERRNOS


def _scrub(text: str, settings: DatabaseSettings) -> str:
    """*text* with the URL's credentials masked, should a driver ever quote them."""
    return scrub_secrets(text, [settings.url])


def _unavailable(
    settings: DatabaseSettings, attempts: int, exc: BaseException, permanent: bool
) -> DatabaseUnavailableError:
    url = settings.url
    reason = _scrub(f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}", settings)
    where = f"{url.host or 'localhost'}:{url.port or 'default port'}"
    if url.get_backend_name() == "sqlite":
        where = "file"
    when = (
        "the server refused the credentials or the database (not retried)"
        if permanent
        else f"after {attempts} attempts in {settings.initialize_timeout:g} s"
    )
    parameter = _refused_startup_parameter(exc)
    if parameter is not None:
        return DatabaseUnavailableError(
            f"Cannot connect to the database: driver {url.drivername}, host {where}, "
            f"database {url.database!r}: a connection pooler (PgBouncer) in front of "
            f"PostgreSQL refused the startup parameter {parameter!r} that dbkeel sends "
            f"(not retried). Behind PgBouncer set DATABASE_PGBOUNCER=true, which sends no "
            f"such parameters and turns off prepared statement caching, or list the "
            f"parameter in PgBouncer's ignore_startup_parameters. Last error: {reason}."
        )
    return DatabaseUnavailableError(
        f"Cannot connect to the database: driver {url.drivername}, host {where}, database "
        f"{url.database!r}: {when}. Last error: {reason}. Check that the server is running "
        f"and reachable, and that DATABASE_URL ({settings.masked_url}) is right."
    )


async def _shielded(work: Coroutine[Any, Any, None]) -> None:
    """Run *work* to completion even if the caller is cancelled meanwhile."""
    await asyncio.shield(asyncio.ensure_future(work))


class _SessionScope:
    """What ``get_session()`` returns: the session, committed or rolled back on exit.

    A class, not an ``@asynccontextmanager`` generator: an async generator per request
    costs its frame, the event loop's async-generator bookkeeping (a WeakSet entry) and
    ``contextlib``'s wrapper, about 1% of a one-row request (issue 17's request-path goal).
    """

    __slots__ = ("_after", "_errors", "_manager", "_read_only", "_session", "_settings")

    def __init__(self, manager: DatabaseManager, read_only: bool, after: str | None) -> None:
        self._manager = manager
        self._read_only = read_only
        self._after = after

    async def __aenter__(self) -> AsyncSession:
        manager = self._manager
        if self._read_only:
            session = await manager._read_session(self._after)
        else:
            session = manager.session_factory()
        engine = manager.engine
        settings = self._settings = manager.settings
        self._errors = translate_errors(
            engine.pool, pool_timeout=settings.pool_timeout, settings=settings
        )
        self._session = session
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        if exc is not None:
            try:
                self._errors.raise_translated(exc)  # the dbkeel error for exc, if any
            finally:
                # Whatever was raised (CancelledError too) must roll back and release the
                # connection.
                await _shielded_cleanup(session, rollback=True)
            return  # exc itself propagates
        try:
            with self._errors:
                await commit(session, self._settings)
        except BaseException:
            # BaseException: a cancelled COMMIT must roll back and release the connection.
            await _shielded_cleanup(session, rollback=True)
            raise
        if session.in_transaction():
            # A hook began new work once COMMIT was done (after_transaction_end): it
            # holds a connection, so close in a shielded task as after an error.
            await _shielded_cleanup(session, rollback=False)
        else:
            # Committed: the session holds no connection any more, so close() does no I/O
            # and never suspends; a cancellation cannot land in it and nothing can leak.
            # No task needed (the shielded task of the error path costs more than the
            # close itself).
            await session.close()


async def _shielded_cleanup(session: AsyncSession, *, rollback: bool) -> None:
    async def cleanup() -> None:
        try:
            if rollback:
                await session.rollback()
        except Exception:
            # The original error is what the caller must see; a failed rollback (say, on
            # a dropped connection) is logged, and close() below still returns the
            # connection, which the pool then invalidates.
            logger.warning("rollback after an error failed", exc_info=True)
        finally:
            await session.close()

    # A task, shielded: if the caller is cancelled while we roll back, the rollback and
    # the connection's return to the pool still complete (cf. AsyncSession.__aexit__).
    await _shielded(cleanup())
