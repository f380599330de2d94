"""The health prober: every ``DATABASE_REPLICA_PROBE_INTERVAL`` seconds, each replica's
reachability, recovery state, replay position and lag.

PostgreSQL: lag is 0 when the replica has replayed everything the primary wrote (an idle
primary writes nothing, so ``now() - pg_last_xact_replay_timestamp()`` would grow without
the replica being behind); otherwise it is the age of the last replayed transaction.

MariaDB/MySQL (``window`` mode: no positions): ``SHOW REPLICA STATUS``. A server without
replication configured is "not in recovery"; the lag is ``Seconds_Behind_Master``, which
is NULL (unknown: the replica is not used) while a replication thread is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dbkeel._masking import scrub_secrets
from dbkeel.replicas.router import Node, ReplicaRouter
from dbkeel.replicas.tokens import parse_lsn

__all__ = ["probe_once", "run_prober"]

logger = logging.getLogger(__name__)

_PG_REPLICA = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8"
)
# write position (lag: what a replica can have) and insert position (read-your-writes
# bounds: at or past every commit record inserted before the query ran)
_PG_PRIMARY = text("SELECT pg_current_wal_lsn()::text, pg_current_wal_insert_lsn()::text")
_MYSQL_REPLICA = text("SHOW REPLICA STATUS")


async def _probe_primary(router: ReplicaRouter, limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            async with router.primary_engine.connect() as conn:
                # no BEGIN/ROLLBACK around one function call: one round trip
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                started = time.monotonic()  # before the query is sent: see positions.py
                written, inserted = (await conn.execute(_PG_PRIMARY)).one()
        router.samples.add(started, parse_lsn(inserted))
        lsn = parse_lsn(written)
        if lsn > router.primary_lsn:
            router.primary_lsn = lsn
            router.primary_history.append((lsn, time.monotonic()))
    except Exception:
        # The primary is down: replicas keep the positions they reported.
        logger.debug("primary position probe failed", exc_info=True)


async def _probe_node(router: ReplicaRouter, node: Node, limit: float) -> None:
    was = (node.reachable, node.in_recovery, node.usable(router.settings.replica_max_lag))
    try:
        async with asyncio.timeout(limit):
            async with node.engine.connect() as conn:
                if node.engine.dialect.name == "postgresql":
                    in_recovery, replay, age = (await conn.execute(_PG_REPLICA)).one()
                else:
                    in_recovery, replay, age = await _mysql_state(conn)
    except Exception as exc:
        node.reachable, node.lag = False, None
        node.error = scrub_secrets(f"{type(exc).__name__}: {exc}", [node.engine.url])[:300]
        await node.engine.dispose()  # the pool's connections to a dead node are useless
    else:
        node.reachable, node.in_recovery, node.error = True, bool(in_recovery), None
        if not in_recovery:
            node.lag = None
        elif node.engine.dialect.name == "postgresql":
            node.replay_lsn = parse_lsn(replay) if replay else 0
            node.lag = _lag(router, node.replay_lsn, age)
        else:
            node.lag = age  # Seconds_Behind_Master
    node.checked_at = time.time()
    now = (node.reachable, node.in_recovery, node.usable(router.settings.replica_max_lag))
    if now != was:
        _log_change(node, router.settings.replica_max_lag)


async def _mysql_state(conn: AsyncConnection) -> tuple[bool, None, float | None]:
    row = (await conn.execute(_MYSQL_REPLICA)).mappings().first()
    if row is None:
        return False, None, None
    behind = row.get("Seconds_Behind_Master")
    return True, None, float(behind) if behind is not None else None


def _lag(router: ReplicaRouter, replay_lsn: int, age: float | None) -> float:
    """Seconds the replica is behind: 0 once it replayed what the primary last reported.

    Otherwise the time since the primary was first seen past the replay position, capped
    by the age of the last replayed transaction. The age alone is wrong after an idle
    spell: the first write then finds a replica "minutes behind" that is not.
    """
    if replay_lsn >= router.primary_lsn:
        return 0.0
    now = time.monotonic()
    seen_ahead = next((at for lsn, at in router.primary_history if lsn > replay_lsn), now)
    behind = now - seen_ahead
    return max(min(behind, age) if age is not None else behind, 0.0)


def _log_change(node: Node, max_lag: float) -> None:
    if not node.reachable:
        logger.warning("%s (%s) is unreachable: %s", node.name, node.url, node.error)
    elif node.in_recovery is False:
        logger.error(
            "%s (%s) is not in recovery (or has no replication configured): it is a "
            "primary, not a replica. It is not used for reads; fix DATABASE_REPLICA_URLS "
            "(or it was promoted).",
            node.name,
            node.url,
        )
    elif not node.usable(max_lag):
        logger.warning(
            "%s (%s) lags %.1f s > %g s: skipped", node.name, node.url, node.lag or 0, max_lag
        )
    else:
        logger.info("%s (%s) is usable (lag %.2f s)", node.name, node.url, node.lag or 0)


async def probe_once(router: ReplicaRouter) -> None:
    """Probe the primary's position, then every replica, concurrently."""
    timeout = router.settings.connect_timeout
    if router.primary_engine.dialect.name == "postgresql":  # others have no positions
        await _probe_primary(router, timeout)
    await asyncio.gather(*(_probe_node(router, n, timeout) for n in router.nodes))
    router.notify()


async def run_prober(router: ReplicaRouter) -> None:
    """Probe forever, every ``replica_probe_interval`` seconds (cancel to stop)."""
    interval = router.settings.replica_probe_interval
    while True:
        started = time.monotonic()
        try:
            await probe_once(router)
        except Exception:
            logger.exception("replica probe failed")
        await asyncio.sleep(max(interval - (time.monotonic() - started), 0.01))
