"""dbkeel: the production database layer for async services on SQLAlchemy 2.1.

Example::

    from dbkeel import DatabaseManager

    async with DatabaseManager() as db:           # settings from DATABASE_URL etc.
        async with db.get_session() as session:
            ...
"""

from dbkeel.bulk import bulk_insert as bulk_insert
from dbkeel.bulk import bulk_upsert as bulk_upsert
from dbkeel.exceptions import BulkLoadInterruptedError as BulkLoadInterruptedError
from dbkeel.exceptions import BulkRowError as BulkRowError
from dbkeel.exceptions import CommitOutcomeUnknownError as CommitOutcomeUnknownError
from dbkeel.exceptions import ConcurrentUpdateError as ConcurrentUpdateError
from dbkeel.exceptions import ConfigurationError as ConfigurationError
from dbkeel.exceptions import DatabaseError as DatabaseError
from dbkeel.exceptions import DatabaseUnavailableError as DatabaseUnavailableError
from dbkeel.exceptions import DbkeelError as DbkeelError
from dbkeel.exceptions import DecryptionError as DecryptionError
from dbkeel.exceptions import InvalidValueError as InvalidValueError
from dbkeel.exceptions import ManagerStateError as ManagerStateError
from dbkeel.exceptions import MissingDependencyError as MissingDependencyError
from dbkeel.exceptions import NoReplicaAvailableError as NoReplicaAvailableError
from dbkeel.exceptions import NPlusOneError as NPlusOneError
from dbkeel.exceptions import PoolExhaustedError as PoolExhaustedError
from dbkeel.exceptions import ReadOnlyTransactionError as ReadOnlyTransactionError
from dbkeel.exceptions import RetryableError as RetryableError
from dbkeel.exceptions import SandboxError as SandboxError
from dbkeel.exceptions import StatementTimeoutError as StatementTimeoutError
from dbkeel.manager import DatabaseManager as DatabaseManager
from dbkeel.mixins import DbkeelSession as DbkeelSession
from dbkeel.mixins import SoftDeleteMixin as SoftDeleteMixin
from dbkeel.mixins import TimestampMixin as TimestampMixin
from dbkeel.mixins import VersionMixin as VersionMixin
from dbkeel.mixins import purge_deleted as purge_deleted
from dbkeel.mixins import soft_delete_unique as soft_delete_unique
from dbkeel.monitoring.pool import PoolMonitor as PoolMonitor
from dbkeel.settings import DatabaseSettings as DatabaseSettings
from dbkeel.types import ArrayType as ArrayType
from dbkeel.types import EncryptedType as EncryptedType
from dbkeel.types import JSONBType as JSONBType
from dbkeel.types import StringArray as StringArray
from dbkeel.types import UTCDateTime as UTCDateTime
from dbkeel.types import UUIDType as UUIDType
from dbkeel.types import uuid7 as uuid7

__version__ = "0.1.0"

#: The design's module-level convenience instance. Its settings are read from the
#: environment when ``await db_manager.initialize()`` runs; nothing in dbkeel uses it.
db_manager = DatabaseManager()

__all__ = [
    "ArrayType",
    "BulkLoadInterruptedError",
    "BulkRowError",
    "CommitOutcomeUnknownError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseManager",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "DbkeelError",
    "DbkeelSession",
    "DecryptionError",
    "EncryptedType",
    "InvalidValueError",
    "JSONBType",
    "ManagerStateError",
    "MissingDependencyError",
    "NPlusOneError",
    "NoReplicaAvailableError",
    "PoolExhaustedError",
    "PoolMonitor",
    "ReadOnlyTransactionError",
    "RetryableError",
    "SandboxError",
    "SoftDeleteMixin",
    "StatementTimeoutError",
    "StringArray",
    "TimestampMixin",
    "UTCDateTime",
    "UUIDType",
    "VersionMixin",
    "bulk_insert",
    "bulk_upsert",
    "db_manager",
    "purge_deleted",
    "soft_delete_unique",
    "uuid7",
]
