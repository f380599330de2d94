"""Read what the doctor needs from the live server, in a handful of round trips.

Facts are read on a connection opened exactly as the application opens one (same driver
arguments, same session settings), so ``statement_timeout`` or ``jit`` are the values the
application's queries run with, including ``ALTER ROLE/DATABASE ... SET`` defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbkeel._translate import sqlstate
from dbkeel.monitoring.health import round_trip_ms

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["ServerFacts", "pooler_detected", "probe_server"]

# SQLSTATEs a transaction-mode pooler causes for named prepared statements:
# 26000 invalid_sql_statement_name, 42P05 duplicate_prepared_statement.
_PREPARED_STATEMENT_STATES = {"26000", "42P05"}

_PG_SETTINGS = (
    "server_version_num",
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "jit",
    "application_name",
)
# "Others" leave out the fleet's own backends (same application_name): the fleet check
# adds the whole fleet itself, so a doctor run against a live deployment must not count
# it twice. They are counted apart, for the report.
_PG_OTHERS = (
    "backend_type = 'client backend' AND pid <> pg_backend_pid() "
    "AND application_name IS DISTINCT FROM :app_name"
)
_PG_FACTS = text(
    f"""
    SELECT
      (SELECT json_object_agg(name, setting) FROM pg_settings WHERE name = ANY(:names)),
      (SELECT count(*) FROM pg_stat_activity WHERE {_PG_OTHERS}),
      (SELECT count(*) FROM pg_stat_activity WHERE {_PG_OTHERS} AND usename = current_user),
      (SELECT count(*) FROM pg_stat_activity
        WHERE {_PG_OTHERS} AND datname = current_database()),
      (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
      (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
      (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),
      current_user, current_database(),
      (SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND application_name = :app_name)
    """
)


@dataclass
class ServerFacts:
    """What the server told the doctor. Backend-specific fields stay None elsewhere."""

    backend: str
    version: tuple[int, ...]
    version_text: str
    latency_ms: float
    is_mariadb: bool = False
    max_connections: int | None = None
    reserved_connections: int = 0
    others_connected: int = 0  # other clients, the application's own connections left out
    own_connected: int | None = None  # same application name; None = cannot be told apart
    user_limit: int | None = None  # role / account connection limit, None = unlimited
    user_others: int = 0
    database_limit: int | None = None
    database_others: int = 0
    superuser: bool = False
    user: str = ""
    database: str = ""
    idle_timeout_s: float | None = None  # idle_session_timeout / wait_timeout; None = off
    keepalive_idle_s: float | None = None
    statement_timeout_s: float | None = None  # None = no limit
    idle_in_transaction_timeout_s: float | None = None
    jit: bool | None = None
    application_name: str | None = None
    tls: bool | None = None
    pooler: bool = False
    journal_mode: str | None = None
    foreign_keys: bool | None = None
    notes: list[str] = field(default_factory=list)


async def probe_server(engine: AsyncEngine, app_name: str) -> ServerFacts:
    """Collect :class:`ServerFacts` through *engine* (one or two connections).

    Connections named *app_name* (``APP_NAME``) are the application's own: they are
    counted apart from the other clients'.
    """
    backend = engine.dialect.name
    async with engine.connect() as conn:
        latency = await round_trip_ms(conn)
        version = tuple(p for p in conn.dialect.server_version_info or () if isinstance(p, int))
        if backend == "postgresql":
            facts = await _postgres(conn, version, latency, app_name)
        elif backend in ("mysql", "mariadb"):
            facts = await _mysql(conn, version, latency, app_name)
        else:
            facts = await _sqlite(conn, version, latency)
    if backend == "postgresql":
        facts.pooler = await _detect_transaction_pooler(engine)
    return facts


def _ms_to_s(value: Any) -> float | None:
    number = float(value) if value is not None else 0.0
    return number / 1000 if number > 0 else None


async def _postgres(
    conn: AsyncConnection, version: tuple[int, ...], latency: float, app_name: str
) -> ServerFacts:
    params = {"names": list(_PG_SETTINGS), "app_name": app_name}
    row = (await conn.execute(_PG_FACTS, params)).one()
    (
        settings,
        others,
        user_others,
        db_others,
        rolconnlimit,
        superuser,
        datconnlimit,
        ssl,
        user,
        database,
        own,
    ) = row
    if isinstance(settings, str):  # drivers without a json codec hand back text
        import json

        settings = json.loads(settings)
    reserved = int(settings.get("superuser_reserved_connections", 0))
    reserved += int(settings.get("reserved_connections", 0))
    keepalive = float(settings.get("tcp_keepalives_idle", 0))
    num = int(settings["server_version_num"])
    return ServerFacts(
        backend="postgresql",
        version=version or (num // 10000, num % 10000),
        version_text=".".join(str(p) for p in version),
        latency_ms=latency,
        max_connections=int(settings["max_connections"]),
        reserved_connections=reserved,
        others_connected=int(others),
        own_connected=int(own),
        user_limit=rolconnlimit if rolconnlimit is not None and rolconnlimit >= 0 else None,
        user_others=int(user_others),
        database_limit=datconnlimit if datconnlimit is not None and datconnlimit >= 0 else None,
        database_others=int(db_others),
        superuser=bool(superuser),
        user=str(user),
        database=str(database),
        idle_timeout_s=_ms_to_s(settings.get("idle_session_timeout")),
        keepalive_idle_s=keepalive if keepalive > 0 else None,
        statement_timeout_s=_ms_to_s(settings.get("statement_timeout")),
        idle_in_transaction_timeout_s=_ms_to_s(settings.get("idle_in_transaction_session_timeout")),
        jit=settings.get("jit") == "on",
        application_name=settings.get("application_name") or None,
        tls=bool(ssl) if ssl is not None else None,
    )


# The application's own connections, told apart by the program_name connect attribute
# dbkeel sends through asyncmy. Only performance_schema shows connect attributes, and
# MariaDB ships with it off (performance_schema=ON in the server config turns it on).
_MYSQL_OWN = text(
    "SELECT count(*), count(CASE WHEN p.USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) "
    "THEN 1 END) FROM information_schema.PROCESSLIST p "
    "JOIN performance_schema.session_connect_attrs a ON a.PROCESSLIST_ID = p.ID "
    "AND a.ATTR_NAME = 'program_name' AND a.ATTR_VALUE = :app_name "
    "WHERE p.ID <> CONNECTION_ID()"
)


async def _mysql(
    conn: AsyncConnection, version: tuple[int, ...], latency: float, app_name: str
) -> ServerFacts:
    version_text = str(await conn.scalar(text("SELECT VERSION()")))
    is_mariadb = "mariadb" in version_text.lower()
    timeout_var = "@@session.max_statement_time" if is_mariadb else "@@session.max_execution_time"
    row = (
        await conn.execute(
            text(
                f"SELECT @@max_connections, @@session.wait_timeout, {timeout_var}, "
                "@@session.max_user_connections, CURRENT_USER(), DATABASE(), "
                "(SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID <> "
                "CONNECTION_ID() AND COMMAND <> 'Daemon'), "
                "(SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID <> "
                "CONNECTION_ID() AND CONCAT(USER, '@') = "
                "CONCAT(SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '@')), "
                "@@performance_schema"
            )
        )
    ).one()
    max_conn, wait_timeout, stmt_timeout, user_limit, user, database, others, user_others = row[:8]
    own: int | None = None
    if row[8]:
        try:
            own, own_user = (await conn.execute(_MYSQL_OWN, {"app_name": app_name})).one()
        except DBAPIError:  # no SELECT privilege on performance_schema: cannot tell apart
            pass
        else:
            others, user_others = int(others) - int(own), int(user_others) - int(own_user)
    cipher = (await conn.execute(text("SHOW SESSION STATUS LIKE 'Ssl_cipher'"))).first()
    # MariaDB counts seconds, MySQL's max_execution_time milliseconds.
    stmt_s = float(stmt_timeout or 0) / (1 if is_mariadb else 1000)
    return ServerFacts(
        backend="mariadb" if is_mariadb else "mysql",
        version=version,
        version_text=version_text.split("-")[0],
        latency_ms=latency,
        is_mariadb=is_mariadb,
        max_connections=int(max_conn),
        others_connected=int(others),
        own_connected=int(own) if own is not None else None,
        user_limit=int(user_limit) if user_limit else None,
        user_others=int(user_others),
        user=str(user),
        database=str(database),
        idle_timeout_s=float(wait_timeout) if wait_timeout else None,
        statement_timeout_s=stmt_s if stmt_s > 0 else None,
        tls=bool(cipher and cipher[1]),
    )


async def _sqlite(conn: AsyncConnection, version: tuple[int, ...], latency: float) -> ServerFacts:
    journal = str(await conn.scalar(text("PRAGMA journal_mode")))
    foreign_keys = await conn.scalar(text("PRAGMA foreign_keys"))
    library = str(await conn.scalar(text("SELECT sqlite_version()")))
    return ServerFacts(
        backend="sqlite",
        version=tuple(int(p) for p in library.split(".")) or version,
        version_text=library,
        latency_ms=latency,
        journal_mode=journal.lower(),
        foreign_keys=bool(foreign_keys),
    )


def pooler_detected(first_pid: int, other_connection_pid: int, second_pid: int) -> bool:
    """True when backend pids show a transaction-mode pooler between client and server.

    Without a pooler, a client connection keeps one backend for life and two open client
    connections never share one. A transaction-mode pooler (PgBouncer, Odyssey, RDS Proxy)
    hands a backend out per transaction, so either the other connection got the backend
    the first one just released, or the first one moved to another backend.
    """
    return other_connection_pid == first_pid or second_pid != first_pid


async def _detect_transaction_pooler(engine: AsyncEngine) -> bool:
    # PgBouncer's SHOW commands answer only on its admin console, and nothing in the
    # protocol names the proxy (pgbouncer/pgbouncer#249), so watch its behaviour: a
    # backend pid that moves between transactions of one client connection.
    pid = text("SELECT pg_backend_pid()")
    try:
        async with engine.connect() as first:
            auto = await first.execution_options(isolation_level="AUTOCOMMIT")
            first_pid = int(await auto.scalar(pid) or 0)
            async with engine.connect() as other:  # holds its transaction open
                other_pid = int(await other.scalar(pid) or 0)
                second_pid = int(await auto.scalar(pid) or 0)
    except DBAPIError as exc:
        if sqlstate(exc) in _PREPARED_STATEMENT_STATES:
            return True  # prepared statements already broke: that is the pooler's mark
        raise
    return pooler_detected(first_pid, other_pid, second_pid)
