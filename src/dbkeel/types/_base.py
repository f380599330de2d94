"""What every dbkeel column type shares: knowing its column, and saying so in errors.

A ``TypeDecorator`` is handed its ``Column`` through ``_set_parent`` when the column is
built (declarative copies the type along with a mixin's column, so each column keeps its
own instance). Keeping that reference lets a refused value be reported as
``column 'users.id'`` instead of an anonymous bind parameter.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.sql.base import SchemaEventTarget
from sqlalchemy.sql.schema import Column
from sqlalchemy.types import TypeDecorator

from dbkeel.exceptions import InvalidValueError

__all__ = ["PortableType"]

_T = TypeVar("_T")
_MAX_SHOWN = 120


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length for an error message."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}... ({len(text)} chars)"


class PortableType(TypeDecorator[_T]):
    """Base of dbkeel's column types: remembers its column to name it in errors.

    Subclasses set ``cache_ok`` themselves (SQLAlchemy reads it from each class).
    """

    #: True when in-place changes of the value are tracked by the ORM (see _tracking).
    mutable: bool = False

    def _set_parent(self, parent: SchemaEventTarget, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        if isinstance(parent, Column) and "_dbkeel_column" not in self.__dict__:
            # the first column wins if one instance is shared by several columns
            self.__dict__["_dbkeel_column"] = parent

    @property
    def column_label(self) -> str | None:
        """``table.column`` this type belongs to, or None for a free-standing value."""
        column = self.__dict__.get("_dbkeel_column")
        if column is None:
            return None
        table = getattr(column, "table", None)
        name = getattr(table, "name", None)
        return f"{name}.{column.name}" if name else str(column.name)

    def invalid(self, value: Any, problem: str, fix: str) -> InvalidValueError:
        """An ``InvalidValueError`` naming the column, the value, the problem and the fix."""
        label = self.column_label
        where = f"column {label!r}" if label else "a value"
        return InvalidValueError(
            f"{type(self).__name__} {where} got {type(value).__name__} {shown(value)}: "
            f"{problem}. {fix}",
            column=label,
            value=value,
        )

    def coerce_set(self, value: Any) -> Any:
        """Check (and normalize) a value assigned to a mapped attribute; see _tracking.

        Runs at assignment time, so a bad value fails on the line that sets it.
        """
        return value
