"""Query insight cost (issue 18), PostgreSQL, 8 concurrent tasks, one run side by side:

* request path with N+1 detection + per-request stats on vs off (goal <= 1.03);
* the same with static sqlcommenter tags (goal <= 1.03);
* a span per statement, OpenTelemetry SDK with a no-op exporter (reported, no goal);
* memory of one request's bookkeeping after 100k statements (bounded: it stays flat).

``main(requests_per_task=...)`` sets the size (the smoke run uses a tiny one).
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from rich.table import Table
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._harness import PG_URL, compare, console, scaled
from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel.insight import InsightContext, track

TASKS = 8


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_insight_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _settings(**insight: object) -> DatabaseSettings:
    return DatabaseSettings(
        database_url=PG_URL,
        environment="production",
        pool_size=TASKS,
        max_overflow=0,
        app_name="dbkeel-bench",
        **insight,
    )


def _requests(db: DatabaseManager, per_task: int, tracked: bool) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        async def one_task(t: int) -> None:
            for i in range(per_task):
                if tracked:
                    with track("GET /items/{id}"):
                        async with db.get_session() as session:
                            await session.get(Item, 1 + (t * per_task + i) % 1000)
                else:
                    async with db.get_session() as session:
                        await session.get(Item, 1 + (t * per_task + i) % 1000)

        await asyncio.gather(*(one_task(t) for t in range(TASKS)))
        return TASKS * per_task

    return run


def _retained(ctx: InsightContext) -> int:
    """Bytes held by one context's bookkeeping: its dicts, keys and figures."""
    size = sys.getsizeof(ctx) + sys.getsizeof(ctx.shapes) + sys.getsizeof(ctx.loads)
    for key, shape in ctx.shapes.items():
        size += sys.getsizeof(key) + sys.getsizeof(shape)
    return size + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in ctx.loads.items())


async def _memory(statements: int) -> None:
    # tracemalloc would slow 100k statements to minutes: the context's own retained size
    # is measured instead (it is all the bookkeeping there is), plus the process's peak RSS.
    settings = DatabaseSettings(database_url="sqlite+aiosqlite://", environment="test")
    async with DatabaseManager(settings) as db, db.engine.connect() as conn:
        table = Table(title="insight bookkeeping memory, one request (SQLite)")
        table.add_column("statements", justify="right")
        table.add_column("context retained", justify="right")
        table.add_column("process peak RSS", justify="right")
        with track("batch job") as q:
            done = 0
            for mark in (statements // 100, statements // 10, statements):
                while done < mark:
                    # distinct texts: the worst case for per-shape figures
                    await conn.execute(text(f"SELECT {done}"))
                    done += 1
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                table.add_row(
                    f"{done:,}", f"{_retained(q) / 1024:,.0f} KiB", f"{rss / 1024:,.0f} MiB"
                )
        table.caption = f"{len(q.shapes)} shapes kept (bounded); {q.statements:,} counted"
        console.print(table)


class _NoOpExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def main(
    requests_per_task: int = scaled(300, 2), memory_statements: int = scaled(100_000, 1_000)
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NoOpExporter()))
    trace.set_tracer_provider(provider)
    off = DatabaseManager(_settings(nplusone="off"))
    on = DatabaseManager(_settings(nplusone="log"))
    tags = DatabaseManager(_settings(nplusone="log", query_comment=True))
    spans = DatabaseManager(_settings(nplusone="off", query_spans=True))
    async with off, on, tags, spans:
        async with off.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(
                text(
                    "INSERT INTO bench_insight_items (id, name) "
                    "SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
                )
            )
        await compare(
            f"query insight on the request path, {TASKS} concurrent tasks, PostgreSQL",
            {
                "insight off": _requests(off, requests_per_task, tracked=False),
                "N+1 detection + stats": _requests(on, requests_per_task, tracked=True),
                "+ static comment tags": _requests(tags, requests_per_task, tracked=True),
                "spans (SDK, no-op exporter)": _requests(spans, requests_per_task, tracked=False),
            },
            baseline="insight off",
            goal="goal: detection+stats and comment tags <= 1.03; spans reported",
        )
        async with off.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    await _memory(memory_statements)
