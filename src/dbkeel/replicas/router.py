"""``ReplicaRouter``: picks the engine of each session, primary or a usable replica.

Routing decides from what the health prober last saw (no extra round trip per session):
a replica is used when it is reachable, really in recovery, no further behind than
``DATABASE_REPLICA_MAX_LAG``, and (``lsn`` mode) has replayed past the context's last
write: past the position of the first sample of the primary taken after that write
finished (positions.py), so a read right after a write goes to the primary until the
prober has seen both the primary and a replica move on. Among those, round-robin. With
none, the primary serves the read (or :class:`NoReplicaAvailableError`, by setting); each
change of that state is logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dbkeel._masking import mask_url, node_address
from dbkeel.exceptions import NoReplicaAvailableError
from dbkeel.mixins.session import DbkeelSession
from dbkeel.monitoring.health import NodeReport
from dbkeel.monitoring.pool import PoolMonitor
from dbkeel.replicas.config import ReadYourWrites
from dbkeel.replicas.positions import PrimarySamples
from dbkeel.replicas.readonly import read_only_factory
from dbkeel.replicas.recording import RecordingSession, WindowSession, watch_writes
from dbkeel.replicas.tokens import (
    LastWrite,
    last_write,
    make_token,
    parse_lsn,
    parse_token,
    record_position,
)
from dbkeel.settings import DatabaseSettings

__all__ = ["Node", "ReplicaRouter"]

logger = logging.getLogger(__name__)

_WROTE = "dbkeel_wrote"
_INSERT_POSITION = text("SELECT pg_current_wal_insert_lsn()::text")


@dataclass
class Node:
    """One replica: its engine, read-only session factory, and what the prober last saw."""

    name: str
    url: str  # masked
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    reachable: bool = False
    in_recovery: bool | None = None
    replay_lsn: int = 0
    lag: float | None = None
    error: str | None = None
    checked_at: float = field(default=0.0)
    monitor: PoolMonitor | None = None  # with monitoring on: the pool's, labelled node=name

    def usable(self, max_lag: float) -> bool:
        """Reachable, a real replica, and not too far behind."""
        return (
            self.reachable
            and self.in_recovery is True
            and self.lag is not None
            and self.lag <= max_lag
        )

    @property
    def state(self) -> str:
        """``ok``, ``down``, ``not-in-recovery``, ``lagging`` or ``unknown``."""
        if not self.reachable:
            return "down" if self.checked_at else "unknown"
        if self.in_recovery is False:
            return "not-in-recovery"
        return "ok"


def _discard_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    # A replica's server died: its pooled sockets are closed. Free to check (no round
    # trip), and the pool then opens a new connection, which fails fast if it is down.
    is_closed = getattr(dbapi_connection.driver_connection, "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("replica connection closed by the server")


class _NodeSession(DbkeelSession):
    """A read-only session on a replica that, when its first connection cannot be
    checked out or its first statement finds that connection dead (the replica died
    since the last probe), marks that replica down and runs on the next usable one, or
    the primary, in the same call.

    The connection is checked out lazily, by the session's first statement, as on a
    manager without replicas: checking it out at ``get_session()`` time would cost a
    greenlet switch per session. Subclassed per router (``_router``)."""

    _router: ReplicaRouter
    dbkeel_after: str | None = None  # the session's consistency token, if any

    def _connection_for_bind(
        self, engine: Any, execution_options: Any = None, **kw: Any
    ) -> Connection:
        try:
            return super()._connection_for_bind(engine, execution_options, **kw)
        except Exception as exc:
            transaction = self._transaction
            if transaction is not None and transaction._connections:
                raise  # it failed on a connection it had: not a checkout
            fallback = self._router._failed_checkout(engine, exc, self.dbkeel_after)
            if fallback is None:
                raise
        self.bind = fallback  # the session's later statements go there too
        return self._connection_for_bind(fallback, execution_options, **kw)

    def _execute_internal(self, *args: Any, **kw: Any) -> Any:
        transaction = self._transaction
        if transaction is not None and transaction._connections:
            return super()._execute_internal(*args, **kw)
        try:
            return super()._execute_internal(*args, **kw)
        except DBAPIError as exc:
            # The session's first statement found its connection dead: the server died
            # after the pool's checkout check (its close not yet seen by the event loop).
            # Nothing was read and the transaction is read-only: run it elsewhere.
            if not exc.connection_invalidated or self.new or self.dirty or self.deleted:
                raise  # (pending changes: a rollback would drop them without a word)
            failed = self.bind
            self.rollback()  # drops the dead connection; no round trip
            fallback = self._router._failed_checkout(failed, exc, self.dbkeel_after)
            if fallback is None:
                raise
        self.bind = fallback
        return self._execute_internal(*args, **kw)


def _sync_bind(factory: async_sessionmaker[AsyncSession]) -> Engine:
    return factory.kw["bind"].sync_engine  # type: ignore[no-any-return]


class ReplicaRouter:
    """The primary's read-only factory, the replica nodes and the routing rule."""

    def __init__(
        self, settings: DatabaseSettings, primary: AsyncEngine, replicas: Sequence[AsyncEngine]
    ) -> None:
        self.settings = settings
        self.mode = ReadYourWrites.parse(settings.read_your_writes or "off")
        self.primary_engine = primary
        self.primary_read_only = read_only_factory(primary)
        watch_writes(primary.sync_engine)  # which transactions wrote (read-your-writes)
        session_class = type("ReplicaSession", (_NodeSession,), {"_router": self})
        self.nodes = [
            Node(f"replica-{i}", mask_url(e.url), e, read_only_factory(e, session_class))
            for i, e in enumerate(replicas, start=1)
        ]
        # the sync engine each node's sessions are bound to (read-only options applied)
        self._node_of_bind = {_sync_bind(n.factory): n for n in self.nodes}
        if not settings.effective_pre_ping:  # with it the engine's checkout does the same
            for engine in replicas:
                event.listen(engine.sync_engine.pool, "checkout", _discard_closed)
        self.primary_lsn = 0
        # the primary's insert position over time: bounds of this context's commits
        self.samples = PrimarySamples()
        # (position, monotonic time first seen) of the primary, for the lag estimate
        self.primary_history: deque[tuple[int, float]] = deque(maxlen=1024)
        self.fallbacks = 0  # reads the primary served because no replica was usable
        self._cycle = itertools.count()
        self._fallback_logged = False
        self._changed = asyncio.Event()
        # the nodes usable as of the last probe (or checkout failure): the common read,
        # one with no write to wait for, picks among them without looking at each node
        self._usable: list[Node] = []
        self._tracks_writes = self.mode.mode != "off"

    @property
    def sync_session_class(self) -> type[DbkeelSession]:
        """Session class of read-write sessions (records commit positions in lsn mode)."""
        return RecordingSession if self.mode.mode == "lsn" else WindowSession

    async def token(self) -> str:
        """This context's consistency token: its last write's position, or a later one.

        From the prober's samples when one was taken after the write finished; else read
        from the primary now (one round trip, paid only by callers of the token).
        """
        mine = last_write()
        if mine is not None and mine.since:
            bound = self.samples.bound(mine.since)
            if bound is None:
                started = time.monotonic()
                bound = await self._primary_position()
                self.samples.add(started, bound)
            mine = record_position(bound, covers=mine.since)
        return make_token(mine)

    async def _primary_position(self) -> int:
        async with self.primary_engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")  # no BEGIN
            found = await conn.execute(_INSERT_POSITION)
            return parse_lsn(found.scalar_one())

    async def read_session(self, after: str | None) -> AsyncSession:
        """A read-only session on a usable replica, or the primary. Its connection is
        checked out by its first statement; a replica that died since the last probe is
        then marked down and the next one (or the primary) serves the session."""
        if after is not None:
            needed = self._needed(after)
        else:  # _needed(None), inlined: this is most reads
            needed = last_write() if self._tracks_writes else None
        usable = self._usable
        factory: async_sessionmaker[AsyncSession] | None
        if needed is None and usable:
            factory = usable[next(self._cycle) % len(usable)].factory
        else:
            factory = self._pick(needed)
            if factory is None:
                factory = await self._wait_or_primary(needed)
        if self._fallback_logged and factory is not self.primary_read_only:
            self._note_fallback(False)
        session = factory()
        if after is not None:
            session.sync_session.dbkeel_after = after  # type: ignore[attr-defined]
        return session

    async def _wait_or_primary(self, needed: LastWrite | None) -> async_sessionmaker[AsyncSession]:
        factory = None
        if self.settings.replica_wait > 0 and needed is not None:
            deadline = time.monotonic() + self.settings.replica_wait
            while factory is None and time.monotonic() < deadline:
                self._changed.clear()
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                factory = self._pick(needed)
        if factory is not None:
            self._note_fallback(False)
            return factory
        return self._primary_fallback(needed)

    def _primary_fallback(self, needed: LastWrite | None) -> async_sessionmaker[AsyncSession]:
        self._note_fallback(True)
        self.fallbacks += 1
        if self.settings.replica_fallback == "raise":
            raise NoReplicaAvailableError(self._why_none(needed))
        return self.primary_read_only

    def _failed_checkout(self, bind: Any, exc: Exception, after: str | None) -> Engine | None:
        """The replica of *bind* failed to hand out a connection: mark it down and return
        the bind of the next usable replica, or of the primary (None: *bind* was the
        primary's, nothing is left to try)."""
        node = self._node_of_bind.get(bind)
        if node is None:
            return None
        node.reachable, node.lag, node.error = False, None, type(exc).__name__
        self.refresh()
        logger.warning("%s (%s) failed on a new session: %s", node.name, node.url, exc)
        needed = self._needed(after)
        factory = self._pick(needed) or self._primary_fallback(needed)
        return _sync_bind(factory)

    def _needed(self, after: str | None) -> LastWrite | None:
        if self.mode.mode == "off":
            return None
        mine = last_write()
        if after is not None:
            theirs = parse_token(after)
            if mine is None:
                return theirs
            if theirs.lsn > mine.lsn or theirs.at > mine.at:
                mine = LastWrite(max(theirs.lsn, mine.lsn), max(theirs.at, mine.at), mine.since)
        return mine

    def _pick(self, needed: LastWrite | None) -> async_sessionmaker[AsyncSession] | None:
        bound = 0
        if needed is not None:
            if self.mode.mode == "window":
                if time.time() - needed.at < self.mode.window:
                    return None
            else:
                bound = needed.lsn
                if needed.since:  # a commit of this context whose position is not known
                    sampled = self.samples.bound(needed.since)
                    if sampled is None:
                        return None  # no sample of the primary since: nothing proves it
                    bound = max(bound, sampled)
        candidates = [node for node in self._usable if node.replay_lsn >= bound]
        if not candidates:
            return None
        return candidates[next(self._cycle) % len(candidates)].factory

    def _why_none(self, needed: LastWrite | None) -> str:
        states = ", ".join(
            f"{n.name} {n.url}: {n.state}, lag {n.lag if n.lag is not None else '?'} s"
            for n in self.nodes
        )
        return (
            f"No replica can serve this read ({states}; DATABASE_REPLICA_MAX_LAG="
            f"{self.settings.replica_max_lag:g}"
            + (", and none has replayed this context's last write" if needed else "")
            + "). DATABASE_REPLICA_FALLBACK=raise forbids reading from the primary: set it "
            "to primary, or bring a replica back."
        )

    def _note_fallback(self, falling_back: bool) -> None:
        if falling_back != self._fallback_logged:
            self._fallback_logged = falling_back
            if falling_back:
                logger.warning("no usable replica: reads go to the primary")
            else:
                logger.info("a replica is usable again: reads go to replicas")

    def describe(self, primary_state: str, primary_url: str) -> list[NodeReport]:
        """Every node, primary first, for ``db.health()`` and ``dbkeel check``."""
        max_lag = self.settings.replica_max_lag
        report: list[NodeReport] = [
            {
                "node": "primary",
                "role": "primary",
                "address": node_address(primary_url),
                "url": primary_url,
                "state": primary_state,
                "lag_s": 0.0,
                "error": None,
                "pool": PoolMonitor.get_pool_status(self.primary_engine),
            }
        ]
        for n in self.nodes:
            state = n.state
            if state == "ok" and not n.usable(max_lag):
                state = "lagging"
            report.append(
                {
                    "node": n.name,
                    "role": "replica",
                    "address": node_address(n.url),
                    "url": n.url,
                    "state": state,
                    "lag_s": n.lag,
                    "error": n.error,
                    "pool": PoolMonitor.get_pool_status(n.engine),
                }
            )
        return report

    def refresh(self) -> None:
        """Take in the nodes' new states (after a probe or a failed checkout)."""
        max_lag = self.settings.replica_max_lag
        self._usable = [node for node in self.nodes if node.usable(max_lag)]

    def notify(self) -> None:
        """Take in the nodes' new states and wake reads waiting for a replica to catch
        up (the prober calls it after each round)."""
        self.refresh()
        self._changed.set()

    async def dispose(self) -> None:
        """Close every replica engine."""
        await asyncio.gather(*(n.engine.dispose() for n in self.nodes), return_exceptions=True)
