"""A throwaway PostgreSQL primary with streaming replicas, on spare loopback ports.

Built with Debian's cluster tools (``pg_createcluster``, ``pg_basebackup -R``,
``pg_ctlcluster``), as root, never touching the shared server on 5432. Tests that stop,
pause or promote servers use these; every cluster is dropped at the end. A machine that
cannot build it makes the test fail with the command's own output (see .ci/services).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

__all__ = ["Cluster", "ReplicaCluster"]

VERSION = "15"
_CONFIG = (
    "wal_level=replica",
    "max_wal_senders=10",
    "hot_standby=on",
    "hot_standby_feedback=on",
    "listen_addresses=localhost",
    "fsync=off",  # throwaway clusters: durability across OS crashes is not under test
    "wal_receiver_status_interval=1s",
)


def _run(*cmd: str, user: str | None = None) -> str:
    if user is not None:
        cmd = ("runuser", "-u", user, "--", *cmd)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"replica test rig: `{' '.join(cmd)}` failed ({done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}. The rig needs root and Debian's "
            f"postgresql-{VERSION} cluster tools (bash .ci/services installs them)."
        )
    return done.stdout


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this process handed out before (the
    kernel may offer a just-released port again, and a rig asks for several)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Cluster:
    """One Debian PostgreSQL cluster (``pg_lsclusters`` name and port)."""

    name: str
    port: int

    @property
    def data_dir(self) -> str:
        return f"/var/lib/postgresql/{VERSION}/{self.name}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, action: str, *extra: str) -> None:
        _run("pg_ctlcluster", *extra, VERSION, self.name, action)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return _run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-XAtq",
            "-c",
            sql,
        ).strip()

    def is_running(self) -> bool:
        return (
            subprocess.run(
                ["pg_ctlcluster", VERSION, self.name, "status"], capture_output=True
            ).returncode
            == 0
        )

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", VERSION, self.name], capture_output=True)


def _create(name: str, port: int) -> Cluster:
    options = [arg for guc in _CONFIG for arg in ("-o", guc)]
    _run("pg_createcluster", *options, VERSION, name, "-p", str(port))
    hba = f"/etc/postgresql/{VERSION}/{name}/pg_hba.conf"
    with open(hba, "w") as fh:
        fh.write(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
    return Cluster(name, port)


@dataclass
class ReplicaCluster:
    """A primary and *n* streaming replicas (asynchronous), all started."""

    primary: Cluster
    replicas: list[Cluster] = field(default_factory=list)

    @classmethod
    def build(cls, n_replicas: int = 1, prefix: str = "dkr") -> ReplicaCluster:
        tag = f"{prefix}{os.getpid()}"
        primary = _create(f"{tag}p", free_port())
        rig = cls(primary)
        try:
            primary.ctl("start")
            for i in range(1, n_replicas + 1):
                rig.add_replica(f"{tag}r{i}")
            rig.wait_streaming()
        except BaseException:
            rig.drop()
            raise
        return rig

    def add_replica(self, name: str) -> Cluster:
        replica = _create(name, free_port())
        self.replicas.append(replica)  # registered first, so drop() removes a half-built one
        for entry in os.scandir(replica.data_dir):  # keep the directory (owner, mode 0700)
            shutil.rmtree(entry.path) if entry.is_dir() else os.unlink(entry.path)
        _run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-D",
            replica.data_dir,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            user="postgres",
        )
        replica.ctl("start")
        return replica

    def wait_streaming(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        want = len([r for r in self.replicas if r.is_running()])
        while time.monotonic() < deadline:
            count = int(self.primary.psql("SELECT count(*) FROM pg_stat_replication"))
            if count >= want:
                return
            time.sleep(0.2)
        raise RuntimeError(f"replica test rig: {want} replicas did not stream in {timeout} s")

    def wait_replayed(self, check: str, timeout: float = 30.0) -> None:
        """Wait until *check* (a query answering t/f) is true on every running replica."""
        deadline = time.monotonic() + timeout
        for replica in (r for r in self.replicas if r.is_running()):
            while replica.psql(check) != "t":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica test rig: {check!r} still false on a replica")
                time.sleep(0.05)

    def drop(self) -> None:
        for cluster in [*self.replicas, self.primary]:
            cluster.drop()
