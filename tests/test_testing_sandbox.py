"""dbkeel.testing's Sandbox used directly: what it sends to the server from test to test.

(The plugin's behaviour as users see it is tested through pytester in
test_testing_plugin.py; these tests look at the statements on the wire.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import String, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager
from dbkeel.testing import TestDatabase
from tests.conftest import make_settings


class Base(DeclarativeBase):
    pass


class SandboxNote(Base):
    __tablename__ = "sandbox_wire_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(String(40))


@pytest.fixture
async def provisioned(
    db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[TestDatabase, DatabaseManager]]:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        target = f"sqlite+aiosqlite:///{tmp_path / 'sandbox_wire_test.sqlite3'}"
    else:
        name = f"dbkeel_sbxwire_{os.getpid()}_test"
        target = url.set(database=name).render_as_string(hide_password=False)
    database = await asyncio.to_thread(
        TestDatabase.provision,
        url=target,
        metadata=Base.metadata,
        settings=make_settings(target),
    )
    base = await database.manager()
    try:
        yield database, base
    finally:
        await database.release(base)
        await base.close()
        await asyncio.to_thread(database.drop)


async def _one_test(database: TestDatabase, base: DatabaseManager, label: str) -> list[str]:
    """A test whose session nests two more: one committed, one rolled back."""
    async with database.isolated(base) as db:
        async with db.get_session() as outer:
            outer.add(SandboxNote(text=f"{label} outer"))
            await outer.flush()
            async with db.get_session() as kept:
                kept.add(SandboxNote(text=f"{label} kept"))
            with pytest.raises(RuntimeError):
                async with db.get_session() as undone:
                    undone.add(SandboxNote(text=f"{label} undone"))
                    await undone.flush()
                    raise RuntimeError("the application's error")
            async with db.get_session() as again:  # the freed depth is reused
                again.add(SandboxNote(text=f"{label} again"))
        async with db.get_session(read_only=True) as session:
            texts = sorted(await session.scalars(select(SandboxNote.text)))
    return texts


async def test_savepoints_repeat_their_names_from_test_to_test(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    database, base = provisioned
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "SAVEPOINT" in statement.upper():
            sent.append(statement.strip())

    event.listen(base.engine.sync_engine, "before_cursor_execute", record)
    try:
        per_test: list[list[str]] = []
        for label in ("first", "second", "third"):
            sent.clear()
            texts = await _one_test(database, base, label)
            # the application's commits and rollbacks kept their meaning
            assert texts == sorted(f"{label} {k}" for k in ("outer", "kept", "again"))
            per_test.append(list(sent))
    finally:
        event.remove(base.engine.sync_engine, "before_cursor_execute", record)

    names = {s.split()[-1] for s in per_test[0]}
    assert names == {"dbkeel_sp_1", "dbkeel_sp_2"}, per_test[0]
    # the same statement texts in every test: nothing new to prepare or compile
    assert per_test[1] == per_test[0] and per_test[2] == per_test[0]
    assert per_test[0][:3] == ["SAVEPOINT dbkeel_sp_1", "SAVEPOINT dbkeel_sp_2",
                               "RELEASE SAVEPOINT dbkeel_sp_2"]  # fmt: skip
    async with base.get_session() as session:  # every test rolled back
        assert list(await session.scalars(select(SandboxNote.text))) == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_no_statement_is_prepared_again_after_the_first_test(
    provisioned: tuple[TestDatabase, DatabaseManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement text asyncpg has not seen on the connection costs a Parse round trip
    # (and evicts one of the application's cached statements): none after warm-up.
    database, base = provisioned
    prepared: list[str] = []
    real_prepare = asyncpg.Connection.prepare

    async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        prepared.append(query)  # calls through: the real statement is prepared
        return await real_prepare(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "prepare", spy)
    await _one_test(database, base, "warm-up")
    prepared.clear()
    for label in ("second", "third", "fourth"):
        await _one_test(database, base, label)
    assert prepared == []
