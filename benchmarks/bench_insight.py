"""Query insight cost (issue 18), PostgreSQL, 8 concurrent tasks, one run side by side:

* request path with N+1 detection + per-request stats on vs off (goal <= 1.03);
* the same with static sqlcommenter tags (goal <= 1.03);
* the same with statement metrics (Prometheus collector registered; reported);
* a span per statement, OpenTelemetry SDK with a no-op exporter (reported, no goal);
* the traceparent tag under a request span, every request sampled and 10% sampled, against
  static tags under the same request span (reported: each sampled request's statements
  are prepared anew);
* memory of one request's bookkeeping after 100k statements (bounded: it stays flat).

The machine is shared and noisy: many short interleaved rounds, and besides the harness's
ratio of medians, the median of per-round ratios (each candidate against the baseline of
the same round) with its interquartile range.

``main(requests_per_task=..., rounds=...)`` sets the size (the smoke run uses a tiny one).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry
from rich.table import Table
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._harness import PG_URL, Candidate, compare, console, scaled
from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel._timer import StatementTimer
from dbkeel.insight import InsightContext, NPlusOneDetector, statement_metrics, track
from dbkeel.insight.comments import CommentTagger
from dbkeel.insight.stats import StatsRecorder

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
        # the pool monitor costs every candidate the same; off, the ratios are insight's own
        monitoring=False,
        **insight,
    )


def _requests(
    db: DatabaseManager, per_task: int, tracked: bool, tracer: trace.Tracer | None = None
) -> Callable[[], Awaitable[int]]:
    async def request(key: int) -> None:
        if tracked:
            with track("GET /items/{id}"):
                async with db.get_session() as session:
                    await session.get(Item, key)
        else:
            async with db.get_session() as session:
                await session.get(Item, key)

    async def run() -> int:
        async def one_task(t: int) -> None:
            for i in range(per_task):
                key = 1 + (t * per_task + i) % 1000
                if tracer is None:
                    await request(key)
                else:
                    with tracer.start_as_current_span("GET /items/{id}"):
                        await request(key)

        await asyncio.gather(*(one_task(t) for t in range(TASKS)))
        return TASKS * per_task

    return run


Times = dict[str, list[tuple[float, float]]]


def _timed(candidates: dict[str, Candidate]) -> tuple[dict[str, Candidate], Times]:
    """*candidates* wrapped to keep each round's (wall, process CPU) time."""
    times: Times = {name: [] for name in candidates}

    def wrap(name: str, fn: Candidate) -> Candidate:
        async def run() -> int:
            wall, cpu = time.perf_counter(), time.process_time()
            ops = await fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            return ops

        return run

    return {name: wrap(name, fn) for name, fn in candidates.items()}, times


def _paired(title: str, times: Times, baseline: str, warmup: int) -> None:
    """Median and interquartile range of per-round ratios against *baseline*, of wall time
    and of this process's CPU time (what insight adds is CPU in this process; the CPU
    ratio is far less disturbed by other jobs on a shared machine than the wall one)."""
    table = Table(title=f"{title}: per-round ratios vs {baseline}")
    table.add_column("candidate")
    table.add_column("wall: median (IQR)", justify="right")
    table.add_column("process CPU: median (IQR)", justify="right")
    table.add_column("rounds", justify="right")
    base = times[baseline][warmup:]
    for name, series in times.items():
        if name == baseline:
            continue
        cells = []
        for i in (0, 1):
            ratios = [t[i] / b[i] for t, b in zip(series[warmup:], base, strict=True)]
            cell = f"{statistics.median(ratios):.3f}"
            if len(ratios) >= 4:
                q1, _, q3 = statistics.quantiles(ratios, n=4)
                cell += f" ({q1:.3f}-{q3:.3f})"
            cells.append(cell)
        table.add_row(name, *cells, str(len(series) - warmup))
    console.print(table)


async def _compare_paired(
    title: str, candidates: dict[str, Candidate], *, baseline: str, rounds: int, goal: str
) -> float:
    """Run the comparison; return the baseline's median process CPU seconds per round."""
    wrapped, times = _timed(candidates)
    await compare(title, wrapped, baseline=baseline, rounds=rounds, warmup=1, goal=goal)
    warmup = len(times[baseline]) - min(rounds, len(times[baseline]))
    _paired(title, times, baseline, warmup)
    return statistics.median(cpu for _, cpu in times[baseline][warmup:])


