"""Recompute blind indexes: after the blind-index key (or a ``normalize`` function) changed.

Every ``BlindIndex`` column is recomputed from its decrypted source under the ring's
current blind-index key. Rows are read in primary-key order, a batch per transaction, and
written back with a compare-and-swap on the source's ciphertext (``UPDATE ... SET index =
:new WHERE pk = :pk AND source = :read``): a row the application changed meanwhile got its
index from that write, under the current key, and is left alone. Rows whose index is
already right are not written, so a second run resumes where an interrupted one stopped::

    from dbkeel.encryption import reindex_blind_indexes

    report = await reindex_blind_indexes(db)       # every blind-index column
    report.columns[0].rewritten                    # rows whose index changed

Until the run ends, ``blind_match`` finds only the rows already recomputed: run it right
after deploying the new key, or in a maintenance window for lookups that must not miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import LargeBinary, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine as AsyncEngineType

from dbkeel.encryption import registry
from dbkeel.encryption.blind_index import BlindIndex
from dbkeel.encryption.rotation import after, in_batches, key_view, write_lock
from dbkeel.exceptions import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Column
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from dbkeel.manager import DatabaseManager

__all__ = ["ColumnReindex", "ReindexReport", "reindex_blind_indexes"]

#: called after each batch with (table.column, rows checked so far)
Progress = Callable[[str, int], None]


@dataclass
class ColumnReindex:
    """One blind-index column: rows checked and rows whose index was rewritten."""

    name: str
    checked: int = 0
    rewritten: int = 0


@dataclass
class ReindexReport:
    """What :func:`reindex_blind_indexes` did, column by column."""

    columns: list[ColumnReindex]

    @property
    def rewritten(self) -> int:
        """Rows rewritten across all columns."""
        return sum(c.rewritten for c in self.columns)


async def reindex_blind_indexes(
    db: DatabaseManager | AsyncEngine,
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> ReindexReport:
    """Recompute every blind index (or those of the ``table.column`` / ``table`` names
    given) under the ring's current blind-index key; return rows checked and rewritten.

    Safe beside the application's own writes; each batch is its own transaction, retried
    on deadlock or serialization failure. Example::

        report = await reindex_blind_indexes(db, batch_size=1000)
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size} is invalid: it must be >= 1.")
    engine = db if isinstance(db, AsyncEngineType) else db.engine
    dialect = engine.sync_engine.dialect
    ring = registry.ring_for(dialect, "blind-index recomputation")
    if not ring.has_index_key:
        raise ConfigurationError(
            "Recomputing blind indexes needs the new blind-index key: set "
            "DATABASE_BLIND_INDEX_KEY (make one with `dbkeel keys generate`)."
        )
    report = ReindexReport([])
    for col in registry.columns_named("blind_index", columns):
        walk = _IndexColumn(col, dialect)
        result = ColumnReindex(walk.name)
        report.columns.append(result)
        last: tuple[Any, ...] | None = None
        while True:
            # counted once committed: a retried batch is not counted twice
            last, checked, rewritten = await in_batches(
                engine, walk.name, walk.batch, last, batch_size
            )
            result.checked += checked
            result.rewritten += rewritten
            if progress is not None:
                progress(walk.name, result.checked)
            if last is None:
                break
    return report


class _IndexColumn:
    """A blind-index column, its source read as ciphertext, and its table's primary key."""

    def __init__(self, col: Column[Any], dialect: Dialect) -> None:
        type_ = col.type
        assert isinstance(type_, BlindIndex)
        self.type = type_
        self.dialect = dialect
        source = col.table.c[type_.source]
        self.name = f"{col.table.name}.{col.name}"
        self.view, self.pks = key_view(col.table, [source.name, col.name], "reindex")
        self.source = self.view.c[source.name]
        self.index = self.view.c[col.name]
        self.lock = write_lock(self.view, self.pks, self.index)
        # the source's own result processing: decrypt, then the inner type's
        decode = source.type.result_processor(dialect, None)
        self.decode: Callable[[Any], Any] = decode if decode is not None else (lambda v: v)
        same_row = [pk == bindparam(f"_pk{i}") for i, pk in enumerate(self.pks)]
        self.cas = (
            update(self.view)
            .where(*same_row, _same(self.source, bindparam("_read", type_=LargeBinary)))
            .values({col.name: bindparam("_new", type_=LargeBinary)})
        )

    async def batch(
        self,
        conn: AsyncConnection,
        last: tuple[Any, ...] | None,
        batch_size: int,
    ) -> tuple[tuple[Any, ...] | None, int, int]:
        """Check the next *batch_size* rows: the last key read (None at the end), the
        rows checked and the rows rewritten."""
        if conn.dialect.name == "sqlite":
            await conn.execute(self.lock)  # see rotation.write_lock
        query = select(*self.pks, self.source, self.index)
        if last is not None:
            query = query.where(after(self.pks, last, conn.dialect.name))
        rows = (await conn.execute(query.order_by(*self.pks).limit(batch_size))).all()
        width = len(self.pks)
        params = []
        for row in rows:
            blob, stored = row[width], row[width + 1]
            new = self._index_of(blob)
            if (None if stored is None else bytes(stored)) != new:
                keys = {f"_pk{i}": v for i, v in enumerate(row[:width])}
                params.append({**keys, "_read": None if blob is None else bytes(blob), "_new": new})
        if params:
            await conn.execute(self.cas, params)
        last = tuple(rows[-1][:width]) if len(rows) == batch_size else None
        return last, len(rows), len(params)

    def _index_of(self, blob: Any) -> bytes | None:
        if blob is None:
            return None
        value = self.decode(bytes(blob))
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigurationError(
                f"Cannot recompute {self.name}: its source holds a {type(value).__name__}, "
                f"and a blind index is computed from text."
            )
        return self.type.digest(value, self.dialect)


def _same(column: Any, value: Any) -> Any:
    # NULL-safe: a row whose source is NULL is matched as NULL
    return column.is_not_distinct_from(value)
