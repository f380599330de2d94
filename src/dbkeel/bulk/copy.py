"""The PostgreSQL fast path: binary ``COPY`` through asyncpg on the session's connection.

COPY is not a SQLAlchemy construct (sqlalchemy #5585, #11710), so it bypasses bind
processing and Python-side defaults; :mod:`dbkeel.bulk.prepare` applies both first. The
records go to ``asyncpg.Connection.copy_records_to_table`` on the very connection the
session holds, so the rows are part of the session's transaction.

One COPY streams many batches: asyncpg sends each 512 KiB of encoded rows as it fills,
so PostgreSQL stores one part of the load while Python prepares the next - on this path
the two take about as long, and one COPY per batch would leave each idle while the
other works. A new COPY starts when a batch needs another column list, and after
``_COPY_ROWS`` rows: PostgreSQL refuses a row (a duplicate key, a failed CHECK) at once,
but asyncpg reads its answer only when the COPY's input ends, so the cap bounds how much
of the input is read past a refused row.

The records always reach asyncpg through an async generator that yields to the event
loop after each group of rows: asyncpg encodes a plain iterable without ever awaiting
(unless the socket pushes back), which would stall every other task of the process,
and any timeout or cancellation, for the whole load.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import itertools
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from sqlalchemy import Uuid, cast, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.functions import FunctionElement

from dbkeel._translate import driver_error
from dbkeel.bulk.batches import Batches, Progress
from dbkeel.bulk.prepare import ColumnPlan, RowPlan, ScalarDefault
from dbkeel.exceptions import BulkRowError, ConfigurationError
from dbkeel.types.uuid import UUIDType, uuid4_packed, uuid7, uuid7_packed

#: ``connection.info`` key: the tables COPY loaded on that connection (read by
#: dbkeel.testing, which empties them after a test that commits).
COPIED_TABLES = "dbkeel.copied_tables"

__all__ = ["CopyWriter", "copy_refused", "copy_unsupported_reason"]

_MISSING: Any = object()

# Rows are read and prepared this many at a time (progress still comes per batch_size).
# A row dict with a nested document is three objects the garbage collector tracks; held
# in batches of 10,000 they outlive two young collections and are promoted to the oldest
# generation, whose full collections then cost about 3 us per row (gc.callbacks timing,
# 100k rows). In small groups they die young: the collector's share drops to about 1 us.
_PREPARE_ROWS = 500

# Rows per COPY statement, about (it ends at the first group past this). Ending a COPY
# costs a round trip and the wait for PostgreSQL to store what was sent; a refusal by
# the server is reported within this many rows.
_COPY_ROWS = 100_000

# SQL defaults that have one value for the whole transaction in PostgreSQL, so evaluating
# them once per batch gives every row what an INSERT would have given it.
_STABLE_FUNCTIONS = frozenset(
    {
        "now",
        "current_timestamp",
        "localtimestamp",
        "current_date",
        "current_time",
        "localtime",
        "transaction_timestamp",
    }
)


def copy_unsupported_reason(plan: RowPlan) -> str | None:
    """Why COPY cannot write this model on the plan's database, or None when it can."""
    dialect = plan.dialect
    if dialect.name != "postgresql" or dialect.driver != "asyncpg":
        where = f"{dialect.name}+{dialect.driver}"
        return f"COPY needs PostgreSQL through asyncpg; this session is on {where}"
    for column_plan in plan.columns:
        expr = column_plan.sql_default
        if expr is None:
            continue
        name = getattr(expr, "name", "")
        if not (isinstance(expr, FunctionElement) and name.lower() in _STABLE_FUNCTIONS):
            return (
                f"column {column_plan.key!r} has the SQL default {expr}, which COPY cannot "
                f"evaluate per row"
            )
    return None


class _KeyBlock:
    """UUID keys for a ``uuid7``/``uuid4`` default, made a batch at a time.

    ``uuid7_packed`` makes a batch's keys about 4x faster than one call per row, and
    asyncpg's own UUID type (what it returns for uuid columns, a ``uuid.UUID``) is
    copied into the COPY buffer as is, where ``uuid.UUID`` is converted through
    ``.bytes``. ``next()`` falls back to the default itself if the batch runs out.
    """

    __slots__ = ("key", "next", "packed", "single", "wire")

    def __init__(self, key: str, packed: Callable[[int], bytes], single: Callable[[], Any]):
        self.key = key
        self.packed = packed
        self.single = single
        self.next: Callable[[], Any] = single
        self.wire = _wire_uuid_type()  # here, not at import: only COPY needs asyncpg

    def fill(self, rows: list[Any]) -> None:
        key = self.key
        count = sum(1 for row in rows if key not in row)
        raw = self.packed(count)
        wire = self.wire
        values = [wire(raw[i : i + 16]) for i in range(0, 16 * count, 16)]
        self.next = itertools.chain(values, iter(self.single, None)).__next__


