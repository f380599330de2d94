"""Portable column types: the same model on PostgreSQL, SQLite and MariaDB.

Each type uses the best native column on each database (see docs/types.md) and names
its column in every ``InvalidValueError``. JSON and list columns save in-place changes.

Example::

    from dbkeel.types import JSONBType, StringArray, UTCDateTime, UUIDType, uuid7

    class User(Base):
        __tablename__ = "users"
        id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True,
                                              default_factory=uuid7)
        settings: Mapped[dict[str, Any]] = mapped_column(JSONBType, default_factory=dict)
        tags: Mapped[list[str]] = mapped_column(StringArray, default_factory=list)
"""

from dbkeel.types import _tracking as _tracking  # installs the ORM listeners
from dbkeel.types.array import ArrayType as ArrayType
from dbkeel.types.array import StringArray as StringArray
from dbkeel.types.datetime import UTCDateTime as UTCDateTime
from dbkeel.types.encrypted import EncryptedType as EncryptedType
from dbkeel.types.json import JSONBType as JSONBType
from dbkeel.types.json import json_default as json_default
from dbkeel.types.uuid import UUIDType as UUIDType
from dbkeel.types.uuid import uuid4 as uuid4
from dbkeel.types.uuid import uuid7 as uuid7

__all__ = [
    "ArrayType",
    "EncryptedType",
    "JSONBType",
    "StringArray",
    "UTCDateTime",
    "UUIDType",
    "json_default",
    "uuid4",
    "uuid7",
]
