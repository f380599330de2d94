"""Run the example app under a real uvicorn process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
#: base URL -> pid of the uvicorn process serving it (benchmarks read its CPU time)
PIDS: dict[str, int] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    url: str,
    app_name: str,
    module: str = "examples.notes.app:app",
    *,
    keep_alive: float | None = None,
    **env: str,
) -> Iterator[str]:
    """Start uvicorn serving *module* on *url*; yields the base URL; stops it afterwards.

    *keep_alive*: uvicorn's ``--timeout-keep-alive`` (its default is 5 s).
    """
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    environ.update({"DATABASE_URL": url, "ENVIRONMENT": "development", "APP_NAME": app_name, **env})
    args = [sys.executable, "-m", "uvicorn", module, "--port", str(port), "--log-level", "warning"]
    if keep_alive is not None:
        args += ["--timeout-keep-alive", f"{keep_alive:g}"]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"uvicorn exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not answer /health/live within 30 s")
            time.sleep(0.1)
        PIDS[base] = proc.pid
        yield base
    finally:
        PIDS.pop(base, None)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
