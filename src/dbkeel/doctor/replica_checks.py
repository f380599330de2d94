"""Checks of each replica in ``DATABASE_REPLICA_URLS``: reachable, really a replica, close
enough, and configured so that reads on it are not cancelled behind the application's back.

Each replica is reached the way the application reaches it (its own engine built from the
same settings, so ``statement_timeout`` is the one its reads run with). The subject of
every finding is the node's name and ``host:port`` (``replica-1 (db2:5432)``), never the
URL's credentials.

PostgreSQL: ``pg_is_in_recovery()``; lag 0 when the replica has replayed the primary's
current WAL position, else the time it takes to get there (watched for up to
``DATABASE_REPLICA_MAX_LAG`` seconds; still behind then: the longer of that and the age
of its last replayed transaction);
``hot_standby_feedback``; ``max_standby_streaming_delay`` against the statement timeout.
MariaDB: ``SHOW REPLICA STATUS`` (both replication threads running,
``Seconds_Behind_Master``) and ``read_only``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from dbkeel._masking import node_address, scrub_secrets
from dbkeel.doctor.findings import Finding
from dbkeel.replicas.tokens import parse_lsn

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dbkeel.settings import DatabaseSettings

__all__ = ["ReplicaFacts", "check_replicas", "replica_findings"]

_PG_PRIMARY = text(
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
)
_PG_REPLAY_LSN = text("SELECT pg_last_wal_replay_lsn()::text")
_PG_REPLICA = text(
    """
    SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
      EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8,
      current_setting('hot_standby_feedback'),
      (SELECT setting::int FROM pg_settings WHERE name = 'max_standby_streaming_delay'),
      (SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout')
    """
)


@dataclass
class ReplicaFacts:
    """What one replica told the doctor (``error`` set when it could not be reached)."""

    name: str  # "replica-1 (db2:5432)"
    backend: str
    error: str | None = None
    in_recovery: bool | None = None
    lag_s: float | None = None
    behind_bytes: int | None = None
    hot_standby_feedback: bool | None = None
    standby_delay_s: float | None = None  # -1: replay waits for reads forever
    statement_timeout_s: float = 0.0  # 0: none
    threads_running: str | None = None  # MariaDB: why replication is not running
    read_only: bool | None = None  # MariaDB's read_only variable


async def check_replicas(settings: DatabaseSettings, primary: AsyncEngine) -> list[Finding]:
    """The findings of every replica, probed concurrently; [] without replicas."""
    urls = settings.replica_url_list
    if not urls:
        return []
    primary_lsn = await _primary_lsn(primary) if primary.dialect.name == "postgresql" else None
    facts = await asyncio.gather(
        *(_probe(settings, url, i, primary_lsn) for i, url in enumerate(urls, start=1))
    )
    return [finding for fact in facts for finding in replica_findings(settings, fact)]


async def _primary_lsn(primary: AsyncEngine) -> int | None:
    async with primary.connect() as conn:
        raw = (await conn.execute(_PG_PRIMARY)).scalar()
    return parse_lsn(raw) if raw else None


async def _probe(
    settings: DatabaseSettings, url: URL, index: int, primary_lsn: int | None
) -> ReplicaFacts:
    from dbkeel.engine import create_engine

    backend = url.get_backend_name()
    facts = ReplicaFacts(f"replica-{index} ({node_address(url)})", backend)
    replica_settings = settings.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "replica_urls": None,
            "environment": "test",  # no pool of its own to fill
        }
    )
    engine = create_engine(replica_settings)
    try:
        async with asyncio.timeout(settings.connect_timeout + 5 + settings.replica_max_lag):
            async with engine.connect() as conn:
                if backend == "postgresql":
                    _pg_facts(facts, (await conn.execute(_PG_REPLICA)).one(), primary_lsn)
                    if facts.behind_bytes and primary_lsn is not None:
                        await _pg_catch_up(facts, conn, primary_lsn, settings.replica_max_lag)
                else:
                    await _mysql_facts(facts, conn)
    except Exception as exc:
        message = scrub_secrets(f"{type(exc).__name__}: {exc}", [url])
        facts.error = " ".join(message.split())[:300]
    finally:
        await engine.dispose()
    return facts


def _pg_facts(facts: ReplicaFacts, row: Any, primary_lsn: int | None) -> None:
    in_recovery, replay, age, feedback, delay_ms, timeout_ms = row
    facts.in_recovery = bool(in_recovery)
    facts.hot_standby_feedback = feedback == "on"
    facts.standby_delay_s = -1.0 if delay_ms < 0 else delay_ms / 1000
    facts.statement_timeout_s = timeout_ms / 1000
    if not in_recovery or primary_lsn is None:
        return
    replayed = parse_lsn(replay) if replay else 0
    facts.behind_bytes = max(primary_lsn - replayed, 0)
    # Caught up with what the primary had written a moment ago: 0, however long ago the
    # last transaction was (an idle primary writes nothing). Behind: the age of the last
    # replayed transaction, which is how far behind its reads are.
    facts.lag_s = 0.0 if replayed >= primary_lsn else age


async def _pg_catch_up(facts: ReplicaFacts, conn: Any, primary_lsn: int, limit: float) -> None:
    """A replica found behind the primary's position: watch it replay, up to *limit*
    seconds. The age of its last replayed transaction is no measure on its own: a
    replica a few bytes behind (a WAL record the primary wrote a moment before, with no
    transaction for minutes) would read as minutes behind. Caught up after *t* seconds,
    it was at most *t* behind; still behind after *limit*, it lags by more than that."""
    started = asyncio.get_running_loop().time()
    while True:
        await asyncio.sleep(0.05)
        waited = asyncio.get_running_loop().time() - started
        replay = (await conn.execute(_PG_REPLAY_LSN)).scalar()
        replayed = parse_lsn(replay) if replay else 0
        if replayed >= primary_lsn:
            facts.lag_s, facts.behind_bytes = waited, 0
            return
        if waited >= limit:
            facts.behind_bytes = primary_lsn - replayed
            facts.lag_s = max(waited, facts.lag_s or 0.0)
            return


async def _mysql_facts(facts: ReplicaFacts, conn: Any) -> None:
    row = (await conn.execute(text("SHOW REPLICA STATUS"))).mappings().first()
    variables = text("SELECT @@read_only, @@max_statement_time")
    read_only, timeout = (await conn.execute(variables)).one()
    facts.statement_timeout_s = float(timeout or 0)
    if row is None:
        facts.in_recovery = False
        return
    facts.in_recovery = True
    io, sql = row.get("Slave_IO_Running"), row.get("Slave_SQL_Running")
    if io != "Yes" or sql != "Yes":
        error = row.get("Last_IO_Error") or row.get("Last_SQL_Error") or ""
        facts.threads_running = f"IO thread {io}, SQL thread {sql}" + (
            f": {error}" if error else ""
        )
    behind = row.get("Seconds_Behind_Master")
    facts.lag_s = float(behind) if behind is not None else None
    facts.read_only = bool(read_only)


def replica_findings(settings: DatabaseSettings, facts: ReplicaFacts) -> list[Finding]:
    """The findings of one replica from its facts (pure: tests feed it facts)."""
    name = facts.name
    if facts.error is not None:
        return [
            Finding(
                "replica.reachable",
                "error",
                f"{name} is unreachable: {facts.error}",
                "Reads routed to it fall back to the primary (or fail, with "
                "DATABASE_REPLICA_FALLBACK=raise), so the read capacity it was added for is "
                "missing.",
                "Start the replica or fix its entry in DATABASE_REPLICA_URLS (host, port, "
                "database, credentials); dbkeel uses it again once it answers.",
                subject=name,
            )
        ]
    findings = [Finding("replica.reachable", "ok", f"{name} answers", subject=name)]
    if not facts.in_recovery:
        what = (
            "is not in recovery: it is a primary"
            if facts.backend == "postgresql"
            else "has no replication configured (SHOW REPLICA STATUS is empty)"
        )
        findings.append(
            Finding(
                "replica.recovery",
                "error",
                f"{name} {what}",
                "dbkeel never reads from a 'replica' that is not one (it may be a promoted "
                "node or the primary itself listed by mistake): reads go elsewhere and this "
                "node's pool is wasted.",
                "Remove it from DATABASE_REPLICA_URLS, or list the standby's URL instead "
                "(after a failover: the node that is a replica now).",
                subject=name,
            )
        )
        return findings
    if facts.threads_running:
        findings.append(
            Finding(
                "replica.recovery",
                "error",
                f"{name} replication is not running: {facts.threads_running}",
                "A replica whose replication threads stopped falls further behind every "
                "second; dbkeel skips it once it lags past DATABASE_REPLICA_MAX_LAG.",
                "Fix the error shown, then START REPLICA on it; keep it read_only=ON.",
                subject=name,
            )
        )
    else:
        findings.append(Finding("replica.recovery", "ok", f"{name} is a replica", subject=name))
    findings.append(_lag(settings, facts))
    if facts.backend == "postgresql":
        findings.append(_feedback(facts))
        findings.append(_standby_delay(facts))
    elif not facts.read_only:
        findings.append(
            Finding(
                "replica.read-only",
                "warning",
                f"{name} read_only = OFF",
                "Anything that writes to the replica directly (a misrouted job, a manual "
                "fix) makes it diverge from the primary, and replication then stops on the "
                "first conflicting row.",
                "On the replica: SET GLOBAL read_only = ON (and read_only=1 in its config file).",
                subject=name,
            )
        )
    return findings


def _lag(settings: DatabaseSettings, facts: ReplicaFacts) -> Finding:
    limit = settings.replica_max_lag
    behind = f", {facts.behind_bytes} bytes of WAL behind" if facts.behind_bytes else ""
    if facts.lag_s is None:
        return Finding(
            "replica.lag",
            "warning",
            f"{facts.name} lag unknown{behind} (it has replayed no transaction yet)",
            "dbkeel does not read from a replica whose lag it cannot tell.",
            "Check the replica's log and pg_stat_wal_receiver (MariaDB: SHOW REPLICA "
            "STATUS); write something on the primary to give it a transaction to replay.",
            subject=facts.name,
        )
    what = f"{facts.name} lag {facts.lag_s:.2f} s (DATABASE_REPLICA_MAX_LAG={limit:g}){behind}"
    if facts.lag_s <= limit:
        return Finding("replica.lag", "ok", what, subject=facts.name)
    return Finding(
        "replica.lag",
        "warning",
        what,
        "dbkeel skips a replica further behind than the limit: its reads go to other "
        "replicas or the primary until it catches up.",
        "Find why replay is slow (a long read blocking replay, I/O, the network: "
        "pg_stat_replication on the primary); or raise DATABASE_REPLICA_MAX_LAG if reads "
        "that stale are acceptable.",
        subject=facts.name,
    )


def _feedback(facts: ReplicaFacts) -> Finding:
    if facts.hot_standby_feedback:
        return Finding(
            "replica.hot-standby-feedback", "ok", f"{facts.name} hot_standby_feedback = on",
            subject=facts.name,
        )  # fmt: skip
    return Finding(
        "replica.hot-standby-feedback",
        "warning",
        f"{facts.name} hot_standby_feedback = off",
        "VACUUM on the primary removes row versions a read on the replica still needs; "
        "replay then cancels that read (ERROR: canceling statement due to conflict with "
        "recovery) once max_standby_streaming_delay has passed.",
        "On the replica: ALTER SYSTEM SET hot_standby_feedback = on; SELECT "
        "pg_reload_conf(); (the primary then keeps those rows a little longer).",
        subject=facts.name,
    )


def _standby_delay(facts: ReplicaFacts) -> Finding:
    delay, timeout = facts.standby_delay_s, facts.statement_timeout_s
    shown_timeout = f"statement_timeout = {timeout:g} s" if timeout else "no statement_timeout"
    shown_delay = "-1 (forever)" if delay == -1 else f"{delay:g} s"
    what = f"{facts.name} max_standby_streaming_delay = {shown_delay}, {shown_timeout}"
    if delay == -1:
        if timeout:
            return Finding("replica.standby-delay", "ok", what, subject=facts.name)
        return Finding(
            "replica.standby-delay",
            "warning",
            what,
            "Replay waits as long as a conflicting read runs, and nothing limits how long "
            "a read runs: one runaway query stops this replica's replay; it falls behind "
            "and dbkeel stops using it.",
            "Set DATABASE_STATEMENT_TIMEOUT (e.g. 30), or a finite "
            "max_standby_streaming_delay on the replica.",
            subject=facts.name,
        )
    if timeout and delay is not None and timeout <= delay:
        return Finding("replica.standby-delay", "ok", what, subject=facts.name)
    allowed = f"the statement timeout allows {timeout:g} s" if timeout else "reads have no limit"
    return Finding(
        "replica.standby-delay",
        "warning",
        what,
        f"A read that conflicts with replay is cancelled after {shown_delay} (ERROR: "
        f"canceling statement due to conflict with recovery) although {allowed}: long "
        f"reports fail on the replica and not on the primary.",
        f"On the replica set max_standby_streaming_delay to at least the statement "
        f"timeout (ALTER SYSTEM SET max_standby_streaming_delay = '{max(timeout, 30):g}s'; "
        f"SELECT pg_reload_conf();), or DATABASE_STATEMENT_TIMEOUT <= {delay:g}.",
        subject=facts.name,
    )
