"""``python -m benchmarks [name ...]``: run the named benchmarks (default: all), in a
PostgreSQL database of their own (see ``_harness.own_database``)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path

from benchmarks import _harness


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
    # before the benchmark modules are imported: they read PG_URL then
    with _harness.own_database():
        for bench in wanted:
            module = importlib.import_module(f"benchmarks.bench_{bench}")
            asyncio.run(module.main())


main()
