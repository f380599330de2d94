"""``QueryLog`` and ``assert_max_queries``: how many statements a block of code sent.

Django's ``assertNumQueries`` for dbkeel: the statements a manager's engine sent while
the block ran, with their SQL in the failure message so that the extra query is there
to read (parameters are left out: they may hold personal data or secrets).

Transaction control is not counted: ``BEGIN``, ``COMMIT``, ``ROLLBACK``, savepoints and
``SET TRANSACTION``, which dbkeel's sessions and the test sandbox send around the
application's statements (a read-only session adds ``SET TRANSACTION READ ONLY`` on
PostgreSQL, ``PRAGMA query_only`` on SQLite; a sandboxed session adds a SAVEPOINT and
its release). What is left is what the code under test asked for.

Example (with the pytest plugin's ``dbkeel_queries`` fixture)::

    async def test_order_page_is_two_queries(dbkeel_db, dbkeel_queries):
        with dbkeel_queries.assert_max(2):
            await order_page(dbkeel_db, order_id=1)

or, without the fixture::

    with assert_max_queries(2, db):
        await order_page(db, order_id=1)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dbkeel._sql import keyword
from dbkeel.manager import DatabaseManager

__all__ = ["QueryLog", "assert_max_queries"]

_SHOWN_CHARS = 300  # of each statement, in a failure message
# Transaction control, by first keyword (dbkeel._sql reads statement text for all of
# dbkeel); SET and PRAGMA only in the forms dbkeel's sessions send.
_CONTROL = frozenset({"BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_CONTROL_SETTING = re.compile(r"\s*(?:SET\s+TRANSACTION|PRAGMA\s+query_only)\b", re.IGNORECASE)


def _transaction_control(statement: str) -> bool:
    verb = keyword(statement)
    if verb in _CONTROL:
        return True
    return verb in ("SET", "PRAGMA") and _CONTROL_SETTING.match(statement) is not None


class QueryLog:
    """The statements sent through *db*'s engine while the log is started.

    Use it as a context manager (``with QueryLog(db) as log:``) or call :meth:`start`
    and :meth:`stop`. Every connection of the engine is watched, so statements sent
    by tasks the test started (an ASGI app served in-process) count too.
    """

    def __init__(self, db: DatabaseManager) -> None:
        self._engine: Engine = db.engine.sync_engine
        self.statements: list[str] = []
        self._started = False

    @classmethod
    def _on(cls, engine: Engine) -> QueryLog:
        log = cls.__new__(cls)
        log._engine, log.statements, log._started = engine, [], False
        return log

    def __len__(self) -> int:
        return len(self.statements)

    def __enter__(self) -> QueryLog:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Begin recording (again: statements recorded so far are kept)."""
        if not self._started:
            event.listen(self._engine, "before_cursor_execute", self._record)
            self._started = True

    def stop(self) -> None:
        """Stop recording; safe to call twice."""
        if self._started:
            event.remove(self._engine, "before_cursor_execute", self._record)
            self._started = False

    def clear(self) -> None:
        """Forget the statements recorded so far."""
        self.statements.clear()

    @contextmanager
    def assert_max(self, n: int) -> Iterator[QueryLog]:
        """Fail (``AssertionError``) if the block sends more than *n* statements."""
        with self._block(n, exact=False) as block:
            yield block

    @contextmanager
    def assert_count(self, n: int) -> Iterator[QueryLog]:
        """Fail (``AssertionError``) unless the block sends exactly *n* statements."""
        with self._block(n, exact=True) as block:
            yield block

    @contextmanager
    def _block(self, n: int, *, exact: bool) -> Iterator[QueryLog]:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"the number of queries must be an int >= 0, got {n!r}")
        with QueryLog._on(self._engine) as block:
            yield block
        if not self._started:  # a started log has recorded them itself
            self.statements.extend(block.statements)
        if len(block) > n or (exact and len(block) != n):
            bound = "exactly" if exact else "at most"
            raise AssertionError(f"expected {bound} {n} queries, {len(block)} were sent:\n{block}")

    def __str__(self) -> str:
        lines = []
        for i, sql in enumerate(self.statements, 1):
            one_line = " ".join(sql.split())
            if len(one_line) > _SHOWN_CHARS:
                one_line = one_line[: _SHOWN_CHARS - 3] + "..."
            lines.append(f"  {i}. {one_line}")
        return "\n".join(lines) or "  (none)"

    def _record(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if not _transaction_control(statement):
            self.statements.append(statement)


@contextmanager
def assert_max_queries(n: int, db: DatabaseManager) -> Iterator[QueryLog]:
    """Fail (``AssertionError``, listing the SQL) if the block sends more than *n*
    statements through *db*'s engine.

    Example::

        with assert_max_queries(2, db) as log:
            await order_page(db, order_id=1)
        print(len(log), "queries")
    """
    with QueryLog(db).assert_max(n) as block:
        yield block
