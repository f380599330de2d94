"""The body of a dbkeel Alembic ``env.py``: async engine, URL from ``DatabaseSettings``.

Example (the env.py that ``dbkeel migrations init`` writes)::

    from dbkeel.migrations.env import run_migrations
    from myapp.models import Base

    run_migrations(Base.metadata)

Online it connects with dbkeel's engine for the settings (``DATABASE_URL`` and the
``DATABASE_*`` variables), so the migration runs with the same driver, TLS and hooks as
the application. ``dbkeel migrate`` passes its lock timeouts through
``config.attributes["connection"]`` and runs the migration on its locked connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from dbkeel.engine import create_engine
from dbkeel.exceptions import MissingDependencyError
from dbkeel.migrations.hooks import include_object_for, render_item
from dbkeel.migrations.ops import soft_delete_rewriter
from dbkeel.settings import DatabaseSettings

try:
    from alembic import context
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel migrations", "migrations", "alembic") from exc

__all__ = ["configure_options", "run_migrations"]


def configure_options(metadata: MetaData | None, dialect_name: str) -> dict[str, Any]:
    """The ``context.configure()`` options dbkeel uses for *dialect_name*."""
    return {
        "target_metadata": metadata,
        "render_item": render_item,
        "include_object": include_object_for(dialect_name),
        "compare_type": True,
        "compare_server_default": False,
        # SQLite alters tables by copying them: autogenerate writes batch operations
        "render_as_batch": dialect_name == "sqlite",
        # soft_delete_unique() indexes as op.create_soft_delete_unique(): right on MariaDB
        # too, whichever database the migration was generated on
        "process_revision_directives": soft_delete_rewriter,
    }


def _run(connection: Connection, metadata: MetaData | None) -> None:
    context.configure(connection=connection, **configure_options(metadata, connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(metadata: MetaData | None, settings: DatabaseSettings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run, metadata)
    finally:
        await engine.dispose()


def run_migrations(target: Any, *, settings: DatabaseSettings | None = None) -> None:
    """Run Alembic's migrations for *target*: a ``MetaData`` or a declarative base."""
    metadata: MetaData | None = getattr(target, "metadata", target)
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        # dbkeel migrate / migrations check: run on their (locked) connection
        _run(given, metadata)
        return
    settings = settings or DatabaseSettings()
    if context.is_offline_mode():
        context.configure(
            url=settings.url.render_as_string(hide_password=True),
            literal_binds=True,
            **configure_options(metadata, settings.url.get_backend_name()),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(metadata, settings))
