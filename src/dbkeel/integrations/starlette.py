"""Wire a :class:`~dbkeel.DatabaseManager` into a Starlette app (FastAPI builds on it).

:func:`install` adds, in one call:

- the lifespan: ``db.initialize()`` at startup, ``db.close()`` at shutdown, around the
  app's own lifespan (which still runs);
- ``GET /health/live`` (the process answers) and ``GET /health/ready`` (the primary
  answers and the pool is not exhausted; 503 otherwise), JSON without secrets;
- ``GET /metrics`` in Prometheus text when ``dbkeel[prometheus]`` is installed and the
  pool monitor is on;
- error handlers from :data:`~dbkeel.integrations.responses.ERROR_RESPONSES` (shared
  with Litestar): pool exhausted / database unavailable -> 503 with ``Retry-After``,
  concurrent update and integrity errors -> 409. Bodies never carry SQL or parameters.
  Override per class with ``install(..., errors={...})``; a handler the app already
  registered for a class is kept;
- per-request query tracking (:mod:`~dbkeel.integrations.tracking`): each request runs in
  a query-insight context named by its route template (``"GET /orders/{id}"``), and one
  past ``query_budget`` logs a warning with its figures. ``query_budget=None`` leaves
  the middleware out.

Example::

    app = Starlette(routes=[...])
    install(app, DatabaseManager())
    # in an endpoint: async with request.app.state.dbkeel.get_session() as session: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from dbkeel.exceptions import MissingDependencyError
from dbkeel.integrations.responses import (
    ERROR_RESPONSES,
    METRICS_MEDIA_TYPE,
    ErrorResponse,
    metrics_text,
    prometheus_installed,
    readiness,
)
from dbkeel.integrations.tracking import (
    DEFAULT_QUERY_BUDGET,
    QueryBudget,
    QueryTracking,
    RouteOf,
    Scope,
)
from dbkeel.manager import DatabaseManager

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import BaseRoute, Match, Mount
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's Starlette integration", "fastapi", "starlette") from exc

__all__ = ["ERROR_RESPONSES", "ErrorResponse", "QueryBudget", "install", "manager_of"]

_MAX_MOUNT_DEPTH = 8


def manager_of(request: Request) -> DatabaseManager:
    """The manager :func:`install` attached to the request's app."""
    manager: DatabaseManager = request.app.state.dbkeel
    return manager


def _handler(response: ErrorResponse) -> Any:
    async def handle(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            response.body(), status_code=response.status, headers=response.headers()
        )

    return handle


async def _live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _ready(request: Request) -> Response:
    status, body = await readiness(manager_of(request))
    return JSONResponse(body, status_code=status)


async def _metrics(request: Request) -> Response:
    return PlainTextResponse(metrics_text(manager_of(request)), media_type=METRICS_MEDIA_TYPE)


def install(
    app: Any,
    db: DatabaseManager,
    *,
    errors: Mapping[type[BaseException], ErrorResponse] | None = None,
    live_path: str | None = "/health/live",
    ready_path: str | None = "/health/ready",
    metrics_path: str | None = "/metrics",
    query_budget: QueryBudget | None = DEFAULT_QUERY_BUDGET,
) -> None:
    """Wire *db* into the Starlette or FastAPI *app* (see the module docstring).

    A path of ``None`` leaves that route out. *query_budget* (default
    ``QueryBudget(statements=100)``) is what one request may spend before a warning;
    ``QueryBudget(statements=None)`` tracks requests without ever warning, ``None`` does
    not track them.
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
        if cls not in app.exception_handlers:  # the app's own handler wins
            app.add_exception_handler(cls, _handler(response))
    if live_path:
        app.add_route(live_path, _live, methods=["GET"], include_in_schema=False)
    if ready_path:
        app.add_route(ready_path, _ready, methods=["GET"], include_in_schema=False)
    if metrics_path and prometheus_installed():
        app.add_route(metrics_path, _metrics, methods=["GET"], include_in_schema=False)
    if query_budget is not None:
        # outermost of the app's own middleware added so far: their statements count too
        app.add_middleware(QueryTracking, budget=query_budget, route_of=_route_of(app))


def _route_of(app: Any) -> RouteOf:
    """Reads the template of the route Starlette's router matched (``scope["route"]``,
    which FastAPI sets too) from a request's scope."""

    def route_of(scope: Scope) -> str | None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return None  # not routed yet, or nothing matched (404)
        root = scope.get("app_root_path")
        if root is None or root == scope.get("root_path", ""):
            return path
        # Under a Mount the route's path is relative to it; the mount's own template is
        # found again from the top (the scope holds the mount's matched path, ids and all).
        try:
            return _mounted(app.routes, scope, root, route) or path
        except Exception:  # a custom route class's matches(): naming must never fail a query
            return path

    return route_of


def _mounted(routes: list[BaseRoute], scope: Scope, root: str, route: Any) -> str | None:
    probe: dict[str, Any] = {"type": "http", "path": scope["path"], "root_path": root}
    prefix = ""
    for _ in range(_MAX_MOUNT_DEPTH):
        for candidate in routes:
            if isinstance(candidate, Mount):
                match, child_scope = candidate.matches(probe)
                if match is Match.FULL:
                    break
        else:
            break  # no mount further down: *route* is in *routes*
        prefix += candidate.path
        if candidate is route:  # the mount is the endpoint (static files, a plain ASGI app)
            return prefix
        probe.update(child_scope)
        routes = candidate.routes
    return prefix + route.path if prefix else None
