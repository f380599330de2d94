"""dbkeel doctor's replica checks (dbkeel/doctor/replica_checks.py), on the throwaway
streaming-replication cluster of tests/replica_rig.py (the ``cluster`` fixture)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dbkeel.doctor import Report, run_doctor
from dbkeel.doctor.replica_checks import ReplicaFacts, replica_findings
from tests.conftest import make_settings, run_cli
from tests.replica_rig import ReplicaCluster

SECRET = "s3cret-doctor-pw"


def _findings(report: Report, subject_prefix: str) -> dict[str, Any]:
    found = {f.id: f for f in report.findings if (f.subject or "").startswith(subject_prefix)}
    assert found, (subject_prefix, report.findings)
    return found


async def test_doctor_checks_every_replica(cluster: ReplicaCluster) -> None:
    unreachable = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:1/postgres"
    urls = [r.url() for r in cluster.replicas] + [cluster.primary.url(), unreachable]
    settings = make_settings(cluster.primary.url(), replica_urls=",".join(urls), connect_timeout=2)
    report = await run_doctor(settings)
    port = cluster.replicas[0].port
    good = _findings(report, f"replica-1 (127.0.0.1:{port})")
    assert {i: f.level for i, f in good.items()} == {
        "replica.reachable": "ok",
        "replica.recovery": "ok",
        "replica.lag": "ok",
        "replica.hot-standby-feedback": "ok",  # the rig turns it on
        # PostgreSQL's default 30 s against no statement timeout at all
        "replica.standby-delay": "warning",
    }
    assert (
        "max_standby_streaming_delay = 30 s, no statement_timeout"
        in good["replica.standby-delay"].what
    )
    primary = _findings(report, "replica-3")
    assert primary["replica.recovery"].level == "error"
    assert "is not in recovery: it is a primary" in primary["replica.recovery"].what
    assert "replica.lag" not in primary
    down = _findings(report, "replica-4 (127.0.0.1:1)")
    assert down["replica.reachable"].level == "error"
    assert "unreachable" in down["replica.reachable"].what
    assert SECRET not in json.dumps(report.to_dict())
    assert report.exit_code() == 1


async def test_doctor_reports_a_replica_over_the_lag_limit(cluster: ReplicaCluster) -> None:
    replica = cluster.replicas[0]
    settings = make_settings(
        cluster.primary.url(),
        replica_urls=replica.url(),
        replica_max_lag=1,
        statement_timeout=20,
    )
    await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_pause()")
    try:
        for key in (7_000_000, 7_000_001):
            cluster.primary.psql(f"INSERT INTO items VALUES ({key}, 'lag')")
            await asyncio.sleep(0.8)
        report = await run_doctor(settings)
    finally:
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")
    lag = _findings(report, "replica-1")["replica.lag"]
    assert lag.level == "warning", lag
    assert "DATABASE_REPLICA_MAX_LAG=1" in lag.what and "bytes of WAL behind" in lag.what
    delay = _findings(report, "replica-1")["replica.standby-delay"]
    assert delay.level == "ok", delay  # 20 s statement timeout <= 30 s standby delay


async def test_a_replica_a_moment_behind_an_idle_primary_is_not_reported_lagging(
    cluster: ReplicaCluster,
) -> None:
    # Found a few bytes behind, the replica's "age of the last replayed transaction" is
    # the time since the primary last wrote anything, not how far behind it is: the
    # doctor watches it catch up instead. (It once failed CI: a WAL record written just
    # before the probe made an up-to-date replica read as lagging.)
    replica = cluster.replicas[0]
    settings = make_settings(cluster.primary.url(), replica_urls=replica.url(), replica_max_lag=1)
    # keys of this test's own: the cluster and its table are shared by the session
    cluster.primary.psql("INSERT INTO items VALUES (8800000, 'then idle')")
    await asyncio.sleep(1.5)  # the last transaction is now older than the lag limit
    await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_pause()")
    try:
        cluster.primary.psql("INSERT INTO items VALUES (8800001, 'just now')")

        async def resume() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")

        report, _ = await asyncio.gather(run_doctor(settings), resume())
    finally:
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")
        cluster.primary.psql("DELETE FROM items WHERE id IN (8800000, 8800001)")
    lag = _findings(report, "replica-1")["replica.lag"]
    assert lag.level == "ok", lag


@pytest.mark.parametrize(
    ("delay", "timeout", "expected"),
    [(30.0, 60.0, "warning"), (30.0, 10.0, "ok"), (-1.0, 0.0, "warning"), (-1.0, 5.0, "ok")],
)
def test_standby_delay_against_the_statement_timeout(
    delay: float, timeout: float, expected: str
) -> None:
    facts = ReplicaFacts(
        "replica-1 (db2:5432)",
        "postgresql",
        in_recovery=True,
        lag_s=0.0,
        hot_standby_feedback=False,
        standby_delay_s=delay,
        statement_timeout_s=timeout,
    )
    found = {f.id: f for f in replica_findings(make_settings("postgresql://u@h/d"), facts)}
    assert found["replica.standby-delay"].level == expected
    assert found["replica.hot-standby-feedback"].level == "warning"
    assert "hot_standby_feedback = on" in found["replica.hot-standby-feedback"].fix


def test_doctor_cli_lists_replica_findings(cluster: ReplicaCluster) -> None:
    env = {
        "DATABASE_URL": cluster.primary.url(),
        "DATABASE_REPLICA_URLS": cluster.primary.url(),  # a primary listed as a replica
    }
    done = run_cli("doctor", "--json", env=env)
    assert done.returncode == 1, done.stderr
    findings = {f["id"]: f for f in json.loads(done.stdout)["findings"]}
    assert findings["replica.recovery"]["level"] == "error"
    assert findings["replica.recovery"]["subject"].startswith("replica-1 (127.0.0.1:")
