"""Helpers for the migrations tests: a database of their own, and a project directory.

The migrations commands compare a whole database with the models, so these tests need a
database no other test writes to: :func:`fresh_database` makes one per test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests import conftest

MODELS = """
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel.encryption import BlindIndex
from dbkeel.mixins import SoftDeleteMixin, TimestampMixin, VersionMixin, soft_delete_unique
from dbkeel.types import (
    ArrayType, EncryptedType, JSONBType, StringArray, UTCDateTime, UUIDType, uuid7,
)


class Base(DeclarativeBase):
    pass


class Account(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    __tablename__ = "accounts"
    __table_args__ = (soft_delete_unique("handle"),)

    id: Mapped[object] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    handle: Mapped[str] = mapped_column(String(60))
    doc: Mapped[dict] = mapped_column(JSONBType, default=dict)
    frozen: Mapped[dict | None] = mapped_column(JSONBType(mutable=False))
    tags: Mapped[list[str] | None] = mapped_column(StringArray(40))
    nums: Mapped[list[int] | None] = mapped_column(ArrayType(Integer))
    seen_at: Mapped[object | None] = mapped_column(UTCDateTime)
    email: Mapped[str | None] = mapped_column(EncryptedType(String(200)))
    email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"), index=True)
"""


async def _admin(backend: str, sql: str) -> None:
    engine = create_async_engine(
        conftest.SERVER_URLS[backend], poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A new empty database on *backend*; yields its URL, drops it afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"dbkeel_m_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_admin(backend, f"CREATE DATABASE {name}"))
    try:
        yield (
            make_url(conftest.SERVER_URLS[backend])
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        asyncio.run(_admin(backend, f"DROP DATABASE IF EXISTS {name}{force}"))


def project(tmp_path: Path, models: str = MODELS) -> Path:
    """A project directory with the models module ``app_models``."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "app_models.py").write_text(models)
    return root


def alembic(root: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``alembic`` command line in *root* with DATABASE_URL=*url*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env.update({"DATABASE_URL": url, "ENVIRONMENT": "test", "PYTHONPATH": str(root)})
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def cli_env(url: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "ENVIRONMENT": "test"}
