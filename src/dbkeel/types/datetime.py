"""``UTCDateTime``: timezone-aware UTC datetimes on every database.

PostgreSQL stores ``timestamptz``; SQLite and MariaDB keep no offset, so values are
converted to UTC on the way in and UTC is attached again on the way out. A naive datetime
is refused: guessing its zone is how off-by-hours bugs are born.

Example::

    created: Mapped[datetime] = mapped_column(UTCDateTime)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator

from dbkeel.exceptions import InvalidValueError

__all__ = ["UTCDateTime"]

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A ``DateTime(timezone=True)`` that only takes aware datetimes and returns UTC ones.

    On PostgreSQL the column is ``TIMESTAMP WITH TIME ZONE``; on SQLite and MariaDB it
    is a plain ``DATETIME`` holding UTC (MariaDB with microsecond precision).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[dt.datetime]:
        return dt.datetime

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise InvalidValueError(
                f"UTCDateTime column got {type(value).__name__} {value!r}: it stores "
                f"datetime.datetime values only. Pass an aware datetime, e.g. "
                f"datetime.now(timezone.utc).",
                value=value,
            )
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidValueError(
                f"UTCDateTime column got the naive datetime {value.isoformat()}: without a "
                f"time zone it cannot be stored as UTC unambiguously. Attach one, e.g. "
                f"value.replace(tzinfo=timezone.utc) if it is already UTC.",
                value=value,
            )
        utc = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return utc
        return utc.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite values written by other programs
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return "UTCDateTime()"
