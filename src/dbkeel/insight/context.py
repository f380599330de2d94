"""Per-context bookkeeping of query insight: one ``InsightContext`` per request or task.

The current context lives in a ``contextvars.ContextVar``, so each asyncio task (each
request) sees its own figures without locks. ``track()`` opens one; code that runs outside
any ``track()`` block is attributed to a per-session context instead (see ``nplusone``), so
N+1 detection works without any integration.

Memory is bounded whatever the number of statements: per-shape figures keep at most
``MAX_SHAPES`` statement shapes (the rest are folded into ``"<other shapes>"``) and N+1
counters at most ``MAX_LOAD_KEYS`` relationship paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = [
    "InsightContext",
    "ShapeStats",
    "activate",
    "allow_nplusone",
    "current_context",
    "track",
]

MAX_SHAPES = 200
MAX_LOAD_KEYS = 1000
OTHER_SHAPES = "<other shapes>"


@dataclass(slots=True)
class ShapeStats:
    """Figures of one statement shape (its SQL text, parameters never included)."""

    statements: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    rows: int = 0

    def add(self, elapsed: float, rows: int) -> None:
        self.statements += 1
        self.total_s += elapsed
        if elapsed > self.max_s:
            self.max_s = elapsed
        if rows > 0:
            self.rows += rows


@dataclass(slots=True)
class InsightContext:
    """Statement figures and N+1 counters of one request or task.

    ``operation`` names the route or operation (low cardinality: ``"GET /users/{id}"``,
    never a URL with ids); it is used in comment tags and metric labels.
    """

    operation: str | None = None
    statements: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    rows: int = 0
    shapes: dict[str, ShapeStats] = field(default_factory=dict)
    # N+1 bookkeeping: relationship path -> (count, first location, reported?)
    loads: dict[tuple[str, str], _LoadCount] = field(default_factory=dict)
    # Top-level ORM executions so far: a selectin load is counted once per parent query.
    orm_executions: int = 0
    nplusone_allowed: bool = False

    def record(self, statement: str, elapsed: float, rows: int) -> None:
        """Count one statement (called from the engine's ``after_cursor_execute``)."""
        self.statements += 1
        self.total_s += elapsed
        if elapsed > self.max_s:
            self.max_s = elapsed
        if rows > 0:
            self.rows += rows
        shape = self.shapes.get(statement)
        if shape is None:
            # Bounded: a request issuing 100k distinct statement texts (literals inlined)
            # must not keep 100k entries.
            key = statement if len(self.shapes) < MAX_SHAPES else OTHER_SHAPES
            shape = self.shapes.setdefault(key, ShapeStats())
        shape.add(elapsed, rows)

    def summary(self) -> dict[str, object]:
        """The figures as a plain dict (for a log line or a JSON response)."""
        return {
            "operation": self.operation,
            "statements": self.statements,
            "total_s": round(self.total_s, 6),
            "max_s": round(self.max_s, 6),
            "rows": self.rows,
        }

    def top_shapes(self, n: int = 5) -> list[tuple[str, ShapeStats]]:
        """The *n* shapes that took the most time, slowest first."""
        return sorted(self.shapes.items(), key=lambda kv: kv[1].total_s, reverse=True)[:n]


@dataclass(slots=True)
class _LoadCount:
    parents: int = 0
    last_execution: int = -1
    location: str = "<unknown>"
    reported: bool = False


_CURRENT: ContextVar[InsightContext | None] = ContextVar("dbkeel_insight", default=None)


def current_context() -> InsightContext | None:
    """The ``InsightContext`` of the running request or task, or None outside ``track()``."""
    return _CURRENT.get()


def track(operation: str | None = None) -> AbstractContextManager[InsightContext]:
    """Collect the statements and N+1 loads of the enclosed block into one context.

    The web integrations open one per request (``dbkeel.integrations``); around a job or
    a block of your own::

        with track("GET /orders") as q:
            await list_orders(session)
        logger.info("queries: %s", q.summary())
    """
    return _Active(InsightContext(operation=operation))


def activate(ctx: InsightContext) -> AbstractContextManager[InsightContext]:
    """``track()`` with a context the caller built: the web integrations' per-request
    context, a subclass that names its route once routing has matched it.

    Example::

        with activate(InsightContext(operation="nightly import")) as q:
            await run_import()
    """
    return _Active(ctx)


class _Active:
    # A class, not @contextmanager: entered once per web request, where the generator's
    # machinery cost four times the ContextVar work itself.
    __slots__ = ("ctx", "token")

    def __init__(self, ctx: InsightContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> InsightContext:
        self.token = _CURRENT.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc_info: object) -> None:
        _CURRENT.reset(self.token)


@contextmanager
def allow_nplusone() -> Iterator[None]:
    """Opt out of N+1 detection for the enclosed block (the rare intended per-row load).

    Example::

        with allow_nplusone():
            for order in orders[:50]:
                await order.awaitable_attrs.customer
    """
    ctx = _CURRENT.get()
    if ctx is None:
        ctx = InsightContext()
        token = _CURRENT.set(ctx)
    else:
        token = None
    previous = ctx.nplusone_allowed
    ctx.nplusone_allowed = True
    try:
        yield
    finally:
        ctx.nplusone_allowed = previous
        if token is not None:
            _CURRENT.reset(token)
