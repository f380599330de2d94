"""Load: the example app under uvicorn with dbkeel's FastAPI integration vs the same app
with hand-made dependencies (issue 16; goal: requests/s ratio >= 0.98, 0 errors, 0
connections left checked out). 50 concurrent httpx clients on PostgreSQL; each request
is a GET by primary key or (1 in 5) a POST that inserts.

Size: DBKEEL_BENCH_INTEGRATIONS_REQUESTS requests per client per round (default 40).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
from collections import Counter
from pathlib import Path

import httpx

from benchmarks._harness import PG_URL, SMOKE, compare, console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.uvicorn_support import PIDS, serve  # the project root is on sys.path now

CLIENTS = 50
POOL_SIZE = "10"
# Longer than httpx's keepalive_expiry (5 s): with uvicorn's default, also 5 s, the
# server may close an idle pooled connection just as the client sends on it, and that
# request fails with ReadError (the HTTP keep-alive race, e.g. Kludex/uvicorn#824 and
# agentscope-ai/agentscope-runtime#468), on both sides alike: a rig error, not the app's.
KEEP_ALIVE = 30.0


async def _seed(base: str) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ids = []
        for i in range(20):
            made = await client.post("/notes", json={"slug": secrets.token_hex(8), "body": f"{i}"})
            made.raise_for_status()
            ids.append(made.json()["id"])
        return ids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    base: str, ids: list[str], per_client: int, errors: list[str], cpu: list[float]
) -> object:
    async def one_client(client: httpx.AsyncClient, n: int) -> int:
        for i in range(per_client):
            try:
                if i % 5 == 4:
                    body = {"slug": secrets.token_hex(8), "body": "b"}
                    r = await client.post("/notes", json=body)
                else:
                    r = await client.get(f"/notes/{ids[(n + i) % len(ids)]}")
            except httpx.HTTPError as exc:
                # counted, not raised: a dropped connection is a result to report
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code >= 400:
                errors.append(f"{r.status_code} {r.text[:80]}")
        return per_client

    async def run() -> int:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        before = _cpu_seconds(PIDS[base])
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            done = await asyncio.gather(*(one_client(client, n) for n in range(CLIENTS)))
        # the server's CPU per request: on a shared, loaded machine far steadier than
        # requests/s, which other processes' load moves by tens of percent
        cpu.append((_cpu_seconds(PIDS[base]) - before) / sum(done))
        return sum(done)

    return run


async def main() -> None:
    per_client = int(os.environ.get("DBKEEL_BENCH_INTEGRATIONS_REQUESTS", "2" if SMOKE else "40"))
    errors: dict[str, list[str]] = {"dbkeel install()": [], "hand-made": []}
    cpu: dict[str, list[float]] = {"dbkeel install()": [], "hand-made": []}
    # production: the profile a service runs under (development adds nothing to measure)
    env = {
        "ENVIRONMENT": "production",
        "DATABASE_POOL_SIZE": POOL_SIZE,
        "DATABASE_MAX_OVERFLOW": "0",
    }
    with (
        serve(PG_URL, "dbkeel-bench-integ", keep_alive=KEEP_ALIVE, **env) as dbkeel_base,
        serve(
            PG_URL,
            "dbkeel-bench-hand",
            "benchmarks._notes_handmade:app",
            keep_alive=KEEP_ALIVE,
            **env,
        ) as hand_base,  # fmt: skip
    ):
        bases = {"dbkeel install()": dbkeel_base, "hand-made": hand_base}
        ids = await _seed(dbkeel_base)
        candidates = {
            name: _load(base, ids, per_client, errors[name], cpu[name])
            for name, base in bases.items()
        }
        rows = await compare(
            f"FastAPI example app under uvicorn, {CLIENTS} clients x {per_client} requests",
            candidates,  # type: ignore[arg-type]
            baseline="hand-made",
            rounds=5,
            goal="goal: dbkeel requests/s >= 0.98 x hand-made, 0 errors, 0 checked out after",
        )
        async with httpx.AsyncClient(timeout=10) as client:
            for name, base in bases.items():
                left = (await client.get(f"{base}/health/ready")).json()["pool"]["checked_out"]
                console.print(f"{name}: {len(errors[name])} error(s), {left} checked out after")
                for error, times in Counter(e[:100] for e in errors[name]).most_common(3):
                    console.print(f"    {times} x {error}")
        by_name = {r.name: r for r in rows}
        ratio = by_name["dbkeel install()"].ops_per_s / by_name["hand-made"].ops_per_s
        console.print(f"requests/s ratio dbkeel / hand-made: {ratio:.3f}")
        per_request = {name: statistics.median(values) for name, values in cpu.items()}
        for name, value in per_request.items():
            console.print(f"{name}: server CPU {value * 1e6:.0f} us/request (median of rounds)")
        cpu_ratio = per_request["hand-made"] / per_request["dbkeel install()"]
        console.print(f"CPU-bound requests/s ratio (hand-made CPU / dbkeel CPU): {cpu_ratio:.3f}")
