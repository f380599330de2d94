"""Read replicas (issue 14): the cost of routing and of read-your-writes bookkeeping.

Builds its own primary + 1 streaming replica (tests/replica_rig.py; needs root and the
PostgreSQL cluster tools), 8 concurrent tasks:

- routing: ``get_session(read_only=True)`` routed to the replica vs the same call on a
  manager whose only URL is that replica (no routing; goal <= 1.02). A bare
  ``async_sessionmaker`` row shows get_session's own overhead (a separate goal);
- write path: a read-write request (INSERT, COMMIT) with replicas configured in ``lsn``
  mode (records the commit position) vs the same manager without replicas (goal <= 1.05).

``DBKEEL_BENCH_SIZE`` (requests per task, default 150) makes a smoke run tiny.
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy import text
from tests.replica_rig import ReplicaCluster

from benchmarks._harness import SMOKE, compare
from dbkeel import DatabaseManager, DatabaseSettings

TASKS = 8


def _settings(url: str, **extra: object) -> DatabaseSettings:
    return DatabaseSettings(
        database_url=url,
        environment="production",
        pool_size=TASKS,
        max_overflow=0,
        app_name="dbkeel-bench",
        **extra,
    )


async def main(size: int | None = None) -> None:
    per_task = size or int(os.environ.get("DBKEEL_BENCH_SIZE", "5" if SMOKE else "150"))
    rounds = 7 if per_task >= 50 else 3
    rig = await asyncio.to_thread(ReplicaCluster.build, 1, "dkb")
    try:
        rig.primary.psql("CREATE TABLE bench_replica (id bigint PRIMARY KEY, v text)")
        rig.primary.psql("INSERT INTO bench_replica SELECT g, 'x' FROM generate_series(1, 1000) g")
        url = rig.primary.url()
        replicated = _settings(url, replica_urls=rig.replicas[0].url())
        direct = _settings(rig.replicas[0].url())
        async with (
            DatabaseManager(replicated) as db,
            DatabaseManager(_settings(url)) as plain,
            DatabaseManager(direct) as on_replica,
        ):
            assert db.router is not None
            fixed = db.router.nodes[0].factory
            read = text("SELECT v FROM bench_replica WHERE id = :k")
            write = text("INSERT INTO bench_replica VALUES (:k, 'y')")
            keys = iter(range(10_000, 100_000_000))

            async def run(one: object) -> int:
                async def task(t: int) -> None:
                    for i in range(per_task):
                        await one(t * per_task + i)  # type: ignore[operator]

                await asyncio.gather(*(task(t) for t in range(TASKS)))
                return TASKS * per_task

            async def routed_read(i: int) -> None:
                async with db.get_session(read_only=True) as session:
                    await session.execute(read, {"k": 1 + i % 1000})

            async def direct_read(i: int) -> None:
                async with on_replica.get_session(read_only=True) as session:
                    await session.execute(read, {"k": 1 + i % 1000})

            async def fixed_read(i: int) -> None:
                async with fixed() as session:
                    await session.execute(read, {"k": 1 + i % 1000})
                    await session.commit()

            await compare(
                "replicas: read-only session routing",
                {
                    "manager on the replica URL": lambda: run(direct_read),
                    "get_session(read_only=True)": lambda: run(routed_read),
                    "bare sessionmaker on the replica": lambda: run(fixed_read),
                },
                baseline="manager on the replica URL",
                rounds=rounds,
                goal="goal: get_session(read_only=True) <= 1.02",
            )

            async def write_with(manager: DatabaseManager) -> None:
                async with manager.get_session() as session:
                    await session.execute(write, {"k": next(keys)})

            await compare(
                "replicas: write path with commit LSN recording",
                {
                    "no replicas": lambda: run(lambda i: write_with(plain)),
                    "replicas, lsn mode": lambda: run(lambda i: write_with(db)),
                },
                baseline="no replicas",
                rounds=rounds,
                goal="goal: lsn mode <= 1.05",
            )
    finally:
        await asyncio.to_thread(rig.drop)
