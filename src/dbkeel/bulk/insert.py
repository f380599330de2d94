"""The portable path: SQLAlchemy's ``insert(Model)`` with a list ("insertmanyvalues").

SQLAlchemy applies the bind processing itself here; the rows arrive with their Python
defaults filled by :mod:`dbkeel.bulk.prepare`, and every TypeDecorator has already seen
each value once so that a refused value stops the load before its batch is sent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel.bulk.prepare import RowPlan

__all__ = ["InsertWriter"]


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

    async def write(self, session: AsyncSession, mappings: list[dict[str, Any]], start: int) -> int:
        """INSERT *mappings*; their primary keys are appended to ``keys`` if asked for."""
        if not mappings:
            return 0
        self.plan.check_values(mappings, start)
        result = await session.execute(self.statement, mappings)
        if self.returning:
            single = len(self.plan.mapper.primary_key) == 1
            self.keys.extend(row[0] if single else tuple(row) for row in result)
        return len(mappings)
