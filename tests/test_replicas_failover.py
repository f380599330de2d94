"""Failover of the primary under load: a real Patroni cluster, and a manual promote.

Both scenarios run 50 writer tasks (``run_in_transaction``, one row with a unique id per
transaction, into a table WITHOUT a unique constraint, so that a commit applied twice
would show as a duplicate rather than be refused) and reader tasks on
``get_session(read_only=True)``, through one ``DatabaseManager`` whose ``DATABASE_URL``
names every node (``target_session_attrs=read-write``) and whose
``DATABASE_REPLICA_URLS`` lists the nodes too. They print their figures (``-s``):
``make failover`` runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from dbkeel.exceptions import CommitOutcomeUnknownError
from tests.conftest import make_settings
from tests.patroni_rig import PatroniCluster
from tests.replica_rig import ReplicaCluster

TABLE = "failover_acked"
_HAS_TABLE = f"SELECT to_regclass('{TABLE}') IS NOT NULL"
WRITERS = 50
READERS = 10


def _multi_host_url(ports: list[int]) -> str:
    hosts = "&".join(f"host=127.0.0.1:{port}" for port in ports)
    return f"postgresql+asyncpg://postgres@/postgres?{hosts}&target_session_attrs=read-write"


def _settings(ports: list[int], replica_urls: list[str]) -> Any:
    return make_settings(
        _multi_host_url(ports),
        replica_urls=",".join(replica_urls),
        environment="production",
        pool_size=WRITERS + 5,
        replica_pool_size=READERS + 2,
        connect_timeout=2,
        replica_probe_interval=0.5,
    )


class FailoverLoad:
    """Writers and readers until stopped; what each caller saw, with the times."""

    def __init__(self, db: DatabaseManager) -> None:
        self.acknowledged: list[int] = []
        self.acknowledged_at: list[float] = []
        self.unknown: list[int] = []
        self.reads = 0
        self.failed_reads: list[str] = []
        self._db = db
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._resumed = asyncio.Event()
        self._since, self._wanted = float("inf"), 0
        self._tasks = [asyncio.create_task(self._write()) for _ in range(WRITERS)]
        self._tasks += [asyncio.create_task(self._read()) for _ in range(READERS)]

    async def _write(self) -> None:
        while not self._stop.is_set():
            key = next(self._ids)

            async def insert(session: Any, key: int = key) -> None:
                await session.execute(text(f"INSERT INTO {TABLE} VALUES (:k)"), {"k": key})

            try:
                # retries with backoff capped at 2 s: ~60 s of trying, far past a failover
                await self._db.run_in_transaction(insert, retries=40, backoff=0.05)
            except CommitOutcomeUnknownError:
                self.unknown.append(key)
                continue
            self.acknowledged.append(key)
            now = time.monotonic()
            self.acknowledged_at.append(now)
            if now > self._since:
                self._wanted -= 1
                if self._wanted <= 0:
                    self._resumed.set()

    async def _read(self) -> None:
        while not self._stop.is_set():
            try:
                async with self._db.get_session(read_only=True) as session:
                    await session.execute(text(f"SELECT count(*) FROM {TABLE}"))
                self.reads += 1
            except Exception as exc:
                at = time.monotonic() - self._since
                self.failed_reads.append(f"at {at:+.2f} s: {type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(0.01)

    def acknowledged_since(self, moment: float) -> int:
        return sum(1 for at in self.acknowledged_at if at > moment)

    def write_gap(self, since: float) -> float:
        """Longest time without any acknowledged commit, from *since* on."""
        times = [since, *sorted(at for at in self.acknowledged_at if at > since)]
        return max(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else float("inf")

    def expect(self, commits: int) -> float:
        """From now on, count acknowledged commits until *commits*; returns now."""
        self._resumed.clear()
        self._since, self._wanted = time.monotonic(), commits
        return self._since

    async def resumed(self) -> None:
        """Wait until the commits :meth:`expect` asked for were acknowledged."""
        await self._resumed.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)  # an unexpected error of a writer surfaces here

    def verify(self, stored: list[int]) -> dict[str, int]:
        """Lost, duplicated and phantom counts (all must be 0), asserted with examples."""
        counts = Counter(stored)
        lost = set(self.acknowledged) - counts.keys()
        duplicated = {key for key, n in counts.items() if n > 1}
        phantom = counts.keys() - set(self.acknowledged) - set(self.unknown)
        assert not lost, f"{len(lost)} acknowledged commits lost, e.g. {sorted(lost)[:10]}"
        assert not duplicated, f"{len(duplicated)} applied twice, e.g. {sorted(duplicated)[:10]}"
        assert not phantom, f"{len(phantom)} rows nobody committed, e.g. {sorted(phantom)[:10]}"
        assert len(self.acknowledged) == len(set(self.acknowledged))
        return {"lost": len(lost), "duplicated": len(duplicated), "phantom": len(phantom)}


async def _pooled_primaries(db: DatabaseManager) -> set[tuple[int, bool]]:
    """(port, in recovery) of as many read-write connections as the pool holds at once:
    a connection to the dead or demoted node handed out would show here."""
    started = asyncio.Barrier(WRITERS)

    async def one() -> tuple[int, bool]:
        async with db.get_session() as session:
            row = (
                await session.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))
            ).one()
            await started.wait()  # every session holds its own connection at once
            return int(row[0]), bool(row[1])

    return set(await asyncio.gather(*(one() for _ in range(WRITERS))))


def _stored(rows: str) -> list[int]:
    return [int(r) for r in rows.split()]


# -- Patroni ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    started = time.monotonic()
    rig = PatroniCluster.build(n_nodes=3)
    print(f"\npatroni cluster (etcd + 3 nodes) built in {time.monotonic() - started:.1f} s")
    try:
        yield rig
    finally:
        rig.stop()


async def test_patroni_failover_keeps_writes_and_reads_going(patroni: PatroniCluster) -> None:
    """The primary's postmaster is SIGKILLed under 50 writers and 10 readers; Patroni
    promotes the synchronous standby. Writes resume on it without restarting the
    application, no acknowledged commit is lost or applied twice, and no read fails."""
    old = patroni.leader()
    sync = patroni.sync_standby()
    assert old is not None and sync is not None
    assert patroni.psql(old, "SHOW synchronous_standby_names"), "not synchronous"
    patroni.psql(old, f"CREATE TABLE {TABLE} (id bigint NOT NULL)")
    # The readers carry no consistency token, so a replica that has not replayed the
    # CREATE TABLE yet is rightly used and says the table does not exist: wait for all.
    patroni.wait_for(
        lambda: all(patroni.psql(n, _HAS_TABLE) == "t" for n in patroni.nodes),
        30,
        f"{TABLE} replayed on every node",
    )
    ports = [node.port for node in patroni.nodes]
    settings = _settings(ports, [node.url() for node in patroni.nodes])
    async with DatabaseManager(settings) as db:
        load = FailoverLoad(db)
        load.expect(commits=200)  # the load runs before anything is killed
        async with asyncio.timeout(60):
            await load.resumed()
        before = len(load.acknowledged)
        killed_at = load.expect(commits=500)
        await asyncio.to_thread(old.kill_postmaster)

        def promoted() -> bool:
            leader = patroni.leader()
            return leader is not None and leader is not old

        await asyncio.to_thread(patroni.wait_for, promoted, 60, "new leader")
        promoted_after = time.monotonic() - killed_at
        async with asyncio.timeout(60):
            await load.resumed()
        await asyncio.sleep(1.0)
        await load.stop()
        new = patroni.leader()
        assert new is not None
        assert await _pooled_primaries(db) == {(new.port, False)}
    assert new is sync, f"Patroni promoted {new and new.name}, not the sync standby {sync.name}"
    figures = load.verify(_stored(patroni.psql(new, f"SELECT id FROM {TABLE}")))
    after = load.acknowledged_since(killed_at)
    gap = load.write_gap(killed_at)
    print(
        f"patroni failover ({WRITERS} writers, {READERS} readers, synchronous_mode): "
        f"postmaster of {old.name} killed, {new.name} leader after {promoted_after:.2f} s; "
        f"write gap {gap:.2f} s; acknowledged {before} before the kill, {after} after; "
        f"{len(load.unknown)} of unknown outcome; lost {figures['lost']}, duplicated "
        f"{figures['duplicated']}, phantom {figures['phantom']}; reads {load.reads} ok, "
        f"{len(load.failed_reads)} failed"
    )
    assert before >= 200 and after >= 500
    assert load.failed_reads == [], load.failed_reads[:5]
    assert gap < 30, gap


# -- manual promote ----------------------------------------------------------------------------


async def test_manual_promote_failover_loses_no_acknowledged_commit() -> None:
    """The simpler case without a failover manager: the primary stopped, its replica
    promoted with ``pg_ctlcluster promote``; the application is not restarted."""
    rig = await asyncio.to_thread(ReplicaCluster.build, 1, "dkf")
    try:
        rig.primary.psql(f"CREATE TABLE {TABLE} (id bigint NOT NULL)")
        await asyncio.to_thread(rig.wait_streaming)
        replica = rig.replicas[0]
        # the readers must not race the CREATE TABLE
        await asyncio.to_thread(rig.wait_replayed, _HAS_TABLE)
        ports = [rig.primary.port, replica.port]
        settings = _settings(ports, [replica.url()])
        async with DatabaseManager(settings) as db:
            load = FailoverLoad(db)
            load.expect(commits=200)
            async with asyncio.timeout(60):
                await load.resumed()
            before = len(load.acknowledged)
            stopped_at = load.expect(commits=500)
            await asyncio.to_thread(rig.primary.ctl, "stop", "-m", "fast")
            await asyncio.to_thread(replica.ctl, "promote")
            async with asyncio.timeout(60):
                await load.resumed()
            await load.stop()
            assert await _pooled_primaries(db) == {(replica.port, False)}
        figures = load.verify(_stored(replica.psql(f"SELECT id FROM {TABLE}")))
        after = load.acknowledged_since(stopped_at)
        gap = load.write_gap(stopped_at)
        print(
            f"manual promote ({WRITERS} writers, {READERS} readers, async replication, "
            f"fast shutdown): write gap {gap:.2f} s; acknowledged {before} before, {after} "
            f"after; {len(load.unknown)} of unknown outcome; lost {figures['lost']}, "
            f"duplicated {figures['duplicated']}; reads {load.reads} ok, "
            f"{len(load.failed_reads)} failed"
        )
        assert before >= 200 and after >= 500
        assert gap < 15, gap
        # Until the promotion the replica serves reads; once promoted, the prober finds it
        # out of recovery and reads go to the primary URL, which is that node now.
        assert load.failed_reads == [], load.failed_reads[:5]
    finally:
        await asyncio.to_thread(rig.drop)
