"""``PoolMonitor``: pool events turned into counts, timings and log lines an operator can act on.

One monitor per engine. It listens on the engine's pool (connect, checkout, checkin,
invalidate, soft_invalidate, close) and on pool checkout itself, and keeps:

- counters and histograms (:class:`~dbkeel.monitoring.stats.PoolCounters`) that the
  Prometheus and OpenTelemetry exporters read;
- a warning when a connection older than ``long_lived_threshold`` is checked out (once per
  connection), and an info line when an invalidated connection comes back to the pool;
- leak detection: a connection held longer than ``leak_threshold`` is reported with the
  stack that checked it out (captured only with ``capture_stack=True``).

Example::

    from dbkeel import PoolMonitor

    monitor = PoolMonitor.setup_listeners(engine, app_name="billing", leak_threshold=30)
    print(PoolMonitor.get_pool_status(engine))
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from bisect import bisect_left
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool, QueuePool

from dbkeel._masking import node_address
from dbkeel.exceptions import ConfigurationError
from dbkeel.monitoring._stack import capture_stack, format_stack
from dbkeel.monitoring.options import MetricSink, MonitorOptions
from dbkeel.monitoring.stats import PoolCounters
from dbkeel.monitoring.status import PoolStatus, pool_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

    from dbkeel.settings import DatabaseSettings

__all__ = ["PoolMonitor"]

logger = logging.getLogger(__name__)

# Keys of ConnectionPoolEntry.info, which SQLAlchemy clears whenever the entry reconnects.
_CONNECTED_AT = "dbkeel.connected_at"
_CONNECT_START = "dbkeel.connect_start"
_CHECKOUT = "dbkeel.checkout"  # (monotonic time, stack or None)
_LEAK_REPORTED = "dbkeel.leak_reported"
_LONG_LIVED_WARNED = "dbkeel.long_lived_warned"
_INVALIDATED = "dbkeel.invalidated"

_MONITORS: weakref.WeakKeyDictionary[Engine, PoolMonitor] = weakref.WeakKeyDictionary()


class PoolMonitor:
    """Watches one engine's connection pool; create it with :meth:`setup_listeners`.

    Example::

        monitor = PoolMonitor.setup_listeners(db.engine, capture_stack=True)
        ...
        monitor.counters.checkout_wait.count     # checkouts measured so far
        monitor.check_leaks()                    # warn now about connections held too long
    """

    def __init__(self, options: MonitorOptions) -> None:
        self.options = options
        self.counters = PoolCounters()
        self.waiting = 0
        self.sinks: list[MetricSink] = []
        self._engine: weakref.ref[Engine] | None = None
        self._held: set[ConnectionPoolEntry] = set()  # checked out now
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._extra = {
            "app_name": options.app_name,
            "db_pool": options.pool_name,
            "db_node": options.node,
        }

    def __repr__(self) -> str:
        o = self.options
        return (
            f"<PoolMonitor app={o.app_name!r} pool={o.pool_name!r} node={o.node!r} "
            f"held={len(self._held)}>"
        )

    # -- attaching ----------------------------------------------------------------------

    @classmethod
    def setup_listeners(
        cls, engine: AsyncEngine | Engine, options: MonitorOptions | None = None, **kw: Any
    ) -> PoolMonitor:
        """Attach a monitor to *engine* (async or sync) and return it; idempotent.

        Options are a :class:`MonitorOptions` or its fields as keywords. A second call for
        the same engine returns the existing monitor: always when called without options
        (as the design does, ``PoolMonitor.setup_listeners(db.engine)`` on a manager that
        already monitors its engine); asking for different options raises
        :class:`~dbkeel.ConfigurationError` (call :meth:`remove_listeners` first).

        Example::

            monitor = PoolMonitor.setup_listeners(engine, app_name="billing")
            assert PoolMonitor.setup_listeners(engine, app_name="billing") is monitor
        """
        sync_engine = _sync(engine)
        existing = _MONITORS.get(sync_engine)
        if existing is not None and options is None and not kw:
            return existing  # no options asked for: whatever monitors the engine will do
        if options is None:
            try:
                options = MonitorOptions(**kw)
            except TypeError:
                known = ", ".join(MonitorOptions.__dataclass_fields__)
                raise ConfigurationError(
                    f"PoolMonitor.setup_listeners() got unknown options {sorted(kw)}; "
                    f"known: {known}."
                ) from None
        if existing is not None:
            if existing.options != options:
                raise ConfigurationError(
                    f"This engine is already monitored with {existing.options}; asked for "
                    f"{options}. Call PoolMonitor.remove_listeners(engine) first to change them."
                )
            return existing
        monitor = cls(options)
        monitor._attach(sync_engine)
        _MONITORS[sync_engine] = monitor
        return monitor

    @classmethod
    def for_engine(cls, engine: AsyncEngine | Engine) -> PoolMonitor | None:
        """The monitor attached to *engine*, or None."""
        return _MONITORS.get(_sync(engine))

    @classmethod
    def remove_listeners(cls, engine: AsyncEngine | Engine) -> None:
        """Detach the monitor of *engine*, if any: events and the checkout timer go."""
        sync_engine = _sync(engine)
        monitor = _MONITORS.pop(sync_engine, None)
        if monitor is None:
            return
        for target, name, fn in monitor._listeners:
            event.remove(target, name, fn)
        monitor._listeners.clear()
        sync_engine.pool.__dict__.pop("connect", None)

    @staticmethod
    def get_pool_status(engine: AsyncEngine | Engine) -> PoolStatus:
        """A :class:`PoolStatus` snapshot of *engine*'s pool, whatever its class.

        Example::

            status = PoolMonitor.get_pool_status(db.engine)
            print(f"{status['checked_out']}/{status['max']} in use, {status['waiting']} waiting")
        """
        sync_engine = _sync(engine)
        monitor = _MONITORS.get(sync_engine)
        if monitor is None:
            return pool_status(sync_engine.pool)
        return pool_status(sync_engine.pool, held=len(monitor._held), waiting=monitor.waiting)

    def status(self) -> PoolStatus:
        """:meth:`get_pool_status` for the engine this monitor watches."""
        engine = self._engine() if self._engine is not None else None
        if engine is None:
            raise ConfigurationError(
                "This PoolMonitor's engine is gone (garbage-collected or never attached): "
                "create monitors with PoolMonitor.setup_listeners(engine)."
            )
        return pool_status(engine.pool, held=len(self._held), waiting=self.waiting)

    def _attach(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        for target, name, fn in (
            (engine, "do_connect", self._on_do_connect),
            (engine, "engine_disposed", self._on_engine_disposed),
            (engine.pool, "connect", self._on_connect),
            (engine.pool, "checkin", self._on_checkin),
            (engine.pool, "invalidate", self._on_invalidate),
            (engine.pool, "soft_invalidate", self._on_soft_invalidate),
            (engine.pool, "close", self._on_close),
        ):
            event.listen(target, name, fn)
            self._listeners.append((target, name, fn))
        if not _wraps_every_checkout(engine.pool):
            # (on a QueuePool or NullPool, the checkout timer does this work: see there)
            event.listen(engine.pool, "checkout", self._on_checkout)
            self._listeners.append((engine.pool, "checkout", self._on_checkout))
        self._time_checkouts(engine.pool)

    def _time_checkouts(self, pool: Pool) -> None:
        # No pool event fires *before* a checkout, so the wait (queueing for a free slot,
        # opening an overflow connection, pre-ping) is timed around the pool's own
        # connect(), set on the instance. The engine calls pool.connect() for every
        # checkout; nothing inside the pool calls it again, so nothing is counted twice.
        if "connect" in pool.__dict__:
            return
        original = pool.connect
        # On a QueuePool or NullPool each connect() is exactly one new checkout, so its
        # bookkeeping runs here rather than in a checkout listener, whose dispatch by
        # SQLAlchemy cost more than the bookkeeping itself. Other pools (SingletonThread,
        # Static) can hand out a connection already checked out: a listener sees those.
        checked_out = self._checked_out if _wraps_every_checkout(pool) else None
        counters = self.counters
        wait = counters.checkout_wait
        counts, bounds = wait.counts, wait.bounds
        monitor = self

        def connect() -> PoolProxiedConnection:
            monitor.waiting += 1
            start = perf_counter()
            try:
                connection = original()
            except sqlalchemy.exc.TimeoutError:
                counters.checkout_timeouts += 1
                for sink in monitor.sinks:
                    sink.checkout_timeout()
                monitor._log_timeout(perf_counter() - start)
                raise
            finally:
                monitor.waiting -= 1
            elapsed = perf_counter() - start
            if checked_out is not None:
                checked_out(connection._connection_record)
            # Histogram.observe() inlined: this runs on every checkout.
            counts[bisect_left(bounds, elapsed)] += 1
            wait.sum += elapsed
            wait.count += 1
            if monitor.sinks:
                for sink in monitor.sinks:
                    sink.checkout_wait(elapsed)
            return connection

        pool.connect = connect  # type: ignore[method-assign]

    # -- event handlers (synchronous, on the hot path: keep them small) -----------------

    def _on_engine_disposed(self, engine: Engine) -> None:
        # dispose() swaps in a new pool (events carry over, our timer does not).
        self._time_checkouts(engine.pool)

    def _on_do_connect(self, dialect: Any, record: ConnectionPoolEntry, *args: Any) -> None:
        record.info[_CONNECT_START] = perf_counter()

    def _on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        info = record.info
        info[_CONNECTED_AT] = monotonic()
        self.counters.connects += 1
        start = info.pop(_CONNECT_START, None)
        if start is not None:
            elapsed = perf_counter() - start
            self.counters.connect_time.observe(elapsed)
            for sink in self.sinks:
                sink.connect_time(elapsed)

    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        self._checked_out(record)

    def _checked_out(self, record: ConnectionPoolEntry) -> None:
        now = monotonic()
        info = record.info
        options = self.options
        connected = info.get(_CONNECTED_AT)
        if connected is None:  # opened before the monitor was attached
            info[_CONNECTED_AT] = now
        elif now - connected > options.long_lived_threshold and _LONG_LIVED_WARNED not in info:
            info[_LONG_LIVED_WARNED] = True
            self._warn_long_lived(now - connected)
        # One tuple, one dict write: this runs on every checkout.
        info[_CHECKOUT] = (now, capture_stack() if options.capture_stack else None)
        self._held.add(record)
        self.counters.checkouts += 1

    def _on_checkin(
        self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry
    ) -> None:
        self._held.discard(record)
        info = record.info
        checkout = info.pop(_CHECKOUT, None)
        if checkout is not None:
            used = monotonic() - checkout[0]
            if self.sinks:
                for sink in self.sinks:
                    sink.use_time(used)
            # Only a connection over the threshold can carry the "reported" flag.
            if used > self.options.leak_threshold and not info.pop(_LEAK_REPORTED, False):
                self._warn_leak(used, checkout[1], returned=True)
        if dbapi_connection is None or info.pop(_INVALIDATED, None) is not None:
            logger.info(
                "an invalidated connection was returned to the pool; it will reconnect at "
                "its next checkout",
                extra=self._extra,
            )

    def _on_invalidate(
        self,
        dbapi_connection: DBAPIConnection | None,
        record: ConnectionPoolEntry,
        exception: BaseException | None,
    ) -> None:
        record.info[_INVALIDATED] = "hard"
        if isinstance(exception, asyncio.CancelledError):
            # The task was cancelled mid-statement, so SQLAlchemy cannot know the state of
            # the connection and discards it. Ordinary (request timeouts, disconnecting
            # clients): counted apart, and no warning about the server or the network.
            self.counters.cancellations += 1
            logger.debug(
                "connection discarded after its task was cancelled mid-statement",
                extra=self._extra,
            )
            return
        self.counters.hard_invalidations += 1
        reason = type(exception).__name__ if exception is not None else "explicit invalidate()"
        # The exception's text can quote data from the failed statement: the type only.
        logger.warning(
            "connection invalidated (%s); the pool replaces it. Repeated invalidations "
            "mean the server or the network drops connections: check server logs, idle "
            "timeouts of proxies and load balancers, and DATABASE_POOL_RECYCLE",
            reason,
            extra={**self._extra, "reason": reason},
        )

    def _on_soft_invalidate(
        self,
        dbapi_connection: DBAPIConnection | None,
        record: ConnectionPoolEntry,
        exception: BaseException | None,
    ) -> None:
        self.counters.soft_invalidations += 1
        record.info[_INVALIDATED] = "soft"
        logger.info(
            "connection soft-invalidated: it is replaced at its next checkout", extra=self._extra
        )

    def _on_close(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        self.counters.closes += 1

    # -- leak detection -----------------------------------------------------------------

    def check_leaks(self) -> int:
        """Warn about each connection held longer than ``leak_threshold`` (once per checkout).

        Returns how many connections are over the threshold now. :class:`DatabaseManager`
        calls it periodically (see :meth:`watch_leaks`); call it yourself with a bare engine.
        """
        now = monotonic()
        over = 0
        for record in list(self._held):
            info = record.info
            checkout = info.get(_CHECKOUT)
            if checkout is None or now - checkout[0] <= self.options.leak_threshold:
                continue
            over += 1
            if not info.get(_LEAK_REPORTED):
                info[_LEAK_REPORTED] = True
                self._warn_leak(now - checkout[0], checkout[1], returned=False)
        return over

    async def watch_leaks(self, interval: float | None = None) -> None:
        """Run :meth:`check_leaks` forever, every *interval* s (default: a quarter of the
        threshold, at most 10 s). Cancel the task to stop it."""
        if interval is None:
            interval = min(self.options.leak_threshold / 4, 10.0)
        while True:
            await asyncio.sleep(interval)
            self.check_leaks()

    # -- log lines ----------------------------------------------------------------------

    def _warn_leak(self, held: float, stack: Any, *, returned: bool) -> None:
        self.counters.leaks += 1
        where = (
            f"checked out at:\n{format_stack(stack)}"
            if stack is not None
            else "set DATABASE_CAPTURE_CHECKOUT_STACK=1 (capture_stack=True) to log where "
            "it was checked out"
        )
        state = "was returned only now" if returned else "is still checked out"
        logger.warning(
            "possible connection leak: a connection %s after %.1f s (leak threshold %g s). "
            "Close every session and connection, e.g. with `async with`; %s",
            state,
            held,
            self.options.leak_threshold,
            where,
            extra={**self._extra, "held_s": round(held, 3), "returned": returned},
        )

    def _warn_long_lived(self, age: float) -> None:
        self.counters.long_lived += 1
        logger.warning(
            "long-lived connection: open for %.0f s (threshold %g s). Servers, proxies and "
            "firewalls drop old connections; set DATABASE_POOL_RECYCLE below their idle "
            "timeout so the pool replaces connections first",
            age,
            self.options.long_lived_threshold,
            extra={**self._extra, "age_s": round(age, 1)},
        )

    def _log_timeout(self, waited: float) -> None:
        logger.warning(
            "checkout timed out after %.1f s: every connection is in use (%d waiting)",
            waited,
            self.waiting,
            extra={**self._extra, "waited_s": round(waited, 3)},
        )

    # -- construction from settings -----------------------------------------------------

    @classmethod
    def options_from_settings(
        cls,
        settings: DatabaseSettings,
        pool_name: str = "default",
        node: str = "primary",
        url: str | URL | None = None,
    ) -> MonitorOptions:
        """The :class:`MonitorOptions` that *settings* describe, for the pool of *node*
        at *url* (default: ``DATABASE_URL``, the primary)."""
        return MonitorOptions(
            app_name=settings.app_name,
            pool_name=pool_name,
            node=node,
            address=node_address(url if url is not None else settings.url),
            long_lived_threshold=settings.long_lived_threshold,
            leak_threshold=settings.leak_threshold,
            capture_stack=settings.capture_checkout_stack,
        )


def _sync(engine: AsyncEngine | Engine) -> Engine:
    if isinstance(engine, AsyncEngine):
        # Pool events cannot be attached to an AsyncEngine (NotImplementedError): they
        # belong on the sync engine it wraps.
        return engine.sync_engine
    return engine


def _wraps_every_checkout(pool: Pool) -> bool:
    """Whether each ``pool.connect()`` is exactly one checkout (see _time_checkouts)."""
    return isinstance(pool, (QueuePool, NullPool))
