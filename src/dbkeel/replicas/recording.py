"""Read-write sessions that note this context's committed writes, for read-your-writes.

Whether a transaction wrote is decided per statement on the primary's engine
(``before_cursor_execute``), so every way of writing counts: ORM flushes, ``insert()``
/ ``update()`` / ``delete()``, DDL, and a write through ``session.connection()``. A
``text()`` or driver-level statement counts as a write unless it starts with ``SELECT``,
``SHOW``, ``VALUES`` or ``TABLE`` (after leading comments); ``WITH`` counts as a write,
since a CTE may modify rows. A ``SELECT`` that writes only through a function it calls
(``SELECT nextval(...)``) is not seen as one.

``lsn`` mode (:class:`RecordingSession`): after COMMIT of a transaction that wrote, the
monotonic time the commit finished; no round trip. The router bounds its WAL position
with the first sample of the primary's position taken after that time (positions.py).
``window`` mode (:class:`WindowSession`): the wall-clock time of the commit.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExecutionContext
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Session, SessionTransaction

from dbkeel import _sql
from dbkeel.mixins.session import DbkeelSession
from dbkeel.replicas.tokens import record_write

__all__ = ["RecordingSession", "WindowSession", "is_write", "watch_writes"]

logger = logging.getLogger(__name__)

_WROTE = "dbkeel_wrote"  # Connection.info: the current transaction wrote
_CONNECTION = "dbkeel_connection"  # Session.info: the connection of its transaction


def is_write(context: ExecutionContext | None, statement: str) -> bool:
    """True when the statement about to run may change data (see the module doc)."""
    if not isinstance(context, DefaultExecutionContext):
        return not _sql.is_read(statement)
    if context.isinsert or context.isupdate or context.isdelete or context.isddl:
        return True
    if context.is_text:
        return not _sql.is_read(statement)
    return False  # a compiled SELECT


def _note_write(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    if is_write(context, statement):
        conn.info[_WROTE] = True


def watch_writes(engine: Engine) -> None:
    """Mark the connections of *engine* (the primary's) whose transaction wrote."""
    if not event.contains(engine, "before_cursor_execute", _note_write):
        event.listen(engine, "before_cursor_execute", _note_write)


def _begun(session: Session, trans: SessionTransaction, connection: Any) -> None:
    connection.info.pop(_WROTE, None)  # a flag left by a use outside a session
    session.info[_CONNECTION] = connection


def _wrote(session: Session) -> Any:
    """The connection of the session's transaction if that transaction wrote, else None."""
    connection = session.info.pop(_CONNECTION, None)
    if connection is None or not connection.info.pop(_WROTE, False):
        return None
    return connection


def _forget(session: Session) -> None:
    connection = session.info.pop(_CONNECTION, None)
    if connection is not None:
        connection.info.pop(_WROTE, None)


class RecordingSession(DbkeelSession):
    """A read-write session that notes when a commit that wrote finished (``lsn`` mode)."""


@event.listens_for(RecordingSession, "after_commit")
def _record_commit(session: Session) -> None:
    if _wrote(session) is not None:
        record_write(pending=True)


class WindowSession(DbkeelSession):
    """A read-write session that notes the time of each committed write (``window`` mode)."""


@event.listens_for(WindowSession, "after_commit")
def _record_commit_time(session: Session) -> None:
    if _wrote(session) is not None:
        record_write(pending=False)


for _cls in (RecordingSession, WindowSession):
    event.listen(_cls, "after_begin", _begun)
    event.listen(_cls, "after_rollback", _forget)
