"""Blind index: find rows by the exact value of an encrypted column without decrypting.

A ``BlindIndex`` column next to an encrypted one holds HMAC-SHA256(index key,
``table.source`` + normalized plaintext). It is filled on every ORM insert and update of the
source attribute, on Core inserts that give the source column, and on every UPDATE
statement (Core or ORM-enabled, ``.values()`` or executemany parameters) that sets the
source column without setting the index; compare it with a plaintext and the plaintext is
hashed the same way at execution::

    class User(Base):
        __tablename__ = "users"
        email: Mapped[str] = mapped_column(EncryptedType(String(320)))
        email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"), index=True)

    await session.scalar(select(User).where(blind_match(User.email_index, "Ada@Example.com")))

Leakage: equal (normalized) values have equal indexes, so whoever reads the table learns
which rows share a value, and how often each value occurs. Nothing else about the value.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, ColumnDefault, Table, event, literal, util
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import BindParameter, ColumnElement, Null
from sqlalchemy.types import LargeBinary, TypeDecorator, TypeEngine

from dbkeel.encryption import registry
from dbkeel.exceptions import ConfigurationError, EncryptedValueError

__all__ = ["BlindIndex", "blind_match", "normalize_text", "watch_updates"]

INDEX_SIZE = 32


def normalize_text(value: str) -> str:
    """The default normalization: Unicode NFKC, surrounding blanks stripped, case folded."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


