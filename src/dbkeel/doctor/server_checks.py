"""Checks that compare the settings with what the live server reported.

Pure functions of :class:`~dbkeel.doctor.probe.ServerFacts`: the runner gathers facts
once, these turn them into findings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbkeel.doctor.config_checks import ENV, pooled_limits
from dbkeel.doctor.findings import Finding

if TYPE_CHECKING:
    from dbkeel.doctor.findings import DoctorOptions, Level
    from dbkeel.doctor.probe import ServerFacts
    from dbkeel.settings import DatabaseSettings

__all__ = ["MIN_VERSIONS", "ServerContext", "check_server"]

#: Oldest versions still maintained upstream (PostgreSQL 13 ended Nov 2025, MariaDB 10.5
#: June 2025); SQLite 3.35 brought RETURNING, which SQLAlchemy's bulk inserts use.
MIN_VERSIONS = {"postgresql": (14,), "mariadb": (10, 6), "mysql": (8, 0), "sqlite": (3, 35)}
# A fleet using more than this share of the free slots leaves too little for deploys
# (old and new workers overlap), migrations and an operator's psql.
_FLEET_WARNING_SHARE = 0.8


@dataclass(frozen=True)
class ServerContext:
    """What the server checks read besides the facts."""

    settings: DatabaseSettings
    pool_kwargs: dict[str, object]
    workers: int
    options: DoctorOptions


def check_server(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    """Every server check that applies to *facts*' backend, in report order."""
    findings = [_version(facts), _latency(ctx, facts)]
    if facts.backend == "sqlite":
        return findings + _sqlite(facts)
    if "pool_size" in ctx.pool_kwargs:
        findings += _fleet(ctx, facts)
        findings += _recycle(ctx, facts)
        if facts.keepalive_idle_s is not None:
            findings += _keepalive(ctx, facts)
    findings += _statement_timeout(ctx, facts)
    if facts.backend == "postgresql":
        findings += _idle_in_transaction(facts)
        findings += _jit(ctx, facts)
        findings += _pgbouncer(ctx, facts)
    findings += _tls(ctx, facts)
    return findings


def _version(facts: ServerFacts) -> Finding:
    minimum = MIN_VERSIONS.get(facts.backend, ())
    shown = ".".join(str(p) for p in minimum)
    what = f"{facts.backend} {facts.version_text} (oldest supported: {shown})"
    if facts.version >= minimum:
        return Finding("server.version", "ok", what)
    return Finding(
        "server.version",
        "error",
        what,
        "This version gets no security or bug fixes any more, and dbkeel is not tested on it.",
        f"Upgrade the server to {facts.backend} {shown} or newer.",
    )


def _latency(ctx: ServerContext, facts: ServerFacts) -> Finding:
    opts = ctx.options
    what = f"round trip {facts.latency_ms:.2f} ms (median of 5 x SELECT 1)"
    if facts.latency_ms < opts.latency_warning_ms:
        return Finding("net.latency", "ok", what)
    level: Level = "error" if facts.latency_ms >= opts.latency_error_ms else "warning"
    return Finding(
        "net.latency",
        level,
        what + f"; warning from {opts.latency_warning_ms:g} ms",
        "Every statement pays this once, so a request with 20 queries waits 20 round "
        "trips; the usual cause is an application in another zone or region than the "
        "database.",
        "Run the application in the database's region/zone; batch statements "
        "(selectinload, insert many) to pay fewer round trips.",
    )


