"""Per-request query tracking, shared by the Starlette/FastAPI and Litestar integrations.

Each HTTP request runs inside its own query-insight context (:func:`dbkeel.insight.track`)
named after its route template, ``"GET /orders/{id}"`` (never the raw path, so names stay
few): sqlcommenter tags and statement metrics carry the route, N+1 detection counts per
request, and :class:`QueryBudget` decides what is logged when the request ends:

- past the budget, one WARNING naming the route, the statement count, the total and the
  slowest statement's time, and the statement shapes that took the most time (SQL text
  with literals replaced by ``?``: never a parameter or a value);
- otherwise, at DEBUG, one line of the request's figures (requests without statements
  are not logged).

:class:`QueryTracking` is plain ASGI middleware (no ``BaseHTTPMiddleware``, which runs the
endpoint in another task and buffers streaming), so the context also covers a streaming
body and background tasks that run after the response.

Example::

    install(app, db, query_budget=QueryBudget(statements=30, total_ms=200))
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from dbkeel.exceptions import ConfigurationError
from dbkeel.insight.context import InsightContext, activate
from dbkeel.insight.spans import sanitize

__all__ = ["DEFAULT_QUERY_BUDGET", "QueryBudget", "QueryTracking", "RouteOf"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The route template of a request (``"/orders/{id}"``) read from its ASGI scope once the
#: framework has routed it, or ``None`` while it has not (or nothing matched).
RouteOf = Callable[[Scope], str | None]

_TOP_SHAPES = 3
_SHAPE_CHARS = 160
# A trailing sqlcommenter tag (application, route, traceparent): noise in a log line.
_TAG = re.compile(r"\s*/\*[^*]*\*/\s*$")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class QueryBudget:
    """What one request may spend on the database before dbkeel warns about it.

    ``statements``: statements per request (default 100; ``None``: no limit). A page that
    needs more than 100 round trips runs a loop of queries in nearly every case, and the
    count does not depend on the machine, so crossing it means a code path to fix.
    ``total_ms``: time spent in statements per request (default ``None``: time depends on
    load, and a slow database would otherwise warn on every request during an incident;
    the slow query log already reports single slow statements).
    ``server_timing``: add ``Server-Timing: db;dur=<ms>;desc="<n> queries"`` to each
    response (default off: it shows clients how the service spends its time). It holds the
    statements run before the response started, so not a streaming body's.
    ``routes``: another budget for some routes, by their name (``"POST /import"``);
    ``None`` there never warns for that route.

    Example::

        QueryBudget(
            statements=30,
            total_ms=250,
            routes={"POST /import": QueryBudget(statements=5000), "GET /export": None},
        )
    """

    statements: int | None = 100
    total_ms: float | None = None
    server_timing: bool = False
    routes: Mapping[str, QueryBudget | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.statements is not None and self.statements < 0:
            raise ConfigurationError(
                f"QueryBudget(statements={self.statements!r}) is invalid: the statement "
                f"budget must be >= 0, or None for no limit."
            )
        if self.total_ms is not None and not self.total_ms >= 0:
            raise ConfigurationError(
                f"QueryBudget(total_ms={self.total_ms!r}) is invalid: the time budget must "
                f"be >= 0 milliseconds, or None for no limit."
            )
        for route, budget in self.routes.items():
            if budget is not None and not isinstance(budget, QueryBudget):
                raise ConfigurationError(
                    f"QueryBudget(routes={{{route!r}: {budget!r}}}) is invalid: a route's "
                    f"budget is a QueryBudget, e.g. QueryBudget(statements=500), or None "
                    f"for no warnings on that route."
                )

    def for_route(self, operation: str | None) -> QueryBudget | None:
        """The budget of the route named *operation*: its entry in ``routes``, else this."""
        if not self.routes or operation is None:
            return self
        return self.routes.get(operation, self)

    def exceeded(self, ctx: InsightContext) -> bool:
        """Whether the figures of *ctx* are past this budget."""
        return (self.statements is not None and ctx.statements > self.statements) or (
            self.total_ms is not None and ctx.total_s * 1000 > self.total_ms
        )


#: The integrations' default: ``QueryBudget(statements=100)``, no time budget, no header.
DEFAULT_QUERY_BUDGET = QueryBudget()

# The slot of the dataclass field, which _RequestContext's property shadows.
_OPERATION: Any = InsightContext.__dict__["operation"]


class _RequestContext(InsightContext):
    """An ``InsightContext`` whose operation is named on first use after routing.

    The middleware runs before the framework's router, so the route is not known when the
    context opens; statements run after routing, and the first one that reads
    ``operation`` (the comment tag, the metrics) names it from the scope. A subclass, so
    that contexts opened by ``track()`` keep a plain attribute read on every statement.
    """

    __slots__ = ("_route_of", "_scope")

    def __init__(self, scope: Scope, route_of: RouteOf) -> None:
        InsightContext.__init__(self)
        self._scope: Scope | None = scope
        self._route_of = route_of

    @property
    def operation(self) -> str | None:
        name: str | None = _OPERATION.__get__(self)
        scope = self._scope
        if name is None and scope is not None:
            template = self._route_of(scope)
            if template is not None:
                name = f"{scope.get('method', 'HTTP')} {template}"
                _OPERATION.__set__(self, name)
                self._scope = None  # named for good: drop the request's scope
        return name

    @operation.setter
    def operation(self, value: str | None) -> None:
        _OPERATION.__set__(self, value)


class QueryTracking:
    """ASGI middleware: each HTTP request in its own query context, checked against
    *budget* when it ends (see the module docstring). *route_of* reads the route template
    from the scope the framework's router has filled in.

    Example (what ``install()`` does)::

        app.add_middleware(QueryTracking, budget=QueryBudget(), route_of=route_of)
    """

    def __init__(self, app: ASGIApp, *, budget: QueryBudget, route_of: RouteOf) -> None:
        self.app = app
        self.budget = budget
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; a websocket is not one request
            await self.app(scope, receive, send)
            return
        ctx = _RequestContext(scope, self.route_of)
        if self.budget.server_timing:
            send = _server_timing(ctx, send)
        try:
            with activate(ctx):
                await self.app(scope, receive, send)
        finally:
            # also for a failed or cancelled request: its figures are the ones to look at
            self.report(ctx)

    def report(self, ctx: InsightContext) -> None:
        """Log *ctx*'s figures: WARNING past the route's budget, else DEBUG."""
        budget = self.budget.for_route(ctx.operation) if self.budget.routes else self.budget
        if budget is not None and budget.exceeded(ctx):
            name = ctx.operation
            logger.warning(
                "Query budget exceeded by %s: %s. Most time went to: %s. A loop of queries "
                "is the usual cause: load the rows together (selectinload(), one query "
                "with IN (...)); if the route needs this many, give it its own budget: "
                "QueryBudget(routes={%r: QueryBudget(statements=...)}).",
                name or "an unrouted request",
                _figures(ctx, budget),
                "; ".join(
                    _shape_line(shape, s.statements, s.total_s)
                    for shape, s in ctx.top_shapes(_TOP_SHAPES)
                ),
                name or "<route>",
                extra={"dbkeel_query_stats": ctx.summary()},
            )
        elif ctx.statements and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Queries of %s: %s",
                ctx.operation or "an unrouted request",
                _figures(ctx, None),
                extra={"dbkeel_query_stats": ctx.summary()},
            )


def _figures(ctx: InsightContext, budget: QueryBudget | None) -> str:
    statements = f"{ctx.statements} statement{'s' if ctx.statements != 1 else ''}"
    total = f"{ctx.total_s * 1000:.1f} ms"
    if budget is not None and budget.statements is not None:
        statements += f" (budget {budget.statements})"
    if budget is not None and budget.total_ms is not None:
        total += f" (budget {budget.total_ms:g} ms)"
    return f"{statements}, {total} in the database, slowest {ctx.max_s * 1000:.1f} ms"


def _shape_line(shape: str, statements: int, total_s: float) -> str:
    text = _SPACE.sub(" ", sanitize(_TAG.sub("", shape))).strip()
    if len(text) > _SHAPE_CHARS:
        text = text[: _SHAPE_CHARS - 3] + "..."
    return f"{statements} x {total_s * 1000:.1f} ms `{text}`"


def _server_timing(ctx: InsightContext, send: Send) -> Send:
    async def send_with_timing(message: Message) -> None:
        if message["type"] == "http.response.start":
            n = ctx.statements
            value = f'db;dur={ctx.total_s * 1000:.1f};desc="{n} quer{"y" if n == 1 else "ies"}"'
            headers = [*message.get("headers", ()), (b"server-timing", value.encode())]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_timing
