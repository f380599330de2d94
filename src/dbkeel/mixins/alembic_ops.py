"""Alembic operations for the ``updated_at`` trigger (needs ``dbkeel[migrations]``).

Import this module in ``env.py`` (or the migration) to register the operations::

    import dbkeel.mixins.alembic_ops  # noqa: F401

    def upgrade() -> None:
        op.create_updated_at_trigger("posts")

    def downgrade() -> None:
        op.drop_updated_at_trigger("posts")
"""

from __future__ import annotations

from typing import Any

from dbkeel.exceptions import MissingDependencyError
from dbkeel.mixins._triggers import create_trigger_sql, drop_trigger_sql

try:
    from alembic.operations import MigrateOperation, Operations
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError("dbkeel's Alembic operations", "migrations", "alembic") from exc

__all__ = ["CreateUpdatedAtTrigger", "DropUpdatedAtTrigger"]


@Operations.register_operation("create_updated_at_trigger")
class CreateUpdatedAtTrigger(MigrateOperation):
    """``op.create_updated_at_trigger(table, column="updated_at")``."""

    def __init__(self, table_name: str, column: str = "updated_at") -> None:
        self.table_name = table_name
        self.column = column

    @classmethod
    def create_updated_at_trigger(
        cls, operations: Operations, table_name: str, column: str = "updated_at"
    ) -> Any:
        return operations.invoke(cls(table_name, column))

    def reverse(self) -> DropUpdatedAtTrigger:
        return DropUpdatedAtTrigger(self.table_name, self.column)


@Operations.register_operation("drop_updated_at_trigger")
class DropUpdatedAtTrigger(MigrateOperation):
    """``op.drop_updated_at_trigger(table)``."""

    def __init__(self, table_name: str, column: str = "updated_at") -> None:
        self.table_name = table_name
        self.column = column

    @classmethod
    def drop_updated_at_trigger(
        cls, operations: Operations, table_name: str, column: str = "updated_at"
    ) -> Any:
        return operations.invoke(cls(table_name, column))

    def reverse(self) -> CreateUpdatedAtTrigger:
        return CreateUpdatedAtTrigger(self.table_name, self.column)


@Operations.implementation_for(CreateUpdatedAtTrigger)
def _create(operations: Operations, operation: CreateUpdatedAtTrigger) -> None:
    dialect = operations.get_context().dialect.name
    for statement in create_trigger_sql(dialect, operation.table_name, operation.column):
        operations.execute(statement)


@Operations.implementation_for(DropUpdatedAtTrigger)
def _drop(operations: Operations, operation: DropUpdatedAtTrigger) -> None:
    dialect = operations.get_context().dialect.name
    for statement in drop_trigger_sql(dialect, operation.table_name):
        operations.execute(statement)
