"""One statement timer per engine: the cursor listeners every statement feature shares.

Per-context statistics (``track()``), statement metrics, spans and the slow query log all
want the driver round trip of each statement. Each used to listen on
``before_cursor_execute`` / ``after_cursor_execute`` itself and read the clock itself, up to
four times a statement. Now one pair of listeners on the engine reads ``perf_counter()``
once before and once after, and hands the same elapsed time to each feature enabled on
that engine; one ``handle_error`` listener does the same for failed statements.

A feature that only counts inside ``track()`` (the per-context statistics) is timed only
there: with no other feature on, a statement outside ``track()`` costs one
``ContextVar.get()`` and one attribute lookup, as before.

Example::

    timer = StatementTimer.of(engine.sync_engine)
    timer.add(after=lambda cursor, statement, params, context, many, elapsed: ...)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from dbkeel.insight.context import _CURRENT

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext

__all__ = ["After", "Before", "OnError", "StatementTimer"]

#: Called before the statement, with the arguments of ``before_cursor_execute``.
Before = Callable[["Connection", Any, str, Any, "ExecutionContext", bool], None]
#: Called after it: ``(cursor, statement, parameters, context, executemany, seconds)``.
After = Callable[[Any, str, Any, "ExecutionContext | None", bool, float], None]
#: Called when it failed: ``(exception_context, seconds or None if it was not timed)``.
OnError = Callable[["ExceptionContext", "float | None"], None]

_START = "_dbkeel_statement_start"  # attribute of the ExecutionContext
# current_context() without its Python frame: this runs for every statement
_current_context = _CURRENT.get
_TIMERS: weakref.WeakKeyDictionary[Engine, StatementTimer] = weakref.WeakKeyDictionary()


class StatementTimer:
    """The statement listeners of one engine; get it with :meth:`of`."""

    def __init__(self) -> None:
        self._before: tuple[Before, ...] = ()
        self._after: tuple[After, ...] = ()
        self._error: tuple[OnError, ...] = ()
        self._always = False  # a consumer wants every statement, not only in track()

    @classmethod
    def of(cls, engine: Engine) -> StatementTimer:
        """The timer of *engine* (the sync engine), attached on the first call."""
        timer = _TIMERS.get(engine)
        if timer is None:
            timer = _TIMERS[engine] = cls()
            event.listen(engine, "before_cursor_execute", timer._on_before)
            event.listen(engine, "after_cursor_execute", timer._on_after)
            event.listen(engine, "handle_error", timer._on_error)
        return timer

    def add(
        self,
        after: After,
        *,
        before: Before | None = None,
        error: OnError | None = None,
        tracked_only: bool = False,
    ) -> None:
        """Call *after* (and *before*, *error*) for every statement with an execution
        context; with *tracked_only*, *after* needs statements inside ``track()`` only."""
        # Tuples replaced whole: a statement running meanwhile sees the old or new set.
        if before is not None:
            self._before = (*self._before, before)
        if error is not None:
            self._error = (*self._error, error)
        self._after = (*self._after, after)
        self._always = self._always or not tracked_only

    def _on_before(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is None:
            return
        if self._before:
            for before in self._before:
                before(conn, cursor, statement, parameters, context, executemany)
        # last: what the hooks above do (start a span) is not counted in the round trip
        if self._always or _current_context() is not None:
            setattr(context, _START, perf_counter())

    def _on_after(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        start = getattr(context, _START, None)
        if start is None:
            return
        elapsed = perf_counter() - start
        for after in self._after:
            after(cursor, statement, parameters, context, executemany, elapsed)

    def _on_error(self, exception_context: ExceptionContext) -> None:
        if not self._error:
            return
        start = getattr(exception_context.execution_context, _START, None)
        elapsed = None if start is None else perf_counter() - start
        for error in self._error:
            error(exception_context, elapsed)
