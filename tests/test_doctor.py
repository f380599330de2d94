"""dbkeel doctor on real servers: each check tripped, then satisfied.

PostgreSQL checks are tripped with a throw-away role per test (``ALTER ROLE ... SET``,
``CONNECTION LIMIT``), so nothing changes for other tests or other runs on the server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from dbkeel import DatabaseManager, DatabaseUnavailableError
from dbkeel.doctor import DoctorOptions, Report, run_doctor
from dbkeel.doctor.findings import Finding
from dbkeel.doctor.probe import ServerFacts, pooler_detected
from dbkeel.doctor.server_checks import ServerContext, check_server
from dbkeel.settings import default_pool_size
from tests.conftest import CreateTables, make_settings

CPUS = DoctorOptions(cpu_count=2)  # pool-size rule: 4..8


def level(report: Report, finding_id: str) -> str:
    found = report.by_id(finding_id)
    assert len(found) == 1, (finding_id, report.findings)
    return found[0].level


def prod(url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {"environment": "production", "app_name": "doctor-tests"}
    values |= {"pool_size": 4, "max_overflow": 2}
    values.update(overrides)
    return make_settings(url, **values)


# -- PostgreSQL, through a throw-away role ---------------------------------------------

RoleFactory = Callable[..., Any]


@pytest.fixture
async def pg_role(pg_url: str) -> AsyncIterator[RoleFactory]:
    """Factory: create a login role with `ALTER ROLE ... SET` settings; returns its URL."""
    admin = create_async_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    async def create(limit: int = -1, **role_settings: str) -> str:
        name = f"dbkeel_doc_{secrets.token_hex(4)}"
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}"))
            created.append(name)
            for key, value in role_settings.items():
                await conn.execute(text(f"ALTER ROLE {name} SET {key} = '{value}'"))
        return make_url(pg_url).set(username=name).render_as_string(hide_password=False)

    yield create
    async with admin.connect() as conn:
        for name in created:
            await conn.execute(text(f"DROP ROLE IF EXISTS {name}"))
    await admin.dispose()


async def test_pg_sound_production_config_has_no_problem(pg_role: RoleFactory) -> None:
    url = await pg_role(
        limit=50, statement_timeout="30s", idle_in_transaction_session_timeout="60s"
    )
    report = await run_doctor(prod(url), options=CPUS)
    assert report.problems == [], report.problems
    assert report.exit_code(strict=True) == 0
    for finding_id in (
        "pool.size",
        "pool.overflow",
        "pool.pre-ping",
        "pool.fleet",
        "pool.recycle",
        "net.tcp-keepalive",
        "timeout.statement",
        "timeout.idle-in-transaction",
        "pg.jit",
        "app.application-name",
        "pgbouncer.prepared-statements",
        "net.tls",
        "server.version",
        "net.latency",
        "log.parameters",
    ):
        assert level(report, finding_id) == "ok"


async def test_pg_fleet_over_the_role_connection_limit_is_an_error(pg_role: RoleFactory) -> None:
    url = await pg_role(limit=3)
    report = await run_doctor(prod(url), options=CPUS)
    assert level(report, "pool.fleet") == "error"
    finding = report.by_id("pool.fleet")[0]
    assert "connection limit" in finding.what and "DATABASE_POOL_SIZE=" in finding.fix
    assert report.exit_code() == 1


async def test_pg_fleet_counts_workers(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = prod(pg_url)
    assert level(await run_doctor(settings, workers=1, options=CPUS), "pool.fleet") == "ok"
    monkeypatch.setenv("WEB_CONCURRENCY", "100")  # 100 x 6 > max_connections
    report = await run_doctor(settings, options=CPUS)
    assert report.workers == 100
    assert level(report, "pool.fleet") == "error"


async def test_pg_fleet_near_the_limit_is_a_warning(pg_role: RoleFactory) -> None:
    url = await pg_role(limit=7)  # 6 of 7 slots: over the 80% share
    assert level(await run_doctor(prod(url), options=CPUS), "pool.fleet") == "warning"


async def test_pg_fleet_does_not_count_the_running_application_twice(
    pg_role: RoleFactory,
) -> None:
    # A deployment already holds 5 connections as APP_NAME: they are part of the fleet
    # (4 + 2), not other clients. Counted as others, 5 of 10 slots would leave too few.
    url = await pg_role(limit=10)
    app = create_async_engine(
        url,
        poolclass=NullPool,
        connect_args={"server_settings": {"application_name": "doctor-tests"}},
    )
    async with AsyncExitStack() as stack:
        for _ in range(5):
            await stack.enter_async_context(app.connect())
        report = await run_doctor(prod(url), options=CPUS)
    await app.dispose()
    finding = report.by_id("pool.fleet")[0]
    assert finding.level == "ok", finding
    assert "0 held by other clients now" in finding.what
    assert "not counting 5 open with APP_NAME='doctor-tests'" in finding.what


async def test_pg_recycle_longer_than_idle_session_timeout(pg_role: RoleFactory) -> None:
    url = await pg_role(idle_session_timeout="10min")
    report = await run_doctor(prod(url, pool_recycle=3600), options=CPUS)
    assert level(report, "pool.recycle") == "warning"  # pre-ping catches it
    assert "DATABASE_POOL_RECYCLE=540" in report.by_id("pool.recycle")[0].fix
    report = await run_doctor(prod(url, pool_recycle=3600, pool_pre_ping=False), options=CPUS)
    assert level(report, "pool.recycle") == "error"
    assert level(report, "pool.pre-ping") == "error"
    report = await run_doctor(prod(url, pool_recycle=300), options=CPUS)
    assert level(report, "pool.recycle") == "ok"


async def test_pg_recycle_disabled_in_production(pg_url: str) -> None:
    report = await run_doctor(prod(pg_url, pool_recycle=-1), options=CPUS)
    assert level(report, "pool.recycle") == "warning"


async def test_pg_recycle_longer_than_tcp_keepalive(pg_role: RoleFactory) -> None:
    url = await pg_role(tcp_keepalives_idle="60")
    report = await run_doctor(prod(url, pool_recycle=3600), options=CPUS)
    assert level(report, "net.tcp-keepalive") == "warning"
    report = await run_doctor(prod(url, pool_recycle=50), options=CPUS)
    assert level(report, "net.tcp-keepalive") == "ok"


async def test_pg_missing_timeouts_warn(pg_role: RoleFactory) -> None:
    url = await pg_role()
    report = await run_doctor(prod(url), options=CPUS)
    assert level(report, "timeout.statement") == "warning"
    assert level(report, "timeout.idle-in-transaction") == "warning"
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1
    # dbkeel's own DATABASE_STATEMENT_TIMEOUT counts: the probe sees the app's session
    report = await run_doctor(prod(url, statement_timeout=5), options=CPUS)
    assert level(report, "timeout.statement") == "ok"


async def test_pg_jit_on_with_asyncpg(pg_role: RoleFactory) -> None:
    url = await pg_role(jit="on")
    # DATABASE_PGBOUNCER=true: dbkeel sends no jit=off, so the role's jit=on applies
    report = await run_doctor(prod(url, pgbouncer=True), options=CPUS)
    assert level(report, "pg.jit") == "warning"
    assert level(report, "pgbouncer.prepared-statements") == "ok"
    assert level(await run_doctor(prod(url), options=CPUS), "pg.jit") == "ok"


async def test_application_name_unset_warns(pg_url: str) -> None:
    report = await run_doctor(make_settings(pg_url, app_name="dbkeel"))
    assert level(report, "app.application-name") == "warning"


async def test_echo_with_parameters_warns_outside_production(pg_url: str) -> None:
    report = await run_doctor(make_settings(pg_url, echo=True, environment="development"))
    assert level(report, "log.parameters") == "warning"
    report = await run_doctor(prod(pg_url, echo=True), options=CPUS)
    assert level(report, "log.parameters") == "ok"


async def test_pool_sizing_against_cpus(pg_url: str) -> None:
    report = await run_doctor(prod(pg_url, pool_size=20, max_overflow=15), options=CPUS)
    assert level(report, "pool.size") == "warning"
    assert level(report, "pool.overflow") == "warning"
    assert "DATABASE_POOL_SIZE=4" in report.by_id("pool.size")[0].fix
    report = await run_doctor(prod(pg_url, pool_size=2, max_overflow=1), options=CPUS)
    assert level(report, "pool.size") == "warning"


async def test_pool_size_default_cap_passes_on_many_cpus(pg_url: str) -> None:
    # On 32 CPUs the settings' default is 40 (CPUs x 2 clamped to 4..40), not 64.
    many = DoctorOptions(cpu_count=32)
    assert default_pool_size() <= 40
    report = await run_doctor(prod(pg_url, pool_size=40, max_overflow=20), options=many)
    finding = report.by_id("pool.size")[0]
    assert finding.level == "ok", finding
    assert "rule: 40..128" in finding.what and "default cap" in finding.what
    report = await run_doctor(prod(pg_url, pool_size=30, max_overflow=15), options=many)
    assert level(report, "pool.size") == "warning"
    assert "DATABASE_POOL_SIZE=40" in report.by_id("pool.size")[0].fix
    assert level(report, "pool.overflow") == "ok"


async def test_latency_thresholds(pg_url: str) -> None:
    report = await run_doctor(prod(pg_url), options=DoctorOptions(latency_warning_ms=0.0))
    assert level(report, "net.latency") == "warning"
    options = DoctorOptions(latency_warning_ms=0.0, latency_error_ms=0.0)
    assert level(await run_doctor(prod(pg_url), options=options), "net.latency") == "error"


def test_transaction_pooler_detection_from_backend_pids() -> None:
    assert not pooler_detected(101, 102, 101)  # direct: pinned, never shared
    assert pooler_detected(101, 101, 102)  # the other connection got our backend
    assert pooler_detected(101, 102, 103)  # our connection moved


def _facts(**values: Any) -> ServerFacts:
    base: dict[str, Any] = {"backend": "postgresql", "version": (16, 2)}
    base |= {"version_text": "16.2", "latency_ms": 0.3}
    base.update(values)
    return ServerFacts(**base)


def _server_findings(url: str, facts: ServerFacts, **overrides: Any) -> dict[str, Finding]:
    ctx = ServerContext(prod(url, **overrides), {"pool_size": 4, "max_overflow": 2}, 1, CPUS)
    return {f.id: f for f in check_server(ctx, facts)}


def test_pooler_detected_with_prepared_statements_on_is_an_error() -> None:
    url = "postgresql+asyncpg://app@db.internal/app"
    found = _server_findings(url, _facts(pooler=True, tls=True))
    assert found["pgbouncer.prepared-statements"].level == "error"
    assert found["pgbouncer.prepared-statements"].fix == "DATABASE_PGBOUNCER=true"
    found = _server_findings(url, _facts(pooler=True, tls=True), pgbouncer=True)
    assert found["pgbouncer.prepared-statements"].level == "ok"


def test_production_without_tls_to_a_remote_host_is_an_error() -> None:
    remote = "postgresql+asyncpg://app@db.internal/app"
    assert _server_findings(remote, _facts(tls=False))["net.tls"].level == "error"
    assert _server_findings(remote, _facts(tls=True))["net.tls"].level == "ok"
    local = "postgresql+asyncpg://app@127.0.0.1/app"
    assert _server_findings(local, _facts(tls=False))["net.tls"].level == "ok"


async def test_tls_fix_for_mariadb_is_a_url_asyncmy_accepts(mariadb_url: str) -> None:
    remote = "mysql+asyncmy://app@db.internal/app"
    facts = _facts(backend="mariadb", version=(10, 11), version_text="10.11", tls=False)
    fix = _server_findings(remote, facts)["net.tls"].fix
    assert "?ssl=true" not in fix  # asyncmy: "ssl argument must be True, a dict ..."
    query = re.search(r"append \?(\S+) to DATABASE_URL", fix)
    assert query is not None and query[1].startswith("ssl_ca="), fix
    # The local server has no TLS, so the handshake fails; the URL itself must be taken.
    engine = create_async_engine(f"{mariadb_url}?{query[1]}", poolclass=NullPool)
    with pytest.raises(OperationalError, match="SSL"):
        async with engine.connect():
            pass
    await engine.dispose()


def test_tls_fix_names_the_postgres_drivers_query() -> None:
    facts = _facts(tls=False)
    asyncpg = _server_findings("postgresql+asyncpg://app@db.internal/app", facts)
    assert asyncpg["net.tls"].fix.startswith("append ?ssl=require to DATABASE_URL")
    psycopg = _server_findings("postgresql+psycopg://app@db.internal/app", facts)
    assert psycopg["net.tls"].fix.startswith("append ?sslmode=require to DATABASE_URL")


def test_unsupported_server_version_is_an_error() -> None:
    url = "postgresql+asyncpg://app@127.0.0.1/app"
    found = _server_findings(url, _facts(version=(12, 9), version_text="12.9"))
    assert found["server.version"].level == "error"


def test_sqlite_foreign_keys_off_is_an_error() -> None:
    facts = _facts(backend="sqlite", version=(3, 45), journal_mode="wal", foreign_keys=False)
    assert _server_findings("sqlite+aiosqlite:///x.db", facts)["sqlite.foreign-keys"].level == (
        "error"
    )


# -- schema checks on PostgreSQL -------------------------------------------------------


def _schema() -> MetaData:
    metadata = MetaData()
    Table("doc_customers", metadata, Column("id", Integer, primary_key=True))
    Table(
        "doc_orders",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("customer_id", ForeignKey("doc_customers.id")),  # no index
        Column("payload", JSON),  # JSON, not JSONB
        Column("extra", JSON().with_variant(postgresql.JSONB(), "postgresql")),
    )
    Table(
        "doc_users",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("email", String(200)),
        Column("is_deleted", Boolean, nullable=False, info={"dbkeel.soft_delete": True}),
        UniqueConstraint("email"),  # counts deleted rows
    )
    live = Table(
        "doc_tags",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("customer_id", ForeignKey("doc_customers.id"), index=True),
        Column("slug", String(50)),
        Column("deleted_at", Integer),
    )
    Index(
        "uq_doc_tags_slug_live",
        live.c.slug,
        unique=True,
        postgresql_where=live.c.deleted_at.is_(None),
        sqlite_where=live.c.deleted_at.is_(None),
    )
    return metadata


async def test_schema_checks_on_postgresql(pg_db: Any, create_tables: CreateTables) -> None:
    metadata = _schema()
    await create_tables(pg_db, metadata)
    report = await run_doctor(pg_db.settings, metadata=metadata)
    fk = report.by_id("schema.fk-index")
    assert [(f.level, f.subject) for f in fk] == [("warning", "doc_orders(customer_id)")]
    soft = report.by_id("schema.soft-delete-index")
    assert [(f.level, f.subject) for f in soft] == [("warning", "doc_users")]  # tags: partial
    unique = report.by_id("schema.soft-delete-unique")
    assert [(f.level, f.subject) for f in unique] == [("warning", "doc_users(email)")]
    json_cols = report.by_id("schema.json-type")
    assert [(f.level, f.subject) for f in json_cols] == [("warning", "doc_orders.payload")]


async def test_clean_schema_reports_ok(pg_url: str) -> None:
    metadata = MetaData()
    Table("doc_plain", metadata, Column("id", Integer, primary_key=True))
    report = await run_doctor(make_settings(pg_url), metadata=metadata)
    for check_id in ("schema.fk-index", "schema.soft-delete-index", "schema.json-type"):
        assert level(report, check_id) == "ok"


# -- MariaDB ---------------------------------------------------------------------------


async def test_mariadb_checks(mariadb_url: str) -> None:
    report = await run_doctor(prod(mariadb_url), options=CPUS)
    assert report.backend == "mariadb"
    assert level(report, "timeout.statement") == "warning"  # max_statement_time = 0
    assert level(report, "pool.recycle") == "ok"
    assert level(report, "server.version") == "ok"
    assert level(report, "net.tls") == "ok"
    assert not report.by_id("pg.jit")
    report = await run_doctor(
        prod(mariadb_url, statement_timeout=5, pool_recycle=100_000), options=CPUS
    )
    assert level(report, "timeout.statement") == "ok"
    assert level(report, "pool.recycle") == "warning"  # wait_timeout 28800 < 100000
    assert "DATABASE_POOL_RECYCLE=" in report.by_id("pool.recycle")[0].fix


async def test_mariadb_fleet_over_max_connections(mariadb_url: str) -> None:
    report = await run_doctor(prod(mariadb_url), workers=1000, options=CPUS)
    assert level(report, "pool.fleet") == "error"
    assert "max_connections" in report.by_id("pool.fleet")[0].what


async def test_mariadb_fleet_says_whether_it_told_own_connections_apart(
    mariadb_url: str,
) -> None:
    async with DatabaseManager(prod(mariadb_url)) as app, app.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        report = await run_doctor(prod(mariadb_url), options=CPUS)
    what = report.by_id("pool.fleet")[0].what
    # MariaDB shows connect attributes (program_name) only with performance_schema=ON.
    assert (
        "not counting 1 open with APP_NAME='doctor-tests'" in what
        or "APP_NAME='doctor-tests' cannot be told apart" in what
    ), what


async def test_mariadb_schema_checks_skip_jsonb(mariadb_url: str) -> None:
    report = await run_doctor(make_settings(mariadb_url), metadata=_schema())
    assert not report.by_id("schema.json-type")
    assert level(report, "schema.soft-delete-index") == "warning"


# -- SQLite ----------------------------------------------------------------------------


async def test_sqlite_file_database_is_wal_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}"
    report = await run_doctor(make_settings(url, environment="development"))
    assert level(report, "sqlite.journal-mode") == "ok"
    assert level(report, "sqlite.foreign-keys") == "ok"
    assert level(report, "sqlite.production") == "ok"
    report = await run_doctor(prod(url), options=CPUS)
    assert level(report, "sqlite.production") == "warning"


async def test_sqlite_in_memory_is_not_wal() -> None:
    report = await run_doctor(make_settings("sqlite+aiosqlite:///:memory:"))
    assert level(report, "sqlite.journal-mode") == "warning"


async def test_unreachable_server_raises_the_clear_error() -> None:
    settings = make_settings(
        "postgresql+asyncpg://app:Secret-42@127.0.0.1:1/app", initialize_timeout=0.3
    )
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1") as info:
        await run_doctor(settings)
    assert "Secret-42" not in str(info.value)
