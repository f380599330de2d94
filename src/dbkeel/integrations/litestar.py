"""Litestar: :class:`DbkeelPlugin`, the same wiring as the FastAPI integration in Litestar's
own terms (``dbkeel[litestar]``).

Example::

    from litestar import Litestar, post
    from litestar.di import NamedDependency
    from sqlalchemy.ext.asyncio import AsyncSession
    from dbkeel import DatabaseManager
    from dbkeel.integrations.litestar import DbkeelPlugin

    @post("/notes")
    async def create(data: NoteIn, db_session: NamedDependency[AsyncSession]) -> NoteOut:
        row = Note(text=data.text)
        db_session.add(row)
        await db_session.flush()
        return NoteOut(id=row.id, text=row.text)

    app = Litestar([create], plugins=[DbkeelPlugin(DatabaseManager())])

The plugin (an ``InitPlugin``) adds to the app config:

- a lifespan manager, first in the list: ``db.initialize()`` before every other lifespan
  manager and ``on_startup`` hook; ``db.close()`` as the last ``on_shutdown`` hook, so the
  app's own lifespan and hooks can use the database at both ends;
- dependencies (``Provide``): ``db_session``, a read-write session committed when the
  handler returns, **before** the response is sent (Litestar closes generator
  dependencies after building the response and before sending it, so a failing commit
  becomes an error status, never a 200), and ``db_read_session``, a read-only session
  (``get_session(read_only=True)``: a replica when configured); ``db`` is the manager;
- ``GET /health/live``, ``GET /health/ready`` (503 when not ready; JSON, no secrets) and
  ``GET /metrics`` (Prometheus text, when ``dbkeel[prometheus]`` is installed);
- exception handlers from :data:`~dbkeel.integrations.responses.ERROR_RESPONSES`, the
  map the FastAPI integration uses: 503 with ``Retry-After``, 409, never SQL in a body.
  Handlers the app already registers for a class are kept;
- per-request query tracking (:mod:`~dbkeel.integrations.tracking`), the first app
  middleware: each request runs in a query-insight context named by its route template
  (``"GET /notes/{note_id}"``), and one past ``DbkeelConfig.query_budget`` logs a warning.

Names, paths, the error map and the query budget are set with :class:`DbkeelConfig`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel.exceptions import MissingDependencyError
from dbkeel.integrations.responses import (
    ERROR_RESPONSES,
    METRICS_MEDIA_TYPE,
    ErrorResponse,
    error_response,
    metrics_text,
    prometheus_installed,
    readiness,
)
from dbkeel.integrations.tracking import DEFAULT_QUERY_BUDGET, QueryBudget, QueryTracking, Scope
from dbkeel.manager import DatabaseManager

try:
    from litestar import Litestar, Request, Response, get
    from litestar.config.app import AppConfig
    from litestar.di import Provide
    from litestar.exceptions.responses import create_exception_response
    from litestar.middleware import DefineMiddleware
    from litestar.plugins import InitPlugin
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's Litestar integration", "litestar", "litestar") from exc

__all__ = ["DbkeelConfig", "DbkeelPlugin", "ErrorResponse", "QueryBudget"]


@dataclass(frozen=True)
class DbkeelConfig:
    """How :class:`DbkeelPlugin` wires the manager in. A path of ``None`` leaves that route
    out; *errors* entries replace the defaults of their class. *query_budget* is what one
    request may spend before a warning (``QueryBudget(statements=None)``: track, never
    warn; ``None``: no per-request tracking)."""

    session_key: str = "db_session"
    read_session_key: str = "db_read_session"
    manager_key: str = "db"
    live_path: str | None = "/health/live"
    ready_path: str | None = "/health/ready"
    metrics_path: str | None = "/metrics"
    errors: Mapping[type[BaseException], ErrorResponse] = field(default_factory=dict)
    query_budget: QueryBudget | None = DEFAULT_QUERY_BUDGET


class DbkeelPlugin(InitPlugin):
    """Wires a :class:`~dbkeel.DatabaseManager` into a Litestar app (see the module
    docstring): ``Litestar(..., plugins=[DbkeelPlugin(db)])``."""

    __slots__ = ("_errors", "config", "db")

    def __init__(self, db: DatabaseManager, config: DbkeelConfig | None = None) -> None:
        self.db = db
        self.config = config or DbkeelConfig()
        self._errors = {**ERROR_RESPONSES, **self.config.errors}

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        config, db = self.config, self.db
        app_config.state["dbkeel"] = db
        app_config.lifespan.insert(0, self._initialize)
        app_config.on_shutdown.append(self._close)
        app_config.dependencies.update(
            {
                config.session_key: Provide(self._session),
                config.read_session_key: Provide(self._read_session),
                config.manager_key: Provide(self._manager, use_cache=True),
            }
        )
        for cls in self._errors:
            if issubclass(cls, Exception):  # Litestar handles Exception subclasses only
                app_config.exception_handlers.setdefault(cls, self._handle)
        # A database error raised in the handler is thrown into the session dependency,
        # which translates it (a pool timeout becomes PoolExhaustedError); Litestar then
        # wraps the new exception in an ExceptionGroup, as it does for errors of several
        # dependencies closing at once.
        app_config.exception_handlers.setdefault(ExceptionGroup, self._handle_group)
        routes = [
            (config.live_path, _live),
            (config.ready_path, self._ready),
            (config.metrics_path if prometheus_installed() else None, self._metrics),
        ]
        app_config.route_handlers.extend(
            get(path, include_in_schema=False)(fn) for path, fn in routes if path
        )
        if config.query_budget is not None:
            # Litestar runs app middleware after routing, inside the route's exception
            # handling; first in the list, it wraps the app's other middleware.
            # (QueryTracking is typed with plain ASGI mappings, not Litestar's TypedDicts)
            factory: Any = QueryTracking
            tracking = DefineMiddleware(
                factory, budget=config.query_budget, route_of=_path_template
            )
            app_config.middleware.insert(0, tracking)
        return app_config

    # -- lifespan ---------------------------------------------------------------------

    @asynccontextmanager
    async def _initialize(self, app: Litestar) -> AsyncIterator[None]:
        # close() is an on_shutdown hook: those run after every lifespan manager has
        # exited, and also when a later manager fails to start
        await self.db.initialize()
        yield

    async def _close(self) -> None:
        await self.db.close()

    # -- dependencies -----------------------------------------------------------------

    async def _session(self) -> AsyncGenerator[AsyncSession, None]:
        async with self.db.get_session() as session:
            yield session

    async def _read_session(self) -> AsyncGenerator[AsyncSession, None]:
        async with self.db.get_session(read_only=True) as session:
            yield session

    async def _manager(self) -> DatabaseManager:
        return self.db

    # -- routes -----------------------------------------------------------------------

    async def _ready(self) -> Response[dict[str, Any]]:
        status, body = await readiness(self.db)
        return Response(body, status_code=status)

    async def _metrics(self) -> Response[str]:
        return Response(metrics_text(self.db), media_type=METRICS_MEDIA_TYPE)

    # -- errors -----------------------------------------------------------------------

    def _handle(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        found = error_response(exc, self._errors)
        if found is None:  # pragma: no cover - registered only for mapped classes
            return create_exception_response(request, exc)
        return Response(found.body(), status_code=found.status, headers=found.headers())

    def _handle_group(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        members = exc.exceptions if isinstance(exc, ExceptionGroup) else ()
        for member in members:
            if error_response(member, self._errors) is not None:
                return self._handle(request, member)
        # one unmapped member (an HTTPException of another dependency): answer for it
        return create_exception_response(request, members[0] if len(members) == 1 else exc)


async def _live() -> Response[dict[str, str]]:
    return Response({"status": "ok"})


def _path_template(scope: Scope) -> str | None:
    template = scope.get("path_template")
    return template if isinstance(template, str) else None
