"""Read replicas (issue 14): the cost of routing and of read-your-writes bookkeeping.

Builds its own primary + 1 streaming replica (tests/replica_rig.py; needs root and the
PostgreSQL cluster tools), 8 concurrent tasks:

- routing: ``get_session(read_only=True)`` routed to the replica vs the same call on a
  manager whose only URL is that replica (no routing; goal <= 1.02). A bare
  ``async_sessionmaker`` row shows get_session's own overhead (a separate goal);
- write path: a read-write request (INSERT, COMMIT) with replicas configured in ``lsn``
  mode (records the commit position) vs the same manager without replicas (goal <= 1.05).

``DBKEEL_BENCH_SIZE`` (requests per task, default 150) makes a smoke run tiny.

``python -m benchmarks.bench_replicas --instructions`` counts instead the instructions the
client process executes (valgrind callgrind) for 300 sessions of one task, each side in
its own process: deterministic, where the wall clock of a shared machine is not.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

from sqlalchemy import text
from tests.replica_rig import ReplicaCluster

from benchmarks._harness import SMOKE, compare
from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel.replicas.prober import probe_once

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
    # many short rounds: the per-round ratios of a shared 2-core machine spread by +-20 %
    rounds = 15 if per_task >= 50 else 3
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


# -- instruction counts -------------------------------------------------------------------

INSTRUCTION_CASES = {
    "routing": ("manager on the replica URL", "get_session(read_only=True)"),
    "write path": ("no replicas", "replicas, lsn mode"),
}


async def _counted_side(case: str, side: int, primary: str, replica: str) -> None:
    """One side of a case, 300 sessions after as many to warm up; only those counted."""
    if case == "routing":
        settings = _settings(primary, replica_urls=replica) if side else _settings(replica)
    else:
        settings = _settings(primary, replica_urls=replica) if side else _settings(primary)
    read = text("SELECT v FROM bench_replica WHERE id = :k")
    write = text("INSERT INTO bench_replica VALUES (:k, 'y')")
    keys = iter(range(10_000_000 + side * 1_000_000, 100_000_000))
    async with DatabaseManager(settings) as db:
        for task in asyncio.all_tasks():
            if task.get_name() == "dbkeel-replica-probe":
                task.cancel()  # probe rounds are not per-session work
        if db.router is not None:  # routed reads must land on the replica, not the primary
            for _ in range(100):
                await probe_once(db.router)
                if db.router.nodes[0].usable(settings.replica_max_lag):
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("the replica never became usable")

        async def work() -> None:
            for i in range(300):
                if case == "routing":
                    async with db.get_session(read_only=True) as session:
                        await session.execute(read, {"k": 1 + i % 1000})
                else:
                    async with db.get_session() as session:
                        await session.execute(write, {"k": next(keys)})

        await work()
        _instrument("on")
        await work()
        _instrument("off")


def _instrument(state: str) -> None:
    # Blocking on purpose: nothing else may run between the switch and the work.
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True)


def _count(case: str, side: int, primary: str, replica: str) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.bench_replicas", "--side", case, str(side),
         primary, replica],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None or int(found.group(1)) == 0:
        raise SystemExit(f"callgrind counted nothing for {case} side {side}:\n{done.stderr}")
    return int(found.group(1))


def instructions() -> None:
    """Print the instruction count of each side of each case and their ratio."""
    rig = ReplicaCluster.build(1, "dkc")
    try:
        rig.primary.psql("CREATE TABLE bench_replica (id bigint PRIMARY KEY, v text)")
        rig.primary.psql("INSERT INTO bench_replica SELECT g, 'x' FROM generate_series(1, 1000) g")
        primary, replica = rig.primary.url(), rig.replicas[0].url()
        for case, (peer, ours) in INSTRUCTION_CASES.items():
            base, mine = (_count(case, side, primary, replica) for side in (0, 1))
            print(
                f"replicas {case}: {peer} {base:,} instructions, {ours} {mine:,}: ratio "
                f"{mine / base:.4f} ({(mine - base) / 300:+,.0f} per session)"
            )
    finally:
        rig.drop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--side"]:
        asyncio.run(_counted_side(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    elif sys.argv[1:] == ["--instructions"]:
        instructions()
    else:
        raise SystemExit("usage: python -m benchmarks.bench_replicas --instructions")
