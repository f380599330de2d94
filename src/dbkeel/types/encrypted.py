"""``EncryptedType``: a column whose values are sealed with AES-256-GCM before they leave
the process.

Each value gets a fresh random 96-bit nonce and is stored as a versioned binary envelope
(see ``dbkeel.encryption.envelope`` and docs/encryption.md) that names its key id and is
bound to its ``table.column``. The keys live on the engine's key ring, never on the type.

Example::

    from dbkeel.types import EncryptedType

    class User(Base):
        __tablename__ = "users"
        ssn: Mapped[str] = mapped_column(EncryptedType(String(11)))
        profile: Mapped[dict] = mapped_column(EncryptedType(JSON))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.types import JSON, LargeBinary, String, TypeDecorator, TypeEngine, to_instance

from dbkeel.encryption import registry
from dbkeel.encryption.envelope import OVERHEAD
from dbkeel.exceptions import (
    ConfigurationError,
    DecryptionError,
    EncryptedValueError,
    InvalidValueError,
    KeyRingError,
)

__all__ = ["EncryptedType"]

_STR, _JSON, _BYTES = 0, 1, 2
# MariaDB: VARBINARY up to this many bytes (counts against the 64 KiB row limit), else LONGBLOB
_MAX_VARBINARY = 4096
_MAX_KEY_ID = 32
_RING = registry.RING_ATTRIBUTE
_urandom = os.urandom


def _kind_of(inner: TypeEngine[Any]) -> int:
    base = inner.impl_instance if isinstance(inner, TypeDecorator) else inner
    if isinstance(base, JSON):
        return _JSON
    if isinstance(base, String):
        return _STR
    if isinstance(base, LargeBinary):
        return _BYTES
    raise ConfigurationError(
        f"EncryptedType cannot wrap {inner!r}: it encrypts the serialized value of a string "
        f"type (String, Text, Unicode), a JSON type (JSON, JSONB, a JSON TypeDecorator) or "
        f"LargeBinary. Store other values as one of those."
    )


class EncryptedType(TypeDecorator[Any]):
    """Encrypts the value of an inner type (``String`` by default) with the engine's keys.

    Strings are stored as UTF-8, JSON types as compact JSON, ``LargeBinary`` as is; an inner
    ``TypeDecorator``'s own processing runs first. The column is binary: ``BYTEA`` on
    PostgreSQL, ``BLOB`` on SQLite, ``VARBINARY(n)`` (or ``LONGBLOB`` when unbounded) on
    MariaDB. Each stored value is ``len(serialized) + 30 + len(key_id)`` bytes.

    Use one instance per column: the instance learns its ``table.column`` when the column
    is attached to a table, and binds every ciphertext to it. Encrypted values cannot be
    compared in SQL; search with a :class:`dbkeel.encryption.BlindIndex` column.

    Example::

        email: Mapped[str] = mapped_column(EncryptedType(String(320)))
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(self, inner: type[TypeEngine[Any]] | TypeEngine[Any] = String) -> None:
        super().__init__()
        # Only `inner` is named like an __init__ parameter, so only it enters the statement
        # cache key; no key material is ever stored on the type.
        self.inner: TypeEngine[Any] = to_instance(inner)
        self._kind = _kind_of(self.inner)
        length = getattr(self.inner, "length", None)
        self._max_chars: int | None = length if self._kind == _STR else None
        # an inner TypeDecorator's own processing, when it has any (the base class raises)
        inner_cls: Any = type(self.inner)
        is_td = isinstance(self.inner, TypeDecorator)
        self._inner_bind = is_td and (
            inner_cls.process_bind_param is not TypeDecorator.process_bind_param
        )
        self._inner_result = is_td and (
            inner_cls.process_result_value is not TypeDecorator.process_result_value
        )
        self._inner_td = self.inner if self._inner_bind or self._inner_result else None
        # a str column with no inner processing: the fast path of both directions
        self._plain_str = self._kind == _STR and self._inner_td is None
        self._column: Column[Any] | None = None
        self._ident: bytes | None = None

    # -- learning the table and column -------------------------------------------------------

    def _set_parent(self, parent: Any, outer: bool = False, **kw: Any) -> None:
        super()._set_parent(parent, outer=outer, **kw)
        if not isinstance(parent, Column):
            return
        if self._column is not None and self._column is not parent:
            raise ConfigurationError(
                f"One EncryptedType instance was given to two columns ({self._where} and "
                f"{parent.name}): each ciphertext is bound to its column, so give every "
                f"column its own EncryptedType(...)."
            )
        self._column = parent
        parent._on_table_attach(self._attach)

    def _attach(self, column: Column[Any], table: Table) -> None:
        self._ident = f"{table.name}.{column.name}".encode()
        registry.register(column, "encrypted")

    def copy(self, **kw: Any) -> EncryptedType:
        # SQLAlchemy copies types for two reasons: Column._copy() (mixins, to_metadata),
        # after which the new column binds the copy again, and the per-dialect impl made at
        # compile time, which must keep the table.column it was copied from.
        new = super().copy(**kw)
        new._column = None
        return new

    @property
    def _where(self) -> str:
        if self._ident is not None:
            return self._ident.decode()
        name = self._column.name if self._column is not None else None
        return f"column {name!r} (not attached to a table)" if name else "an unattached column"

    # -- SQLAlchemy hooks ----------------------------------------------------------------

    @property
    def python_type(self) -> type[Any]:
        return self.inner.python_type

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            if self._max_chars is not None:
                size = self._max_chars * 4 + OVERHEAD + _MAX_KEY_ID
                if size <= _MAX_VARBINARY:
                    return dialect.type_descriptor(mysql.VARBINARY(size))
            return dialect.type_descriptor(mysql.LONGBLOB())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        # Runs once per value: the common case (a str that fits) takes the first return.
        if value is None:
            return None
        ring = getattr(dialect, _RING, None)
        ident = self._ident
        if ring is None or ident is None:
            raise self._no_keys(dialect)
        if self._plain_str and value.__class__ is str:
            limit = self._max_chars
            if limit is None or len(value) <= limit:
                # KeyRing.seal() inlined: a Python call costs as much as the rest of this
                # path (benchmarks/bench_encryption.py); keep the two in step.
                head: bytes = ring._active_header
                nonce = _urandom(12)
                sealed: bytes = nonce + ring._aead_active.encrypt(
                    nonce, value.encode(), head + ident
                )
                return head + sealed
        result: bytes = ring.seal(self._serialize(value, dialect), ident)
        return result

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        # TypeDecorator's processor would wrap process_bind_param and then pass the bytes
        # through LargeBinary's (a copy into dbapi.Binary); every driver dbkeel supports
        # takes bytes for a binary column, so this runs one call per value instead of three.
        process = self.process_bind_param

        def bind_encrypted(value: Any) -> Any:
            return process(value, dialect)

        return bind_encrypted

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value.__class__ is not bytes:  # bytes first: the one test of the usual value
            if value is None:
                return None
            if not isinstance(value, bytearray | memoryview):
                raise self._foreign(value)
            value = bytes(value)  # memoryview / bytearray from some drivers
        try:
            # an attribute read, not getattr(dialect, _RING, None): a builtin call costs a
            # measurable share of this path (issue 17's decrypt goal, <= 1.5x raw AES-GCM)
            ring = dialect._dbkeel_key_ring  # type: ignore[attr-defined]
        except AttributeError:
            ring = None
        ident = self._ident
        if ring is None or ident is None:
            raise self._no_keys(dialect)
        if self._plain_str:
            # KeyRing.open() inlined (see process_bind_param); any failure goes through
            # open() itself, which raises the DecryptionError that says what went wrong.
            try:
                end = value[1] + 2
                head = value[:end]
                data: bytes = ring._aeads_by_header[head].decrypt(
                    value[end : end + 12], value[end + 12 :], head + ident
                )
            except ring._open_errors:
                data = ring.open(value, ident)
            return data.decode()
        data = ring.open(value, ident)
        result: Any = json.loads(data) if self._kind == _JSON else data
        if self._inner_result:
            result = self.inner.process_result_value(result, dialect)  # type: ignore[attr-defined]
        return result

    def _foreign(self, value: Any) -> DecryptionError:
        # Text where dbkeel writes bytes: another library's ciphertext (sqlalchemy-utils'
        # StringEncryptedType and advanced-alchemy's EncryptedString store base64 text).
        return DecryptionError(
            f"Cannot decrypt {self._where}: the stored value is {type(value).__name__} "
            f"({len(value) if isinstance(value, str) else '?'} characters), not dbkeel's "
            f"binary envelope. It was written by another library or by hand. Re-encrypt it "
            f"with dbkeel (read it with the library that wrote it, then assign it through "
            f"this column), or store it in a column of that library's type."
        )

    def __repr__(self) -> str:
        return f"EncryptedType({self.inner!r})"

    # -- helpers -----------------------------------------------------------------------

    def _serialize(self, value: Any, dialect: Dialect) -> bytes:
        if self._inner_bind:
            try:
                value = self.inner.process_bind_param(value, dialect)  # type: ignore[attr-defined]
            except (InvalidValueError, TypeError, ValueError) as exc:
                # the inner type's message would show the value: the plaintext
                why = f"refused by {self.inner!r} ({type(exc).__name__})"
                raise self._refused(value, why) from None
            if self._kind == _JSON and isinstance(value, str):
                return value.encode()  # a JSON TypeDecorator (JSONBType) returns JSON text
        if self._kind == _STR:
            if not isinstance(value, str):
                raise self._refused(value, f"a {type(value).__name__}, not a str")
            if self._max_chars is not None and len(value) > self._max_chars:
                raise self._refused(
                    value,
                    f"{len(value)} characters, over the limit of {self._max_chars} of "
                    f"{self.inner!r}",
                )
            return value.encode()
        if self._kind == _BYTES:
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            raise self._refused(value, f"a {type(value).__name__}, not bytes")
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise self._refused(value, f"not JSON-serializable ({type(exc).__name__})") from None

    def _refused(self, value: Any, why: str) -> EncryptedValueError:
        # The value itself is never shown: it is the plaintext this column protects.
        return EncryptedValueError(
            f"Encrypted column {self._where} ({self!r}) cannot store the value given: it is "
            f"{why}. Convert the value before assigning it.",
            column=self._where,
        )

    def _no_keys(self, dialect: Dialect) -> KeyRingError:
        if self._ident is not None:
            registry.ring_for(dialect, self._where)  # raises the no-key-ring error
        return KeyRingError(
            f"EncryptedType on {self._where} was used outside a table column: each "
            f"ciphertext is bound to its table.column, so the type works only on a "
            f"column attached to a Table or a mapped class."
        )
