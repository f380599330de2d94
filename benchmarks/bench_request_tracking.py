"""Per-request query tracking of the web integrations (issues 16 and 18): the same app with
``install(app, db)`` (tracking and the default budget on) and with ``query_budget=None``
(no tracking), FastAPI and Litestar, side by side on PostgreSQL.

Each request is a GET whose handler reads one row by primary key through the integration's
session dependency; 8 concurrent tasks call the ASGI app directly (no HTTP client or server
in the measurement: the frameworks' and dbkeel's own work is all there is). Production
profile, as a service runs. A second app without tracking shows what two identical apps
differ by in the same run (A/A). Reported: the harness's ratios; the per-round ratios of
wall and process CPU time (CPU is steadier on a shared machine); Python function calls per
request (a count the machine's load does not move); and tracking's own cost per request,
timed in a tight loop around an app that only records one statement.

Size: DBKEEL_BENCH_TRACKING_REQUESTS requests per task per round (default 40).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from litestar import Litestar, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from rich.table import Table
from sqlalchemy import Integer, String, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._harness import PG_URL, Candidate, console, scaled
from benchmarks.bench_insight import _compare_paired
from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel._timer import StatementTimer
from dbkeel.insight.stats import StatsRecorder
from dbkeel.integrations.fastapi import QueryBudget, Session, install
from dbkeel.integrations.litestar import DbkeelConfig, DbkeelPlugin
from dbkeel.integrations.tracking import DEFAULT_QUERY_BUDGET, QueryTracking

TASKS = 8
ROUNDS = scaled(41, 1)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_tracking_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _settings() -> DatabaseSettings:
    return DatabaseSettings(
        database_url=PG_URL,
        environment="production",
        pool_size=TASKS,
        max_overflow=0,
        app_name="dbkeel-bench",
    )


def _fastapi(budget: QueryBudget | None) -> FastAPI:
    app = FastAPI()
    install(app, DatabaseManager(_settings()), query_budget=budget)

    @app.get("/items/{item_id}")
    async def read(item_id: int, session: Session) -> dict[str, Any]:
        row = await session.get(Item, item_id)
        return {"id": item_id, "name": row.name if row else None}

    return app


@get("/items/{item_id:int}")
async def ls_read(
    item_id: FromPath[int], db_session: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    row = await db_session.get(Item, item_id)
    return {"id": item_id, "name": row.name if row else None}


def _litestar(budget: QueryBudget | None) -> Litestar:
    plugin = DbkeelPlugin(DatabaseManager(_settings()), DbkeelConfig(query_budget=budget))
    return Litestar([ls_read], plugins=[plugin], logging_config=None)


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 40000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _requests(app: Any, per_task: int) -> Candidate:
    async def send(message: Any) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"benchmark request answered {message['status']}")

    async def run() -> int:
        async def one_task(t: int) -> None:
            for i in range(per_task):
                path = f"/items/{1 + (t * per_task + i) % 1000}"
                await app(_scope(path), _receive, send)

        await asyncio.gather(*(one_task(t) for t in range(TASKS)))
        return TASKS * per_task

    return run


async def _middleware_cost(base_cpu_per_request: float) -> None:
    """What tracking adds to a request of one statement, timed around an app that only
    runs the engine's statistics listeners for one statement (best of 5 loops): the
    middleware, the per-request context, and recording the statement in it (untracked,
    the listeners return at once)."""
    timer = StatementTimer()  # the engine's statement listeners, called here directly
    timer.add(StatsRecorder().after, tracked_only=True)
    cursor = SimpleNamespace(rowcount=-1)
    statement = "SELECT bench_tracking_items.id FROM bench_tracking_items WHERE id = $1"

    async def noop(scope: Any, receive: Any, send: Any) -> None:
        context = SimpleNamespace()
        timer._on_before(None, cursor, statement, (), context, False)  # type: ignore[arg-type]
        timer._on_after(None, cursor, statement, (), context, False)  # type: ignore[arg-type]

    async def no_send(message: Any) -> None:
        return None

    tracked = QueryTracking(noop, budget=DEFAULT_QUERY_BUDGET, route_of=lambda scope: None)
    n = scaled(100_000, 1_000)
    scope = _scope("/items/1")
    best: dict[str, float] = {}
    apps: dict[str, Callable[[Any, Any, Any], Awaitable[None]]] = {
        "bare": noop,
        "QueryTracking": tracked,
    }
    for name, app in apps.items():
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n):
                await app(scope, _receive, no_send)
            runs.append((time.perf_counter() - start) / n)
        best[name] = min(runs)
    added = best["QueryTracking"] - best["bare"]
    table = Table(title="tracking per one-statement request, timed in a loop (best of 5)")
    table.add_column("added per request", justify="right")
    table.add_column("baseline request CPU (PostgreSQL run)", justify="right")
    table.add_column("estimated ratio", justify="right")
    table.add_row(
        f"{added * 1e6:.2f} µs",
        f"{base_cpu_per_request * 1e6:.0f} µs",
        f"{1 + added / base_cpu_per_request:.3f}",
    )
    console.print(table)


async def _calls_per_request(apps: dict[str, Any], n: int) -> None:
    """Python function calls per request under cProfile: a count, which the machine's load
    does not move (the timing ratios above move by several percent from run to run)."""
    table = Table(title="Python function calls per request (cProfile, one task)")
    table.add_column("app")
    table.add_column("calls", justify="right")

    async def send(message: Any) -> None:
        return None

    for name, app in apps.items():
        if "2nd app" in name:
            continue
        profile = cProfile.Profile()
        profile.enable()
        for i in range(n):
            await app(_scope(f"/items/{1 + i % 1000}"), _receive, send)
        profile.disable()
        table.add_row(name, f"{pstats.Stats(profile).total_calls / n:.0f}")
    console.print(table)


async def main() -> None:
    per_task = int(os.environ.get("DBKEEL_BENCH_TRACKING_REQUESTS", "2" if ROUNDS == 1 else "40"))
    apps = {
        "FastAPI, tracking off": _fastapi(None),
        "FastAPI, tracking off, 2nd app": _fastapi(None),
        "FastAPI, tracking on": _fastapi(DEFAULT_QUERY_BUDGET),
        "Litestar, tracking off": _litestar(None),
        "Litestar, tracking off, 2nd app": _litestar(None),
        "Litestar, tracking on": _litestar(DEFAULT_QUERY_BUDGET),
    }
    lifespans = [
        app.lifespan() if isinstance(app, Litestar) else app.router.lifespan_context(app)
        for app in apps.values()
    ]
    for lifespan in lifespans:
        await lifespan.__aenter__()
    try:
        db: DatabaseManager = apps["FastAPI, tracking off"].state.dbkeel
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(
                text(
                    "INSERT INTO bench_tracking_items (id, name) "
                    "SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
                )
            )
        base_cpu = 0.0
        for framework in ("FastAPI", "Litestar"):
            cpu = await _compare_paired(
                f"{framework} per-request query tracking, {TASKS} tasks, PostgreSQL",
                {
                    "tracking off": _requests(apps[f"{framework}, tracking off"], per_task),
                    # the same app twice: the spread and bias of the measurement itself
                    "tracking off, 2nd app (A/A)": _requests(
                        apps[f"{framework}, tracking off, 2nd app"], per_task
                    ),
                    "tracking on": _requests(apps[f"{framework}, tracking on"], per_task),
                },
                baseline="tracking off",
                rounds=ROUNDS,
                goal="goal: tracking on / off <= 1.03 (issue 18's insight budget)",
            )
            base_cpu = base_cpu or cpu / (TASKS * per_task)
        await _calls_per_request(apps, scaled(200, 5))
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    finally:
        for lifespan in reversed(lifespans):
            await lifespan.__aexit__(None, None, None)
    await _middleware_cost(base_cpu)
