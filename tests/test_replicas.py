"""Read replicas on a real streaming-replication cluster (tests/replica_rig.py).

The rig builds its own primary and two replicas on spare ports (never the shared 5432
server), once per test session, and drops them at the end (the ``cluster`` fixture of
tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from dbkeel.exceptions import (
    ConfigurationError,
    InvalidValueError,
    NoReplicaAvailableError,
    ReadOnlyTransactionError,
)
from dbkeel.replicas.positions import PrimarySamples
from dbkeel.replicas.prober import probe_once
from dbkeel.replicas.tokens import parse_lsn, parse_token
from tests.conftest import make_settings
from tests.replica_rig import ReplicaCluster


def _settings(rig: ReplicaCluster, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "replica_urls": ",".join(r.url() for r in rig.replicas),
        "replica_probe_interval": 0.1,
        "pool_size": 20,
        "environment": "production",
    }
    values.update(overrides)
    return make_settings(rig.primary.url(), **values)


@pytest.fixture
async def rdb(cluster: ReplicaCluster) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(_settings(cluster)) as manager:
        yield manager


@contextmanager
def _replay_paused(cluster: ReplicaCluster) -> Iterator[None]:
    for replica in cluster.replicas:
        replica.psql("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        for replica in cluster.replicas:
            replica.psql("SELECT pg_wal_replay_resume()")


async def _in_recovery(db: DatabaseManager, **kwargs: Any) -> bool:
    async with db.get_session(**kwargs) as session:
        return bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one())


# -- settings ---------------------------------------------------------------------------


def test_replica_urls_are_normalised_and_masked() -> None:
    settings = make_settings(
        "postgresql://app:pw@primary/db",
        replica_urls="postgres://app:s3cret@r1/db, postgresql://app:s3cret@/db?host=r2:5432&host=r3:5432",
    )
    assert settings.replica_url_list[0].host == "r1"
    assert all(u.drivername == "postgresql+asyncpg" for u in settings.replica_url_list)
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())
    assert settings.read_your_writes == "lsn"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"database_url": "sqlite+aiosqlite:///x.db", "replica_urls": "sqlite:///y.db"}, "SQLite"),
        (
            {"database_url": "postgresql://u@h/d", "read_your_writes": "window:-1"},
            "window:<seconds>",
        ),
        ({"database_url": "mysql://u@h/d", "read_your_writes": "lsn"}, "needs PostgreSQL"),
        ({"database_url": "postgresql://u@h/d", "replica_urls": "mysql://u:pw9@h/d"}, "same kind"),
        (
            {"database_url": "postgresql://u@h/d", "replica_urls": "nonsense"},
            "DATABASE_REPLICA_URLS",
        ),
    ],
)
def test_bad_replica_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    url = overrides.pop("database_url")
    with pytest.raises(ConfigurationError, match=message) as info:
        make_settings(url, **overrides)
    assert "pw9" not in str(info.value)


def test_window_mode_parses() -> None:
    settings = make_settings("mysql://u@h/d", read_your_writes="window:2.5")
    assert settings.read_your_writes == "window:2.5"


# -- read-only sessions without replicas ---------------------------------------------------


async def test_read_only_session_refuses_writes_on_the_primary(pg_db: DatabaseManager) -> None:
    with pytest.raises(
        ReadOnlyTransactionError, match="CREATE TABLE statement ran in a read-only"
    ) as info:
        async with pg_db.get_session(read_only=True) as session:
            await session.execute(text("CREATE TEMP TABLE IF NOT EXISTS t (x int)"))
    assert info.value.statement_kind in ("CREATE TABLE", "CREATE")


async def test_read_only_insert_is_named(pg_db: DatabaseManager) -> None:
    async with pg_db.get_session() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS ro_t (x int)"))
    with pytest.raises(ReadOnlyTransactionError, match="INSERT statement") as info:
        async with pg_db.get_session(read_only=True) as session:
            await session.execute(text("INSERT INTO ro_t VALUES (1)"))
    assert info.value.statement_kind == "INSERT"
    async with pg_db.get_session() as session:  # the pooled connection is read-write again
        await session.execute(text("INSERT INTO ro_t VALUES (2)"))


async def test_read_only_session_on_every_backend(db: DatabaseManager) -> None:
    async with db.get_session() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS ro_all (x int)"))
    with pytest.raises(ReadOnlyTransactionError):
        async with db.get_session(read_only=True) as session:
            await session.execute(text("INSERT INTO ro_all VALUES (1)"))
    async with db.get_session() as session:
        await session.execute(text("INSERT INTO ro_all VALUES (2)"))


async def test_read_only_flag_does_not_outlive_the_session(pg_url: str) -> None:
    """One pooled connection serves a read-only session, then read-write ones: the
    read-only flag set on it for BEGIN READ ONLY does not reach them, whether the
    read-only session ended cleanly, failed, or was cancelled."""
    settings = make_settings(pg_url, environment="production", pool_size=1, max_overflow=0)
    async with DatabaseManager(settings) as db:

        async def read_only_setting(**kw: Any) -> str:
            async with db.get_session(**kw) as session:
                return str(await session.scalar(text("SHOW transaction_read_only")))

        assert await read_only_setting(read_only=True) == "on"
        assert await read_only_setting() == "off"
        with pytest.raises(ReadOnlyTransactionError):
            async with db.get_session(read_only=True) as session:
                await session.execute(text("CREATE TEMP TABLE ro_flag (x int)"))
        assert await read_only_setting() == "off"

        async def held() -> None:
            async with db.get_session(read_only=True) as session:
                await session.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(held())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await read_only_setting() == "off"
        assert await read_only_setting(read_only=True) == "on"


async def test_bad_token_is_refused(pg_db: DatabaseManager) -> None:
    with pytest.raises(InvalidValueError, match="consistency token"):
        async with pg_db.get_session(read_only=True, after="garbage"):
            pass


# -- routing on the real cluster --------------------------------------------------------------


async def test_routing_lands_where_it_should(rdb: DatabaseManager) -> None:
    assert await _in_recovery(rdb) is False
    for _ in range(4):
        assert await _in_recovery(rdb, read_only=True) is True
    with pytest.raises(ReadOnlyTransactionError, match="INSERT"):
        async with rdb.get_session(read_only=True) as session:
            await session.execute(text("INSERT INTO items VALUES (-1, 'x')"))


async def _pairs(db: DatabaseManager, base: int, pairs: int) -> int:
    stale = 0
    for i in range(pairs):
        key = base + i
        async with db.get_session() as session:
            await session.execute(text("INSERT INTO items VALUES (:k, 'v')"), {"k": key})
        async with db.get_session(read_only=True) as session:
            found = await session.execute(text("SELECT 1 FROM items WHERE id = :k"), {"k": key})
            stale += found.scalar() is None
    return stale


async def _load(db: DatabaseManager, start: int, tasks: int = 50, pairs: int = 10) -> int:
    async def one(t: int) -> int:
        return await _pairs(db, start + t * 1000, pairs)

    return sum(await asyncio.gather(*(one(t) for t in range(tasks))))


async def test_read_your_writes_lsn_has_no_stale_reads(
    cluster: ReplicaCluster, rdb: DatabaseManager
) -> None:
    assert await _load(rdb, 1_000_000) == 0
    # Replay paused: the replicas cannot have the rows, so lsn mode must use the primary.
    for replica in cluster.replicas:
        replica.psql("SELECT pg_wal_replay_pause()")
    try:
        assert await _load(rdb, 2_000_000, tasks=20, pairs=5) == 0
        assert rdb.router is not None and rdb.router.fallbacks > 0
    finally:
        for replica in cluster.replicas:
            replica.psql("SELECT pg_wal_replay_resume()")


async def test_control_plain_routing_sees_stale_reads(cluster: ReplicaCluster) -> None:
    # The control run: read-your-writes off, replay paused; staleness is guaranteed.
    async with DatabaseManager(_settings(cluster, read_your_writes="off")) as db:
        for replica in cluster.replicas:
            replica.psql("SELECT pg_wal_replay_pause()")
        try:
            stale = await _load(db, 3_000_000, tasks=20, pairs=5)
        finally:
            for replica in cluster.replicas:
                replica.psql("SELECT pg_wal_replay_resume()")
    assert stale == 100


async def test_consistency_token_across_contexts(rdb: DatabaseManager) -> None:
    async def write() -> str:
        async with rdb.get_session() as session:
            await session.execute(text("INSERT INTO items VALUES (4000000, 't')"))
        return await rdb.consistency_token()

    token = await asyncio.create_task(write())  # another context: its write is not ours
    assert token.startswith("lsn:")
    async with rdb.get_session(read_only=True, after=token) as session:
        found = await session.execute(text("SELECT 1 FROM items WHERE id = 4000000"))
        assert found.scalar() == 1


def test_commit_bound_is_the_first_primary_sample_started_after_it() -> None:
    samples = PrimarySamples(keep=2)
    assert samples.bound(1.0) is None  # nothing sampled yet: unknown, not 0
    samples.add(2.0, 100)
    samples.add(3.0, 100)  # an idle primary: the same position, a later sample
    samples.add(4.0, 250)
    samples.add(3.5, 200)  # started before the latest: dropped
    assert samples.bound(1.0) == 100
    assert samples.bound(2.5) == 100  # the sample of 3.0 started after the commit
    assert samples.bound(3.0) == 250
    assert samples.bound(4.0) is None
    for i in range(10):  # old samples go; a commit older than all is bounded by the oldest
        samples.add(5.0 + i, 300 + i)
    assert (samples.bound(0.0) or 0) >= 250
    assert samples.latest == 309


def test_a_commit_records_its_time_and_the_router_its_bound() -> None:
    import contextvars

    from dbkeel.replicas import tokens

    def run() -> None:
        tokens.record_write(pending=True)
        write = tokens.last_write()
        assert write is not None and write.since > 0 and write.lsn == 0
        # no bound known (no router asked): a token no replica satisfies, never a stale one
        assert parse_token(tokens.make_token(write)).lsn == tokens.UNREACHABLE
        resolved = tokens.record_position(0x5000, covers=write.since)
        assert resolved is not None and resolved.since == 0 and resolved.lsn == 0x5000
        assert tokens.make_token(resolved).startswith("lsn:0/5000@")
        tokens.record_write(pending=True)  # a later commit: pending again, floor kept
        later = tokens.last_write()
        assert later is not None and later.since >= write.since and later.lsn == 0x5000

    contextvars.copy_context().run(run)
    assert tokens.last_write() is None  # other contexts never see it


async def test_read_right_after_a_write_is_not_stale_on_paused_replicas(
    cluster: ReplicaCluster, rdb: DatabaseManager
) -> None:
    # The commit records no position; the read must not take a replica that is
    # usable (within the lag limit) but has not replayed the write, neither before the
    # prober sampled the primary after the commit nor after it did.
    router = rdb.router
    assert router is not None

    async def read(key: int) -> tuple[int | None, bool]:
        async with rdb.get_session(read_only=True) as session:
            found = await session.execute(text("SELECT 1 FROM items WHERE id = :k"), {"k": key})
            recovery = await session.execute(text("SELECT pg_is_in_recovery()"))
            return found.scalar(), bool(recovery.scalar_one())

    async def write_then_read() -> list[tuple[int | None, bool]]:
        async with rdb.get_session() as session:
            await session.execute(text("INSERT INTO items VALUES (7500000, 'w')"))
        seen = [await read(7500000)]
        await probe_once(router)  # the bound is known now: past what the replicas have
        await probe_once(router)
        assert all(n.usable(rdb.settings.replica_max_lag) for n in router.nodes)
        seen.append(await read(7500000))
        return seen

    with _replay_paused(cluster):
        assert await asyncio.create_task(write_then_read()) == [(1, False), (1, False)]


async def test_read_after_a_write_goes_to_a_replica_once_it_replayed_the_bound(
    rdb: DatabaseManager,
) -> None:
    router = rdb.router
    assert router is not None

    async def write_then_read() -> list[bool]:
        async with rdb.get_session() as session:
            await session.execute(text("INSERT INTO items VALUES (7100000, 'w')"))
        landed: list[bool] = []
        while not landed or not landed[-1]:
            assert len(landed) < 100, "no replica was used after the write replayed"
            async with rdb.get_session(read_only=True) as session:
                found = await session.execute(text("SELECT 1 FROM items WHERE id = 7100000"))
                assert found.scalar() == 1  # never stale, wherever it landed
                recovery = await session.execute(text("SELECT pg_is_in_recovery()"))
                landed.append(bool(recovery.scalar_one()))
            await probe_once(router)
        return landed

    landed = await asyncio.create_task(write_then_read())
    assert landed[-1] is True


@pytest.mark.parametrize("sampled", [False, True], ids=["right-after-the-write", "after-a-probe"])
async def test_consistency_token_after_a_write_is_at_or_past_its_commit(
    cluster: ReplicaCluster, rdb: DatabaseManager, sampled: bool
) -> None:
    # The commit record's end, found in the WAL itself (pg_walinspect), is what a replica
    # must have replayed to see the write; the token must be at or past it, whether its
    # position comes from a prober sample taken after the commit or is read on demand.
    cluster.primary.psql("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    router = rdb.router
    assert router is not None
    key = 7200000 + sampled

    async def write() -> tuple[str, str, str, str]:
        async with rdb.get_session() as session:
            start = await session.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
            xid = await session.scalar(text("SELECT pg_current_xact_id()::xid::text"))
            await session.execute(text("INSERT INTO items VALUES (:k, 't')"), {"k": key})
        if sampled:
            await probe_once(router)
        token = await rdb.consistency_token()
        return token, await rdb.consistency_token(), str(start), str(xid)

    token, again, start, xid = await asyncio.create_task(write())
    assert again == token  # resolved once, then kept in the context
    commit_end = cluster.primary.psql(
        f"SELECT end_lsn FROM pg_get_wal_records_info('{start}', pg_current_wal_flush_lsn()) "
        f"WHERE xid = '{xid}'::xid AND record_type = 'COMMIT'"
    )
    assert commit_end, f"no COMMIT record of xid {xid} after {start}"
    assert parse_token(token).lsn >= parse_lsn(commit_end)


async def test_paused_replica_is_skipped_then_used_again(cluster: ReplicaCluster) -> None:
    settings = _settings(cluster, replica_max_lag=1.0, read_your_writes="off")
    async with DatabaseManager(settings) as db:
        router = db.router
        assert router is not None
        paused = router.nodes[0]
        cluster.replicas[0].psql("SELECT pg_wal_replay_pause()")
        try:
            for i in range(40):  # keep the primary writing so the paused one falls behind
                async with db.get_session() as session:
                    await session.execute(
                        text("INSERT INTO items VALUES (:k, 'p')"), {"k": 5_000_000 + i}
                    )
                await asyncio.sleep(0.1)
            assert not paused.usable(1.0), (paused.lag, paused.state)
            assert router.nodes[1].usable(1.0)
        finally:
            cluster.replicas[0].psql("SELECT pg_wal_replay_resume()")
        for _ in range(50):
            await asyncio.sleep(0.1)
            if paused.usable(1.0):
                break
        assert paused.usable(1.0), (paused.lag, paused.state)


async def test_no_replica_raise_setting(cluster: ReplicaCluster) -> None:
    settings = _settings(
        cluster, replica_urls="postgresql://postgres@127.0.0.1:1/postgres", replica_fallback="raise"
    )
    async with DatabaseManager(settings) as db:
        with pytest.raises(NoReplicaAvailableError, match="replica-1"):
            async with db.get_session(read_only=True):
                pass


async def test_primary_listed_as_replica_is_not_used(cluster: ReplicaCluster) -> None:
    settings = _settings(cluster, replica_urls=cluster.primary.url())
    async with DatabaseManager(settings) as db:
        assert db.router is not None
        await probe_once(db.router)
        assert db.router.nodes[0].state == "not-in-recovery"
        assert await _in_recovery(db, read_only=True) is False  # the primary, read-only


async def test_health_lists_every_node(cluster: ReplicaCluster, rdb: DatabaseManager) -> None:
    report = await rdb.health()
    nodes = report["nodes"]
    assert [n["node"] for n in nodes] == ["primary", "replica-1", "replica-2"]
    assert [n["role"] for n in nodes] == ["primary", "replica", "replica"]
    assert all(n["state"] == "ok" for n in nodes), nodes


def test_check_cli_lists_every_node(cluster: ReplicaCluster) -> None:
    from tests.conftest import run_cli

    env = {
        "DATABASE_URL": cluster.primary.url(),
        "DATABASE_REPLICA_URLS": ",".join(r.url() for r in cluster.replicas),
    }
    done = run_cli("check", env=env)
    assert done.returncode == 0, done.stderr
    assert "node replica-1" in done.stdout and "node replica-2" in done.stdout
    assert "replica ok" in done.stdout


async def test_replica_killed_mid_load_fails_no_read_started_after(
    cluster: ReplicaCluster,
) -> None:
    # Last in the file: it stops replica 1 (immediate mode: the postmaster and its
    # backends die at once) and starts it again afterwards. A read already running on
    # that replica when it dies fails with a disconnect (no API replays a session's
    # body); every read that starts after the kill must succeed, although the prober
    # (1 s interval) has not noticed yet: the checkout finds the dead replica.
    settings = _settings(cluster, read_your_writes="off", replica_probe_interval=1.0)
    async with DatabaseManager(settings) as db:
        stop = asyncio.Event()
        killed_at = [float("inf")]
        done, failed = [0], []

        async def reader() -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                started = loop.time()
                try:
                    async with db.get_session(read_only=True) as session:
                        await session.execute(text("SELECT count(*) FROM items"))
                    done[0] += 1
                except Exception as exc:
                    if started > killed_at[0]:
                        failed.append(repr(exc)[:200])
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(reader()) for _ in range(30)]
        await asyncio.sleep(1.0)
        before = done[0]
        await asyncio.to_thread(cluster.replicas[0].ctl, "stop", "-m", "immediate")
        killed_at[0] = asyncio.get_running_loop().time()
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
    await asyncio.to_thread(cluster.replicas[0].ctl, "start")
    assert done[0] > before > 0
    assert failed == [], (len(failed), failed[:3])


def _terminate_replica_clients(cluster: ReplicaCluster) -> None:
    # Blocking on purpose: the event loop must not see the connections close.
    for replica in cluster.replicas:
        replica.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    time.sleep(0.05)  # the backends' exit reaches the sockets


async def test_first_statement_on_a_connection_the_replica_closed_runs_elsewhere(
    cluster: ReplicaCluster,
) -> None:
    # The replicas' backends are terminated while the event loop is blocked (psql runs
    # synchronously), so the pooled connections do not know yet that they are closed and
    # pass the checkout check; the read's first statement (BEGIN) then fails. Nothing was
    # read yet and the transaction is read-only: it runs on another node, not as an error.
    settings = _settings(cluster, read_your_writes="off", replica_probe_interval=60)
    async with DatabaseManager(settings) as db:
        for _ in range(4):  # a pooled connection on each replica
            assert await _in_recovery(db, read_only=True) is True
        _terminate_replica_clients(cluster)
        async with db.get_session(read_only=True) as session:
            count = await session.execute(text("SELECT count(*) FROM items"))
            assert count.scalar_one() >= 0


async def test_replica_pools_are_monitored_with_node_labels(cluster: ReplicaCluster) -> None:
    """Each replica's pool has its own monitor, labelled with the node's name and
    host:port in Prometheus, OpenTelemetry and db.health(); credentials appear nowhere.
    Query insight counts the statements that ran on a replica."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client.parser import text_string_to_metric_families

    from dbkeel.monitoring import enable_otel
    from dbkeel.monitoring.prometheus import prometheus_text

    secret = "s3cret-replica-pw"  # trust authentication: accepted, never needed
    urls = [
        f"postgresql+asyncpg://postgres:{secret}@127.0.0.1:{r.port}/postgres"
        for r in cluster.replicas
    ]
    settings = _settings(cluster, replica_urls=",".join(urls), read_your_writes="off")
    async with DatabaseManager(settings) as db:
        with db.query_stats() as q:
            for _ in range(4):
                async with db.get_session(read_only=True) as session:
                    await session.execute(text("SELECT count(*) FROM items"))
        assert q.shapes["SELECT count(*) FROM items"].statements == 4
        monitors = db.monitors
        assert [m.options.node for m in monitors] == ["primary", "replica-1", "replica-2"]
        addresses = [f"127.0.0.1:{c.port}" for c in (cluster.primary, *cluster.replicas)]
        assert [m.options.address for m in monitors] == addresses
        exposition = prometheus_text(*monitors)
        checkouts = {
            s.labels["node"]: (s.labels["address"], s.value)
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
            if s.name == "dbkeel_pool_checkout_wait_seconds_count"
        }
        assert set(checkouts) == {"primary", "replica-1", "replica-2"}
        assert [checkouts[n][0] for n in ("primary", "replica-1", "replica-2")] == addresses
        # round-robin over both replicas: each served two of the four reads
        assert checkouts["replica-1"][1] >= 2 and checkouts["replica-2"][1] >= 2
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        sinks = [enable_otel(m, provider) for m in monitors]
        app = settings.app_name
        assert [s.attributes["db.client.connection.pool.name"] for s in sinks] == [
            f"{app}/default",
            f"{app}/default/replica-1",
            f"{app}/default/replica-2",
        ]
        assert [s.attributes["dbkeel.node.address"] for s in sinks] == addresses
        report = await db.health()
        assert [n["address"] for n in report["nodes"]] == addresses
        # each node's own pool (the prober may hold one of its connections right now)
        assert [n["pool"]["size"] for n in report["nodes"]] == [20, 20, 20]
        assert all((n["pool"]["checked_out"] or 0) <= 1 for n in report["nodes"])
        everything = f"{exposition}{report}{[s.attributes for s in sinks]}{monitors}"
        assert secret not in everything


