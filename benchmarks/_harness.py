"""The shared harness: interleaved rounds, medians, ratios, one rich table per benchmark."""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()
RESULTS = Path(__file__).parent / "results"
PG_URL = os.environ.get(
    "DBKEEL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get("DBKEEL_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")

Candidate = Callable[[], Awaitable[int]]

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
    ratio: float  # median time / baseline median time (lower is faster)


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
    base = statistics.median(times[baseline])
    rows = [
        Row(
            name=name,
            median_s=statistics.median(times[name]),
            ops=ops[name],
            ops_per_s=ops[name] / statistics.median(times[name]),
            ratio=statistics.median(times[name]) / base,
        )
        for name in names
    ]
    report(title, rows, baseline=baseline, goal=goal)
    return rows


def report(title: str, rows: list[Row], *, baseline: str, goal: str = "") -> None:
    table = Table(title=title, caption=goal or None)
    table.add_column("candidate")
    table.add_column("median", justify="right")
    table.add_column("ops/s", justify="right")
    table.add_column(f"time ratio vs {baseline}", justify="right")
    for row in rows:
        table.add_row(
            row.name, f"{row.median_s * 1000:.1f} ms", f"{row.ops_per_s:,.0f}", f"{row.ratio:.3f}"
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
