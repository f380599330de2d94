"""Upserts: ``INSERT .. ON CONFLICT DO UPDATE`` (PostgreSQL, SQLite) and
``INSERT .. ON DUPLICATE KEY UPDATE`` (MariaDB/MySQL), built once per call.

On conflict the update sets the chosen columns to the incoming values, gives
``onupdate`` columns (``updated_at``) their update value, and adds one to the mapper's
version counter - what an ORM UPDATE of the row would have done. Columns filled only by
insert defaults (``id``, ``created_at``) keep their stored value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import literal_column
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.schema import ColumnDefault

from dbkeel.bulk.batches import Batches, Progress
from dbkeel.bulk.insert import execute_rows
from dbkeel.bulk.prepare import DefaultContext, RowPlan
from dbkeel.encryption.blind_index import BlindIndex
from dbkeel.exceptions import ConfigurationError

__all__ = ["UpsertWriter"]


class UpsertWriter:
    """Builds the dialect's upsert statement for *plan* and executes it per batch."""

    def __init__(
        self,
        plan: RowPlan,
        dialect_name: str,
        *,
        conflict: Sequence[str] | None,
        update: Sequence[str] | None,
    ) -> None:
        self.plan = plan
        plan.processors()
        self.dialect_name = dialect_name
        pk = [plan.mapper.get_property_by_column(c).key for c in plan.mapper.primary_key]
        if conflict is not None:
            self._check_keys("conflict", conflict)
        self.conflict = list(conflict) if conflict is not None else pk
        if not self.conflict:
            raise ConfigurationError(
                f"bulk_upsert of {plan.model_name} got conflict=[]: name the unique "
                f"column(s) whose clash turns the insert into an update."
            )
        if update is not None:
            self._check_keys("update", update)
        self.update = None if update is None else list(update)
        self._built: _Built | None = None

    def _check_keys(self, argument: str, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            raise ConfigurationError(
                f"bulk_upsert {argument}={keys!r} is a string; pass a list of attribute "
                f"names, e.g. {argument}=[{keys!r}]."
            )
        unknown = [k for k in keys if k not in self.plan.keys]
        if unknown:
            raise ConfigurationError(
                f"bulk_upsert {argument}= names {unknown[0]!r}, which is not a column "
                f"attribute of {self.plan.model_name}; the columns are: "
                f"{', '.join(sorted(self.plan.keys))}."
            )

    def _build(self, user_keys: set[str]) -> _Built:
        plan = self.plan
        chosen = (
            self.update
            if self.update is not None
            else [
                p.key
                for p in plan.columns
                if p.key in user_keys  # default: what the caller gave
            ]
        )
        chosen = [k for k in chosen if k not in self.conflict]
        statement = _dialect_insert(self.dialect_name)(plan.mapper)
        mysql = self.dialect_name in ("mysql", "mariadb")
        incoming = statement.inserted if mysql else statement.excluded
        values: dict[str, Any] = {}
        callables: dict[str, Any] = {}
        for key in chosen:
            name = plan.by_key[key].column.name
            values[name] = incoming[name]
        for p in plan.columns:
            # a blind index follows its source: the incoming row's index was computed
            # from the incoming value
            index = p.column.type
            follows = isinstance(index, BlindIndex) and index._source_names.intersection(chosen)
            if follows and p.key not in chosen:
                values[p.column.name] = incoming[p.column.name]
        for p in plan.columns:
            onupdate = p.column.onupdate
            if p.key in chosen or p.key in self.conflict or not isinstance(onupdate, ColumnDefault):
                continue
            if onupdate.is_callable and mysql:
                # asyncmy's executemany cannot take parameters after VALUES (..), so the
                # row's own insert value (for updated_at: its insert default, now) is used.
                values[p.column.name] = incoming[p.column.name]
            elif onupdate.is_callable:
                callables[p.column.name] = onupdate.arg  # one value per batch
            else:
                values[p.column.name] = onupdate.arg  # scalar or SQL expression
        version = plan.mapper.version_id_col
        if version is not None and version.table is plan.table:
            values[version.name] = plan.table.c[version.name] + literal_column(
                "1"
            )  # no bind: asyncmy
        if not values and not callables:
            raise ConfigurationError(
                f"bulk_upsert of {plan.model_name} has nothing to update on conflict: the "
                f"rows give only the conflict column(s) {self.conflict}. Pass update=[...] "
                f"or use bulk_insert."
            )
        target = [plan.by_key[k].column.name for k in self.conflict]
        return _Built(statement, values, callables, None if mysql else target)

    async def write_all(self, session: AsyncSession, batches: Batches, progress: Progress) -> int:
        """Upsert every batch *batches* hands out; returns the number of rows sent."""
        written = 0
        while (batch := await batches.anext()) is not None:
            start, rows = batch
            user_keys = set(rows[0]) if self._built is None else set()
            mappings = self.plan.mappings(rows, start)
            written += await self.write(session, mappings, start, user_keys)
            progress(len(rows))
        return written

    async def write(
        self,
        session: AsyncSession,
        mappings: list[dict[str, Any]],
        start: int,
        user_keys: set[str],
    ) -> int:
        """Upsert *mappings*; returns the number of rows sent (inserted or updated)."""
        if not mappings:
            return 0
        if self._built is None:
            self._built = self._build(user_keys)
        built = self._built
        values = dict(built.values)
        for name, fn in built.callables.items():
            values[name] = fn(DefaultContext({}))
        if built.target is None:
            final = built.statement.on_duplicate_key_update(values)
        else:
            final = built.statement.on_conflict_do_update(index_elements=built.target, set_=values)
        await execute_rows(session, self.plan, final, mappings, start)
        return len(mappings)


@dataclasses.dataclass(slots=True)
class _Built:
    statement: Any
    values: dict[str, Any]
    callables: dict[str, Any]
    target: list[str] | None  # None on MariaDB/MySQL: ON DUPLICATE KEY takes any unique key


def _dialect_insert(dialect_name: str) -> Any:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if dialect_name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        return mysql_insert
    raise ConfigurationError(
        f"bulk_upsert supports PostgreSQL, SQLite and MariaDB/MySQL; this session is on "
        f"{dialect_name!r}."
    )
