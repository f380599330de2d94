"""The shared harness: interleaved rounds, medians, ratios, one rich table per benchmark."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

console = Console()
RESULTS = Path(__file__).parent / "results"
PG_URL = os.environ.get(
    "DBKEEL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("DBKEEL_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")

Candidate = Callable[[], Awaitable[int]]


@contextmanager
def own_database() -> Iterator[str]:
    """A PostgreSQL database of this run's own (``<database>_bench_<pid>``), as PG_URL.

    The benchmarks drop and create fixed table names: two runs sharing the ``test``
    database (another checkout's ``make bench-smoke``, a CI job) dropped each other's
    tables mid-run. The URL is also put in the environment, for the processes a benchmark
    starts (uvicorn, the memory probe). Dropped at the end.
    """
    global PG_URL
    base = PG_URL
    name = f"{make_url(base).database}_bench_{os.getpid()}"
    own = make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_server_command(base, f'CREATE DATABASE "{name}"'))
    PG_URL = own
    os.environ["DBKEEL_TEST_POSTGRES_URL"] = own
    try:
        yield own
    finally:
        PG_URL = base
        asyncio.run(_server_command(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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


#: ``make bench-smoke`` (DBKEEL_BENCH_SMOKE=1): every benchmark once, at tiny sizes, so that
#: CI notices a benchmark that no longer runs. Its figures mean nothing.
SMOKE = os.environ.get("DBKEEL_BENCH_SMOKE") == "1"


def scaled(n: int, smoke: int | None = None) -> int:
    """*n*, or a tiny size (*smoke*, else n/100) under ``make bench-smoke``."""
    if not SMOKE:
        return n
    return smoke if smoke is not None else max(1, n // 100)


@dataclass
class Row:
    name: str
    median_s: float
    ops: int
    ops_per_s: float
    ratio: float  # median over rounds of time / baseline time in that round (lower: faster)
    ratio_low: float  # first quartile of the per-round ratios (min with < 4 rounds)
    ratio_high: float  # third quartile (max with < 4 rounds)


async def compare(
    title: str,
    candidates: dict[str, Candidate],
    *,
    baseline: str,
    rounds: int = 7,
    warmup: int = 1,
    goal: str = "",
) -> list[Row]:
    """Run each candidate *rounds* times, alternating, and report medians and ratios.

    A candidate does a fixed amount of work and returns the number of operations it did.
    The ratio is the median of per-round ratios: each round times every candidate back
    to back, so a burst of load from another process slows the pair it lands on, not
    one side of a ratio of medians taken minutes apart. The quartiles of the per-round
    ratios are shown next to it: a spread wider than the gap to the goal means the run
    cannot tell.
    """
    if SMOKE:
        rounds, warmup = 1, 0
    for _ in range(warmup):
        for fn in candidates.values():
            await fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    ops: dict[str, int] = {}
    names = list(candidates)
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            gc.collect()
            start = time.perf_counter()
            ops[name] = await candidates[name]()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in names:
        ratios = sorted(t / b for t, b in zip(times[name], times[baseline], strict=True))
        low, high = ratios[0], ratios[-1]
        if len(ratios) >= 4:
            low, _, high = statistics.quantiles(ratios, n=4)
        rows.append(
            Row(
                name=name,
                median_s=statistics.median(times[name]),
                ops=ops[name],
                ops_per_s=ops[name] / statistics.median(times[name]),
                ratio=statistics.median(ratios),
                ratio_low=low,
                ratio_high=high,
            )
        )
    report(title, rows, baseline=baseline, goal=goal)
    return rows


def report(title: str, rows: list[Row], *, baseline: str, goal: str = "") -> None:
    table = Table(title=title, caption=goal or None)
    table.add_column("candidate")
    table.add_column("median", justify="right")
    table.add_column("ops/s", justify="right")
    table.add_column(f"time ratio vs {baseline}", justify="right")
    table.add_column("ratio quartiles", justify="right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.median_s * 1000:.1f} ms",
            f"{row.ops_per_s:,.0f}",
            f"{row.ratio:.3f}",
            f"{row.ratio_low:.3f}-{row.ratio_high:.3f}",
        )
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")[:60]
    (RESULTS / f"{slug}.json").write_text(
        json.dumps(
            {"title": title, "baseline": baseline, "goal": goal, "rows": [asdict(r) for r in rows]},
            indent=2,
        )
    )
