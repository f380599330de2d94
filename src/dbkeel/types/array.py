"""``ArrayType`` / ``StringArray``: a list column, ``ARRAY`` on PostgreSQL, JSON elsewhere.

============ ====================== ====================================================
database     column                 ``contains_all`` / ``contains_any``
============ ====================== ====================================================
PostgreSQL   ``item[]`` (``ARRAY``) ``@>`` / ``&&`` (GIN-indexable)
SQLite       ``JSON`` array         ``json_each`` sub-selects
MariaDB      ``JSON`` array         ``JSON_CONTAINS`` / ``JSON_OVERLAPS`` (>= 10.9;
                                    ``JSON_TABLE`` + ``JSON_CONTAINS`` on 10.6-10.8)
============ ====================== ====================================================

Items are str, int, float or bool (the scalars both ARRAY and JSON hold the same way);
``None`` items are refused so that containment means the same thing on every database.

Example::

    tags: Mapped[list[str]] = mapped_column(StringArray, default_factory=list)
    stmt = select(User).where(User.tags.contains_any(["admin", "staff"]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import bindparam, false
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import (
    JSON,
    Boolean,
    Float,
    Integer,
    Numeric,
    String,
    TypeDecorator,
    TypeEngine,
    to_instance,
)

from dbkeel.exceptions import ConfigurationError
from dbkeel.types._base import PortableType, shown
from dbkeel.types.json import make_encoder

__all__ = ["ArrayContains", "ArrayType", "StringArray"]


def _item_classes(item_type: TypeEngine[Any]) -> tuple[type, ...]:
    if isinstance(item_type, Boolean):
        return (bool,)
    if isinstance(item_type, Integer):
        return (int,)
    if isinstance(item_type, Float | Numeric):
        return (float, int)
    if isinstance(item_type, String):
        return (str,)
    raise ConfigurationError(
        f"ArrayType({item_type!r}) is not supported: items must be String, Integer, Float "
        f"or Boolean, the scalars PostgreSQL ARRAY and JSON store alike. Use JSONBType for "
        f"lists of anything else."
    )


class ArrayType(PortableType[list[Any]]):
    """A list of scalars: ``ARRAY`` on PostgreSQL, a JSON array on SQLite and MariaDB.

    In-place changes (``user.tags.append("x")``) are saved on flush unless
    ``mutable=False``. Each item is checked on the way in: a wrong type, a ``None`` or a
    string longer than ``String(length)`` raises ``InvalidValueError`` naming the column.
    Filter with ``column.contains_all([...])`` and ``column.contains_any([...])``.

    Example::

        tags: Mapped[list[str]] = mapped_column(ArrayType(String(50)))
        scores: Mapped[list[int]] = mapped_column(ArrayType(Integer))
    """

    impl = JSON(none_as_null=True)
    cache_ok = True
    # lists are not hashable: ORM .unique() must compare rows without hashing
    hashable = False

    def __init__(
        self, item_type: TypeEngine[Any] | type[TypeEngine[Any]], *, mutable: bool = True
    ) -> None:
        super().__init__()
        self.item_type = to_instance(item_type)
        self.mutable = mutable
        self._classes = _item_classes(self.item_type)
        self._exclude_bool = bool not in self._classes
        self._exact = frozenset(self._classes)
        self._max_length: int | None = getattr(self.item_type, "length", None)

    @property
    def python_type(self) -> type[list[Any]]:
        return list

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            # imported here: only a PostgreSQL engine (which loaded it) gets here,
            # and `import dbkeel` stays free of the PostgreSQL dialect
            from sqlalchemy.dialects.postgresql import ARRAY

            return dialect.type_descriptor(ARRAY(self.item_type))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def check(self, value: Any) -> Any:
        """*value* if it is a list (or tuple) of valid items, else ``InvalidValueError``."""
        if not isinstance(value, list | tuple):
            raise self.invalid(value, "not a list", "Pass a list, e.g. ['a', 'b'].")
        classes, exclude_bool, max_length = self._classes, self._exclude_bool, self._max_length
        # fast path in C: every item of an exact accepted class, none too long
        if set(map(type, value)) <= self._exact and (
            max_length is None or not value or max(map(len, value)) <= max_length
        ):
            return value
        for index, item in enumerate(value):
            if (
                item.__class__ not in classes
                and (not isinstance(item, classes) or (exclude_bool and isinstance(item, bool)))
            ) or (max_length is not None and len(item) > max_length):  # type: ignore[arg-type]
                wanted = "/".join(c.__name__ for c in classes)
                limit = f" of at most {max_length} characters" if max_length else ""
                raise self.invalid(
                    value,
                    f"item {index} is {type(item).__name__} {shown(item)}, but this column "
                    f"holds {wanted} items{limit}",
                    "Convert or drop that item; None items are not stored.",
                )
        return value

    def coerce_set(self, value: Any) -> Any:
        return value if value is None else self.check(value)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        self.check(value)
        if dialect.name == "postgresql":
            return list(value)
        return make_encoder(None)(list(value))

    def fast_check(self) -> Callable[[Any], Any]:
        """``check`` with a fast path for the usual value: a list of exactly-typed items.

        Anything the fast path does not accept goes through ``check``, which raises the
        error naming the column and the offending item.
        """
        slow, max_length, exact = self.check, self._max_length, self._exact
        if self._classes == (str,):
            join = "".join

            def check_strings(value: Any) -> Any:
                if value.__class__ is list:
                    try:
                        join(value)  # one C loop; TypeError at the first item not a str
                    except TypeError:
                        return slow(value)
                    if max_length is None or not value or max(map(len, value)) <= max_length:
                        return value
                return slow(value)

            return check_strings

        def check_items(value: Any) -> Any:
            if value.__class__ is list and set(map(type, value)) <= exact:
                return value
            return slow(value)

        return check_items

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        # One closure per dialect, with the item check inlined (bench_types per value).
        check = self.fast_check()
        if dialect.name == "postgresql":

            def bind_array(value: Any) -> Any:
                return None if value is None else check(value)

            return bind_array
        encode = make_encoder(None)

        def bind_json(value: Any) -> Any:
            return None if value is None else encode(check(value))

        return bind_json

    class Comparator(TypeDecorator.Comparator[list[Any]]):
        """Adds ``contains_all`` and ``contains_any`` to list columns."""

        def contains_all(self, values: Iterable[Any]) -> ColumnElement[bool]:
            """True where the list holds every one of *values* (PostgreSQL ``@>``).

            An empty *values* matches every non-NULL list.

            Example::

                select(User).where(User.tags.contains_all(["admin", "staff"]))
            """
            wanted = list(dict.fromkeys(values))
            if not wanted:
                return self.expr.is_not(None)
            return ArrayContains(self.expr, bindparam(None, wanted, type_=self.type), "all")

        def contains_any(self, values: Iterable[Any]) -> ColumnElement[bool]:
            """True where the list holds at least one of *values* (PostgreSQL ``&&``).

            An empty *values* matches nothing.

            Example::

                select(User).where(User.tags.contains_any(["admin", "staff"]))
            """
            wanted = list(dict.fromkeys(values))
            if not wanted:
                return false()
            return ArrayContains(self.expr, bindparam(None, wanted, type_=self.type), "any")

    comparator_factory = Comparator

    def __repr__(self) -> str:
        flag = "" if self.mutable else ", mutable=False"
        return f"ArrayType({self.item_type!r}{flag})"


class StringArray(ArrayType):
    """``ArrayType(String(length))``: the portable spelling of ``ARRAY(String)``.

    Example::

        tags: Mapped[list[str]] = mapped_column(StringArray, default_factory=list)
    """

    cache_ok = True

    def __init__(self, length: int | None = None, *, mutable: bool = True) -> None:
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 1
        ):
            hint = (
                " StringArray already holds strings: write StringArray() or "
                "StringArray(50), or ArrayType(...) for other item types."
                if isinstance(length, type | TypeEngine)
                else ""
            )
            raise ConfigurationError(
                f"StringArray(length={length!r}): length must be a whole number >= 1 (the "
                f"longest string an item may hold), or None for no limit.{hint}"
            )
        super().__init__(String(length), mutable=mutable)
        self.length = length

    def __repr__(self) -> str:
        args = [f"length={self.length}"] if self.length is not None else []
        if not self.mutable:
            args.append("mutable=False")
        return f"StringArray({', '.join(args)})"


class ArrayContains(ColumnElement[bool]):
    """``column contains all/any of a list``, compiled per database (see module doc)."""

    __visit_name__ = "dbkeel_array_contains"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy reads it from the class)
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
        ("mode", InternalTraversal.dp_string),
    ]
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], values: BindParameter[Any], mode: str):
        self.column = column
        self.values = values
        self.mode = mode


@compiles(ArrayContains)
def _compile_default(element: ArrayContains, compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(
        f"contains_{element.mode}() has no SQL for the {compiler.dialect.name!r} database; "
        f"dbkeel supports postgresql, sqlite and mariadb/mysql."
    )


@compiles(ArrayContains, "postgresql")
def _compile_postgresql(element: ArrayContains, compiler: SQLCompiler, **kw: Any) -> str:
    operator = "@>" if element.mode == "all" else "&&"
    column = compiler.process(element.column, **kw)
    return f"({column} {operator} {compiler.process(element.values, **kw)})"


@compiles(ArrayContains, "sqlite")
def _compile_sqlite(element: ArrayContains, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(element.values, **kw)
    if element.mode == "all":  # no wanted value is missing from the stored list
        return (
            f"(NOT EXISTS (SELECT 1 FROM json_each({values}) AS dbkeel_w WHERE dbkeel_w.value "
            f"NOT IN (SELECT dbkeel_h.value FROM json_each({column}) AS dbkeel_h)))"
        )
    return (
        f"(EXISTS (SELECT 1 FROM json_each({column}) AS dbkeel_h WHERE dbkeel_h.value "
        f"IN (SELECT dbkeel_w.value FROM json_each({values}) AS dbkeel_w)))"
    )


#: First versions with ``JSON_OVERLAPS`` (dbkeel supports MariaDB from 10.6).
_JSON_OVERLAPS_SINCE = {"mariadb": (10, 9), "mysql": (8, 0, 17)}


def _has_json_overlaps(dialect: Dialect) -> bool:
    version = dialect.server_version_info
    since = _JSON_OVERLAPS_SINCE["mariadb" if getattr(dialect, "is_mariadb", False) else "mysql"]
    return version is not None and tuple(version[: len(since)]) >= since


@compiles(ArrayContains, "mysql")
@compiles(ArrayContains, "mariadb")
def _compile_mysql(element: ArrayContains, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    values = compiler.process(element.values, **kw)
    if element.mode == "all":
        return f"(JSON_CONTAINS({column}, {values}) = 1)"
    if _has_json_overlaps(compiler.dialect):
        return f"(JSON_OVERLAPS({column}, {values}) = 1)"
    # MariaDB 10.6-10.8: one row per wanted item (JSON_TABLE exists since 10.6), each
    # item taken back out of the list as JSON so that 1, "1" and true stay distinct.
    again = compiler.process(element.values, **kw)
    return (
        f"(EXISTS (SELECT 1 FROM JSON_TABLE({values}, '$[*]' COLUMNS (dbkeel_i FOR "
        f"ORDINALITY)) AS dbkeel_w WHERE JSON_CONTAINS({column}, JSON_EXTRACT({again}, "
        f"CONCAT('$[', dbkeel_w.dbkeel_i - 1, ']'))) = 1))"
    )
