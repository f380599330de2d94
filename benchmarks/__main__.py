"""``python -m benchmarks [name ...]``: run the named benchmarks (default: all)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path


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
    for name in wanted:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        asyncio.run(module.main())


main()
