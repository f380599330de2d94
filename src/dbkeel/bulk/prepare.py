"""Row preparation: what ``session.add()`` would have done to a row, done up front.

A :class:`RowPlan` is built once per (model, dialect). For every row it checks the keys,
fills Python-side defaults (column ``default``/``insert_default`` scalars and callables,
dataclass ``default_factory``, the mapper's version counter) and, for COPY, runs every
column type's bind processing (TypeDecorators included) so the driver gets exactly the
values an ``INSERT`` through SQLAlchemy would have sent.

Errors name the row index and the column before anything is sent.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import ColumnDefault, Computed, Identity
from sqlalchemy.sql.schema import Sequence as SqlSequence

from dbkeel.exceptions import BulkRowError, ConfigurationError, DbkeelError
from dbkeel.types._base import shown as _shown

__all__ = ["ColumnPlan", "DefaultContext", "RowPlan"]

_MISSING: Any = object()
Processor = Callable[[Any], Any]


class DefaultContext:
    """The part of SQLAlchemy's execution context a context-aware default may read."""

    __slots__ = ("_params",)

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self._params


@dataclasses.dataclass(slots=True)
class ColumnPlan:
    """How one mapped column gets its value in a bulk write."""

    key: str  # attribute name, as in the input rows
    column: Column[Any]
    default: Callable[[dict[str, Any]], Any] | None  # Python-side insert value
    sql_default: ColumnElement[Any] | None  # insert_default=func.now() and the like
    server_filled: bool  # the database fills it when the column is left out
    required: bool  # NOT NULL with nothing to fill it
    secret: bool  # never show its values in an error
    processor: Processor | None = None


def _is_secret(column: Column[Any]) -> bool:
    if column.info.get("sensitive"):
        return True
    return any("Encrypt" in cls.__name__ for cls in type(column.type).__mro__)


def _python_default(
    column: Column[Any], factory: Callable[[], Any] | None
) -> Callable[[dict[str, Any]], Any] | None:
    if factory is not None:
        return _Plain(factory)
    default = column.default
    if not isinstance(default, ColumnDefault):
        return None
    if default.is_scalar:
        return ScalarDefault(default.arg)
    if default.is_callable:
        fn: Any = default.arg
        plain = _zero_argument(getattr(fn, "__wrapped__", None))
        if plain is not None:
            # SQLAlchemy wraps a zero-argument default as `lambda ctx: fn()`; calling fn
            # itself (as `.plain`) saves a context object and two calls per row.
            return _Plain(plain)
        return lambda row: fn(DefaultContext(row))
    return None


class _Plain:
    """A zero-argument default, callable with the row like the others."""

    __slots__ = ("plain",)

    def __init__(self, plain: Callable[[], Any]) -> None:
        self.plain = plain

    def __call__(self, _row: dict[str, Any]) -> Any:
        return self.plain()


