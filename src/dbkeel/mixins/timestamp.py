"""``TimestampMixin``: ``created_at`` and ``updated_at``, aware UTC, set by the database.

Example::

    class Post(TimestampMixin, Base):
        __tablename__ = "posts"
        id: Mapped[int] = mapped_column(primary_key=True)

    async with db.get_session() as session:
        post.title = "new"
        await session.flush()
        post.updated_at            # already loaded: UPDATE .. RETURNING, no lazy load

``class Post(TimestampMixin, Base, updated_at_trigger=True)`` also creates a database
trigger with the table, so UPDATEs written by other programs bump ``updated_at`` too.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Mapped, mapped_column

from dbkeel.exceptions import ConfigurationError
from dbkeel.mixins._clock import utcnow
from dbkeel.mixins._declare import add_columns
from dbkeel.mixins._triggers import attach_updated_at_trigger
from dbkeel.types.datetime import UTCDateTime

__all__ = ["TimestampMixin"]


def _created_at(dataclass: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"init": False} if dataclass else {}
    column = mapped_column(UTCDateTime(), server_default=utcnow(), nullable=False, **extra)
    return Mapped[dt.datetime], column


def _updated_at(dataclass: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"init": False} if dataclass else {}
    column = mapped_column(
        UTCDateTime(),
        server_default=utcnow(),
        # A SQL expression, run in every ORM UPDATE. With the mapper's eager_defaults the
        # flush reads the new value back (UPDATE .. RETURNING; a SELECT on MariaDB, which
        # has no UPDATE .. RETURNING) instead of expiring it, which would lazy-load on the
        # next access: MissingGreenlet in async code (sqlalchemy #12125).
        onupdate=utcnow(),
        nullable=False,
        **extra,
    )
    return Mapped[dt.datetime], column


class TimestampMixin:
    """Adds ``created_at`` and ``updated_at`` (aware UTC datetimes, database clock).

    Works with ``Base(MappedAsDataclass, DeclarativeBase)`` (the columns are left out of
    ``__init__``) and with a plain ``DeclarativeBase``. List it before the base class.
    Sets ``eager_defaults=True`` on the mapper unless the model says otherwise.
    """

    if TYPE_CHECKING:
        created_at: Mapped[dt.datetime]
        updated_at: Mapped[dt.datetime]

    def __init_subclass__(cls, *, updated_at_trigger: bool = False, **kw: Any) -> None:
        owns = add_columns(
            cls,
            TimestampMixin,
            {"created_at": _created_at, "updated_at": _updated_at},
            lambda columns: {"eager_defaults": True},
        )
        super().__init_subclass__(**kw)
        if updated_at_trigger:
            table = getattr(cls, "__table__", None)
            if not owns or table is None:
                raise ConfigurationError(
                    f"updated_at_trigger=True on {cls.__name__}, which has no table of its "
                    f"own with an updated_at column (abstract or inheriting). Pass it on "
                    f"the class that defines __tablename__."
                )
            attach_updated_at_trigger(table)
