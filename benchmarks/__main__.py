"""``python -m benchmarks [name ...]``: run the named benchmarks (default: all).

Each run works in a PostgreSQL database of its own (``<database>_bench_<pid>``, created
here and dropped at the end): the benchmarks drop and create fixed table names, and two
runs sharing the ``test`` database (another checkout's ``make bench-smoke``, a CI job)
would drop each other's tables mid-run.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from benchmarks import _harness


async def _server_command(url: str, sql: str) -> None:
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    here = Path(__file__).parent
    available = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )
    wanted = sys.argv[1:] or available
    unknown = set(wanted) - set(available)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; available: {available}")
    base = _harness.PG_URL
    name = f"{make_url(base).database}_bench_{os.getpid()}"
    own = make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_server_command(base, f'CREATE DATABASE "{name}"'))
    # Set before the benchmark modules are imported (they read PG_URL then), and in the
    # environment for the processes they start (uvicorn, the memory probe).
    _harness.PG_URL = own
    os.environ["DBKEEL_TEST_POSTGRES_URL"] = own
    try:
        for bench in wanted:
            module = importlib.import_module(f"benchmarks.bench_{bench}")
            asyncio.run(module.main())
    finally:
        asyncio.run(_server_command(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


main()
