"""``bulk_insert`` and ``bulk_upsert``: the public calls, their batching and transactions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, Literal, overload

from sqlalchemy import inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper

from dbkeel._translate import is_disconnect, translate_errors
from dbkeel.bulk.batches import Batches
from dbkeel.bulk.copy import CopyWriter, copy_refused, copy_unsupported_reason
from dbkeel.bulk.insert import InsertWriter
from dbkeel.bulk.prepare import RowPlan
from dbkeel.bulk.upsert import UpsertWriter
from dbkeel.exceptions import BulkLoadInterruptedError, ConfigurationError

__all__ = ["ProgressCallback", "Rows", "bulk_insert", "bulk_upsert"]

#: Rows: dicts keyed by attribute name, from a list, any iterable or an async iterable.
Rows = Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]
#: ``on_progress(rows_written, total)``; *total* is None when the input has no length.
ProgressCallback = Callable[[int, int | None], None]
Method = Literal["auto", "copy", "insert"]
DEFAULT_BATCH_SIZE = 10_000


@overload
async def bulk_insert(
    session: AsyncSession,
    model: type[Any],
    rows: Rows,
    *,
    batch_size: int = ...,
    method: Method = ...,
    on_progress: ProgressCallback | None = ...,
    commit_every: int | None = ...,
    return_keys: Literal[False] = ...,
) -> int: ...
@overload
async def bulk_insert(
    session: AsyncSession,
    model: type[Any],
    rows: Rows,
    *,
    batch_size: int = ...,
    method: Method = ...,
    on_progress: ProgressCallback | None = ...,
    commit_every: int | None = ...,
    return_keys: Literal[True],
) -> list[Any]: ...
async def bulk_insert(
    session: AsyncSession,
    model: type[Any],
    rows: Rows,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    method: Method = "auto",
    on_progress: ProgressCallback | None = None,
    commit_every: int | None = None,
    return_keys: bool = False,
) -> int | list[Any]:
    """Insert many rows of *model* as fast as the database allows; returns the row count.

    Rows are dicts keyed by attribute name and are streamed in batches of *batch_size*,
    so a generator or async generator of any length loads in bounded memory. Each row
    gets what ``session.add()`` would give it: column and ``default_factory`` defaults,
    the version counter, and every type's bind processing. ``method="copy"`` uses
    PostgreSQL's binary COPY (asyncpg), ``"insert"`` SQLAlchemy's batched INSERT (every
    database); ``"auto"`` picks COPY where it can. ``return_keys=True`` (insert path)
    returns the new primary keys, in input order, instead of the count.

    The rows are written in the session's transaction, inside a SAVEPOINT: if any row
    fails, nothing of this call remains and the session's earlier work is kept. Nothing
    is committed unless ``commit_every=N`` asks for a commit after every N rows; a
    failure then raises :class:`BulkLoadInterruptedError` with ``rows_committed``.

    Example::

        async with db.get_session() as session:
            count = await bulk_insert(session, User, ({"name": n} for n in names))
    """
    plan, _ = _plan(session, model, batch_size, commit_every)
    if method not in ("auto", "copy", "insert"):
        raise ConfigurationError(
            f"bulk_insert method={method!r} is not one of 'auto', 'copy', 'insert'."
        )
    reason = copy_unsupported_reason(plan)
    if return_keys:
        reason = reason or "the primary keys are only returned by the INSERT path"
        if method == "copy":
            raise copy_refused(reason)
    if method == "copy" and reason is not None:
        raise copy_refused(reason)
    writer: InsertWriter | CopyWriter
    if method == "insert" or reason is not None:
        writer = InsertWriter(plan, returning=return_keys)
    else:
        writer = CopyWriter(plan)
    count = await _run(session, plan, rows, writer, batch_size, on_progress, commit_every)
    if isinstance(writer, InsertWriter) and return_keys:
        return writer.keys
    return count


async def bulk_upsert(
    session: AsyncSession,
    model: type[Any],
    rows: Rows,
    *,
    conflict: Sequence[str] | None = None,
    update: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
    commit_every: int | None = None,
) -> int:
    """Insert rows of *model*, updating the ones whose *conflict* columns already exist.

    *conflict* names the unique attribute(s) that identify a row (default: the primary
    key; MariaDB uses whichever unique key clashes). *update* names the attributes to
    overwrite on a clash (default: the keys the first row gives, minus *conflict*).
    Columns with ``onupdate`` (``updated_at``) get their update value and the version
    counter goes up by one, as an ORM update would do; insert-only values such as
    ``created_at`` are kept. Rows are prepared and checked like ``bulk_insert``'s,
    batched, and written in a SAVEPOINT. Returns the number of rows sent.

    Example::

        await bulk_upsert(session, Product, feed, conflict=["sku"], update=["price"])
    """
    plan, dialect_name = _plan(session, model, batch_size, commit_every)
    writer = UpsertWriter(plan, dialect_name, conflict=conflict, update=update)
    return await _run(session, plan, rows, writer, batch_size, on_progress, commit_every)


def _plan(
    session: AsyncSession, model: type[Any], batch_size: int, commit_every: int | None
) -> tuple[RowPlan, str]:
    try:
        mapper = inspect(model)
    except NoInspectionAvailable:
        mapper = None
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(
            f"bulk writes take a mapped model class; got {model!r}. Pass the class, e.g. "
            f"bulk_insert(session, User, rows)."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size!r} is invalid: it must be an int >= 1.")
    if commit_every is not None and (
        isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1
    ):
        raise ConfigurationError(
            f"commit_every={commit_every!r} is invalid: it must be None (one transaction, "
            f"the caller's) or an int >= 1."
        )
    dialect = session.get_bind(mapper).dialect
    return RowPlan(mapper, dialect), dialect.name


async def _run(
    session: AsyncSession,
    plan: RowPlan,
    rows: Rows,
    writer: InsertWriter | CopyWriter | UpsertWriter,
    batch_size: int,
    on_progress: ProgressCallback | None,
    commit_every: int | None,
) -> int:
    total = len(rows) if isinstance(rows, Sized) else None
    batches = Batches(rows, min(batch_size, commit_every or batch_size))
    # Objects added with session.add() go first, so that rows referring to them (foreign
    # keys) find them; COPY does not autoflush the way session.execute() does.
    await session.flush()
    sent = 0

    def progress(count: int) -> None:
        nonlocal sent
        sent += count
        if on_progress is not None:
            on_progress(sent, total)

    with translate_errors():
        if commit_every is None:
            # A SAVEPOINT: a failure undoes this call's rows only, whatever the database
            # (MariaDB and SQLite keep earlier statements of a failed transaction).
            async with session.begin_nested():
                return await writer.write_all(session, batches, progress)
        committed = 0
        in_commit = 0  # the rows of the chunk whose COMMIT is in flight
        try:
            while not batches.done:
                batches.chunk(commit_every)
                # One SAVEPOINT per chunk: its statement also begins the transaction,
                # which COPY (sent past SQLAlchemy's cursor) would not do: asyncpg would
                # run it in autocommit, outside the chunk.
                async with session.begin_nested():
                    count = await writer.write_all(session, batches, progress)
                in_commit = count
                await session.commit()
                committed += in_commit
                in_commit = 0
        except asyncio.CancelledError as exc:
            # The caller's session context rolls the chunk in flight back; say what stays.
            exc.add_note(_interrupted(plan, committed, in_commit, exc))
            raise
        except Exception as exc:
            in_doubt = in_commit if is_disconnect(exc) else 0
            try:
                await session.rollback()
            except Exception as rollback_exc:  # the connection is gone: the pool drops it
                exc.add_note(f"the rollback after it failed too: {rollback_exc!r}")
            raise BulkLoadInterruptedError(
                _interrupted(plan, committed, in_doubt, exc),
                rows_committed=committed,
                rows_in_doubt=in_doubt,
            ) from exc
    return committed


def _interrupted(plan: RowPlan, committed: int, in_doubt: int, exc: BaseException) -> str:
    """What a stopped commit_every load left committed, and how to resume it."""
    if isinstance(exc, asyncio.CancelledError):
        cause = "it was cancelled"
        why = "the COMMIT was cancelled before its answer came"
    else:
        cause = f"{type(exc).__name__}: {exc}"
        why = "the connection was lost during a COMMIT"
    what = (
        f"the first {committed} rows of the input are committed"
        if not in_doubt
        else f"{why}, so either the first {committed} or the first {committed + in_doubt} "
        f"rows of the input are committed: count them before resuming"
    )
    return (
        f"the bulk write of {plan.model_name} stopped ({cause}); {what}, the ones after "
        f"them are not. Fix the cause, then resume with the rows after those: re-create "
        f"the input (the old one was read past that point) and skip the committed rows, "
        f"e.g. itertools.islice(make_rows(), {committed}, None)."
    )
