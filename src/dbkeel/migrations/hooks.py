"""Autogenerate hooks: render dbkeel types with imports, skip what dbkeel manages per dialect.

:func:`render_item` writes every dbkeel type through a public import path that the
migration imports itself (``import dbkeel.types``, ``import dbkeel.encryption``), so a
generated migration runs unedited. ``include_object_for(dialect)`` leaves out objects dbkeel does
not create on the connected dialect: ``soft_delete_unique()`` indexes on MariaDB/MySQL,
which has no partial indexes (``create_all`` skips them through ``ddl_if``; without this
hook autogenerate would add a plain UNIQUE index that forbids reusing a soft-deleted
row's value). Both are wired in by :func:`dbkeel.migrations.env.run_migrations`.

Example (a hand-written env.py)::

    context.configure(connection=connection, target_metadata=metadata,
                      render_item=render_item,
                      include_object=include_object_for(connection.dialect.name),
                      compare_type=True)
"""

from __future__ import annotations

from typing import Any, Literal

from dbkeel.encryption.blind_index import BlindIndex
from dbkeel.types.alembic import render_item as render_type

__all__ = ["include_object_for", "render_item", "skipped_on"]

#: dialects without partial indexes: soft_delete_unique() indexes do not exist there
_NO_PARTIAL_INDEXES = frozenset({"mysql", "mariadb"})


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Alembic ``render_item`` hook for dbkeel's column types (``False`` = Alembic's own)."""
    if kind == "type" and isinstance(obj, BlindIndex):
        # the source name is all the DDL needs; a custom normalize only matters at runtime
        autogen_context.imports.add("import dbkeel.encryption")
        return f"dbkeel.encryption.BlindIndex({obj.source!r})"
    return render_type(kind, obj, autogen_context)


def skipped_on(dialect_name: str, obj: Any, type_: str) -> bool:
    """True when dbkeel does not create *obj* on *dialect_name* (so Alembic must not)."""
    if type_ == "index" and dialect_name in _NO_PARTIAL_INDEXES:
        return bool(getattr(obj, "info", {}).get("dbkeel.soft_delete_unique"))
    return False


def include_object_for(dialect_name: str) -> Any:
    """The ``include_object`` hook for *dialect_name*."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if reflected:
            return True
        return not skipped_on(dialect_name, obj, type_)

    return include
