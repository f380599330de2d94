"""A throwaway MariaDB primary and replica on spare loopback ports.

Two ``mariadbd`` instances of the machine's MariaDB (Debian's ``mariadb-server``), each
with its own data directory under one temp directory (``mariadb-install-db``, about 2 s
each), never the shared server on 3306 (which has no binary log). The replica follows the
primary by GTID. ``drop()`` stops both by their pid files and removes the directory; a
crashed run's leftovers are found by ``.ci/run`` through their pid files
(``dkmaria-*/*.pid``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.replica_rig import free_port

__all__ = ["MariaDBNode", "MariaDBReplication"]


@dataclass
class MariaDBNode:
    """One ``mariadbd``: its port and files (``<name>.pid``, ``<name>.err``)."""

    name: str
    port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "test") -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "") -> str:
        cmd = ["mariadb", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root", "-N", "-B"]
        done = subprocess.run(
            [*cmd, "-e", statement, *([database] if database else [])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb rig: {statement!r} on {self.name}: {done.stderr}")
        return done.stdout.strip()

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    def start(self, *extra: str) -> None:
        data = self.home / self.name
        _run(
            "mariadb-install-db",
            "--no-defaults",
            "--user=mysql",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        )
        self.process = subprocess.Popen(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.home / self.name}.sock",
                f"--pid-file={self.pid_file}",
                f"--log-error={self.home / self.name}.err",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=2",  # throwaway: no fsync per commit
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = ["mariadb-admin", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(self.port)]
            if subprocess.run([*ping, "-u", "root", "ping"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        log = (self.home / f"{self.name}.err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"mariadb rig: {self.name} did not start in 30 s:\n{log}")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after 20 s; by this rig's own process."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"mariadb rig: `{' '.join(cmd)}` failed ({done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}. The rig needs root and "
            f"Debian's mariadb-server."
        )


@dataclass
class MariaDBReplication:
    """A primary (binary log, server_id 1) and a replica (server_id 2, read_only)."""

    home: Path
    primary: MariaDBNode
    replica: MariaDBNode

    @classmethod
    def build(cls) -> MariaDBReplication:
        home = Path(tempfile.mkdtemp(prefix=f"dkmaria-{os.getpid()}-"))
        shutil.chown(home, "mysql", "mysql")
        rig = cls(home, MariaDBNode("primary", free_port(), home), MariaDBNode("replica", 0, home))
        rig.replica.port = free_port()
        try:
            rig.primary.start("--log-bin=binlog", "--server-id=1", "--binlog-format=ROW")
            rig.primary.sql("CREATE DATABASE test")
            rig.replica.start("--server-id=2", "--read-only=1")
            rig.replica.sql(
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={rig.primary.port}, "
                f"MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, "
                f"MASTER_CONNECT_RETRY=1; START REPLICA"
            )
            rig.wait_replicated()
        except BaseException:
            rig.drop()
            raise
        return rig

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until the replica has applied everything the primary wrote so far."""
        target = self.primary.sql("SELECT @@gtid_binlog_pos")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not target or self.replica.sql(f"SELECT MASTER_GTID_WAIT('{target}', 0.5)") == "0":
                return
        status = self.replica.sql("SHOW REPLICA STATUS\\G")
        raise RuntimeError(f"mariadb rig: replica not at {target} after {timeout} s:\n{status}")

    def set_delay(self, seconds: int) -> None:
        """Delayed replication (``MASTER_DELAY``): the replica stays *seconds* behind."""
        self.replica.sql(f"STOP REPLICA; CHANGE MASTER TO MASTER_DELAY={seconds}; START REPLICA")

    def drop(self) -> None:
        self.replica.stop()
        self.primary.stop()
        shutil.rmtree(self.home, ignore_errors=True)