def _wire_uuid_type() -> Callable[[bytes], Any]:
    try:
        from asyncpg.pgproto.pgproto import UUID as AsyncpgUUID
    except ImportError:  # pragma: no cover - a future asyncpg moving its UUID type
        return lambda raw: uuid.UUID(bytes=raw)
    made: Callable[[bytes], Any] = AsyncpgUUID
    return made


def _key_block(p: ColumnPlan) -> _KeyBlock | None:
    """A batch maker for a UUID column whose default is ``uuid7`` or ``uuid.uuid4``."""
    plain = getattr(p.default, "plain", None)
    packed = uuid7_packed if plain is uuid7 else uuid4_packed if plain is uuid.uuid4 else None
    column_type = p.column.type
    native = isinstance(column_type, UUIDType) or (
        isinstance(column_type, Uuid) and column_type.native_uuid
    )
    if packed is None or not native or plain is None:
        return None
    return _KeyBlock(p.key, packed, plain)


def _record_function(spec: list[ColumnPlan]) -> tuple[Any, list[_KeyBlock]]:
    # One generated function per column list: a tuple display with direct lookups runs
    # about twice as fast as a loop over the columns, and this is COPY's hot loop. Python
    # defaults are filled inline (no copy of the row), SQL defaults come in as `sql`.
    names: dict[str, Any] = {}
    parts = []
    blocks: list[_KeyBlock] = []
    sql_index = 0
    for i, p in enumerate(spec):
        value = f"row[{p.key!r}]"
        plain = getattr(p.default, "plain", None)
        block = _key_block(p)
        if block is not None:
            # keys made by the block are valid by construction: only given ones are checked
            names[f"g{i}"] = block
            blocks.append(block)
            given = f"p{i}({value})" if p.processor is not None else value
            if p.processor is not None:
                names[f"p{i}"] = p.processor
            parts.append(f"({given} if {p.key!r} in row else g{i}.next())")
            continue
        if plain is not None:
            names[f"d{i}"] = plain
            value = f"({value} if {p.key!r} in row else d{i}())"
        elif isinstance(p.default, ScalarDefault):
            names[f"s{i}"] = p.default.value
            value = f"({value} if {p.key!r} in row else s{i})"
        elif p.sql_default is not None:
            value = f"({value} if {p.key!r} in row else sql[{sql_index}])"
            sql_index += 1
        if p.processor is not None:
            names[f"p{i}"] = p.processor
            value = f"p{i}({value})"
        parts.append(value)
    source = f"def record(row, sql):\n    return ({', '.join(parts)},)\n"
    exec(source, names)
    return names["record"], blocks