class ScalarDefault:
    """A constant default, callable with the row like the others."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, _row: dict[str, Any]) -> Any:
        return self.value


def _zero_argument(fn: Any) -> Callable[[], Any] | None:
    if not callable(fn):
        return None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required = [
        p
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return None if required else fn


def _sql_default(column: Column[Any]) -> ColumnElement[Any] | None:
    default = column.default
    if isinstance(default, ColumnDefault) and default.is_clause_element:
        expr: ColumnElement[Any] = default.arg
        return expr
    return None


class RowPlan:
    """The per-model recipe for turning input dicts into insertable rows.

    Example::

        plan = RowPlan(User, dialect)
        mappings = plan.mappings(batch, start=0)  # validated, defaults filled
    """

    def __init__(self, mapper: Mapper[Any], dialect: Dialect) -> None:
        table = mapper.local_table
        if not isinstance(table, Table):
            raise ConfigurationError(
                f"bulk writes need a model mapped to one table; {mapper.class_.__name__} is "
                f"mapped to {table!r}. Use insert() on the table itself."
            )
        self.mapper = mapper
        self.table = table
        self.dialect = dialect
        self.model_name = mapper.class_.__name__
        factories: dict[str, Callable[[], Any]] = {}
        if dataclasses.is_dataclass(mapper.class_):
            for field in dataclasses.fields(mapper.class_):
                factory = field.default_factory
                # For init=False fields SQLAlchemy installs its own factory that returns
                # the DONT_SET sentinel (the column default does the work): not a value.
                internal = getattr(factory, "__qualname__", "").startswith("_AttributeOptions")
                if factory is not dataclasses.MISSING and not internal:
                    factories[field.name] = factory
        version_col = mapper.version_id_col
        generator = mapper.version_id_generator
        autoinc = table.autoincrement_column
        self.columns: list[ColumnPlan] = []
        for column in table.columns:
            key = mapper.get_property_by_column(column).key
            default = _python_default(column, factories.get(key))
            if column is version_col and default is None and callable(generator):
                gen = generator
                default = _Plain(functools.partial(gen, None))
            sql_default = _sql_default(column)
            server_filled = (
                column.server_default is not None
                or column is autoinc
                or isinstance(column.default, SqlSequence)
                or isinstance(column.identity, Identity)
            )
            required = not (column.nullable or default or sql_default is not None or server_filled)
            plan = ColumnPlan(
                key=key,
                column=column,
                default=default,
                sql_default=sql_default,
                server_filled=server_filled,
                required=required,
                secret=_is_secret(column),
            )
            if isinstance(column.computed, Computed):
                plan.server_filled = True
                plan.required = False
            self.columns.append(plan)
        self.by_key = {c.key: c for c in self.columns}
        self.keys = frozenset(self.by_key)
        self.computed = frozenset(c.key for c in self.columns if c.column.computed is not None)
        self.required = frozenset(c.key for c in self.columns if c.required)
        #: every Python default is a constant or takes no arguments: COPY can fill them
        #: in its record loop
        self.plain_defaults = all(
            isinstance(c.default, _Plain | ScalarDefault)
            for c in self.columns
            if c.default is not None
        )

    # -- validation and defaults --------------------------------------------------------

    def _bad_key(self, index: int, row: Mapping[str, Any]) -> BulkRowError:
        unknown = sorted(set(row) - self.keys, key=str)
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), sorted(self.keys), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        return BulkRowError(
            f"row {index} of the {self.model_name} bulk write has the key {key!r}, which is "
            f"not a column attribute of {self.model_name}.{did_you_mean} Rows are dicts keyed "
            f"by attribute name, as for insert({self.model_name}); the columns are: "
            f"{', '.join(sorted(self.keys))}.",
            row_index=index,
            column=str(key),
        )

    def check(self, rows: Sequence[Any], start: int) -> None:
        """Refuse a row that is not a dict, has an unknown key, lacks a required value,
        sets a NOT NULL column to None or gives a computed column; copies nothing."""
        keys = self.keys
        required = self.required
        not_null = [p.key for p in self.columns if not p.column.nullable]
        computed = self.computed
        for offset, row in enumerate(rows):
            if type(row) is not dict and not isinstance(row, Mapping):
                index = start + offset
                raise BulkRowError(
                    f"row {index} of the {self.model_name} bulk write is a "
                    f"{type(row).__name__}, not a dict: pass one dict per row, keyed by "
                    f"attribute name.",
                    row_index=index,
                )
            if not keys.issuperset(row):
                raise self._bad_key(start + offset, row)
            if not required.issubset(row):
                raise self._missing(start + offset, sorted(required - row.keys())[0])
            if None in row.values():
                for key in not_null:
                    if key in row and row[key] is None:
                        self._check_not_null(self.by_key[key], start + offset)
            if computed and not computed.isdisjoint(row):
                raise self._computed(start + offset, row)

    def mappings(self, rows: Sequence[Any], start: int) -> list[dict[str, Any]]:
        """Check *rows* and return them as new dicts with every Python default filled.

        Server-filled columns (server defaults, autoincrement keys) and SQL-expression
        defaults are left out when the row does not give them, as an INSERT would.
        """
        self.check(rows, start)
        fillers = [(p.key, p.default) for p in self.columns if p.default is not None]
        width = len(self.keys)
        out: list[dict[str, Any]] = []
        append = out.append
        for row in rows:
            if len(row) == width:
                append(row)  # nothing to fill; SQLAlchemy does not change it either
                continue
            filled = dict(row)
            for key, default in fillers:
                if key not in filled:
                    filled[key] = default(filled)
            append(filled)
        return out

    def _missing(self, index: int, key: str) -> BulkRowError:
        return BulkRowError(
            f"row {index} of the {self.model_name} bulk write has no value for {key!r}, "
            f"which is NOT NULL and has no default. Give every row a {key!r} key (or a "
            f"default on the column).",
            row_index=index,
            column=key,
        )

    def _computed(self, index: int, row: Mapping[str, Any]) -> BulkRowError:
        name = sorted(self.computed & set(row))[0]
        return BulkRowError(
            f"row {index} of the {self.model_name} bulk write gives {name!r}, a computed "
            f"column the database calculates itself; drop the key.",
            row_index=index,
            column=name,
        )

    def _check_not_null(self, plan: ColumnPlan, index: int) -> None:
        if plan.server_filled and plan.column is self.table.autoincrement_column:
            return
        raise BulkRowError(
            f"row {index} of the {self.model_name} bulk write sets {plan.key!r} to None, "
            f"but the column is NOT NULL. Give a value, or leave the key out to get the "
            f"column's default.",
            row_index=index,
            column=plan.key,
        )

    # -- bind processing ----------------------------------------------------------------

    def processors(self) -> None:
        """Resolve each column's bind processor for this plan's dialect (once)."""
        for plan in self.columns:
            impl = plan.column.type.dialect_impl(self.dialect)
            plan.processor = impl.bind_processor(self.dialect)

    def check_values_if_split(self, mappings: list[dict[str, Any]], start: int) -> None:
        """Check every value of *mappings* now if SQLAlchemy would send them in parts.

        The ORM sends rows with different key sets as separate statements, processing
        each group's values just before sending it; a refused value in a later group
        would then come after an earlier one was sent. Rows with one key set (the usual
        case) are processed all at once, and need no pass of their own.
        """
        keys = mappings[0].keys()
        if not all(row.keys() == keys for row in mappings):
            refused = self.find_refused(mappings, start)
            if refused is not None:
                raise refused

    def find_refused(self, mappings: Iterable[dict[str, Any]], start: int) -> BulkRowError | None:
        """The error for the first value of *mappings* a TypeDecorator refuses, if any.

        The write paths call it after SQLAlchemy's own bind processing failed, to say
        which row and column it was.
        """
        checked = [p for p in self.columns if p.processor is not None and _decorated(p)]
        for offset, row in enumerate(mappings):
            for plan in checked:
                value = row.get(plan.key, _MISSING)
                if value is not _MISSING:
                    try:
                        self.process(plan, value, start + offset)
                    except BulkRowError as exc:
                        return exc
        return None

    def process(self, plan: ColumnPlan, value: Any, index: int) -> Any:
        """*value* as the driver should receive it; a refusal becomes a BulkRowError."""
        assert plan.processor is not None
        try:
            return plan.processor(value)
        except (DbkeelError, ValueError, TypeError, ArithmeticError) as exc:
            raise self.refused(plan, value, index, exc) from exc

    def refused(self, plan: ColumnPlan, value: Any, index: int, exc: Exception) -> BulkRowError:
        """The error for a value the column's type would not take."""
        if plan.secret:
            shown, why, kept = "a value (hidden: the column is sensitive)", type(exc).__name__, None
        else:
            # shortened: a long value (a 10 KB document) makes an unreadable message
            shown, why, kept = _shown(value), _cut(f"{type(exc).__name__}: {exc}"), value
        return BulkRowError(
            f"row {index} of the {self.model_name} bulk write: column {plan.key!r} "
            f"({plan.column.type!r}) refused {shown} ({why}). Fix the value in the input "
            f"and run the call again.",
            row_index=index,
            column=plan.key,
            value=kept,
        )


def _decorated(plan: ColumnPlan) -> bool:
    from sqlalchemy.types import TypeDecorator

    return isinstance(plan.column.type, TypeDecorator)


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
