"""A throwaway Patroni cluster on loopback ports: one etcd, *n* PostgreSQL nodes.

Debian's ``patroni`` and ``etcd-server`` packages (``bash .ci/services`` installs them),
everything under one temp directory, spare ports, PostgreSQL as the ``postgres`` user.
Synchronous replication (``synchronous_mode: true``), and ``primary_start_timeout: 0``
so that Patroni fails over as soon as the primary's postmaster dies instead of
restarting it in place (its default waits 300 s). ``stop()`` ends every process this
rig started, by pid, and removes the directory; it is safe to call twice. A crashed
run's leftovers are found by ``.ci/run`` through the pid files (``dkpatroni-*/pids``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.replica_rig import VERSION, free_port

__all__ = ["PatroniCluster", "PatroniNode"]

BIN_DIR = f"/usr/lib/postgresql/{VERSION}/bin"
_NEEDED = ("/usr/bin/patroni", "/usr/bin/etcd")


@dataclass
class PatroniNode:
    """One Patroni member: its PostgreSQL port, REST API port and data directory."""

    name: str
    port: int
    api_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def status(self) -> dict[str, object]:
        """Patroni's REST ``/patroni`` answer (role, state, timeline), {} if unreachable."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.api_port}/patroni", timeout=2
            ) as r:
                return dict(json.load(r))
        except OSError as exc:
            # /patroni answers 503 on a node whose PostgreSQL is down, with the JSON body
            body = getattr(exc, "read", None)
            if body is not None:
                try:
                    return dict(json.loads(body()))
                except ValueError:
                    pass
            return {}

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_postmaster(self) -> int:
        """SIGKILL this node's postmaster (its backends exit when they notice)."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"patroni rig: {self.name} has no running postmaster")
        os.kill(pid, signal.SIGKILL)
        return pid


@dataclass
class PatroniCluster:
    """etcd plus *n* Patroni nodes, all started; the first node bootstraps the cluster."""

    home: Path
    etcd_port: int
    nodes: list[PatroniNode] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None

    @classmethod
    def build(cls, n_nodes: int = 3, timeout: float = 90.0) -> PatroniCluster:
        missing = [path for path in _NEEDED if not os.access(path, os.X_OK)]
        if missing:
            raise RuntimeError(
                f"patroni rig: {', '.join(missing)} missing. Install Debian's packages: "
                f"apt-get install -y patroni etcd-server (bash .ci/services does it)."
            )
        home = Path(tempfile.mkdtemp(prefix=f"dkpatroni-{os.getpid()}-"))
        shutil.chown(home, "postgres", "postgres")
        rig = cls(home, free_port())
        try:
            rig._start_etcd()
            for i in range(1, n_nodes + 1):
                node = PatroniNode(f"node{i}", free_port(), free_port(), home / f"node{i}")
                rig.nodes.append(node)
                rig._start_node(node)
                if i == 1:  # the others clone it: it must lead first
                    rig.wait_for(lambda: rig.leader() is not None, timeout, "a leader")
            rig.wait_for(rig._all_streaming, timeout, f"{n_nodes - 1} streaming replicas")
            rig.wait_for(lambda: rig.sync_standby() is not None, timeout, "a sync standby")
        except BaseException:
            rig.stop()
            raise
        return rig

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> subprocess.Popen[bytes]:
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115  # owned by the process
        try:
            # own process group: stop() ends the process and whatever it spawned, by id
            # cwd: the rig's own directory. The checkout's may be unreadable to the
            # postgres user (a clone in a root-only mktemp -d), and initdb then never
            # finishes Patroni's bootstrap.
            process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home
            )
        finally:
            log.close()
        with open(self.home / "pids", "a") as fh:
            fh.write(f"{process.pid}\n")
        return process

    def _start_etcd(self) -> None:
        peer = free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = self._spawn(
            "etcd",
            [
                "/usr/bin/etcd",
                "--name=dk",
                f"--data-dir={self.home / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=dk=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
            ],
        )
        self.wait_for(self._etcd_up, 30, "etcd")

    def _etcd_up(self) -> bool:
        if self.etcd is not None and self.etcd.poll() is not None:
            raise RuntimeError(f"patroni rig: etcd exited: {self._tail('etcd')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=1):
                return True
        except OSError:
            return False

    def _start_node(self, node: PatroniNode) -> None:
        node.home.mkdir()
        shutil.chown(node.home, "postgres", "postgres")
        config = node.home / "patroni.yml"
        config.write_text(json.dumps(self._config(node), indent=1))  # JSON is YAML
        shutil.chown(config, "postgres", "postgres")
        node.process = self._spawn(node.name, ["/usr/bin/patroni", str(config)], user="postgres")

    def _config(self, node: PatroniNode) -> dict[str, object]:
        return {
            "scope": f"dk{os.getpid()}",
            "namespace": "/dbkeel/",
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    # fail over at once when the primary's postmaster dies
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "hot_standby_feedback": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_receiver_status_interval": "1s",
                            "max_connections": 200,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.data_dir),
                "bin_dir": BIN_DIR,
                "pgpass": str(node.home / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {
                    "unix_socket_directories": str(node.home),
                    # throwaway: a killed postmaster keeps its writes in the page cache;
                    # durability across OS crashes is not under test
                    "fsync": "off",
                },
            },
            "watchdog": {"mode": "off"},
            "tags": {},
        }

    # -- state ------------------------------------------------------------------------------

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"patroni rig: {node.name}'s patroni exited "
                        f"({node.process.returncode}): {self._tail(node.name)}"
                    )
            time.sleep(0.2)
        logs = "\n".join(f"--- {n.name}\n{self._tail(n.name)}" for n in self.nodes)
        raise RuntimeError(f"patroni rig: no {what} after {timeout:g} s.\n{logs}")

    def _tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.home / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def leader(self) -> PatroniNode | None:
        """The node whose PostgreSQL runs as a primary, per Patroni."""
        for node in self.nodes:
            status = node.status()
            if status.get("role") in ("master", "primary") and status.get("state") == "running":
                return node
        return None

    def sync_standby(self) -> PatroniNode | None:
        """The node Patroni lists as synchronous standby."""
        leader = self.leader()
        if leader is None:
            return None
        try:
            url = f"http://127.0.0.1:{leader.api_port}/cluster"
            with urllib.request.urlopen(url, timeout=2) as r:
                members = json.load(r)["members"]
        except (OSError, ValueError, KeyError):
            return None
        names = {m["name"] for m in members if m.get("role") == "sync_standby"}
        return next((n for n in self.nodes if n.name in names), None)

    def _all_streaming(self) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        replicas = [n for n in self.nodes if n is not leader]
        return all(n.status().get("state") in ("running", "streaming") for n in replicas) and all(
            n.status().get("role") == "replica" for n in replicas
        )

    def psql(self, node: PatroniNode, sql: str, database: str = "postgres") -> str:
        cmd = ["psql", "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "-d", database]
        done = subprocess.run(
            [*cmd, "-XAtq", "-c", sql], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"patroni rig: psql on {node.name} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- teardown ---------------------------------------------------------------------------

    def stop(self) -> None:
        """End every process this rig started (patroni stops its PostgreSQL), then etcd."""
        for node in self.nodes:
            _end(node.process, timeout=15)
            pid = node.postmaster_pid()  # a patroni that did not stop its postmaster
            if pid is not None:
                subprocess.run(
                    [
                        "runuser",
                        "-u",
                        "postgres",
                        "--",
                        f"{BIN_DIR}/pg_ctl",
                        "stop",
                        "-m",
                        "immediate",
                        "-D",
                        str(node.data_dir),
                    ],
                    capture_output=True,
                    timeout=30,
                )
        _end(self.etcd, timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)


def _end(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the process group of *process*, SIGKILL it if it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


if __name__ == "__main__":  # python -m tests.patroni_rig: build, show, tear down
    started = time.monotonic()
    cluster = PatroniCluster.build()
    try:
        print(f"built in {time.monotonic() - started:.1f} s")
        for n in cluster.nodes:
            print(n.name, n.port, n.status().get("role"), n.status().get("state"))
        print("sync standby:", cluster.sync_standby())
    finally:
        cluster.stop()
