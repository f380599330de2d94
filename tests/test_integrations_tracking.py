"""Per-request query tracking of the FastAPI and Litestar integrations (issues 16 and 18):
each request in its own context named by its route template, one warning past the query
budget, figures at DEBUG, the route in comment tags, concurrent requests apart, streaming
bodies counted. Run on both frameworks against PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from litestar import Litestar, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream
from prometheus_client import CollectorRegistry
from sqlalchemy import ForeignKey, literal, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from dbkeel import ConfigurationError, DatabaseManager
from dbkeel.insight import current_context, statement_metrics
from dbkeel.integrations.fastapi import QueryBudget, install
from dbkeel.integrations.litestar import DbkeelConfig, DbkeelPlugin
from dbkeel.integrations.starlette import install as starlette_install
from dbkeel.integrations.tracking import DEFAULT_QUERY_BUDGET, _shape_line
from tests import conftest
from tests.conftest import make_settings
from tests.web_apps import FRAMEWORKS, manager_of, running

LOGGER = "dbkeel.integrations.tracking"
SECRET = "s3cret-value"  # a bound parameter: never in a log line


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "budget_parents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    children: Mapped[list[Child]] = relationship(order_by="Child.id")


class Child(Base):
    __tablename__ = "budget_children"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(ForeignKey("budget_parents.id"))


# -- the endpoints, framework-free ------------------------------------------------------


async def run_selects(db: DatabaseManager, n: int) -> dict[str, Any]:
    """*n* statements; the figures the endpoint itself sees, before it returns."""
    async with db.get_session() as session:
        for _ in range(n):
            await session.execute(select(literal(SECRET)))
            await asyncio.sleep(0)  # let concurrent requests interleave their statements
    ctx = current_context()
    assert ctx is not None
    return {"statements": ctx.statements, "operation": ctx.operation}


async def tagged(db: DatabaseManager) -> dict[str, Any]:
    async with db.get_session() as session:
        await session.execute(select(literal(1)))
    ctx = current_context()
    return {
        "operation": None if ctx is None else ctx.operation,
        "shapes": [] if ctx is None else list(ctx.shapes),
    }


async def per_row_loads(db: DatabaseManager) -> dict[str, Any]:
    """Two lazy loads of Parent.children in each of two sessions: 4 in the request."""
    loaded = 0
    for _ in range(2):
        async with db.get_session() as session:
            for parent in (await session.scalars(select(Parent).order_by(Parent.id))).all():
                loaded += len(await parent.awaitable_attrs.children)
    return {"children": loaded}


async def stream_rows(db: DatabaseManager, n: int) -> AsyncIterator[bytes]:
    # the statements run while the body is sent, after the response has started
    async with db.get_session() as session:
        for i in range(n):
            value = await session.scalar(select(literal(i)))
            yield f"{value}\n".encode()


# -- the apps ---------------------------------------------------------------------------


def fastapi_app(db: DatabaseManager, budget: QueryBudget | None) -> FastAPI:
    app = FastAPI()
    install(app, db, query_budget=budget)

    @app.get("/loop/{n}")
    async def loop(n: int) -> dict[str, Any]:
        return await run_selects(db, n)

    @app.get("/tagged")
    async def tag() -> dict[str, Any]:
        return await tagged(db)

    @app.get("/per-row")
    async def per_row() -> dict[str, Any]:
        return await per_row_loads(db)

    @app.get("/stream/{n}")
    async def stream(n: int) -> StreamingResponse:
        return StreamingResponse(stream_rows(db, n), media_type="text/plain")

    return app


@get("/loop/{n:int}")
async def ls_loop(n: FromPath[int], db: NamedDependency[DatabaseManager]) -> dict[str, Any]:
    return await run_selects(db, n)


@get("/tagged")
async def ls_tagged(db: NamedDependency[DatabaseManager]) -> dict[str, Any]:
    return await tagged(db)


@get("/per-row")
async def ls_per_row(db: NamedDependency[DatabaseManager]) -> dict[str, Any]:
    return await per_row_loads(db)


@get("/stream/{n:int}")
async def ls_stream(n: FromPath[int], db: NamedDependency[DatabaseManager]) -> Stream:
    return Stream(stream_rows(db, n), media_type="text/plain")


def litestar_app(db: DatabaseManager, budget: QueryBudget | None) -> Litestar:
    config = DbkeelConfig(query_budget=budget)
    # logging_config=None: Litestar's own config would take the root logger from caplog
    return Litestar(
        [ls_loop, ls_tagged, ls_per_row, ls_stream],
        plugins=[DbkeelPlugin(db, config)],
        logging_config=None,
    )


def build(
    framework: str, url: str, budget: QueryBudget | None = DEFAULT_QUERY_BUDGET, **settings: Any
) -> Any:
    db = DatabaseManager(make_settings(url, **settings))
    return (fastapi_app if framework == "fastapi" else litestar_app)(db, budget)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_url(test_databases: conftest.TestDatabases) -> str:
    return test_databases.url("sqlite")


# -- budget -----------------------------------------------------------------------------


async def test_a_request_over_budget_logs_one_warning_with_route_and_figures(
    framework: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    app = build(framework, db_url, QueryBudget(statements=10))
    async with running(app) as client:
        under = await client.get("/loop/3")
        assert under.status_code == 200, under.text
        assert records(caplog, logging.WARNING) == []
        [quiet] = records(caplog, logging.DEBUG)  # the figures of the request under budget
        assert quiet.getMessage().startswith("Queries of GET /loop/{n}: ")
        assert f"{under.json()['statements']} statement" in quiet.getMessage()

        over = await client.get("/loop/20")
        assert over.status_code == 200, over.text
    [warning] = records(caplog, logging.WARNING)
    message = warning.getMessage()
    stats = warning.dbkeel_query_stats
    assert stats["operation"] == "GET /loop/{n}"
    assert stats["statements"] == over.json()["statements"] >= 20
    assert message.startswith("Query budget exceeded by GET /loop/{n}: ")
    assert f"{stats['statements']} statements (budget 10)" in message
    assert f"slowest {stats['max_s'] * 1000:.1f} ms" in message
    # the shape that ran 20 times leads the top shapes, without its parameter's value
    assert "20 x " in message and "SELECT" in message
    assert SECRET not in message
    assert len(records(caplog, logging.DEBUG)) == 1  # over budget: the warning only


async def test_a_time_budget_warns_and_none_tracks_without_warning(
    framework: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with running(build(framework, db_url, QueryBudget(None, total_ms=0))) as client:
        assert (await client.get("/loop/1")).status_code == 200
    [warning] = records(caplog, logging.WARNING)
    assert "ms (budget 0 ms) in the database" in warning.getMessage()
    assert "statements (budget" not in warning.getMessage()  # no statement budget set

    caplog.clear()
    async with running(build(framework, db_url, QueryBudget(statements=None))) as client:
        counted = await client.get("/loop/150")
    assert counted.json()["statements"] >= 150  # tracked ...
    assert records(caplog, logging.WARNING) == []  # ... never warned


async def test_a_route_can_have_its_own_budget(
    framework: str, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    budget = QueryBudget(
        statements=1,
        routes={"GET /loop/{n}": QueryBudget(statements=50), "GET /stream/{n}": None},
    )
    async with running(build(framework, sqlite_url, budget)) as client:
        assert (await client.get("/loop/20")).status_code == 200  # within its own 50
        assert (await client.get("/stream/20")).status_code == 200  # never warns
        assert records(caplog, logging.WARNING) == []
        assert (await client.get("/loop/60")).status_code == 200
        assert (await client.get("/tagged")).status_code == 200  # BEGIN and a SELECT
    warnings = [r.getMessage() for r in records(caplog, logging.WARNING)]
    assert len(warnings) == 2
    assert "GET /loop/{n}: 61 statements (budget 50)" in warnings[0]
    assert "QueryBudget(routes={'GET /loop/{n}': QueryBudget(statements=...)})" in warnings[0]
    assert warnings[1].startswith("Query budget exceeded by GET /tagged: 2 statements (budget 1)")


async def test_no_budget_means_no_per_request_context(framework: str, sqlite_url: str) -> None:
    async with running(build(framework, sqlite_url, None)) as client:
        assert (await client.get("/tagged")).json()["operation"] is None


# -- the route as operation name ----------------------------------------------------------


async def test_the_route_template_names_the_context_and_the_comment_tag(
    framework: str, db_url: str
) -> None:
    async with running(build(framework, db_url, query_comment=True)) as client:
        body = (await client.get("/tagged")).json()
    assert body["operation"] == "GET /tagged"
    # sqlcommenter: route='GET%20%2Ftagged' (the % doubled on format-paramstyle drivers)
    tagged_shapes = [s for s in body["shapes"] if "route=" in s]
    assert tagged_shapes and all("%2Ftagged'" in s.replace("%%", "%") for s in tagged_shapes)


async def test_statement_metrics_are_labelled_with_the_route(
    framework: str, sqlite_url: str
) -> None:
    registry = CollectorRegistry()
    app = build(framework, sqlite_url)
    async with running(app) as client:
        statement_metrics(manager_of(app)).register_prometheus(registry)
        assert (await client.get("/loop/4")).status_code == 200
    labels = {"app": "dbkeel-tests", "kind": "SELECT", "operation": "GET /loop/{n}"}
    assert registry.get_sample_value("dbkeel_statements_total", labels) == 4


async def test_a_mounted_starlette_route_is_named_by_its_full_template(sqlite_url: str) -> None:
    async def endpoint(request: Any) -> JSONResponse:
        ctx = current_context()
        return JSONResponse({"operation": None if ctx is None else ctx.operation})

    inner = Starlette(routes=[Route("/items/{item_id:int}", endpoint)])
    app = Starlette(
        routes=[
            Route("/top/{name}", endpoint),
            Mount("/v1", routes=[Mount("/shop/{shop}", routes=[Route("/x/{x}", endpoint)])]),
            Mount("/sub", app=inner),
            Mount("/asgi", app=endpoint_app),
        ]
    )
    starlette_install(app, DatabaseManager(make_settings(sqlite_url)))
    async with running(app) as client:
        names = [
            (await client.get(path)).json()["operation"]
            for path in ("/top/ada", "/v1/shop/42/x/7", "/sub/items/5", "/asgi/anything/9")
        ]
    assert names == [
        "GET /top/{name}",
        "GET /v1/shop/{shop}/x/{x}",
        "GET /sub/items/{item_id:int}",
        "GET /asgi",
    ]


async def endpoint_app(scope: Any, receive: Any, send: Any) -> None:
    ctx = current_context()
    await JSONResponse({"operation": None if ctx is None else ctx.operation})(scope, receive, send)


async def test_a_fastapi_sub_application_keeps_its_mount_prefix(sqlite_url: str) -> None:
    sub = FastAPI()

    @sub.get("/orders/{order_id}")
    async def order(order_id: int, request: Request) -> dict[str, Any]:
        ctx = current_context()
        return {"operation": None if ctx is None else ctx.operation}

    app = FastAPI()
    app.mount("/api", sub)
    install(app, DatabaseManager(make_settings(sqlite_url)))
    async with running(app) as client:
        assert (await client.get("/api/orders/3")).json() == {
            "operation": "GET /api/orders/{order_id}"
        }


async def test_nplusone_detection_counts_per_request(
    framework: str,
    db: DatabaseManager,
    db_url: str,
    create_tables: conftest.CreateTables,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_tables(db, Base.metadata)
    async with db.get_session() as session:
        session.add_all([Parent(id=1), Parent(id=2)])
        await session.flush()
        session.add_all([Child(id=1, parent_id=1), Child(id=2, parent_id=2)])
    caplog.set_level(logging.WARNING, logger="dbkeel.insight")
    settings = {"nplusone": "log", "nplusone_threshold": 3}
    # Untracked, each session is its own context: 2 loads each, below the threshold.
    async with running(build(framework, db_url, None, **settings)) as client:
        assert (await client.get("/per-row")).json() == {"children": 4}
    assert [r for r in caplog.records if "N+1" in r.getMessage()] == []
    # Tracked, the request is the context: 4 loads of Parent.children in it.
    async with running(build(framework, db_url, **settings)) as client:
        assert (await client.get("/per-row")).json() == {"children": 4}
    [report] = [r.getMessage() for r in caplog.records if "N+1" in r.getMessage()]
    assert "Parent.children" in report


# -- concurrency and streaming --------------------------------------------------------------


async def test_concurrent_requests_keep_separate_figures(
    framework: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sizes = [1, 2, 3, 5, 8, 13]
    async with running(build(framework, db_url, QueryBudget(statements=None))) as client:
        answers = await asyncio.gather(*(client.get(f"/loop/{n}") for n in sizes))
    seen = [a.json()["statements"] for a in answers]
    # each request counted its own statements (a shared context would show sums)
    overhead = seen[0] - sizes[0]
    assert seen == [n + overhead for n in sizes]
    logged = sorted(r.dbkeel_query_stats["statements"] for r in records(caplog, logging.DEBUG))
    assert logged == sorted(seen)


async def test_a_streaming_body_is_counted_and_sent_whole(
    framework: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    budget = QueryBudget(statements=5, server_timing=True)
    async with running(build(framework, db_url, budget)) as client:
        response = await client.get("/stream/12")
    assert response.status_code == 200
    assert response.text == "".join(f"{i}\n" for i in range(12))
    # the header holds what ran before the response started: nothing yet
    assert response.headers["server-timing"] == 'db;dur=0.0;desc="0 queries"'
    [warning] = records(caplog, logging.WARNING)
    assert warning.dbkeel_query_stats["operation"] == "GET /stream/{n}"
    assert warning.dbkeel_query_stats["statements"] >= 12


async def test_server_timing_header_is_opt_in(framework: str, sqlite_url: str) -> None:
    async with running(build(framework, sqlite_url)) as client:
        assert "server-timing" not in (await client.get("/loop/2")).headers
    timed = build(framework, sqlite_url, QueryBudget(server_timing=True))
    async with running(timed) as client:
        response = await client.get("/loop/2")
    statements = response.json()["statements"]
    dur, desc = response.headers["server-timing"].removeprefix("db;dur=").split(";desc=")
    assert float(dur) >= 0 and desc == f'"{statements} queries"'


# -- values --------------------------------------------------------------------------------


def test_budget_values_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"statements=-1.*>= 0, or None"):
        QueryBudget(statements=-1)
    with pytest.raises(ConfigurationError, match=r"total_ms=-5.*>= 0 milliseconds"):
        QueryBudget(total_ms=-5)
    with pytest.raises(ConfigurationError, match=r"routes=\{'GET /x': 500\}.*QueryBudget\("):
        QueryBudget(routes={"GET /x": 500})  # type: ignore[dict-item]
    assert QueryBudget(statements=100, total_ms=None) == DEFAULT_QUERY_BUDGET


def test_a_shape_in_the_warning_has_no_literals_and_no_comment_tag() -> None:
    shape = (
        "SELECT users.id FROM users\n   WHERE users.email = 'ada@example.com' AND users.age > 41"
        " AND users.id = $1 /*application='app',route='GET%20%2Fusers'*/"
    )
    assert _shape_line(shape, 3, 0.0042) == (
        "3 x 4.2 ms `SELECT users.id FROM users WHERE users.email = ? AND users.age > ? "
        "AND users.id = $1`"
    )
    assert _shape_line("SELECT " + "x, " * 100, 1, 0).endswith("...`")