def _fleet(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    size, overflow = pooled_limits(ctx.settings, ctx.pool_kwargs)
    per_worker = size + overflow
    fleet = per_worker * ctx.workers
    what = f"{ctx.workers} worker(s) x ({size} + {overflow}) = {fleet} connections at most"
    # (name of the limit, slots it allows, connections others hold under it)
    limits: list[tuple[str, int, int]] = []
    if facts.max_connections is not None:
        reserved = 0 if facts.superuser else facts.reserved_connections
        limits.append(
            (
                f"max_connections {facts.max_connections} - {reserved} reserved",
                facts.max_connections - reserved,
                facts.others_connected,
            )
        )
    if facts.user_limit is not None and not facts.superuser:
        limits.append((f"connection limit of {facts.user!r}", facts.user_limit, facts.user_others))
    if facts.database_limit is not None and not facts.superuser:
        limits.append(
            (
                f"connection limit of database {facts.database!r}",
                facts.database_limit,
                facts.database_others,
            )
        )
    if not limits:
        return [Finding("pool.fleet", "ok", what + "; the server reports no limit")]
    name, allowed, others = min(limits, key=lambda item: item[1] - item[2])
    free = allowed - others
    what += f"; {name} = {allowed}, {others} held by other clients now, {free} free"
    what += _own_connections(ctx, facts)
    if fleet <= free * _FLEET_WARNING_SHARE:
        return [Finding("pool.fleet", "ok", what)]
    budget = max(free, 0) // ctx.workers
    new_size = max(1, budget * 2 // 3)
    fix = (
        f"{ENV['pool_size']}={new_size} {ENV['max_overflow']}={max(0, budget - new_size)} "
        f"(fits {ctx.workers} workers), fewer workers, or PgBouncer in front "
        f"({ENV['pgbouncer']}=true)"
    )
    if fleet > free:
        why = (
            "Under load the fleet opens more connections than the server accepts: new "
            "connections fail with 'too many connections' and requests error out."
        )
        return [Finding("pool.fleet", "error", what, why, fix)]
    why = (
        f"The fleet may take more than {_FLEET_WARNING_SHARE:.0%} of the free slots: a "
        "rolling deploy (old and new workers at once), a migration or a cron job pushes "
        "the server over its limit."
    )
    return [Finding("pool.fleet", "warning", what, why, fix)]


def _own_connections(ctx: ServerContext, facts: ServerFacts) -> str:
    # The fleet total already includes the running application's connections, so they
    # are not counted among the other clients; say so, or say they could not be told apart.
    name = ctx.settings.app_name
    if facts.own_connected is None:
        return (
            f"; connections of APP_NAME={name!r} cannot be told apart from other clients' "
            "(performance_schema is off or not readable), so a running fleet is counted "
            "twice here"
        )
    if facts.own_connected:
        return (
            f" (not counting {facts.own_connected} open with APP_NAME={name!r}: the fleet "
            "total includes them)"
        )
    return ""


def _recycle(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    recycle = ctx.settings.pool_recycle
    shown = "disabled (-1)" if recycle < 0 else f"{recycle} s"
    idle = facts.idle_timeout_s
    var = "idle_session_timeout" if facts.backend == "postgresql" else "wait_timeout"
    if idle is not None and (recycle < 0 or recycle >= idle):
        pre_ping = ctx.settings.effective_pre_ping
        return [
            Finding(
                "pool.recycle",
                "warning" if pre_ping else "error",
                f"DATABASE_POOL_RECYCLE {shown}, but the server closes idle sessions after "
                f"{var} = {idle:g} s",
                "The server closes pooled connections before the pool replaces them; "
                + (
                    "pre-ping catches them at checkout, one wasted round trip and reconnect "
                    "each time."
                    if pre_ping
                    else "without pre-ping the next request on such a connection fails."
                ),
                f"{ENV['pool_recycle']}={max(1, int(idle * 0.9))}",
            )
        ]
    if recycle < 0 and ctx.settings.environment == "production":
        return [
            Finding(
                "pool.recycle",
                "warning",
                "DATABASE_POOL_RECYCLE=-1: pooled connections are never replaced",
                "Cloud load balancers, NAT gateways and proxies drop idle connections "
                "(often after 350 s to 1 h) without telling either side.",
                f"{ENV['pool_recycle']}=1800",
            )
        ]
    limit = f"{var} = {idle:g} s" if idle is not None else f"no {var}"
    return [Finding("pool.recycle", "ok", f"DATABASE_POOL_RECYCLE {shown}; {limit}")]


def _keepalive(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    recycle, keepalive = ctx.settings.pool_recycle, facts.keepalive_idle_s or 0
    what = f"DATABASE_POOL_RECYCLE {recycle} s, server tcp_keepalives_idle = {keepalive:g} s"
    if 0 <= recycle <= keepalive:
        return [Finding("net.tcp-keepalive", "ok", what)]
    return [
        Finding(
            "net.tcp-keepalive",
            "warning",
            what,
            "The server's TCP keepalive probes an idle connection after tcp_keepalives_idle; "
            "where a NAT or load balancer has already forgotten the flow the probe fails and "
            "the server drops the connection, which the pool still holds.",
            f"{ENV['pool_recycle']}={max(1, int(keepalive * 0.9))}, or raise "
            f"tcp_keepalives_idle above it (ALTER ROLE ... SET tcp_keepalives_idle)",
        )
    ]


def _statement_timeout(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    var = {"postgresql": "statement_timeout", "mariadb": "max_statement_time"}.get(
        facts.backend, "max_execution_time"
    )
    if facts.statement_timeout_s is not None:
        return [Finding("timeout.statement", "ok", f"{var} = {facts.statement_timeout_s:g} s")]
    fix = f"{ENV['statement_timeout']}=30"
    if ctx.settings.pgbouncer:
        fix = f"ALTER ROLE {facts.user} SET statement_timeout = '30s' (PgBouncer mode sends none)"
    return [
        Finding(
            "timeout.statement",
            "warning",
            f"{var} is 0: statements may run forever",
            "One runaway query holds its connection, its locks and a worker until someone "
            "kills it; the client-side command_timeout gives up waiting but leaves the "
            "query running on the server.",
            fix,
        )
    ]


def _idle_in_transaction(facts: ServerFacts) -> list[Finding]:
    value = facts.idle_in_transaction_timeout_s
    if value is not None:
        return [Finding("timeout.idle-in-transaction", "ok", f"= {value:g} s")]
    return [
        Finding(
            "timeout.idle-in-transaction",
            "warning",
            "idle_in_transaction_session_timeout is 0",
            "A session left open in a transaction (a hung request, a debugger) keeps its "
            "locks and blocks VACUUM until it is closed by hand.",
            f"ALTER ROLE {facts.user} SET idle_in_transaction_session_timeout = '60s'",
        )
    ]


def _jit(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    if ctx.settings.url.get_driver_name() != "asyncpg" or not facts.jit:
        return [Finding("pg.jit", "ok", f"jit = {'on' if facts.jit else 'off'}")]
    return [
        Finding(
            "pg.jit",
            "warning",
            "jit = on for asyncpg sessions",
            "asyncpg's type introspection queries get JIT-compiled, which makes the first "
            "queries on ENUM and composite types take hundreds of ms (asyncpg #727).",
            f"ALTER ROLE {facts.user} SET jit = off (dbkeel sends jit=off itself unless "
            f"{ENV['pgbouncer']}=true)",
        )
    ]


def _pgbouncer(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    if not facts.pooler:
        what = "no transaction-mode pooler detected"
        if ctx.settings.pgbouncer:
            what += f" ({ENV['pgbouncer']}=true: prepared statement caching is off)"
        return [Finding("pgbouncer.prepared-statements", "ok", what)]
    if ctx.settings.pgbouncer:
        return [
            Finding(
                "pgbouncer.prepared-statements",
                "ok",
                "transaction-mode pooler detected; DATABASE_PGBOUNCER=true disables "
                "prepared statement caching",
            )
        ]
    return [
        Finding(
            "pgbouncer.prepared-statements",
            "error",
            "a transaction-mode pooler (PgBouncer or similar) is in front, and prepared "
            "statements are cached on the client",
            "asyncpg prepares every statement; behind a pooler the next transaction runs on "
            "another backend, failing with 'prepared statement ... does not exist'.",
            f"{ENV['pgbouncer']}=true",
        )
    ]


def _is_local(host: str | None) -> bool:
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The URL query each driver takes for TLS. asyncmy rejects ?ssl=true (its ssl argument
# must be True, a dict or an SSLContext, and the URL gives a string); SQLAlchemy's MySQL
# dialects turn ssl_ca / ssl_cert / ssl_key / ssl_check_hostname into that dict.
_TLS_QUERY = {
    "asyncpg": ("?ssl=require", "asyncpg: encrypt; ?ssl=verify-full also checks the certificate"),
    "psycopg": (
        "?sslmode=require",
        "libpq: encrypt; sslmode=verify-full also checks the certificate",
    ),
    "asyncmy": (
        "?ssl_ca=/etc/ssl/certs/ca-certificates.crt",
        "the CA bundle that signed the server's certificate; asyncmy does not take ssl=true",
    ),
}


def _tls(ctx: ServerContext, facts: ServerFacts) -> list[Finding]:
    host = ctx.settings.url.host
    if facts.tls or ctx.settings.environment != "production" or _is_local(host):
        state = "TLS" if facts.tls else "no TLS"
        return [Finding("net.tls", "ok", f"{state} to {host or 'local socket'}")]
    driver = ctx.settings.url.get_driver_name()
    query, note = _TLS_QUERY.get(driver, _TLS_QUERY["asyncmy"])
    return [
        Finding(
            "net.tls",
            "error",
            f"ENVIRONMENT=production and the connection to {host} is not encrypted",
            "Queries, results and the login travel in clear text across every network "
            "hop between the application and the database.",
            f"append {query} to DATABASE_URL ({note}; and enable TLS on the server)",
        )
    ]


def _sqlite(facts: ServerFacts) -> list[Finding]:
    findings = []
    if facts.journal_mode == "wal":
        findings.append(Finding("sqlite.journal-mode", "ok", "journal_mode = wal"))
    else:
        findings.append(
            Finding(
                "sqlite.journal-mode",
                "warning",
                f"journal_mode = {facts.journal_mode}",
                "Without WAL a writer blocks every reader, so concurrent requests wait on "
                "'database is locked'. In-memory databases cannot use WAL.",
                "Use a file database (DATABASE_URL=sqlite+aiosqlite:///./app.sqlite3): "
                "dbkeel sets PRAGMA journal_mode=WAL on it.",
            )
        )
    if facts.foreign_keys:
        findings.append(Finding("sqlite.foreign-keys", "ok", "foreign_keys = on"))
    else:
        findings.append(
            Finding(
                "sqlite.foreign-keys",
                "error",
                "foreign_keys = off",
                "SQLite ignores every FOREIGN KEY unless the pragma is on per connection: "
                "orphans are stored silently, and ON DELETE CASCADE does nothing.",
                "Use the sqlite+aiosqlite driver through dbkeel (it sets PRAGMA "
                "foreign_keys=ON on every connection).",
            )
        )
    return findings
