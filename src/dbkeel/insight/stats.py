"""Per-context statement figures, timed by the engine's statement timer (``_timer``).

The timer's ``before_cursor_execute``/``after_cursor_execute`` on the sync engine behind
the ``AsyncEngine`` time the driver round trip. Outside a ``track()`` block the cost is one
``ContextVar.get()`` per statement; inside, a few additions into bounded dicts.

Rows are what the driver reports as ``cursor.rowcount``: rows changed by INSERT/UPDATE/
DELETE (drivers report -1 for most SELECTs, which is not counted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbkeel import _timer
from dbkeel.insight.context import _CURRENT

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, ExecutionContext

__all__ = ["StatsRecorder"]

# current_context() without its Python frame: this runs for every statement in track()
_current_context = _CURRENT.get


class StatsRecorder:
    """Feeds the current ``InsightContext`` from the engine's statement timer."""

    def attach(self, engine: Engine) -> None:
        _timer.StatementTimer.of(engine).add(self.after, tracked_only=True)

    def after(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
        elapsed: float,
    ) -> None:
        ctx = _current_context()
        if ctx is None:
            return
        rowcount = getattr(cursor, "rowcount", -1)
        ctx.record(statement, elapsed, rowcount if isinstance(rowcount, int) else -1)