def _hook_cost(baseline_cpu_per_request: float) -> None:
    """CPU time of insight's own hooks per request, timed in a tight loop (steady, unlike
    the end-to-end runs), against the baseline's CPU time per request measured above.

    One request of the benchmark = one track() block, one ORM execution (the N+1
    detector's listener) and one statement (the stats listeners, the comment tagger).
    The objects handed to the hooks stand in for SQLAlchemy's; the hooks are the real ones.
    """
    detector = NPlusOneDetector("log", 10)
    timer = StatementTimer()  # the engine's listeners, called here directly
    timer.add(StatsRecorder().after, tracked_only=True)
    tagger = CommentTagger("dbkeel-bench", "numeric_dollar")
    # a top-level SELECT: no loader path (what on_execute reads for a relationship load)
    state = SimpleNamespace(is_select=True, loader_strategy_path=None, session=None)
    cursor = SimpleNamespace(rowcount=-1)
    statement = "SELECT bench_insight_items.id FROM bench_insight_items WHERE id = $1"

    def request_hooks() -> None:
        with track("GET /items/{id}"):
            detector.on_execute(state)  # type: ignore[arg-type]
            context = SimpleNamespace()
            timer._on_before(None, cursor, statement, (), context, False)  # type: ignore[arg-type]
            tagged, _ = tagger.before(None, cursor, statement, (), context, False)  # type: ignore[arg-type]
            timer._on_after(None, cursor, tagged, (), context, False)  # type: ignore[arg-type]

    def baseline_hooks() -> None:  # what "insight off" runs: the stats listeners' early exit
        context = SimpleNamespace()
        timer._on_before(None, cursor, statement, (), context, False)  # type: ignore[arg-type]
        timer._on_after(None, cursor, statement, (), context, False)  # type: ignore[arg-type]

    n = scaled(200_000, 1_000)
    per_call = {}
    for name, fn in (("insight on", request_hooks), ("insight off", baseline_hooks)):
        per_call[name] = min(timeit.repeat(fn, number=n, repeat=5)) / n
    added = per_call["insight on"] - per_call["insight off"]
    table = Table(title="insight hooks per request (timeit, best of 5)")
    table.add_column("detection + stats + static tags", justify="right")
    table.add_column("baseline request CPU (PostgreSQL run)", justify="right")
    table.add_column("estimated ratio", justify="right")
    table.add_row(
        f"{added * 1e6:.2f} µs",
        f"{baseline_cpu_per_request * 1e6:.0f} µs",
        f"{1 + added / baseline_cpu_per_request:.3f}",
    )
    console.print(table)


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


async def _prepared_per_request(db: DatabaseManager, tracer: trace.Tracer) -> tuple[int, int]:
    """(prepared statements, executions) on one connection for 2 sampled requests of 3
    identical statements each, as PostgreSQL counts them (pg_prepared_statements)."""
    probe = text("SELECT CAST(:v AS int) + 1 AS bench_insight_probe")
    async with db.engine.connect() as conn:
        for _ in range(2):
            with tracer.start_as_current_span("GET /probe"):
                for i in range(3):
                    await conn.execute(probe, {"v": i})
        rows = (
            await conn.execute(
                text(
                    "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
                    "WHERE strpos(statement, CAST(:marker AS text)) > 0"
                ),
                {"marker": "bench_insight_probe"},
            )
        ).all()
    return len(rows), sum(row[0] for row in rows)


