"""Key rotation: re-encrypt every value still under an old key with the active key.

Rows are read in primary-key order, a batch per transaction, and each row is written back
with a compare-and-swap (``UPDATE ... WHERE pk = :pk AND value = :old``): a row the
application changed meanwhile is left alone (its new value is already under the active
key), so no update is lost. Only rows whose envelope header names another key are read,
so a second run resumes where an interrupted one stopped. Passes repeat while rows under
old keys remain and the last pass made progress (an old-key writer still running)::

    from dbkeel.encryption import rotate_keys

    report = await rotate_keys(db)                   # every encrypted column
    report = await rotate_keys(db, columns=["users.email"], dry_run=True)
    report.columns[0].after                          # {"k2": 10412}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    LargeBinary,
    and_,
    bindparam,
    column,
    func,
    literal,
    or_,
    select,
    table,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine as AsyncEngineType

from dbkeel._translate import mysql_errno, sqlstate
from dbkeel.encryption import registry
from dbkeel.exceptions import ConfigurationError, RetryableError

if TYPE_CHECKING:
    from sqlalchemy import Column, Table
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.expression import TableClause

    from dbkeel.encryption.keys import KeyRing
    from dbkeel.manager import DatabaseManager

__all__ = ["ColumnRotation", "RotationReport", "rotate_keys"]

#: called after each batch with (table.column, rows done, rows to do)
Progress = Callable[[str, int, int], None]
_MAX_PASSES = 5
_MAX_BATCH_RETRIES = 5
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_RETRYABLE_MYSQL = {1205, 1213}


@dataclass
class ColumnRotation:
    """The outcome for one column: rows per key id before and after, and rows rewritten."""

    name: str
    before: dict[str, int]
    after: dict[str, int] = field(default_factory=dict)
    rewritten: int = 0


@dataclass
class RotationReport:
    """What :func:`rotate_keys` found and did, column by column."""

    active_key_id: str
    dry_run: bool
    columns: list[ColumnRotation]

    @property
    def remaining(self) -> int:
        """Rows left under old (or unknown) keys across all columns."""
        return sum(
            _old_rows(c.after if not self.dry_run else c.before, self.active_key_id)
            for c in self.columns
        )


def _old_rows(counts: dict[str, int], active: str) -> int:
    return sum(n for k, n in counts.items() if k != active)


async def rotate_keys(
    db: DatabaseManager | AsyncEngine,
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 500,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RotationReport:
    """Re-encrypt old-key values of every encrypted column (or the ``table.column`` /
    ``table`` names given) with the active key; return rows per key id before and after.

    With ``dry_run=True`` only the counts are taken. Safe beside the application's own
    writes; each batch is its own transaction, retried on deadlock or serialization
    failure. Example::

        report = await rotate_keys(db, batch_size=1000)
        assert report.remaining == 0
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size} is invalid: it must be >= 1.")
    engine = db if isinstance(db, AsyncEngineType) else db.engine
    targets = registry.columns_named("encrypted", columns)
    ring = registry.ring_for(engine.sync_engine.dialect, "key rotation")
    report = RotationReport(ring.active_key_id, dry_run, [])
    for col in targets:
        raw = _RawColumn(col, ring)
        result = ColumnRotation(raw.name, before=await raw.count(engine))
        report.columns.append(result)
        if dry_run:
            continue
        todo = _old_rows(result.before, ring.active_key_id)
        for _ in range(_MAX_PASSES):
            if todo == 0:
                break
            done = await raw.rotate_pass(engine, batch_size, result, todo, progress)
            left = _old_rows(await raw.count(engine), ring.active_key_id)
            if done == 0 or left == 0:
                break
            todo = left
        result.after = await raw.count(engine)
    return report


def key_view(tbl: Table, binary: list[str], verb: str) -> tuple[TableClause, list[Any]]:
    """A lightweight view of *tbl*: its primary-key columns, and the *binary* columns as
    raw bytes (no type processing). Raises ConfigurationError without a primary key."""
    pks = list(tbl.primary_key.columns)
    if not pks:
        raise ConfigurationError(
            f"Cannot {verb} {tbl.name}: the table is walked by its primary key, and it has "
            f"none. Give the table a primary key."
        )
    view = table(
        tbl.name,
        *(column(pk.name, pk.type) for pk in pks),
        *(column(name, LargeBinary) for name in binary),
        schema=tbl.schema,
    )
    return view, [view.c[pk.name] for pk in pks]


def after(pks: list[Any], last: tuple[Any, ...], dialect: str) -> Any:
    """``WHERE`` the primary key comes after *last*, in ``ORDER BY *pks`` order.

    A row-value comparison, ``(a, b) > (:a, :b)``, which PostgreSQL and SQLite answer
    from the primary-key index; MariaDB compares it correctly but scans the index from
    its start for it (EXPLAIN: type=index), which makes a walk quadratic, so it gets the
    expanded form ``a > :a OR (a = :a AND b > :b)`` (type=range).
    """
    values = [literal(v, pk.type) for v, pk in zip(last, pks, strict=True)]
    if len(pks) == 1:
        return pks[0] > values[0]
    if dialect not in ("mysql", "mariadb"):
        return tuple_(*pks) > tuple_(*values)
    return or_(
        *(
            and_(*(pks[j] == values[j] for j in range(i)), pks[i] > values[i])
            for i in range(len(pks))
        )
    )


