"""Metrics exporters, the slow query log and health reports, on real databases."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from dbkeel import DatabaseManager, MissingDependencyError
from dbkeel.monitoring import (
    SlowQueryLog,
    check_health,
    enable_otel,
    prometheus_text,
    register_prometheus,
)
from dbkeel.monitoring.health import round_trip_ms
from tests.conftest import make_settings


@pytest.fixture
async def pg_pool(pg_url: str) -> AsyncIterator[DatabaseManager]:
    settings = make_settings(
        pg_url, environment="production", pool_size=2, max_overflow=1, app_name="shop"
    )
    async with DatabaseManager(settings) as manager:
        yield manager


async def _requests(db: DatabaseManager, n: int) -> None:
    for _ in range(n):
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))


async def test_prometheus_text_has_every_series(pg_pool: DatabaseManager) -> None:
    assert pg_pool.monitor is not None
    await _requests(pg_pool, 3)
    async with pg_pool.engine.connect() as conn:
        await conn.invalidate()
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(pg_pool.monitor))}
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["app"] == "shop"
            assert sample.labels["pool"] == "default"
            assert sample.labels["node"] == "primary"
            assert (
                sample.labels["address"]
                == pg_pool.engine.url.render_as_string().split("@")[-1].split("/")[0]
            )
            rest = tuple(
                sorted(
                    (k, v)
                    for k, v in sample.labels.items()
                    if k not in ("app", "pool", "node", "address")
                )
            )
            values[(sample.name, rest)] = sample.value

    p = "dbkeel_pool_"
    assert values[(p + "connections", (("state", "idle"),))] >= 1
    assert values[(p + "connections", (("state", "used"),))] == 0
    assert values[(p + "capacity", ())] == 3
    assert values[(p + "size", ())] == 2
    assert values[(p + "overflow_in_use", ())] == 0
    assert values[(p + "waiting", ())] == 0
    # initialize() + 3 requests + the invalidated one
    assert values[(p + "checkout_wait_seconds_count", ())] == 5
    assert values[(p + "checkout_wait_seconds_bucket", (("le", "+Inf"),))] == 5
    assert values[(p + "checkout_wait_seconds_sum", ())] > 0
    assert values[(p + "checkout_timeouts_total", ())] == 0
    assert values[(p + "invalidations_total", (("kind", "hard"),))] == 1
    assert values[(p + "invalidations_total", (("kind", "soft"),))] == 0
    assert values[(p + "connects_total", ())] >= 1
    assert values[(p + "connect_seconds_count", ())] == values[(p + "connects_total", ())]
    assert values[(p + "leaks_total", ())] == 0
    assert families[p + "checkout_wait_seconds"].type == "histogram"


async def test_register_prometheus_shares_one_collector_per_registry(
    pg_pool: DatabaseManager, pg_db: DatabaseManager
) -> None:
    from dbkeel import PoolMonitor

    registry = CollectorRegistry()
    other = PoolMonitor.setup_listeners(pg_db.engine, pool_name="reports")
    assert pg_pool.monitor is not None
    first = register_prometheus(pg_pool.monitor, registry)
    assert register_prometheus(other, registry) is first  # no duplicate-timeseries error
    pools = {
        s.labels["pool"]
        for s in registry.collect()
        for s in s.samples
        if s.name == "dbkeel_pool_connects_total"
    }
    assert pools == {"default", "reports"}


async def test_opentelemetry_instruments_follow_the_semantic_conventions(
    pg_pool: DatabaseManager,
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert pg_pool.monitor is not None
    sink = enable_otel(pg_pool.monitor, provider)
    assert enable_otel(pg_pool.monitor, provider) is sink
    await _requests(pg_pool, 4)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert set(metrics) >= {
        "db.client.connection.count",
        "db.client.connection.max",
        "db.client.connection.idle.max",
        "db.client.connection.pending_requests",
        "db.client.connection.wait_time",
        "db.client.connection.use_time",
    }
    count = {
        p.attributes["db.client.connection.state"]: p.value
        for p in metrics["db.client.connection.count"].data.data_points
    }
    assert count["used"] == 0 and count["idle"] >= 1
    (wait,) = metrics["db.client.connection.wait_time"].data.data_points
    assert wait.count == 4
    assert wait.attributes == {
        "db.client.connection.pool.name": "shop/default",
        "dbkeel.node": "primary",
        "dbkeel.node.address": f"{pg_pool.engine.url.host}:{pg_pool.engine.url.port}",
    }
    assert metrics["db.client.connection.wait_time"].unit == "s"
    (limit,) = metrics["db.client.connection.max"].data.data_points
    assert limit.value == 3
    provider.shutdown()


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        (("prometheus_client", "prometheus_client.core"), "prometheus", "prometheus"),
        (("opentelemetry", "opentelemetry.metrics"), "otel", "otel"),
    ],
)
async def test_missing_exporter_extra_names_the_extra(
    pg_pool: DatabaseManager,
    monkeypatch: pytest.MonkeyPatch,
    blocked: tuple[str, ...],
    call: str,
    extra: str,
) -> None:
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)
    for module in ("dbkeel.monitoring.prometheus", "dbkeel.monitoring.otel"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert pg_pool.monitor is not None
    with pytest.raises(MissingDependencyError, match=rf"pip install 'dbkeel\[{extra}\]'"):
        if call == "prometheus":
            register_prometheus(pg_pool.monitor, CollectorRegistry())
        else:
            enable_otel(pg_pool.monitor)


# -- slow queries ------------------------------------------------------------------------

SLEEP = {"postgresql": "SELECT pg_sleep(:seconds)", "mariadb": "SELECT SLEEP(:seconds)"}


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
@pytest.mark.parametrize("log_parameters", [False, True])
async def test_slow_query_log(
    server: str,
    log_parameters: bool,
    pg_url: str,
    mariadb_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = pg_url if server == "postgresql" else mariadb_url
    settings = make_settings(
        url,
        monitoring=True,
        slow_query_threshold=0.1,
        log_parameters=log_parameters,
    )
    caplog.set_level(logging.WARNING, "dbkeel.monitoring.slow_queries")
    async with DatabaseManager(settings) as db:
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))  # fast: not logged
            await session.execute(text(SLEEP[server]), {"seconds": 0.15})
    (record,) = caplog.records
    assert record.statement.startswith("SELECT ") and "SLEEP" in record.statement.upper()  # type: ignore[attr-defined]
    assert record.duration_s >= 0.15  # type: ignore[attr-defined]
    if log_parameters:
        assert "0.15" in record.parameters  # type: ignore[attr-defined]
    else:
        assert record.parameters == "[masked]"  # type: ignore[attr-defined]
        assert record.message.endswith("parameters: [masked]")


def test_slow_query_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"threshold=0 is invalid"):
        SlowQueryLog(0, log_parameters=False, app_name="x")


# -- health --------------------------------------------------------------------------------


async def test_health_report(db: DatabaseManager) -> None:
    report = await db.health()
    assert report["status"] == "ok"
    assert report["reachable"] is True
    assert report["latency_ms"] is not None and report["latency_ms"] > 0
    assert report["server_version"]
    assert report["error"] is None
    assert report["pool"]["pool_class"] == "NullPool"


async def test_round_trip_is_the_median_of_select_one_samples(db: DatabaseManager) -> None:
    # The one sampler behind `dbkeel check` and the doctor's net.latency.
    statements: list[str] = []
    async with db.engine.connect() as conn:
        event.listen(conn.sync_connection, "before_cursor_execute", _record(statements))
        latency = await round_trip_ms(conn, samples=3)
    assert latency > 0
    assert statements.count("SELECT 1") == 4  # one unmeasured warm-up, then the samples


def _record(statements: list[str]) -> Any:
    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    return before


async def test_health_of_an_unreachable_server_never_shows_the_password() -> None:
    engine = create_async_engine("postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/nothing")
    try:
        report = await check_health(engine, timeout=3)
    finally:
        await engine.dispose()
    assert report["reachable"] is False
    assert report["status"] == "unavailable"
    assert report["latency_ms"] is None
    assert report["error"] is not None and "s3cret-pw" not in report["error"]
    assert report["pool"]["checked_out"] == 0  # the failed connect was not left checked out


def test_check_prints_the_health_report_and_demo_the_metrics(pg_url: str, tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    check = run_cli("check", env={"DATABASE_URL": pg_url, "ENVIRONMENT": "production"})
    assert check.returncode == 0, check.stderr
    for fragment in ("health report", "reachable", "pool.checked_out", "pool.waiting"):
        assert fragment in check.stdout
    demo = run_cli("demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert (
        "dbkeel_pool_checkout_wait_seconds_count"
        '{address="local",app="dbkeel",node="primary",pool="default"} 3.0'
    ) in demo.stdout
