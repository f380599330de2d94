"""``VersionMixin``: optimistic locking with SQLAlchemy's ``version_id_col``.

Every UPDATE and DELETE of the row says ``WHERE id = :id AND version = :read_version``
and bumps the version in the same statement, so the check costs no extra round trip. If
another transaction got there first, the flush raises
:class:`dbkeel.ConcurrentUpdateError`; ``db.run_in_transaction()`` retries the unit.

Example::

    class Account(VersionMixin, Base):
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        balance: Mapped[int]

    async def deposit(session):
        account = await session.get(Account, 1)
        account.balance += 10

    await db.run_in_transaction(deposit)

Bulk ``update(Account)`` statements bypass the check (as in SQLAlchemy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer
from sqlalchemy.orm import Mapped, mapped_column

from dbkeel.mixins._declare import add_columns

__all__ = ["VersionMixin"]


def _version(dataclass: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"init": False} if dataclass else {}
    return Mapped[int], mapped_column(Integer(), nullable=False, **extra)


class VersionMixin:
    """Adds ``version`` (starts at 1, +1 per UPDATE) as the mapper's ``version_id_col``.

    Works with dataclass and plain declarative bases; list it before the base class.
    """

    if TYPE_CHECKING:
        version: Mapped[int]

    def __init_subclass__(cls, **kw: Any) -> None:
        add_columns(
            cls,
            VersionMixin,
            {"version": _version},
            lambda columns: {"version_id_col": columns["version"].column},
        )
        super().__init_subclass__(**kw)
