"""``check_health``: is the database answering, how fast, and how full is the pool.

The report is a plain dict (JSON-ready) so a readiness endpoint can return it as is::

    @app.get("/ready")
    async def ready():
        report = await db.health()
        return JSONResponse(report, status_code=200 if report["reachable"] else 503)
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from time import perf_counter
from typing import Literal, NotRequired, TypedDict

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dbkeel._masking import scrub_secrets
from dbkeel.monitoring.pool import PoolMonitor
from dbkeel.monitoring.status import PoolStatus

__all__ = ["HealthReport", "NodeReport", "check_health", "round_trip_ms"]

logger = logging.getLogger(__name__)


class HealthReport(TypedDict):
    """What :func:`check_health` found.

    ``status`` is ``"ok"`` or ``"unavailable"``; ``latency_ms`` the ``SELECT 1`` round trip
    (including checkout); ``error`` the exception type and message when unreachable.
    """

    status: Literal["ok", "unavailable"]
    reachable: bool
    latency_ms: float | None
    server_version: str | None
    backend: str
    pool: PoolStatus
    error: str | None
    #: with DATABASE_REPLICA_URLS: every node (primary first) with role, state and lag
    nodes: NotRequired[list[NodeReport]]


class NodeReport(TypedDict):
    """One node of :attr:`HealthReport.nodes` (``lag_s`` None when unknown): its name
    (``primary``, ``replica-1``...), ``host:port``, masked URL and its pool's status."""

    node: str
    role: Literal["primary", "replica"]
    address: str
    url: str
    state: str
    lag_s: float | None
    error: str | None
    pool: PoolStatus


async def round_trip_ms(conn: AsyncConnection, samples: int = 5) -> float:
    """Median of *samples* ``SELECT 1`` round trips on *conn*, in ms (checkout excluded).

    One unmeasured ``SELECT 1`` goes first: it may carry a statement prepare. Used by
    ``dbkeel check`` and ``dbkeel doctor`` so both report the same number.
    """
    select_one = text("SELECT 1")
    await conn.execute(select_one)
    timings = []
    for _ in range(samples):
        start = perf_counter()
        await conn.execute(select_one)
        timings.append(perf_counter() - start)
    return statistics.median(timings) * 1000


async def check_health(
    engine: AsyncEngine,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - the budget is part of the report's meaning
) -> HealthReport:
    """Run ``SELECT 1`` on *engine* within *timeout* s; never raises for a database error.

    The engine URL's credentials are masked out of the error text.
    """
    latency_ms: float | None = None
    version: str | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            start = perf_counter()
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            latency_ms = round((perf_counter() - start) * 1000, 3)
            info = engine.dialect.server_version_info
            version = ".".join(str(part) for part in info) if info else None
    except Exception as exc:  # any failure means "not ready"; the caller gets the reason
        error = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
        if isinstance(exc, TimeoutError):
            error = f"TimeoutError: no answer within {timeout:g} s"
        error = scrub_secrets(error, [engine.url])
        logger.warning("health check failed: %s", error, extra={"error": error})
    return HealthReport(
        status="ok" if error is None else "unavailable",
        reachable=error is None,
        latency_ms=latency_ms,
        server_version=version,
        backend=f"{engine.dialect.name}+{engine.dialect.driver}",
        pool=PoolMonitor.get_pool_status(engine),
        error=error,
    )
