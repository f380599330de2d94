"""Read replicas on MariaDB, ``window`` read-your-writes mode (tests/mariadb_rig.py: a
throwaway primary and replica of this module's own, never the shared server on 3306).

The replica is made stale on purpose with delayed replication (``MASTER_DELAY``), so a
read routed to it cannot see a write of the last seconds: the control run (mode ``off``)
must see stale reads, the ``window`` run none.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from dbkeel.exceptions import ReadOnlyTransactionError
from dbkeel.replicas.prober import probe_once
from tests.conftest import make_settings
from tests.mariadb_rig import MariaDBReplication

TABLE = "replicas_maria_items"
DELAY = 2  # seconds the replica stays behind in the stale-read scenarios


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDBReplication]:
    rig = MariaDBReplication.build()
    try:
        rig.primary.sql(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)", "test")
        rig.wait_replicated()
        yield rig
    finally:
        rig.drop()


def _settings(rig: MariaDBReplication, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "replica_urls": rig.replica.url(),
        "replica_probe_interval": 0.2,
        "replica_max_lag": 30,
        "pool_size": 25,
        "environment": "production",
    }
    values.update(overrides)
    return make_settings(rig.primary.url(), **values)


async def _server_id(db: DatabaseManager, **kwargs: Any) -> int:
    async with db.get_session(**kwargs) as session:
        return int((await session.execute(text("SELECT @@server_id"))).scalar_one())


async def test_window_is_the_mariadb_default_and_routes_reads_to_the_replica(
    maria: MariaDBReplication,
) -> None:
    async with DatabaseManager(_settings(maria)) as db:
        assert db.settings.read_your_writes == "window:2"
        assert db.router is not None and db.router.nodes[0].state == "ok"
        assert db.router.nodes[0].lag == 0
        assert await _server_id(db) == 1
        assert [await _server_id(db, read_only=True) for _ in range(3)] == [2, 2, 2]
        with pytest.raises(ReadOnlyTransactionError, match="INSERT"):
            async with db.get_session(read_only=True) as session:
                await session.execute(text(f"INSERT INTO {TABLE} VALUES (-1)"))


async def _pairs(db: DatabaseManager, base: int, pairs: int) -> int:
    stale = 0
    for i in range(pairs):
        async with db.get_session() as session:
            await session.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": base + i})
        async with db.get_session(read_only=True) as session:
            found = await session.execute(
                text(f"SELECT 1 FROM {TABLE} WHERE id = :k"), {"k": base + i}
            )
            stale += found.scalar() is None
    return stale


async def _load(db: DatabaseManager, start: int) -> int:
    async def one(t: int) -> int:
        return await _pairs(db, start + t * 1000, 5)

    return sum(await asyncio.gather(*(one(t) for t in range(20))))


async def test_window_mode_reads_own_writes_from_a_delayed_replica(
    maria: MariaDBReplication,
) -> None:
    await asyncio.to_thread(maria.set_delay, DELAY)
    try:
        async with DatabaseManager(_settings(maria, read_your_writes="window:3")) as db:
            assert await _load(db, 100_000) == 0
            # this context writes: its reads go to the primary for the window, then to
            # the replica again; a context that did not write reads from the replica
            async with db.get_session() as session:
                await session.execute(text(f"INSERT INTO {TABLE} VALUES (150000)"))
            assert await _server_id(db, read_only=True) == 1
            fresh = contextvars.Context()
            assert await asyncio.create_task(_server_id(db, read_only=True), context=fresh) == 2
            await asyncio.sleep(3.1)
            assert await _server_id(db, read_only=True) == 2
        async with DatabaseManager(_settings(maria, read_your_writes="off")) as db:
            # the control run: same load, reads on the delayed replica miss the writes
            assert await _load(db, 200_000) == 100
    finally:
        await asyncio.to_thread(maria.set_delay, 0)


async def test_stopped_replication_makes_the_replica_unused(maria: MariaDBReplication) -> None:
    async with DatabaseManager(_settings(maria, read_your_writes="off")) as db:
        router = db.router
        assert router is not None
        await asyncio.to_thread(maria.replica.sql, "STOP REPLICA SQL_THREAD")
        try:
            await probe_once(router)
            assert router.nodes[0].lag is None and not router.nodes[0].usable(30)
            assert await _server_id(db, read_only=True) == 1  # the primary serves it
        finally:
            await asyncio.to_thread(maria.replica.sql, "START REPLICA SQL_THREAD")
        deadline = time.monotonic() + 10
        while not router.nodes[0].usable(30) and time.monotonic() < deadline:
            await probe_once(router)
        assert await _server_id(db, read_only=True) == 2


async def test_primary_listed_as_replica_is_not_used(maria: MariaDBReplication) -> None:
    settings = _settings(maria, replica_urls=maria.primary.url())
    async with DatabaseManager(settings) as db:
        assert db.router is not None
        assert db.router.nodes[0].state == "not-in-recovery"
        assert await _server_id(db, read_only=True) == 1


async def test_doctor_checks_the_mariadb_replica(maria: MariaDBReplication) -> None:
    from dbkeel.doctor import run_doctor

    urls = f"{maria.replica.url()},{maria.primary.url()}"
    report = await run_doctor(make_settings(maria.primary.url(), replica_urls=urls))
    levels = {
        (f.subject.split(" ")[0], f.id): f.level
        for f in report.findings
        if f.subject and f.subject.startswith("replica-")
    }
    assert levels == {
        ("replica-1", "replica.reachable"): "ok",
        ("replica-1", "replica.recovery"): "ok",
        ("replica-1", "replica.lag"): "ok",  # read_only=ON: no replica.read-only finding
        ("replica-2", "replica.reachable"): "ok",
        ("replica-2", "replica.recovery"): "error",  # the primary: no replication
    }
