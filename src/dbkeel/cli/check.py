"""``dbkeel check``: prove the configured database answers and show how dbkeel talks to it."""

from __future__ import annotations

from rich.table import Table

from dbkeel.cli._console import console, print_error
from dbkeel.engine import build_engine_options
from dbkeel.exceptions import DbkeelError
from dbkeel.manager import DatabaseManager
from dbkeel.monitoring.health import HealthReport, round_trip_ms
from dbkeel.settings import DatabaseSettings


async def run_check() -> int:
    """Run the check; returns the exit code (0 reachable, 1 not)."""
    try:
        settings = DatabaseSettings()
        db = DatabaseManager(settings)
        await db.initialize()
    except DbkeelError as exc:
        print_error(exc)
        return 1
    try:
        async with db.engine.connect() as conn:
            latency_ms = await round_trip_ms(conn)
            version = conn.dialect.server_version_info
        options = build_engine_options(settings)
        table = Table(title="dbkeel check: database reachable", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("url", settings.masked_url)
        table.add_row("environment", settings.environment)
        table.add_row("driver", f"{db.engine.dialect.name}+{db.engine.dialect.driver}")
        table.add_row("server version", ".".join(str(p) for p in version or ()))
        table.add_row("round trip (median of 5)", f"{latency_ms:.2f} ms")
        table.add_row("pool", options.poolclass.__name__)
        for key in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping"):
            if key in options.kwargs:
                table.add_row(key, str(options.kwargs[key]))
        console.print(table)
        console.print(_health_table(await db.health()))
        return 0
    finally:
        await db.close()


def _health_table(report: HealthReport) -> Table:
    """``db.health()`` as a table: what a readiness endpoint would return."""
    table = Table(title="health report (await db.health())", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("status", "reachable", "latency_ms", "server_version", "backend", "error"):
        table.add_row(key, str(report[key]))
    for key, value in report["pool"].items():
        table.add_row(f"pool.{key}", "unknown" if value is None else str(value))
    for node in report.get("nodes", []):
        lag = "?" if node["lag_s"] is None else f"{node['lag_s']:.2f} s"
        pool = node["pool"]
        in_use = f"pool {pool['checked_out'] if pool['checked_out'] is not None else '?'}"
        in_use += f"/{pool['max']} in use" if pool["max"] is not None else " in use"
        table.add_row(
            f"node {node['node']}",
            f"{node['role']} {node['state']}, lag {lag}, {in_use}, {node['url']}"
            + (f" ({node['error']})" if node["error"] else ""),
        )
    return table
