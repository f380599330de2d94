"""Portable column types: the same model on PostgreSQL, SQLite and MariaDB.

Example::

    from dbkeel.types import UTCDateTime
"""

from dbkeel.types.datetime import UTCDateTime as UTCDateTime
from dbkeel.types.encrypted import EncryptedType as EncryptedType

__all__ = ["EncryptedType", "UTCDateTime"]
