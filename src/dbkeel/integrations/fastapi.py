"""FastAPI: :func:`install` plus the ``Session`` / ``ReadSession`` dependencies.

Example::

    from dbkeel import DatabaseManager
    from dbkeel.integrations.fastapi import ReadSession, Session, install

    app = FastAPI()
    install(app, DatabaseManager())

    @app.post("/notes")
    async def create(note: NoteIn, session: Session) -> NoteOut:
        row = Note(text=note.text)
        session.add(row)
        await session.flush()
        return NoteOut(id=row.id, text=row.text)

The session commits **before the response is sent**: the dependency uses FastAPI's
``scope="function"`` (FastAPI >= 0.121), so its exit - the commit - runs when the
endpoint returns, and a failing commit (unique violation, serialization failure,
version conflict) becomes an error status through the error handlers, never a 200 for
data that was rolled back. A cancelled request (client gone, timeout) rolls back and
returns the connection: :meth:`DatabaseManager.get_session` cleans up on cancellation.

Each request's statements are counted under its route (``"POST /notes"``) and a request
past ``install(app, db, query_budget=QueryBudget(statements=..., total_ms=...))`` logs a
warning: see :mod:`dbkeel.integrations.tracking`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel.exceptions import MissingDependencyError
from dbkeel.integrations.starlette import (
    ERROR_RESPONSES,
    ErrorResponse,
    QueryBudget,
    install,
    manager_of,
)

try:
    from fastapi import Depends, Request
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's FastAPI integration", "fastapi", "fastapi") from exc

__all__ = ["ERROR_RESPONSES", "ErrorResponse", "QueryBudget", "ReadSession", "Session", "install"]


async def session_dependency(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-write session; committed when the endpoint returns, before the response."""
    async with manager_of(request).get_session() as session:
        yield session


async def read_session_dependency(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-only session (``get_session(read_only=True)``): on a usable replica when
    ``DATABASE_REPLICA_URLS`` is set, else a read-only transaction on the primary."""
    async with manager_of(request).get_session(read_only=True) as session:
        yield session


#: ``session: Session`` in an endpoint: read-write, committed before the response.
Session = Annotated[AsyncSession, Depends(session_dependency, scope="function")]
#: ``session: ReadSession``: read-only (a replica when configured).
ReadSession = Annotated[AsyncSession, Depends(read_session_dependency, scope="function")]
