"""Model mixins: timestamps, soft delete with automatic filtering, optimistic locking.

Each works with ``Base(MappedAsDataclass, DeclarativeBase)`` and with a plain
``DeclarativeBase``; list mixins before the base::

    from dbkeel.mixins import SoftDeleteMixin, TimestampMixin, VersionMixin

    class Customer(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True, init=False)
        name: Mapped[str] = mapped_column(String(100))

    Customer(name="Ada")          # the mixins' columns are not constructor arguments
"""

from dbkeel.mixins._clock import utcnow as utcnow
from dbkeel.mixins.session import DbkeelSession as DbkeelSession
from dbkeel.mixins.soft_delete import INCLUDE_DELETED as INCLUDE_DELETED
from dbkeel.mixins.soft_delete import SoftDeleteMixin as SoftDeleteMixin
from dbkeel.mixins.soft_delete import purge_deleted as purge_deleted
from dbkeel.mixins.soft_delete import soft_delete_unique as soft_delete_unique
from dbkeel.mixins.timestamp import TimestampMixin as TimestampMixin
from dbkeel.mixins.version import VersionMixin as VersionMixin

__all__ = [
    "INCLUDE_DELETED",
    "DbkeelSession",
    "SoftDeleteMixin",
    "TimestampMixin",
    "VersionMixin",
    "purge_deleted",
    "soft_delete_unique",
    "utcnow",
]
