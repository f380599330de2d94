"""The slow query log: each statement slower than a threshold, with its duration.

Timed between SQLAlchemy's ``before_cursor_execute`` and ``after_cursor_execute`` events
(by the engine's statement timer, ``dbkeel._timer``), i.e. the driver round trip, on the
sync engine behind an ``AsyncEngine``. Bound parameters
(user data, tokens) are shown as ``[masked]`` unless ``log_parameters=True``; the statement
text itself is logged, so keep secrets out of SQL literals.

Example::

    from dbkeel.monitoring import SlowQueryLog

    SlowQueryLog.setup(engine, threshold=0.5)     # WARNING "slow query: 0.73 s: SELECT ..."
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from dbkeel import _timer
from dbkeel.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, ExecutionContext

__all__ = ["SlowQueryLog"]

logger = logging.getLogger(__name__)

_MAX_STATEMENT = 2000  # characters of SQL per log line
_LOGS: weakref.WeakKeyDictionary[Engine, SlowQueryLog] = weakref.WeakKeyDictionary()


class SlowQueryLog:
    """Logs statements that took longer than *threshold* seconds; one per engine.

    Example::

        log = SlowQueryLog.setup(db.engine, threshold=1.0, app_name="billing")
        log.count          # slow statements seen so far
    """

    def __init__(self, threshold: float, *, log_parameters: bool, app_name: str) -> None:
        if not threshold > 0:
            raise ConfigurationError(
                f"slow query threshold={threshold!r} is invalid: it is a number of seconds "
                f"and must be > 0 (DATABASE_SLOW_QUERY_THRESHOLD=0 turns the log off)."
            )
        self.threshold = threshold
        self.log_parameters = log_parameters
        self.app_name = app_name
        self.count = 0

    @classmethod
    def setup(
        cls,
        engine: AsyncEngine | Engine,
        threshold: float = 1.0,
        *,
        log_parameters: bool = False,
        app_name: str = "dbkeel",
    ) -> SlowQueryLog:
        """Start logging slow statements of *engine*; a second call returns the first log."""
        sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        existing = _LOGS.get(sync_engine)
        if existing is not None:
            return existing
        log = cls(threshold, log_parameters=log_parameters, app_name=app_name)
        _timer.StatementTimer.of(sync_engine).add(log._after)
        _LOGS[sync_engine] = log
        return log

    def _after(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
        elapsed: float,
    ) -> None:
        if elapsed < self.threshold:
            return
        self.count += 1
        shown = repr(parameters) if self.log_parameters else "[masked]"
        sql = statement if len(statement) <= _MAX_STATEMENT else statement[:_MAX_STATEMENT] + "..."
        logger.warning(
            "slow query: %.3f s (threshold %g s): %s; parameters: %s",
            elapsed,
            self.threshold,
            sql,
            shown,
            extra={
                "app_name": self.app_name,
                "duration_s": round(elapsed, 6),
                "statement": sql,
                "parameters": shown,
                "executemany": executemany,
            },
        )
