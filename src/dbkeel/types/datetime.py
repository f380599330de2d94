"""``UTCDateTime``: timezone-aware UTC datetimes on every database.

============ ================================ ==========================================
database     column                           on the way out
============ ================================ ==========================================
PostgreSQL   ``TIMESTAMP WITH TIME ZONE``     aware; converted to UTC
SQLite       ``DATETIME`` (ISO text, UTC)     UTC attached again
MariaDB      ``DATETIME(6)`` (UTC)            UTC attached again (microseconds kept)
============ ================================ ==========================================

A naive datetime is refused: guessing its zone is how off-by-hours bugs are born.

Example::

    created: Mapped[datetime] = mapped_column(UTCDateTime)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeEngine

from dbkeel.types._base import PortableType

__all__ = ["UTCDateTime"]

UTC = dt.UTC
_datetime = dt.datetime


class UTCDateTime(PortableType[dt.datetime]):
    """A ``DateTime(timezone=True)`` that only takes aware datetimes and returns UTC ones.

    Any zone is accepted and converted to UTC; a naive datetime, or anything that is not
    a datetime, raises ``InvalidValueError`` naming the column.

    Example::

        created: Mapped[datetime] = mapped_column(
            UTCDateTime, default_factory=lambda: datetime.now(timezone.utc)
        )
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[dt.datetime]:
        return dt.datetime

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def to_utc(self, value: Any) -> dt.datetime:
        """*value* converted to UTC, or ``InvalidValueError`` naming the column."""
        if not isinstance(value, dt.datetime):
            raise self.invalid(
                value,
                "it stores datetime.datetime values only",
                "Pass an aware datetime, e.g. datetime.now(timezone.utc).",
            )
        if value.tzinfo is None or value.utcoffset() is None:
            raise self.invalid(
                value,
                "a naive datetime cannot be stored as UTC unambiguously",
                "Attach a zone, e.g. value.replace(tzinfo=timezone.utc) if it is UTC already.",
            )
        return value.astimezone(UTC)

    def coerce_set(self, value: Any) -> Any:
        if value is not None:
            self.to_utc(value)
        return value

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        utc = self.to_utc(value)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite values written by other programs
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    # Single-closure processors doing what the two methods above do, per dialect: these
    # run for every value sent and fetched (bench_types per value).
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        to_utc = self.to_utc
        if dialect.name == "postgresql":

            def bind_aware(value: Any) -> Any:
                if value is None or (value.__class__ is _datetime and value.tzinfo is UTC):
                    return value
                return to_utc(value)

            return bind_aware

        impl_process = self.impl_instance.bind_processor(dialect)
        if dialect.name == "sqlite" and impl_process is not None:
            # SQLite's DATETIME text, "YYYY-MM-DD HH:MM:SS.ffffff", written directly: the
            # same text SQLAlchemy's processor renders (so old and new rows compare), cut
            # from the UTC value's ISO form without its "+00:00" (replace() costs more).
            def bind_sqlite(value: Any) -> Any:
                if value is None:
                    return None
                if value.__class__ is not _datetime or value.tzinfo is not UTC:
                    value = to_utc(value)
                return value.isoformat(" ", "microseconds")[:-6]

            return bind_sqlite

        def bind_naive(value: Any) -> Any:
            if value is None:
                return None
            if value.__class__ is not _datetime or value.tzinfo is not UTC:
                value = to_utc(value)
            naive = value.replace(tzinfo=None)
            return impl_process(naive) if impl_process else naive

        return bind_naive

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        if dialect.name == "postgresql":

            def result_aware(value: Any) -> Any:
                if value is None or value.tzinfo is UTC:
                    return value
                return value.astimezone(UTC)

            return result_aware

        slow = self.process_result_value
        if dialect.name == "sqlite":
            # The stored text is naive UTC: parsed with its zone in one C call, instead of
            # SQLAlchemy's processor followed by replace(tzinfo=UTC) (which costs more than
            # the parse). Text with a zone of its own (other writers) fails that parse and
            # takes the general path.
            from_iso = _datetime.fromisoformat

            def result_sqlite(value: Any) -> Any:
                if value.__class__ is str:
                    try:
                        return from_iso(value + "+00:00")
                    except ValueError:
                        pass
                return slow(value, dialect)

            return result_sqlite

        impl_process = self.impl_instance.result_processor(dialect, coltype)

        def result_naive(value: Any) -> Any:
            if impl_process is not None:
                value = impl_process(value)
            if value is None:
                return None
            if value.__class__ is not _datetime:
                return slow(value, dialect)
            if value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value.astimezone(UTC)

        return result_naive

    def __repr__(self) -> str:
        return "UTCDateTime()"
