"""N+1 detection: the same relationship loaded once per parent row within one context.

Hooked on the ORM's ``do_orm_execute`` event of the manager's session class. Each
relationship load carries its ``loader_strategy_path`` (``Order.customer``):

* a lazy load (``lazy_loaded_from`` set: ``await order.awaitable_attrs.customer``, or
  attribute access in ``run_sync`` code) is one parent row; N of them for the same
  relationship is the N+1 pattern;
* a ``selectin`` load is one batch for the rows of one parent query; it is counted once per
  parent query, so one ``selectinload`` query over 5,000 rows (10 batches) never counts,
  while a loop of N queries whose model has ``lazy="selectin"`` does;
* ``joinedload`` emits no extra statement and ``session.get()`` is no relationship load, so
  neither is ever counted.

At *threshold* loads of one relationship in one context it is reported once: logged, or
raised as :class:`~dbkeel.exceptions.NPlusOneError`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from types import FrameType
from typing import TYPE_CHECKING, Literal

from sqlalchemy.orm.interfaces import StrategizedProperty

from dbkeel.exceptions import NPlusOneError
from dbkeel.insight.context import _CURRENT, MAX_LOAD_KEYS, InsightContext, _LoadCount

if TYPE_CHECKING:
    from sqlalchemy.orm import ORMExecuteState

__all__ = ["NPlusOneDetector"]

logger = logging.getLogger("dbkeel.insight")

_SESSION_KEY = "dbkeel_insight"
# Frames of these packages are machinery, not the application line to fix.
_LIBRARY_PREFIXES = ("sqlalchemy", "dbkeel.", "asyncio", "greenlet", "contextlib", "concurrent")


class NPlusOneDetector:
    """Counts relationship loads per context and reports N+1 patterns.

    Example::

        detector = NPlusOneDetector(mode="raise", threshold=10)
        event.listen(session_class, "do_orm_execute", detector.on_execute)
    """

    def __init__(self, mode: Literal["log", "raise"], threshold: int) -> None:
        self.mode = mode
        self.threshold = threshold

    def on_execute(self, state: ORMExecuteState) -> None:
        """``do_orm_execute`` listener: count the load, report at the threshold."""
        if not state.is_select:
            return
        ctx = _CURRENT.get()  # current_context() without its frame: every ORM execute
        if ctx is None:
            # No request context (no track() block): the session is the context.
            info = state.session.info
            ctx = info.get(_SESSION_KEY)
            if ctx is None:
                ctx = info[_SESSION_KEY] = InsightContext()
        # is_relationship_load, without its second pass over the statement's options
        path = state.loader_strategy_path
        if path is None or path.is_root:
            ctx.orm_executions += 1
            return
        if ctx.nplusone_allowed or len(path) < 2:
            return
        prop = path[-1]
        if not isinstance(prop, StrategizedProperty):
            return
        key = (prop.parent.class_.__name__, prop.key)
        count = ctx.loads.get(key)
        if count is None:
            if len(ctx.loads) >= MAX_LOAD_KEYS:
                return
            count = ctx.loads[key] = _LoadCount(location=_app_location())
        if state.lazy_loaded_from is None:
            # selectin/subquery batch: one per parent query, however many batches.
            if count.last_execution == ctx.orm_executions:
                return
            count.last_execution = ctx.orm_executions
        count.parents += 1
        if count.parents >= self.threshold and not count.reported:
            count.reported = True
            self._report(key, count, lazy=state.lazy_loaded_from is not None)

    def _report(self, key: tuple[str, str], count: _LoadCount, *, lazy: bool) -> None:
        model, rel = key
        how = "lazy-loaded once per row" if lazy else "loaded by a separate query per row"
        message = (
            f"N+1 queries: {model}.{rel} was {how} {count.parents} times in one "
            f"request (first at {count.location}). Load it with the parents instead: add "
            f".options(selectinload({model}.{rel})) to the query that loaded the {model} "
            f"rows (joinedload for a many-to-one), or wrap an intended per-row load in "
            f"dbkeel.insight.allow_nplusone()."
        )
        if self.mode == "raise":
            raise NPlusOneError(message)
        logger.warning(
            "%s",
            message,
            extra={"model": model, "relationship": rel, "count": count.parents},
        )


def _app_location() -> str:
    """The first application frame that led to the load: file:line in function."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if _is_app(frame):
            return _describe(frame)
        frame = frame.f_back
    # Async: the load runs in a greenlet whose stack stops at SQLAlchemy; the awaiting
    # application coroutine is on the asyncio task's stack.
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is not None:
        for frame in reversed(task.get_stack()):
            if _is_app(frame):
                return _describe(frame)
    return "<unknown>"


def _is_app(frame: FrameType) -> bool:
    name = str(frame.f_globals.get("__name__", ""))
    return not name.startswith(_LIBRARY_PREFIXES) and name != "dbkeel"


def _describe(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