async def _upstream(
    rounds: int, per_task: int, tracer: trace.Tracer, dbkeel_spans: DatabaseManager
) -> None:
    """opentelemetry-instrumentation-sqlalchemy beside dbkeel's spans and traceparent.

    It declares SQLAlchemy < 2.1 and instruments nothing on 2.1 unless forced with
    skip_dep_check=True (done here, to measure it). It also wraps Engine.connect for every
    engine (a "connect" span per checkout), so it runs last and alone on its engine.
    """
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    dbkeel_traced = DatabaseManager(
        _settings(
            nplusone="off", query_spans=True, query_comment=True, query_comment_traceparent=True
        )
    )
    upstream = DatabaseManager(_settings(nplusone="off"))
    async with dbkeel_traced, upstream:
        instrumentor = SQLAlchemyInstrumentor()
        instrumentor.instrument(
            engine=upstream.engine.sync_engine, enable_commenter=True, skip_dep_check=True
        )
        try:
            await _compare_paired(
                f"statement spans under a sampled request span, {TASKS} tasks, PostgreSQL",
                {
                    "dbkeel spans": _requests(dbkeel_spans, per_task, False, tracer),
                    "dbkeel spans + traceparent tag": _requests(
                        dbkeel_traced, per_task, False, tracer
                    ),
                    "upstream spans + commenter (forced on 2.1)": _requests(
                        upstream, per_task, False, tracer
                    ),
                },
                baseline="dbkeel spans",
                rounds=rounds,
                goal="reported; upstream also opens a 'connect' span per checkout",
            )
            table = Table(title="2 sampled requests x 3 identical statements, one connection")
            table.add_column("")
            table.add_column("prepared statements", justify="right")
            table.add_column("executions", justify="right")
            for name, db in (("dbkeel traceparent", dbkeel_traced), ("upstream", upstream)):
                prepared, executions = await _prepared_per_request(db, tracer)
                table.add_row(name, str(prepared), str(executions))
            console.print(table)
        finally:
            instrumentor.uninstrument()


async def main(
    requests_per_task: int = scaled(40, 2),
    memory_statements: int = scaled(100_000, 1_000),
    rounds: int = scaled(41, 1),
) -> None:
    exporter = BatchSpanProcessor(_NoOpExporter())
    provider = TracerProvider()
    provider.add_span_processor(exporter)
    trace.set_tracer_provider(provider)
    sampled = provider.get_tracer("bench")
    tenth = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    tenth.add_span_processor(BatchSpanProcessor(_NoOpExporter()))
    one_in_ten = tenth.get_tracer("bench")
    off = DatabaseManager(_settings(nplusone="off"))
    on = DatabaseManager(_settings(nplusone="log"))
    tags = DatabaseManager(_settings(nplusone="log", query_comment=True))
    measured = DatabaseManager(_settings(nplusone="log"))
    spans = DatabaseManager(_settings(nplusone="off", query_spans=True))
    traced = DatabaseManager(
        _settings(nplusone="log", query_comment=True, query_comment_traceparent=True)
    )
    async with off, on, tags, measured, spans, traced:
        statement_metrics(measured).register_prometheus(CollectorRegistry())
        async with off.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(
                text(
                    "INSERT INTO bench_insight_items (id, name) "
                    "SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
                )
            )
        n = requests_per_task
        base_cpu = await _compare_paired(
            f"query insight on the request path, {TASKS} concurrent tasks, PostgreSQL",
            {
                "insight off": _requests(off, n, tracked=False),
                "N+1 detection + stats": _requests(on, n, tracked=True),
                "+ static comment tags": _requests(tags, n, tracked=True),
                "+ statement metrics": _requests(measured, n, tracked=True),
                "spans (SDK, no-op exporter)": _requests(spans, n, tracked=False),
            },
            baseline="insight off",
            rounds=rounds,
            goal="goal: detection+stats and comment tags <= 1.03; metrics and spans reported",
        )
        await _compare_paired(
            f"traceparent tag under a request span, {TASKS} concurrent tasks, PostgreSQL",
            {
                "static tags": _requests(tags, n, tracked=True, tracer=sampled),
                "+ traceparent, all sampled": _requests(traced, n, tracked=True, tracer=sampled),
                "+ traceparent, 10% sampled": _requests(traced, n, tracked=True, tracer=one_in_ten),
            },
            baseline="static tags",
            rounds=rounds,
            goal="reported: each sampled request prepares its statement anew",
        )
        await _upstream(rounds, n, sampled, spans)
        async with off.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    provider.shutdown()
    tenth.shutdown()
    _hook_cost(base_cpu / (TASKS * requests_per_task))
    await _memory(memory_statements)
