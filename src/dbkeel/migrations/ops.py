"""Alembic operations for ``soft_delete_unique()`` indexes, the same on every database as
``create_all``.

``create_all`` builds a ``soft_delete_unique()`` index as a partial unique index
(``WHERE is_deleted = false``) on PostgreSQL and SQLite, and not at all on MariaDB/MySQL,
which have no partial indexes. A plain ``op.create_index(..., unique=True,
postgresql_where=...)`` is not: MariaDB ignores the ``postgresql_where`` and builds a
plain UNIQUE index, so a soft-deleted row's value can never be used again. These
operations follow ``create_all`` on each dialect::

    import dbkeel.migrations.ops  # registers the operations

    def upgrade() -> None:
        op.create_soft_delete_unique("uq_live_handle", "accounts", ["handle"])

    def downgrade() -> None:
        op.drop_soft_delete_unique("uq_live_handle", "accounts")

Autogenerate writes them (with the import) when ``env.py`` uses dbkeel's options
(:func:`dbkeel.migrations.env.configure_options`), so a migration generated on
PostgreSQL runs right on MariaDB. ``drop_soft_delete_unique`` on MariaDB drops the
index if one is there: a database migrated with a plain ``op.create_index`` is repaired
by a migration that drops it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Index, MetaData, Table, text
from sqlalchemy.types import NullType

from dbkeel.exceptions import MissingDependencyError

try:
    from alembic.autogenerate import renderers
    from alembic.autogenerate.api import AutogenContext
    from alembic.autogenerate.rewriter import Rewriter
    from alembic.operations import MigrateOperation, Operations, ops
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's Alembic operations", "migrations", "alembic") from exc

__all__ = ["CreateSoftDeleteUniqueOp", "DropSoftDeleteUniqueOp", "soft_delete_rewriter"]

logger = logging.getLogger(__name__)

#: dialects without partial indexes: no soft_delete_unique() index there (as create_all)
NO_PARTIAL_INDEXES = frozenset({"mysql", "mariadb"})
_INFO = "dbkeel.soft_delete_unique"


@Operations.register_operation("create_soft_delete_unique")
class CreateSoftDeleteUniqueOp(MigrateOperation):
    """``op.create_soft_delete_unique(name, table, columns, **kw)``; *kw* goes to
    ``op.create_index`` (``postgresql_concurrently=True``, ...)."""

    def __init__(self, index_name: str, table_name: str, columns: Sequence[str], **kw: Any) -> None:
        self.index_name = index_name
        self.table_name = table_name
        self.columns = list(columns)
        self.kw = kw

    @classmethod
    def create_soft_delete_unique(
        cls,
        operations: Operations,
        index_name: str,
        table_name: str,
        columns: Sequence[str],
        **kw: Any,
    ) -> Any:
        return operations.invoke(cls(index_name, table_name, columns, **kw))

    def reverse(self) -> DropSoftDeleteUniqueOp:
        return DropSoftDeleteUniqueOp(self.index_name, self.table_name, self.columns)

    def to_diff_tuple(self) -> tuple[str, Index]:
        # what `alembic check` / `dbkeel migrations check` report
        return ("add_index", _index(self.index_name, self.table_name, self.columns))


@Operations.register_operation("drop_soft_delete_unique")
class DropSoftDeleteUniqueOp(MigrateOperation):
    """``op.drop_soft_delete_unique(name, table)``."""

    def __init__(
        self, index_name: str, table_name: str, columns: Sequence[str] = (), **kw: Any
    ) -> None:
        self.index_name = index_name
        self.table_name = table_name
        self.columns = list(columns)
        self.kw = kw

    @classmethod
    def drop_soft_delete_unique(
        cls, operations: Operations, index_name: str, table_name: str, **kw: Any
    ) -> Any:
        return operations.invoke(cls(index_name, table_name, **kw))

    def reverse(self) -> CreateSoftDeleteUniqueOp:
        return CreateSoftDeleteUniqueOp(self.index_name, self.table_name, self.columns)

    def to_diff_tuple(self) -> tuple[str, Index]:
        return ("remove_index", _index(self.index_name, self.table_name, self.columns))


def _index(name: str, table_name: str, columns: Sequence[str]) -> Index:
    table = Table(table_name, MetaData(), *(Column(c, NullType()) for c in columns))
    return Index(name, *(table.c[c] for c in columns), unique=True)


@Operations.implementation_for(CreateSoftDeleteUniqueOp)
def _create(operations: Operations, operation: CreateSoftDeleteUniqueOp) -> None:
    dialect = operations.get_context().dialect.name
    if dialect in NO_PARTIAL_INDEXES:
        logger.info(
            "soft_delete_unique index %s on %s not created on %s (no partial indexes), "
            "as create_all does; uniqueness among live rows is the application's to check",
            operation.index_name,
            operation.table_name,
            dialect,
        )
        return
    operations.create_index(
        operation.index_name,
        operation.table_name,
        operation.columns,
        unique=True,
        postgresql_where=text("is_deleted = false"),
        sqlite_where=text("is_deleted = 0"),
        **operation.kw,
    )


@Operations.implementation_for(DropSoftDeleteUniqueOp)
def _drop(operations: Operations, operation: DropSoftDeleteUniqueOp) -> None:
    context = operations.get_context()
    if context.dialect.name in NO_PARTIAL_INDEXES:
        # nothing was created here, unless a plain op.create_index did: remove that one
        quoted = context.dialect.identifier_preparer.quote
        operations.execute(
            f"DROP INDEX IF EXISTS {quoted(operation.index_name)} ON {quoted(operation.table_name)}"
        )
        return
    operations.drop_index(operation.index_name, table_name=operation.table_name, **operation.kw)


@renderers.dispatch_for(CreateSoftDeleteUniqueOp)
def _render_create(autogen_context: AutogenContext, op: CreateSoftDeleteUniqueOp) -> str:
    autogen_context.imports.add("import dbkeel.migrations.ops")
    return f"op.create_soft_delete_unique({op.index_name!r}, {op.table_name!r}, {op.columns!r})"


@renderers.dispatch_for(DropSoftDeleteUniqueOp)
def _render_drop(autogen_context: AutogenContext, op: DropSoftDeleteUniqueOp) -> str:
    autogen_context.imports.add("import dbkeel.migrations.ops")
    return f"op.drop_soft_delete_unique({op.index_name!r}, {op.table_name!r})"


def _is_soft_delete_unique(metadata: Any, table_name: str, index_name: Any) -> bool:
    metadatas = metadata if isinstance(metadata, Sequence) else [metadata]
    for md in metadatas:
        if not isinstance(md, MetaData):
            continue
        for table in md.tables.values():
            if table.name != table_name:
                continue
            for index in table.indexes:
                if index.name == index_name and index.info.get(_INFO):
                    return True
    return False


def _column_names(columns: Sequence[Any]) -> list[str]:
    return [c if isinstance(c, str) else str(getattr(c, "name", c)) for c in columns]


#: ``process_revision_directives`` hook: autogenerate writes soft_delete_unique() indexes
#: with the operations above instead of ``op.create_index`` / ``op.drop_index``.
soft_delete_rewriter = Rewriter()


@soft_delete_rewriter.rewrites(ops.CreateIndexOp)
def _rewrite_create(context: Any, revision: Any, op: ops.CreateIndexOp) -> Any:
    metadata = context.opts.get("target_metadata")
    if not _is_soft_delete_unique(metadata, op.table_name, op.index_name):
        return op
    return CreateSoftDeleteUniqueOp(str(op.index_name), op.table_name, _column_names(op.columns))


@soft_delete_rewriter.rewrites(ops.DropIndexOp)
def _rewrite_drop(context: Any, revision: Any, op: ops.DropIndexOp) -> Any:
    metadata = context.opts.get("target_metadata")
    if op.table_name is None or not _is_soft_delete_unique(metadata, op.table_name, op.index_name):
        return op
    return DropSoftDeleteUniqueOp(str(op.index_name), op.table_name)
