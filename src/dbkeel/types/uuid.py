"""``UUIDType`` and ``uuid7()``: UUID keys stored natively or in 16 bytes.

=========== ================== =====================================================
database    column             why
=========== ================== =====================================================
PostgreSQL  ``UUID``           native 16-byte type; ``uuid.UUID`` is bound as is, so
                               insertmanyvalues sentinels and RETURNING match rows
SQLite      ``BLOB`` (16 B)    half the size of 32 hex chars, bytes sort like the UUID
MariaDB     ``BINARY(16)``     same; MariaDB's own ``UUID`` type reorders v1 segments
=========== ================== =====================================================

Example::

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default_factory=uuid7)
"""

from __future__ import annotations

import os
import threading
import time
import uuid as _uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import BLOB, TypeEngine, Uuid

from dbkeel.types._base import PortableType

__all__ = ["UUIDType", "uuid4", "uuid7"]

UUID = _uuid.UUID
uuid4 = _uuid.uuid4

_lock = threading.Lock()
_last_stamp = 0  # 48-bit milliseconds << 12 | 12-bit sub-millisecond fraction


def uuid7() -> UUID:
    """A new time-ordered UUID version 7 (RFC 9562, section 5.7).

    48 bits of Unix time in milliseconds, then 12 bits of sub-millisecond time (RFC 9562
    section 6.2, method 3), then 62 random bits. Within one process the 60-bit time
    stamp never repeats or goes back, even if the clock does, so keys made one after
    another always sort in creation order - which keeps B-tree inserts at the right edge
    of the index instead of scattered like uuid4.

    Example::

        id: Mapped[uuid.UUID] = mapped_column(
            UUIDType, primary_key=True, default_factory=uuid7
        )
    """
    global _last_stamp
    ns = time.time_ns()
    stamp = (ns // 1_000_000) << 12 | ((ns % 1_000_000) * 4096 // 1_000_000)
    with _lock:
        if stamp <= _last_stamp:
            stamp = _last_stamp + 1
        _last_stamp = stamp
    rand = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    value = (
        (stamp >> 12) << 80  # unix_ts_ms
        | 0x7 << 76  # version
        | (stamp & 0xFFF) << 64  # rand_a: sub-millisecond fraction
        | 0b10 << 62  # variant
        | rand  # rand_b
    )
    return UUID(int=value)


class UUIDType(PortableType[UUID]):
    """A UUID column: native on PostgreSQL, 16 bytes elsewhere; always gives ``uuid.UUID``.

    Accepts a ``uuid.UUID`` or a string any form ``uuid.UUID()`` parses (with or
    without dashes or braces); anything else raises ``InvalidValueError`` naming the
    column. Add ``default_factory=uuid7`` (or ``uuid4``) for generated keys.

    Example::

        class User(Base):
            __tablename__ = "users"
            id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)
    """

    impl = Uuid(as_uuid=True)
    cache_ok = True

    @property
    def python_type(self) -> type[UUID]:
        return UUID

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Uuid(as_uuid=True))
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import BINARY

            return dialect.type_descriptor(BINARY(16))
        return dialect.type_descriptor(BLOB())

    def coerce(self, value: Any) -> UUID:
        """*value* as a ``uuid.UUID``, or ``InvalidValueError`` naming the column."""
        if isinstance(value, UUID):
            return value
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise self.invalid(
            value,
            "not a UUID",
            "Pass a uuid.UUID or a string such as '0190b6a4-7c3e-7d4a-9f1e-3c2b1a0d9e8f'.",
        )

    def coerce_set(self, value: Any) -> Any:
        return value if value is None or value.__class__ is UUID else self.coerce(value)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = self.coerce(value)
        return value if dialect.name == "postgresql" else value.bytes

    def process_result_value(self, value: Any, dialect: Dialect) -> UUID | None:
        if value is None or isinstance(value, UUID):
            return value
        return UUID(bytes=bytes(value))

    # The two processors below do what the two methods above do, as single closures:
    # the ORM calls them once per value, so they are kept as short as the built-in Uuid's.
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        coerce = self.coerce
        if dialect.name == "postgresql":

            def bind_native(value: Any) -> Any:
                if value is None or value.__class__ is UUID:
                    return value
                return coerce(value)

            return bind_native

        def bind_bytes(value: Any) -> Any:
            if value is None:
                return None
            if value.__class__ is not UUID:
                value = coerce(value)
            return value.bytes

        return bind_bytes

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "postgresql":
            return None  # asyncpg returns its uuid.UUID subclass already

        def result_bytes(value: Any) -> UUID | None:
            return None if value is None else UUID(bytes=value)

        return result_bytes

    def __repr__(self) -> str:
        return "UUIDType()"
