"""For tests that really commit (``@pytest.mark.dbkeel(transaction=False)``): note the
tables they write to, and empty those tables afterwards.

Writes are seen in every statement the engine runs (ORM, Core, text) and in dbkeel's
COPY path (``bulk_insert`` on PostgreSQL), which records its table on the connection.

Example::

    touched = TouchedTables(engine)
    ...                       # the test commits rows
    await touched.empty()     # DELETE / TRUNCATE the tables it wrote to
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dbkeel import _sql
from dbkeel.bulk.copy import COPIED_TABLES

__all__ = ["TouchedTables"]


class TouchedTables:
    """The tables written through *engine* since creation, until :meth:`empty`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.names: set[str] = set()
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._statement)
        event.listen(sync.pool, "checkin", self._checkin)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        tables = _sql.written_tables(statement)
        if tables:
            self.names.update(tables)

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        copied = record.info.pop(COPIED_TABLES, None) if record is not None else None
        if copied:
            self.names.update(copied)

    def detach(self) -> None:
        """Stop watching the engine."""
        sync = self._engine.sync_engine
        event.remove(sync, "before_cursor_execute", self._statement)
        event.remove(sync.pool, "checkin", self._checkin)

    async def empty(self) -> list[str]:
        """Delete every row of the touched tables (committed); returns their names."""
        self.detach()
        names = sorted(self.names)
        if not names:
            return []
        async with self._engine.connect() as conn:
            preparer = conn.dialect.identifier_preparer
            quoted = [".".join(preparer.quote(part) for part in n.split(".")) for n in names]
            dialect = conn.dialect.name
            if dialect == "postgresql":
                # one statement; CASCADE: rows of other tables that point at these go too
                await conn.execute(text(f"TRUNCATE {', '.join(quoted)} RESTART IDENTITY CASCADE"))
            elif dialect in ("mysql", "mariadb"):
                await conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
                try:
                    for name in quoted:
                        await conn.execute(text(f"DELETE FROM {name}"))
                finally:
                    await conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
            else:
                # foreign keys checked at COMMIT, when all the rows are gone
                await conn.execute(text("PRAGMA defer_foreign_keys = ON"))
                for name in quoted:
                    await conn.execute(text(f"DELETE FROM {name}"))
            await conn.commit()
        return names
