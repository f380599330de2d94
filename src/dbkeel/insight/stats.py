"""Per-context statement figures, timed on the engine's cursor events.

``before_cursor_execute``/``after_cursor_execute`` on the sync engine behind the
``AsyncEngine`` time the driver round trip. Outside a ``track()`` block the cost is one
``ContextVar.get()`` per statement; inside, a few additions into bounded dicts.

Rows are what the driver reports as ``cursor.rowcount``: rows changed by INSERT/UPDATE/
DELETE (drivers report -1 for most SELECTs, which is not counted).
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from dbkeel.insight.context import current_context

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, ExecutionContext

__all__ = ["StatsRecorder"]

_START = "_dbkeel_insight_start"


class StatsRecorder:
    """Engine cursor listeners feeding the current ``InsightContext``."""

    def before(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is not None and current_context() is not None:
            setattr(context, _START, perf_counter())

    def after(
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
        ctx = current_context()
        if ctx is None:
            return
        rowcount = getattr(cursor, "rowcount", -1)
        ctx.record(statement, perf_counter() - start, rowcount if isinstance(rowcount, int) else -1)
