"""The portable path: SQLAlchemy's ``insert(Model)`` with a list ("insertmanyvalues").

SQLAlchemy applies the bind processing itself here, to the rows with their Python defaults
filled by :mod:`dbkeel.bulk.prepare`. It does so for a whole batch before sending any of
it when the rows share one key set, so a refused value stops the batch unsent; only then
are the batch's values checked one by one, to name the row and column. A second pass on
every row would cost as much as the processing itself (encryption, JSON). Rows with
mixed key sets are checked first (see ``RowPlan.check_values_if_split``).

Rows of a model without inheritance whose key sets agree (the usual case) go to a Core
``insert(table)``: :mod:`dbkeel.bulk.prepare` has already done what the ORM's bulk INSERT
adds on top of Core (Python defaults, the version counter), and skipping its per-row
collection and dict copy makes the path faster than plain ``insert(Model)`` (issue 17).
Returned keys, inheritance and mixed key sets keep ``insert(Model)``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, Result, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel.bulk.batches import Batches, Progress
from dbkeel.bulk.prepare import RowPlan

__all__ = ["InsertWriter", "execute_rows"]

# Rows read, prepared and sent per INSERT (one executemany): SQLAlchemy's own
# insertmanyvalues page size. Held 10,000 at a time (batch_size), a batch's objects (the
# input dicts and their documents, the filled dicts, SQLAlchemy's per-row parameters; 5-6
# tracked by the garbage collector per row, none of them cyclic) outlived the young
# collections and were promoted to the oldest generation, whose full collections took
# 18-20% of the path's time (gc.callbacks, 200k rows of bench_bulk's model). In groups of
# 1000 they die young or are few when a full collection runs: 12-14% (full collections
# of a 1M-row load: 8.6 s -> 3.1 s), although it takes 10x the statements (round trips).
_INSERT_ROWS = 1000


class InsertWriter:
    """Writes prepared batches with ``INSERT .. VALUES``; optionally returns primary keys."""

    def __init__(self, plan: RowPlan, *, returning: bool) -> None:
        self.plan = plan
        plan.processors()
        self.returning = returning
        statement = insert(plan.mapper)
        if returning:
            pk = [
                getattr(plan.mapper.class_, plan.mapper.get_property_by_column(c).key)
                for c in plan.mapper.primary_key
            ]
            statement = statement.returning(*pk, sort_by_parameter_order=True)
        self.statement = statement
        self.keys: list[Any] = []
        mapper = plan.mapper
        # Core needs one table and no discriminator to fill: plain models only.
        self._core: Executable | None = None
        if not returning and mapper.inherits is None and mapper.polymorphic_on is None:
            self._core = insert(plan.table)
        # attribute name -> Column.key, where they differ (mapped_column("other_name"))
        self._renamed = {p.key: p.column.key for p in plan.columns if p.key != p.column.key}

    async def write_all(self, session: AsyncSession, batches: Batches, progress: Progress) -> int:
        """INSERT every row *batches* hands out, a group at a time; returns the row count.

        Progress still comes per ``batches.size`` rows: a group never crosses the end of
        a batch.
        """
        written = 0
        unreported = 0
        size = batches.size
        while (group := await batches.anext(min(_INSERT_ROWS, size - unreported))) is not None:
            start, rows = group
            written += await self.write(session, self.plan.mappings(rows, start), start)
            unreported += len(rows)
            if unreported >= size:
                progress(unreported)
                unreported = 0
        if unreported:
            progress(unreported)
        return written

    async def write(self, session: AsyncSession, mappings: list[dict[str, Any]], start: int) -> int:
        """INSERT *mappings*; their primary keys are appended to ``keys`` if asked for."""
        if not mappings:
            return 0
        statement: Executable = self.statement
        if self._core is not None and _one_key_set(mappings):
            statement = self._core
            if self._renamed:
                renamed = self._renamed
                mappings = [{renamed.get(k, k): v for k, v in row.items()} for row in mappings]
        result = await execute_rows(session, self.plan, statement, mappings, start)
        if self.returning:
            single = len(self.plan.mapper.primary_key) == 1
            self.keys.extend(row[0] if single else tuple(row) for row in result)
        return len(mappings)


def _one_key_set(mappings: list[dict[str, Any]]) -> bool:
    keys = mappings[0].keys()
    return all(row.keys() == keys for row in mappings)


async def execute_rows(
    session: AsyncSession,
    plan: RowPlan,
    statement: Executable,
    mappings: list[dict[str, Any]],
    start: int,
) -> Result[Any]:
    """Execute *statement* for *mappings*; a value a type refuses becomes a ``BulkRowError``.

    The refusal is looked for only after SQLAlchemy failed before reaching the driver
    (anything but a ``DBAPIError``), so rows that go through are processed once.
    """
    plan.check_values_if_split(mappings, start)
    try:
        return await session.execute(statement, mappings)
    except Exception as exc:
        if isinstance(exc, DBAPIError):
            raise
        refused = plan.find_refused(mappings, start)
        if refused is None:
            raise
        # from None: the StatementError lists the batch's parameters, secrets included
        raise refused from None
