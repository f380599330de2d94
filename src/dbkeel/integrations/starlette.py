"""Wire a :class:`~dbkeel.DatabaseManager` into a Starlette app (FastAPI builds on it).

:func:`install` adds, in one call:

- the lifespan: ``db.initialize()`` at startup, ``db.close()`` at shutdown, around the
  app's own lifespan (which still runs);
- ``GET /health/live`` (the process answers) and ``GET /health/ready`` (the primary
  answers and the pool is not exhausted; 503 otherwise), JSON without secrets;
- ``GET /metrics`` in Prometheus text when ``dbkeel[prometheus]`` is installed and the
  pool monitor is on;
- error handlers from :data:`ERROR_RESPONSES`: pool exhausted / database unavailable
  -> 503 with ``Retry-After``, concurrent update and integrity errors -> 409. Bodies
  never carry SQL or parameters. Override per class with ``install(..., errors={...})``.

Example::

    app = Starlette(routes=[...])
    install(app, DatabaseManager())
    # in an endpoint: async with request.app.state.dbkeel.get_session() as session: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from dbkeel.exceptions import (
    ConcurrentUpdateError,
    DatabaseUnavailableError,
    MissingDependencyError,
    PoolExhaustedError,
)
from dbkeel.manager import DatabaseManager
from dbkeel.monitoring.status import PoolStatus, pool_status

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's Starlette integration", "fastapi", "starlette") from exc

__all__ = ["ERROR_RESPONSES", "ErrorResponse", "install", "manager_of"]


@dataclass(frozen=True)
class ErrorResponse:
    """How an exception class is answered: status, a stable error code, a message."""

    status: int
    error: str
    message: str
    retry_after: int | None = None

    def render(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        body = {"error": self.error, "message": self.message}
        return JSONResponse(body, status_code=self.status, headers=headers)


#: The default mapping, most specific class first. Copy and change it, or pass
#: ``errors={IntegrityError: ErrorResponse(422, ...)}`` to :func:`install`.
ERROR_RESPONSES: dict[type[BaseException], ErrorResponse] = {
    PoolExhaustedError: ErrorResponse(
        503, "database_busy", "Every database connection is in use; retry shortly.", 1
    ),
    DatabaseUnavailableError: ErrorResponse(
        503, "database_unavailable", "The database cannot be reached; retry shortly.", 5
    ),
    ConcurrentUpdateError: ErrorResponse(
        409, "concurrent_update", "The record changed meanwhile; reload it and retry."
    ),
    # no SQL, no parameters: the driver's message can hold other users' values
    IntegrityError: ErrorResponse(
        409, "conflict", "The request conflicts with existing data (a unique or reference rule)."
    ),
}


def manager_of(request: Request) -> DatabaseManager:
    """The manager :func:`install` attached to the request's app."""
    manager: DatabaseManager = request.app.state.dbkeel
    return manager


def _handler(response: ErrorResponse) -> Any:
    async def handle(request: Request, exc: Exception) -> Response:
        return response.render()

    return handle


async def _live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _ready(request: Request) -> Response:
    db = manager_of(request)
    # an exhausted pool answers at once: health() would wait pool_timeout for a connection
    pool = pool_status(db.engine.pool)
    exhausted = _exhausted(pool)
    if exhausted:
        body: dict[str, Any] = {"status": "not_ready", "reachable": None, "latency_ms": None}
    else:
        report = await db.health()
        pool = report["pool"]
        exhausted = _exhausted(pool)
        ready = report["reachable"] and not exhausted
        body = {
            "status": "ready" if ready else "not_ready",
            "reachable": report["reachable"],
            "latency_ms": report["latency_ms"],
        }
    body.update(
        {"pool_exhausted": exhausted, "backend": db.engine.dialect.name, "pool": dict(pool)}
    )
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


def _exhausted(pool: PoolStatus) -> bool:
    return (
        pool["max"] is not None
        and pool["checked_out"] is not None
        and pool["checked_out"] >= pool["max"]
    )


async def _metrics(request: Request) -> Response:
    from dbkeel.monitoring.prometheus import prometheus_text

    # every node's pool: the primary's, then each replica's (label node=replica-N)
    monitors = manager_of(request).monitors
    text = prometheus_text(*monitors) if monitors else ""
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _prometheus_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("prometheus_client") is not None


def install(
    app: Any,
    db: DatabaseManager,
    *,
    errors: Mapping[type[BaseException], ErrorResponse] | None = None,
    live_path: str | None = "/health/live",
    ready_path: str | None = "/health/ready",
    metrics_path: str | None = "/metrics",
) -> None:
    """Wire *db* into the Starlette or FastAPI *app* (see the module docstring).

    A path of ``None`` leaves that route out.
    """
    app.state.dbkeel = db
    own_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        await db.initialize()
        try:
            async with own_lifespan(app_) as state:
                yield state
        finally:
            await db.close()

    app.router.lifespan_context = lifespan
    for cls, response in {**ERROR_RESPONSES, **(errors or {})}.items():
        app.add_exception_handler(cls, _handler(response))
    if live_path:
        app.add_route(live_path, _live, methods=["GET"], include_in_schema=False)
    if ready_path:
        app.add_route(ready_path, _ready, methods=["GET"], include_in_schema=False)
    if metrics_path and _prometheus_installed():
        app.add_route(metrics_path, _metrics, methods=["GET"], include_in_schema=False)