class CopyWriter:
    """Writes prepared batches with binary COPY. One instance per ``bulk_insert`` call."""

    def __init__(self, plan: RowPlan) -> None:
        self.plan = plan
        plan.processors()
        self.table_name = plan.table.name
        self.schema = plan.table.schema
        self._specs: dict[tuple[str, ...], _Spec] = {}

    def _prepare(self, rows: list[Any], start: int) -> list[Any]:
        """*rows* checked; with their Python defaults filled when one reads the row."""
        plan = self.plan
        if plan.plain_defaults:
            plan.check(rows, start)  # defaults are filled by the record function
            return rows
        return plan.mappings(rows, start)

    def _spec_for(self, rows: list[Any]) -> _Spec:
        # The column list: what the batch's rows give plus what defaults fill. A column
        # left out is server-filled (PostgreSQL applies its default or identity) or
        # nullable without a default (NULL) - what an INSERT would do.
        given: set[str] = set().union(*rows)
        names = tuple(
            p.key
            for p in self.plan.columns
            if p.key in given or p.default is not None or p.sql_default is not None
        )
        spec = self._specs.get(names)
        if spec is None:
            columns = [self.plan.by_key[name] for name in names]
            record, blocks = _record_function(columns)
            spec = self._specs[names] = _Spec(names, columns, record, blocks)
        return spec

    def _records(
        self, spec: _Spec, rows: list[Any], start: int, sql: tuple[Any, ...]
    ) -> list[tuple[Any, ...]]:
        for block in spec.blocks:
            block.fill(rows)
        record = spec.record
        records: list[tuple[Any, ...]] = []
        append = records.append
        for offset, row in enumerate(rows):
            try:
                append(record(row, sql))
            except Exception:  # redone slowly, to name the row and the column
                append(self._slow_record(spec, row, start + offset, sql))
        return records

    async def write_all(self, session: AsyncSession, batches: Batches, progress: Progress) -> int:
        """COPY every batch *batches* hands out into the table; returns the row count.

        Each group of rows is checked and fully prepared before any of its rows is sent:
        a refused value in the first group stops the load before COPY starts; one in a
        later group aborts the COPY, whose rows are then all discarded.
        """
        first = await batches.anext(_PREPARE_ROWS)
        if first is None:
            return 0
        conn = await session.connection()
        sql = await self._sql_defaults(session)
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        start, rows = first
        pending: _Pending | None = _Pending(start, self._prepare(rows, start))
        written = 0
        while pending is not None:
            feed = _Feed(self, batches, pending, sql, progress)
            columns = [p.column.name for p in feed.spec.columns]
            try:
                async with contextlib.aclosing(feed.stream()) as records:
                    await driver.copy_records_to_table(
                        self.table_name, records=records, columns=columns, schema_name=self.schema
                    )
            except Exception as exc:
                refused = feed.unencodable(exc)
                if refused is not None:
                    # from None: asyncpg's error is in the message; the record is not shown
                    raise refused from None
                # asyncpg's own exception: raised as SQLAlchemy raises it for an INSERT
                target = f"{self.schema}.{self.table_name}" if self.schema else self.table_name
                statement = f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
                error = driver_error(raw, self.plan.dialect, exc, statement)
                if error is None:
                    raise
                if error.connection_invalidated:
                    # what SQLAlchemy does for a statement: the pool drops the connection,
                    # and the SAVEPOINT's rollback is not tried on a dead one
                    await conn.invalidate(error)
                raise error from exc
            written += feed.written
            pending = feed.pending
        # dbkeel.testing empties the tables a committing test loaded (COPY bypasses the
        # engine's statement events)
        conn.info.setdefault(COPIED_TABLES, set()).add(
            f"{self.schema}.{self.table_name}" if self.schema else self.table_name
        )
        return written

    async def _sql_defaults(self, session: AsyncSession) -> tuple[Any, ...]:
        # Evaluated in the session's transaction, cast to the column's type so that the
        # value goes through the same bind processing as any other.
        values = []
        for p in self.plan.columns:
            if p.sql_default is not None and p.default is None:
                values.append(await session.scalar(select(cast(p.sql_default, p.column.type))))
        return tuple(values)

    def _slow_record(self, spec: _Spec, row: Any, index: int, sql: tuple[Any, ...]) -> Any:
        # A key the row lacks comes from its block, as on the fast path: keys made a
        # group at a time stay in input order. (They are wire values, valid as made.)
        made = {b.key: b.next() for b in spec.blocks if b.key not in row}
        filled = self.plan.mappings([row], index)[0]
        sql_values = iter(sql)
        out: list[Any] = []
        for p in spec.columns:
            if p.key in made:
                out.append(made[p.key])
                continue
            value = filled.get(p.key, _MISSING)
            if p.sql_default is not None and p.default is None:
                fallback = next(sql_values)
                value = fallback if value is _MISSING else value
            if value is _MISSING:
                if p.server_filled:
                    raise self._uneven(index, p.key)
                out.append(None)  # a nullable column this row leaves out: NULL, as INSERT
            elif p.processor is None:
                out.append(value)
            else:
                out.append(self.plan.process(p, value, index))
        return tuple(out)

    def _uneven(self, index: int, key: str) -> BulkRowError:
        model = self.plan.model_name
        return BulkRowError(
            f"row {index} of the {model} bulk write leaves out {key!r}, which other rows sent "
            f"with it give and the database would otherwise fill. COPY sends one "
            f"column list for up to {_PREPARE_ROWS} rows at a time: give {key!r} in every "
            f"row or in none, or use method='insert'.",
            row_index=index,
            column=key,
        )


class _Spec:
    """One column list and the record function that fills it."""

    __slots__ = ("blocks", "columns", "names", "record")

    def __init__(
        self,
        names: tuple[str, ...],
        columns: list[ColumnPlan],
        record: Any,
        blocks: list[_KeyBlock],
    ) -> None:
        self.names = names
        self.columns = columns
        self.record = record
        self.blocks = blocks


class _Pending:
    """A prepared batch waiting for its COPY."""

    __slots__ = ("rows", "start")

    def __init__(self, start: int, rows: list[Any]) -> None:
        self.start = start
        self.rows = rows