class BlindIndex(TypeDecorator[bytes]):
    """A 32-byte keyed hash of another column's normalized plaintext, for equality lookups.

    *source* is the column key of the encrypted column in the same table (its attribute
    name, unless ``mapped_column("db_name")`` gave the column another name);
    *normalize* maps a str to the form that is compared (default :func:`normalize_text`:
    case- and width-insensitive). Binding a ``str`` stores its index; binding 32 bytes
    stores them as they are (an index computed elsewhere). The key is the ring's blind-index
    key (``DATABASE_BLIND_INDEX_KEY``), never an encryption key.

    Example::

        email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"), index=True)
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(self, source: str, normalize: Callable[[str], str] = normalize_text) -> None:
        super().__init__()
        self.source = source
        self.normalize = normalize
        self._ident: bytes | None = None
        # the names an UPDATE may use for the source and for this column: column keys,
        # and the ORM attribute names once the model is mapped
        self._source_names: set[str] = {source}
        self._index_names: set[str] = set()

    def _set_parent(self, parent: Any, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        if isinstance(parent, Column):
            parent._on_table_attach(self._attach)

    def _attach(self, column: Column[Any], table: Table) -> None:
        self._ident = f"{table.name}.{self.source}".encode()
        self._index_names.add(column.key)
        registry.register(column, "blind_index")
        if column.default is None:
            # Core inserts that give the source column get their index too.
            ColumnDefault(_default_from(self.source))._set_parent_with_dispatch(column)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.VARBINARY(INDEX_SIZE))  # indexable, unlike BLOB
        return dialect.type_descriptor(LargeBinary())

    @property
    def python_type(self) -> type[bytes]:
        return bytes

    def digest(self, value: str, dialect: Dialect) -> bytes:
        """The index of *value* under the key ring attached to *dialect*'s engine."""
        if self._ident is None:
            raise ConfigurationError(
                f"BlindIndex({self.source!r}) is not attached to a table column, so it does "
                f"not know which column it indexes."
            )
        ring = registry.ring_for(dialect, self._ident.decode())
        return ring.index(self.normalize(value).encode(), self._ident)

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, str):
            return self.digest(value, dialect)
        if isinstance(value, bytes) and len(value) == INDEX_SIZE:
            return value
        raise EncryptedValueError(
            f"Blind index of {self._ident.decode() if self._ident else self.source} takes "
            f"the plaintext str (or a computed {INDEX_SIZE}-byte index), not a "
            f"{type(value).__name__}.",
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes(value)

    def __repr__(self) -> str:
        return f"BlindIndex({self.source!r})"

    def _ident_name(self) -> str:
        return self._ident.decode() if self._ident else self.source


def _default_from(source: str) -> Callable[[Any], Any]:
    def index_default(context: Any) -> Any:
        # Returns the plaintext: the column's type turns it into the index when binding.
        return context.get_current_parameters().get(source)

    return index_default


def blind_match(index_column: Any, value: str) -> ColumnElement[bool]:
    """``WHERE index_column = index(value)``: find rows whose source equals *value*.

    Example::

        stmt = select(User).where(blind_match(User.email_index, "ada@example.com"))
    """
    if not isinstance(getattr(index_column, "type", None), BlindIndex):
        raise ConfigurationError(
            f"blind_match() needs a BlindIndex column, got {index_column!r}: compare the "
            f"index column that names the encrypted column as its source."
        )
    return index_column == value  # type: ignore[no-any-return]


# -- keeping the index in sync on ORM flushes ---------------------------------------------


def _index_columns(mapper: Mapper[Any]) -> list[tuple[str, str, BlindIndex]]:
    """(index attribute, source attribute, type) for each BlindIndex column of *mapper*."""
    found = []
    for prop in mapper.column_attrs:
        for col in prop.columns:
            if isinstance(col.type, BlindIndex) and isinstance(col, Column):
                source = mapper.get_property_by_column(col.table.c[col.type.source])
                found.append((prop.key, source.key, col.type))
    return found


def _sync(mapper: Mapper[Any], connection: Connection, target: Any, *, update: bool) -> None:
    from sqlalchemy import inspect

    state = inspect(target)
    for index_key, source_key, type_ in mapper.class_manager.info["dbkeel_blind_indexes"]:
        if update and not state.attrs[source_key].history.has_changes():
            continue
        value = getattr(target, source_key)
        digest = None if value is None else type_.digest(value, connection.dialect)
        setattr(target, index_key, digest)


def _before_insert(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    _sync(mapper, connection, target, update=False)


def _before_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    _sync(mapper, connection, target, update=True)


@event.listens_for(Mapper, "mapper_configured")
def _on_mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    if mapper.local_table is None or not any(
        isinstance(c.type, BlindIndex) for c in mapper.local_table.c
    ):
        return
    indexes = _index_columns(mapper)
    for index_key, source_key, type_ in indexes:
        type_._index_names.add(index_key)
        type_._source_names.add(source_key)
    mapper.class_manager.info["dbkeel_blind_indexes"] = indexes
    event.listen(mapper, "before_insert", _before_insert)
    event.listen(mapper, "before_update", _before_update)


# -- keeping the index in sync on UPDATE statements ---------------------------------------


def watch_updates(engine: Engine) -> None:
    """Keep blind indexes in sync on *engine*'s UPDATE statements (idempotent).

    Called by ``use_key_ring`` for a ring with a blind-index key: only an engine that can
    compute an index needs it. A statement that is not an UPDATE costs one isinstance
    check; an UPDATE of a table without a blind index, one pass over its columns.
    """
    if not event.contains(engine, "before_execute", _before_execute):
        event.listen(engine, "before_execute", _before_execute, retval=True)


def _before_execute(
    conn: Connection,
    statement: Any,
    multiparams: list[dict[str, Any]],
    params: dict[str, Any],
    execution_options: Any,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    if not isinstance(statement, Update):
        return statement, multiparams, params
    # An ORM bulk UPDATE of a joined-inheritance model runs one statement per table; each
    # names the table it writes in this annotation (its .table is the subclass's).
    target = statement._annotations.get("_emit_update_table", statement.table)
    for column in getattr(target, "c", ()):
        type_ = column.type
        if isinstance(type_, BlindIndex):
            statement, multiparams, params = _sync_update(
                statement, multiparams, params, target, column, type_
            )
    return statement, multiparams, params


def _sets(key: Any, target: Any, column: Any, names: set[str]) -> bool:
    """True when the .values() key *key* names *column* of the UPDATE's *target* table."""
    if isinstance(key, str):  # a column key or an ORM attribute name
        return key in names
    clause = key.__clause_element__() if hasattr(key, "__clause_element__") else key
    if not isinstance(clause, ColumnElement):
        return False
    # a column of another table (a multi-table UPDATE on MariaDB) does not count
    found = target.c.corresponding_column(clause)
    return found is not None and found.key == column.key


def _sync_update(
    statement: Update,
    multiparams: list[dict[str, Any]],
    params: dict[str, Any],
    target: Any,
    column: Column[Any],
    type_: BlindIndex,
) -> tuple[Update, list[dict[str, Any]], dict[str, Any]]:
    values: dict[Any, Any] = statement._values or {}  # what .values() set
    if any(_sets(k, target, column, type_._index_names) for k in values):
        return statement, multiparams, params  # the statement sets the index itself
    source = target.c[type_.source]
    rows = multiparams or ([params] if params else [])
    # The index is set to the plaintext: the column's type hashes it when binding.
    given = [v for k, v in values.items() if _sets(k, target, source, type_._source_names)]
    if given and not any(source.key in row for row in rows):
        value = given[0]
        if isinstance(value, BindParameter) and (
            value.required or any(value.key in row for row in rows)
        ):
            # filled by the execute parameters: index it from each of them
            key = f"{value.key}_{column.key}_dbkeel_index"
            index = BindParameter(key, type_=column.type)
            return _set(statement, column, index), *_add_index_param(
                multiparams, params, value.key, key
            )
        if isinstance(value, Null) or value is None:
            return _set(statement, column, None), multiparams, params
        if isinstance(value, BindParameter):
            return _set(statement, column, value.effective_value), multiparams, params
        raise ConfigurationError(
            f"An UPDATE sets {type_._ident_name()} to a SQL expression ({value}), so its "
            f"blind index {column.key!r} cannot be computed in Python. Set {column.key!r} in "
            f"the same .values() (to the plaintext: the column's type hashes it), or set the "
            f"source to a plain value."
        )
    # the execute parameters give the source (executemany, ORM bulk by primary key, ORM
    # flushes; with or without .values()): their keys are part of the SET clause
    return statement, *_add_index_param(multiparams, params, source.key, column.key)


def _set(statement: Update, column: Column[Any], value: Any) -> Update:
    if not statement._maintain_values_ordering:
        return statement.values({column: value})
    # ordered_values() cannot be called twice: the index goes last, the order kept
    ordered = statement._generate()
    bound = value if isinstance(value, BindParameter) else literal(value, column.type)
    current: dict[Any, Any] = dict(statement._values or {})
    ordered._values = util.immutabledict({**current, column: bound})
    return ordered


def _add_index_param(
    multiparams: list[dict[str, Any]], params: dict[str, Any], source: str, key: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    def fill(row: dict[str, Any]) -> dict[str, Any]:
        if source not in row or key in row:
            return row
        return {**row, key: row[source]}  # the plaintext: the index column's type hashes it

    return [fill(row) for row in multiparams], fill(params) if params else params
