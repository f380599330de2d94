"""Pool monitoring overhead: 1000 concurrent requests on a 20 + 10 pool, PostgreSQL (issue 6;
goal since issue 17: <= 1.02, and <= 3 us per bare checkout).

The same engine and pool serve every candidate; the monitor is attached and removed between
runs, so connections, server state and pool warmth are shared. A request is
``get_session()`` + ``SELECT 1`` + commit. A second pass times each checkout (from
``engine.connect()`` to a usable connection) and reports p50/p99 wait.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from rich.table import Table
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.pool import QueuePool

from benchmarks._harness import PG_URL, compare, console, scaled
from dbkeel import DatabaseManager, DatabaseSettings, PoolMonitor

TASKS = scaled(1000, 20)
POOL_SIZE, MAX_OVERFLOW = 20, 10


async def main() -> None:
    settings = DatabaseSettings(
        database_url=PG_URL, environment="production", pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW, app_name="dbkeel-bench", monitoring=False,
    )  # fmt: skip
    async with DatabaseManager(settings) as db:
        engine = db.engine

        async def request() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))

        def load(monitor: str | None) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                PoolMonitor.remove_listeners(engine)
                if monitor is not None:
                    PoolMonitor.setup_listeners(engine, capture_stack=monitor == "stack")
                try:
                    await asyncio.gather(*(request() for _ in range(TASKS)))
                finally:
                    PoolMonitor.remove_listeners(engine)
                return TASKS

            return run

        await compare(
            f"pool monitoring, {TASKS} concurrent requests, {POOL_SIZE} + {MAX_OVERFLOW} pool, "
            "PostgreSQL",
            {
                "no monitoring": load(None),
                "PoolMonitor": load("plain"),
                "PoolMonitor + stack capture": load("stack"),
            },
            baseline="no monitoring",
            rounds=15,
            goal="goal: PoolMonitor / no monitoring <= 1.02",
        )
        await _checkout_cycle()

        async def waits(monitor: str | None) -> list[float]:
            PoolMonitor.remove_listeners(engine)
            if monitor is not None:
                PoolMonitor.setup_listeners(engine, capture_stack=monitor == "stack")
            samples: list[float] = []

            async def one() -> None:
                start = perf_counter()
                async with engine.connect() as conn:
                    samples.append(perf_counter() - start)
                    await conn.execute(text("SELECT 1"))

            for _ in range(3):
                await asyncio.gather(*(one() for _ in range(TASKS)))
            PoolMonitor.remove_listeners(engine)
            return samples

        table = Table(title=f"checkout wait, {TASKS} concurrent tasks x 3, {POOL_SIZE} + "
                      f"{MAX_OVERFLOW} pool")  # fmt: skip
        for column in ("candidate", "p50", "p99", "max"):
            table.add_column(column, justify="right" if column != "candidate" else "left")
        for name, mode in (("no monitoring", None), ("PoolMonitor", "plain"),
                           ("PoolMonitor + stack capture", "stack")):  # fmt: skip
            samples = sorted(await waits(mode))
            q = statistics.quantiles(samples, n=100)
            table.add_row(
                name, f"{q[49] * 1000:.2f} ms", f"{q[98] * 1000:.2f} ms",
                f"{samples[-1] * 1000:.2f} ms",
            )  # fmt: skip
        console.print(table)


async def _checkout_cycle() -> None:
    """The listeners' own cost, with no I/O to hide it: bare checkout + checkin on an
    in-process SQLite QueuePool. An upper bound of the per-checkout overhead."""
    engine = create_sync_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0)
    cycles = scaled(20_000)

    def cycle(monitor: str | None) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            PoolMonitor.remove_listeners(engine)
            if monitor is not None:
                PoolMonitor.setup_listeners(engine, capture_stack=monitor == "stack")
            pool = engine.pool
            for _ in range(cycles):
                pool.connect().close()
            PoolMonitor.remove_listeners(engine)
            return cycles

        return run

    rows = await compare(
        "pool checkout + checkin alone (no I/O), SQLite QueuePool",
        {
            "no monitoring": cycle(None),
            "PoolMonitor": cycle("plain"),
            "PoolMonitor + stack capture": cycle("stack"),
        },
        baseline="no monitoring",
        goal="upper bound of the per-checkout cost; the 1000-request table is the goal",
    )
    base = rows[0].median_s
    for row in rows[1:]:
        added = (row.ratio - 1) * base / cycles * 1e6
        console.print(f"{row.name}: {added:+.2f} us per checkout + checkin (goal: <= 3 us)")

    # A dbkeel engine always has checkout and checkin listeners of its own (the asyncpg
    # pre-ping that replaces SQLAlchemy's), so SQLAlchemy's dispatch of those two events,
    # about half of the cost above, is paid with or without the monitor. Stand-ins for
    # them show what the monitor adds on such an engine.
    @event.listens_for(engine.pool, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        record.info.get("returned_at")

    @event.listens_for(engine.pool, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = perf_counter()

    rows = await compare(
        "the same with pool listeners of its own, as on a dbkeel engine",
        {"pool listeners": cycle(None), "pool listeners + PoolMonitor": cycle("plain")},
        baseline="pool listeners",
        goal="what PoolMonitor adds on a dbkeel engine",
    )
    added = (rows[1].ratio - 1) * rows[0].median_s / cycles * 1e6
    console.print(
        f"PoolMonitor on an engine with its own pool listeners: {added:+.2f} us per checkout "
        f"+ checkin (goal: <= 3 us)"
    )
    engine.dispose()