async def test_write_through_the_sessions_connection_is_read_back(
    cluster: ReplicaCluster, rdb: DatabaseManager
) -> None:
    # A Core statement on session.connection() is no ORM execution: the write is seen on
    # the engine (before_cursor_execute), so lsn mode still sends the read to a node
    # that has it. Replay is paused: only the primary has it.
    for replica in cluster.replicas:
        replica.psql("SELECT pg_wal_replay_pause()")
    try:

        async def write_then_read() -> tuple[int | None, bool]:
            async with rdb.get_session() as session:
                conn = await session.connection()
                await conn.execute(text("INSERT INTO items VALUES (6000000, 'core')"))
            async with rdb.get_session(read_only=True) as session:
                found = await session.execute(text("SELECT 1 FROM items WHERE id = 6000000"))
                recovery = await session.execute(text("SELECT pg_is_in_recovery()"))
                return found.scalar(), bool(recovery.scalar_one())

        assert await asyncio.create_task(write_then_read()) == (1, False)
    finally:
        for replica in cluster.replicas:
            replica.psql("SELECT pg_wal_replay_resume()")


async def test_a_read_in_a_read_write_session_is_no_write(rdb: DatabaseManager) -> None:
    async def read_then_read() -> bool:
        async with rdb.get_session() as session:
            await session.execute(text("/* report */ SELECT count(*) FROM items"))
        return await _in_recovery(rdb, read_only=True)

    # nothing written in this context: the replica serves the next read
    assert await asyncio.create_task(read_then_read()) is True


@pytest.mark.parametrize(
    ("statement", "writes"),
    [
        ("SELECT 1", False),
        ("  /* tag */ select * from t", False),
        ("-- why\nSHOW search_path", False),
        ("VALUES (1)", False),
        ("INSERT INTO t VALUES (1)", True),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", True),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", True),
        ("selectivity_fn()", True),
    ],
)
def test_text_statement_write_classification(statement: str, writes: bool) -> None:
    from dbkeel.replicas.recording import is_write

    assert is_write(None, statement) is writes