class _Feed:
    """The records of one COPY: prepared batch after batch, until the input (or the
    commit chunk) ends or a batch needs another column list (left in ``pending``)."""

    def __init__(
        self,
        writer: CopyWriter,
        batches: Batches,
        first: _Pending,
        sql: tuple[Any, ...],
        progress: Progress,
    ) -> None:
        self.writer = writer
        self.batches = batches
        self.current: _Pending | None = first
        self.sql = sql
        self.progress = progress
        self.spec = writer._spec_for(first.rows)
        self.written = 0
        self.unreported = 0
        self.pending: _Pending | None = None
        # The first group's records are made now, before COPY starts: a value its type
        # refuses stops the load with nothing sent. Later groups are made while COPY runs.
        self._ready: list[tuple[Any, ...]] | None = self._make(first)
        self._ready_start = first.start
        self.current = None
        self.sending: tuple[int, list[tuple[Any, ...]]] = (first.start, [])
        self.last: tuple[Any, ...] | None = None
        self.raised = False

    def _make(self, batch: _Pending) -> list[tuple[Any, ...]]:
        return self.writer._records(self.spec, batch.rows, batch.start, self.sql)

    def _take(self) -> tuple[int, list[tuple[Any, ...]]]:
        ready, self._ready = self._ready, None
        if ready is not None:
            return self._ready_start, ready
        batch = self.current
        assert batch is not None
        self.current = None
        return batch.start, self._make(batch)

    def _sent(self, records: list[tuple[Any, ...]]) -> None:
        self.written += len(records)
        self.unreported += len(records)
        if self.unreported >= self.batches.size:
            self.progress(self.unreported)
            self.unreported = 0

    def _done(self) -> None:
        if self.unreported:
            self.progress(self.unreported)
            self.unreported = 0

    def _next(self, batch: tuple[int, list[Any]] | None) -> bool:
        if batch is None:
            return False
        start, rows = batch
        prepared = _Pending(start, self.writer._prepare(rows, start))
        if self.written >= _COPY_ROWS or self.writer._spec_for(prepared.rows) is not self.spec:
            self.pending = prepared
            return False
        self.current = prepared
        return True

    async def stream(self) -> AsyncGenerator[tuple[Any, ...]]:
        try:
            while True:
                start, records = self._take()
                self.sending = (start, records)
                for record in records:
                    self.last = record  # asyncpg encodes each record as it gets it
                    yield record
                self._sent(records)
                # a turn for the other tasks, and the point where a timeout or cancel lands
                await asyncio.sleep(0)
                if not self._next(await self.batches.anext(_PREPARE_ROWS)):
                    self._done()
                    return
        except Exception:
            self.raised = True  # the input's (or a default's) error, not asyncpg's
            raise

    def unencodable(self, exc: Exception) -> BulkRowError | None:
        """asyncpg's encoder refused a value of the record sent last: name row and column.

        Values reach the encoder after their type's bind processing, so a refusal comes
        from a column without one (an ``Integer`` given ``"7"``). The column named is the
        first one of the record whose value is not of the column's Python type; a number
        type takes any number, as asyncpg does.
        """
        if self.raised or self.last is None or not isinstance(exc, _ENCODER_ERRORS):
            return None
        start, records = self.sending
        offset = next((i for i, r in enumerate(records) if r is self.last), None)
        if offset is None:  # pragma: no cover - the last record is always in its group
            return None
        index = start + offset
        plan = self.writer.plan
        for p, value in zip(self.spec.columns, self.last, strict=True):
            if value is None or p.processor is not None:
                continue
            expected = _python_type(p)
            if expected is None or isinstance(value, expected):
                continue
            return plan.refused(p, value, index, exc)
        return BulkRowError(
            f"row {index} of the {plan.model_name} bulk write holds a value PostgreSQL's "
            f"binary COPY cannot encode ({type(exc).__name__}: {exc}). Give each column a "
            f"value of its Python type, or use method='insert', which names the column.",
            row_index=index,
        )


# What asyncpg's codecs raise for a value of the wrong Python type or range.
_ENCODER_ERRORS = (TypeError, ValueError, OverflowError)
_NUMBERS = (int, float, decimal.Decimal)


def _python_type(p: ColumnPlan) -> type | tuple[type, ...] | None:
    try:
        expected: type = p.column.type.python_type
    except NotImplementedError:
        return None
    if expected in _NUMBERS:
        return _NUMBERS
    return expected


def copy_refused(reason: str) -> ConfigurationError:
    """The error for method='copy' where COPY cannot be used."""
    return ConfigurationError(
        f"method='copy' cannot be used here: {reason}. Use method='auto' to fall back to "
        f"the INSERT path automatically, or method='insert'."
    )
