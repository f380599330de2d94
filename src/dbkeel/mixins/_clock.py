"""``utcnow()``: the database's current time in UTC, the same way on every database.

PostgreSQL ``now()`` is a ``timestamptz`` (the transaction's start time). MariaDB's
``UTC_TIMESTAMP(6)`` does not depend on the session time zone, unlike ``NOW()``. SQLite's
``CURRENT_TIMESTAMP`` has whole seconds only, so ``strftime('%Y-%m-%d %H:%M:%f000')``
is used: milliseconds, written with six decimals like every value ``UTCDateTime`` binds,
so that a value read back compares equal to the stored text (SQLite compares the text).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from dbkeel.types.datetime import UTCDateTime

__all__ = ["utcnow"]


class utcnow(FunctionElement[dt.datetime]):
    """The database's current UTC time, usable in defaults, updates and queries."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow)
def _default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utcnow, "postgresql")
def _postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utcnow, "mysql")
@compiles(utcnow, "mariadb")
def _mariadb(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


@compiles(utcnow, "sqlite")
def _sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