def write_lock(view: TableClause, pks: list[Any], column: Any) -> Any:
    """An UPDATE that matches no row, run first in a SQLite batch: it takes the write lock
    before the batch reads, as a WAL read snapshot cannot be upgraded to a write once
    another connection has committed (SQLITE_BUSY_SNAPSHOT, no wait)."""
    return update(view).where(pks[0].is_(None)).values({column.name: column})


def retryable(exc: DBAPIError) -> bool:
    """A deadlock or serialization failure: the batch may be run again."""
    return sqlstate(exc) in _RETRYABLE_SQLSTATES or mysql_errno(exc) in _RETRYABLE_MYSQL


class _RawColumn:
    """The column seen as raw envelope bytes, with its table's primary key (one or more
    columns: a composite key is walked in row-value order, ``(a, b) > (:a, :b)``, which
    PostgreSQL, MariaDB and SQLite >= 3.15 all compare)."""

    def __init__(self, col: Column[Any], ring: KeyRing) -> None:
        self.name = f"{col.table.name}.{col.name}"
        self.ring = ring
        self.ident: bytes = col.type._ident  # type: ignore[attr-defined]
        self.view, self.pks = key_view(col.table, [col.name], "rotate")
        self.value = self.view.c[col.name]
        active = ring.header_of(ring.active_key_id)
        self.not_active = func.substr(self.value, 1, len(active)) != literal(active, LargeBinary)
        self.lock = write_lock(self.view, self.pks, self.value)
        same_row = [pk == bindparam(f"_pk{i}") for i, pk in enumerate(self.pks)]
        self.cas = (
            update(self.view)
            .where(*same_row, self.value == bindparam("_old", type_=LargeBinary))
            .values({col.name: bindparam("_new", type_=LargeBinary)})
        )

    async def count(self, engine: AsyncEngine) -> dict[str, int]:
        """Rows per key id ("unknown" for ids not on the ring); NULLs are not counted."""
        counts: dict[str, int] = {}
        async with engine.connect() as conn:
            total = await conn.scalar(
                select(func.count()).select_from(self.view).where(self.value.is_not(None))
            )
            for key_id in self.ring.key_ids:
                head = self.ring.header_of(key_id)
                n = await conn.scalar(
                    select(func.count())
                    .select_from(self.view)
                    .where(func.substr(self.value, 1, len(head)) == literal(head, LargeBinary))
                )
                if n:
                    counts[key_id] = int(n)
        unknown = int(total or 0) - sum(counts.values())
        if unknown:
            counts["unknown"] = unknown
        return counts

    async def rotate_pass(
        self,
        engine: AsyncEngine,
        batch_size: int,
        result: ColumnRotation,
        todo: int,
        progress: Progress | None,
    ) -> int:
        done = 0
        last: tuple[Any, ...] | None = None
        width = len(self.pks)
        while True:
            rows = await in_batches(engine, self.name, self._batch, last, batch_size)
            if not rows:
                return done
            last = tuple(rows[-1][:width])
            done += len(rows)
            result.rewritten += len(rows)
            if progress is not None:
                progress(self.name, min(done, todo), todo)

    async def _batch(
        self, conn: AsyncConnection, last: tuple[Any, ...] | None, batch_size: int
    ) -> list[Any]:
        if conn.dialect.name == "sqlite":
            # Take the write lock before reading: a WAL read snapshot cannot be upgraded to
            # a write once another connection has committed (SQLITE_BUSY_SNAPSHOT, no wait).
            await conn.execute(self.lock)
        query = select(*self.pks, self.value).where(self.value.is_not(None), self.not_active)
        if last is not None:
            query = query.where(after(self.pks, last, conn.dialect.name))
        rows = (await conn.execute(query.order_by(*self.pks).limit(batch_size))).all()
        if rows:
            ring, ident = self.ring, self.ident
            params = []
            for *key, blob in rows:
                old = bytes(blob)
                row = {f"_pk{i}": v for i, v in enumerate(key)}
                row.update(_old=old, _new=ring.seal(ring.open(old, ident), ident))
                params.append(row)
            await conn.execute(self.cas, params)
        return list(rows)


async def in_batches(
    engine: AsyncEngine, name: str, work: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """``await work(conn, *args)`` in a transaction of its own, retried on a deadlock or
    serialization failure (a few times, with a short growing pause)."""
    for attempt in range(1, _MAX_BATCH_RETRIES + 1):
        try:
            async with engine.begin() as conn:
                return await work(conn, *args)
        except DBAPIError as exc:
            if not retryable(exc):
                raise
            if attempt == _MAX_BATCH_RETRIES:
                raise RetryableError(
                    f"Rewriting {name}: a batch hit {_MAX_BATCH_RETRIES} deadlocks or "
                    f"serialization failures in a row. Run it again (it resumes), with a "
                    f"smaller --batch-size or at a quieter time."
                ) from exc
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")
