"""Instruction counts (valgrind callgrind) of the client side of goals of issues 17 and 18.

Wall-clock ratios on a shared 2-core machine swing by several percent from run to run;
the instructions the client process executes for a fixed amount of work do not (within
~0.5% for one task; with 8 concurrent tasks the event loop's batching varies more). Each
side runs in its own process under callgrind, warmed up, and only the measured work is
counted (``callgrind_control -i on/off``). The server's work is not counted: these
figures say where the client's time goes, the benchmarks say what a user sees.

    python -m benchmarks.instructions                 # every case
    python -m benchmarks.instructions request_path    # one case

Cases: ``request_path`` (600 requests of bench_request_path's mix, one task),
``statement_hooks`` (the same 600 requests with every per-statement feature off vs on:
``track()`` stats, N+1 detection, comment tags, statement metrics, spans through the
OpenTelemetry SDK with a no-op exporter, and the slow query log),
``decrypt`` (3 x 10,000 values, dbkeel EncryptedType vs raw AES-GCM), ``bulk_insert``
(20,000 rows of bench_bulk's model, dbkeel insert path vs plain ``insert(Model)``),
``monitoring`` (bench_monitoring's 1000 concurrent requests on a 20 + 10 pool, with and
without ``PoolMonitor``; concurrency makes this one vary by about a percent),
``insight`` and ``insight_tags`` (600 of bench_insight's requests, one task: N+1
detection and per-request stats, then also static sqlcommenter tags, against insight
off; issue 18's goal for both is <= 1.03), ``app`` (400 requests of bench_integrations'
mix, one task, straight into the FastAPI notes app: dbkeel ``install()`` vs the same app
with hand-made dependencies; the server's side of issue 16's load benchmark, without
uvicorn and the HTTP client), ``testing`` (200 of bench_testing's simulated tests: no
isolation vs dbkeel.testing's sandbox, whose round trips equal the work's alone, so
this is the client's share of issue 15's per-test isolation cost).
Needs valgrind.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import _harness

CASES: dict[str, tuple[str, str]] = {
    "request_path": ("hand-written SQLAlchemy", "dbkeel get_session"),
    "decrypt": ("raw AESGCM", "dbkeel EncryptedType"),
    "bulk_insert": ("plain insert(Model) list", "dbkeel insert"),
    "statement_hooks": ("every statement feature off", "every statement feature on"),
    "monitoring": ("no monitoring", "PoolMonitor"),
    "insight": ("insight off", "N+1 detection + stats"),
    "insight_tags": ("insight off", "N+1 detection + stats + static comment tags"),
    "app": ("notes app with hand-made dependencies", "notes app with dbkeel install()"),
    "testing": ("no isolation", "dbkeel sandbox"),
}


def _instrument(state: str) -> None:
    # Blocking on purpose: nothing else may run between the switch and the work.
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True)


def _count(work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def counted() -> None:
        await work()  # warm-up: caches, prepared statements, pool
        # The objects made so far (modules, caches, the warm-up's leftovers) leave the
        # collector's view: whether one full collection over them happens to fall in the
        # counted window (tens of millions of instructions) depended on unrelated
        # allocations and moved a side by up to 3% between versions of the same path.
        # Collections of what the counted work allocates are still counted.
        gc.collect()
        gc.freeze()
        _instrument("on")
        await work()
        _instrument("off")

    return counted


async def _request_path(side: int) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from benchmarks.bench_request_path import Base, Item, fill_items
    from dbkeel import DatabaseManager, DatabaseSettings

    settings = DatabaseSettings(
        database_url=_harness.PG_URL, environment="production", pool_size=1, max_overflow=0
    )
    async with DatabaseManager(settings) as db:
        await fill_items(db)
        plain = async_sessionmaker(db.engine, expire_on_commit=False, class_=AsyncSession)
        next_id = iter(range(10_000, 10_000_000))

        async def work() -> None:
            for i in range(300):
                if side == 0:
                    async with plain() as session, session.begin():
                        await session.get(Item, 1 + i % 1000)
                    async with plain() as session, session.begin():
                        session.add(Item(id=next(next_id), name="new"))
                else:
                    async with db.get_session() as session:
                        await session.get(Item, 1 + i % 1000)
                    async with db.get_session() as session:
                        session.add(Item(id=next(next_id), name="new"))

        await _count(work)()
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


async def _statement_hooks(side: int) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from prometheus_client import CollectorRegistry

    from benchmarks.bench_insight import _NoOpExporter
    from benchmarks.bench_request_path import Base, Item, fill_items
    from dbkeel import DatabaseManager, DatabaseSettings
    from dbkeel.insight import statement_metrics, track

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_NoOpExporter()))  # no thread
    trace.set_tracer_provider(provider)
    on = side == 1
    settings = DatabaseSettings(
        database_url=_harness.PG_URL,
        environment="production",
        pool_size=1,
        max_overflow=0,
        monitoring=on,
        nplusone="log" if on else "off",
        query_comment=on,
        query_spans=on,
    )
    async with DatabaseManager(settings) as db:
        if on:
            statement_metrics(db).register_prometheus(CollectorRegistry())
        await fill_items(db)
        next_id = iter(range(10_000, 10_000_000))

        async def work() -> None:
            for i in range(300):
                with track("GET /items/{id}" if on else None):
                    async with db.get_session() as session:
                        await session.get(Item, 1 + i % 1000)
                with track("POST /items" if on else None):
                    async with db.get_session() as session:
                        session.add(Item(id=next(next_id), name="new"))

        await _count(work)()
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    provider.shutdown()


async def _decrypt(side: int) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy.dialects import postgresql

    from benchmarks.bench_encryption import VALUES, _types
    from dbkeel.encryption import KeyRing, generate_key, registry

    key_id, key = generate_key("bench")
    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    setattr(dialect, registry.RING_ATTRIBUTE, KeyRing.parse(f"{key_id}:{key}"))
    raw = AESGCM(os.urandom(32))
    ad = b"users.email"

    def raw_decrypt(b: bytes, dialect: object) -> str:
        return raw.decrypt(b[:12], b[12:], ad).decode()

    type_: Any = _types()[1]["dbkeel EncryptedType"].c.secret.type
    if side == 0:
        nonces = [os.urandom(12) for _ in VALUES]
        sealed = [n + raw.encrypt(n, v.encode(), ad) for n, v in zip(nonces, VALUES, strict=True)]
        decrypt: Callable[[bytes, Any], str] = raw_decrypt
    else:
        sealed = [type_.process_bind_param(v, dialect) for v in VALUES]
        decrypt = type_.process_result_value

    async def work() -> None:
        for _ in range(3):
            for s in sealed:
                decrypt(s, dialect)

    await _count(work)()


async def _bulk_insert(side: int) -> None:
    from sqlalchemy import insert

    from benchmarks.bench_bulk import Base, Event, _manager, rows
    from dbkeel import bulk_insert

    async with _manager() as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)

        async def work() -> None:
            async with db.get_session() as session:
                if side == 0:
                    await session.execute(insert(Event), list(rows(20_000)))
                else:
                    await bulk_insert(session, Event, rows(20_000), method="insert")

        await _count(work)()
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


async def _monitoring(side: int) -> None:
    from sqlalchemy import text

    from benchmarks.bench_monitoring import MAX_OVERFLOW, POOL_SIZE
    from dbkeel import DatabaseManager, DatabaseSettings, PoolMonitor

    settings = DatabaseSettings(
        database_url=_harness.PG_URL, environment="production", pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW, app_name="dbkeel-bench", monitoring=False,
    )  # fmt: skip
    async with DatabaseManager(settings) as db:
        if side == 1:
            PoolMonitor.setup_listeners(db.engine)

        async def request() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))

        async def work() -> None:  # bench_monitoring's load: 1000 requests at once
            await asyncio.gather(*(request() for _ in range(1000)))

        await _count(work)()
        PoolMonitor.remove_listeners(db.engine)


async def _insight(side: int, **on: object) -> None:
    from benchmarks.bench_insight import Base, Item
    from dbkeel import DatabaseManager, DatabaseSettings
    from dbkeel.insight import track

    insight = on if side == 1 else {"nplusone": "off"}
    settings = DatabaseSettings(
        database_url=_harness.PG_URL, environment="production", pool_size=1, max_overflow=0,
        app_name="dbkeel-bench", monitoring=False, **insight,
    )  # fmt: skip
    async with DatabaseManager(settings) as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(Item.__table__.insert(), [{"id": 1, "name": "one"}])

        async def work() -> None:  # bench_insight's request: track() + one session.get
            for _ in range(600):
                if side == 1:
                    with track("GET /items/{id}"):
                        async with db.get_session() as session:
                            await session.get(Item, 1)
                else:
                    async with db.get_session() as session:
                        await session.get(Item, 1)

        await _count(work)()
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


async def _asgi(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request straight into *app* (no HTTP client, no server): status and body."""
    headers = [(b"host", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("bench", 80),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the request is whole: no disconnect before the end
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _app(side: int) -> None:
    import importlib
    import json
    import secrets

    os.environ.update(
        DATABASE_URL=_harness.PG_URL, ENVIRONMENT="production", DATABASE_POOL_SIZE="10",
        DATABASE_MAX_OVERFLOW="0", APP_NAME="dbkeel-bench",
    )  # fmt: skip  # bench_integrations' server environment
    module = "examples.notes.app" if side == 1 else "benchmarks._notes_handmade"
    app = importlib.import_module(module).app

    def new_note() -> bytes:
        return json.dumps({"slug": secrets.token_hex(8), "body": "b"}).encode()

    async with app.router.lifespan_context(app):
        ids = [json.loads((await _asgi(app, "POST", "/notes", new_note()))[1])["id"]]

        async def work() -> None:  # bench_integrations' mix: 4 GETs by key, 1 POST
            for i in range(400):
                if i % 5 == 4:
                    status, body = await _asgi(app, "POST", "/notes", new_note())
                else:
                    status, body = await _asgi(app, "GET", f"/notes/{ids[0]}")
                assert status < 400, body

        await _count(work)()


async def _testing(side: int) -> None:
    from sqlalchemy.engine import make_url

    from benchmarks.bench_testing import Base, one_test
    from dbkeel import DatabaseSettings
    from dbkeel.testing import TestDatabase

    target = make_url(_harness.PG_URL).set(database="dkbench_instr_testing_test")
    url = target.render_as_string(hide_password=False)
    settings = DatabaseSettings(database_url=url, nplusone="off")
    database = await asyncio.to_thread(
        TestDatabase.provision, url=url, metadata=Base.metadata, settings=settings
    )
    base = await database.manager()

    async def work() -> None:
        for _ in range(200):
            if side == 0:
                await one_test(base)
            else:
                async with database.isolated(base) as db:
                    await one_test(db)

    try:
        await _count(work)()
    finally:
        await database.release(base)
        await base.close()
        await asyncio.to_thread(database.drop)


RUNNERS = {
    "request_path": _request_path,
    "statement_hooks": _statement_hooks,
    "decrypt": _decrypt,
    "bulk_insert": _bulk_insert,
    "monitoring": _monitoring,
    "insight": lambda side: _insight(side, nplusone="log"),
    "insight_tags": lambda side: _insight(side, nplusone="log", query_comment=True),
    "app": _app,
    "testing": _testing,
}


def _measure(case: str, side: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.instructions", "--side", case, str(side)],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    if out.returncode != 0:
        tail = "\n".join(line for line in out.stderr.splitlines() if not line.startswith("=="))
        raise SystemExit(f"{case} side {side} failed under callgrind:\n{tail[-3000:]}")
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None or int(found.group(1)) == 0:
        raise SystemExit(f"callgrind counted nothing for {case} side {side}:\n{out.stderr}")
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--side"]:
        asyncio.run(RUNNERS[sys.argv[2]](int(sys.argv[3])))
        return
    wanted = sys.argv[1:] or list(CASES)
    with _harness.own_database():
        for case in wanted:
            peer, ours = CASES[case]
            counts = [_measure(case, side) for side in (0, 1)]
            _harness.console.print(
                f"{case}: {peer} {counts[0]:,} instructions, {ours} {counts[1]:,}: "
                f"ratio {counts[1] / counts[0]:.3f}"
            )


if __name__ == "__main__":
    main()
