"""Every error dbkeel raises, under one base class.

Usage errors (something to fix in code or configuration) are kept apart from database
errors (something that happened at run time)::

    DbkeelError
    ├── ConfigurationError          bad setting, missing extra, bad key ring  (also ValueError)
    │   └── MissingDependencyError  an optional extra is not installed       (also ImportError)
    ├── ManagerStateError           DatabaseManager used before initialize() or after close()
    │   └── KeyRingError            encrypted column used without (the right) keys
    ├── InvalidValueError           a column type refused a Python value     (also ValueError)
    │   ├── BulkRowError            a bulk_insert/bulk_upsert row is unusable (row index, column)
    │   └── EncryptedValueError     an encrypted column refused a value (value never shown)
    ├── DecryptionError             a stored ciphertext cannot be opened
    ├── NPlusOneError               a relationship lazy-loaded row by row (DATABASE_NPLUSONE=raise)
    ├── SandboxError                dbkeel.testing refused what would break a test's isolation
    └── DatabaseError               something went wrong talking to the database
        ├── DatabaseUnavailableError  the server cannot be reached / the connection was lost
        ├── StatementTimeoutError     a statement or COMMIT ran past a timeout (also TimeoutError)
        ├── PoolExhaustedError        no free connection in time (also sqlalchemy TimeoutError)
        ├── ConcurrentUpdateError     optimistic-locking conflict (stale version)
        ├── RetryableError            serialization failure / deadlock / lock wait timeout
        ├── BulkLoadInterruptedError  a commit_every load failed part-way (rows_committed)
        ├── ReadOnlyTransactionError  a write in a read_only=True session
        ├── NoReplicaAvailableError   no usable replica and DATABASE_REPLICA_FALLBACK=raise
        └── CommitOutcomeUnknownError the connection dropped during COMMIT

Every message says what happened, why, and what to do, and shows the offending value -
never a password or key.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc

__all__ = [
    "BulkLoadInterruptedError",
    "BulkRowError",
    "CommitOutcomeUnknownError",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DbkeelError",
    "DecryptionError",
    "EncryptedValueError",
    "InvalidValueError",
    "KeyRingError",
    "ManagerStateError",
    "MissingDependencyError",
    "NPlusOneError",
    "NoReplicaAvailableError",
    "PoolExhaustedError",
    "ReadOnlyTransactionError",
    "RetryableError",
    "SandboxError",
    "StatementTimeoutError",
]


class DbkeelError(Exception):
    """Base class of every exception raised by dbkeel."""


class ConfigurationError(DbkeelError, ValueError):
    """A setting, an argument or an installed extra is wrong; fix the configuration."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional extra needed by the requested feature is not installed.

    The message names the extra, e.g. ``pip install 'dbkeel[prometheus]'``.
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature = feature
        self.extra = extra
        self.module = module
        super().__init__(
            f"{feature} needs the optional package {module!r}, which is not installed. "
            f"Install it with: pip install 'dbkeel[{extra}]'"
        )


class NPlusOneError(DbkeelError):
    """A relationship was loaded once per parent row (an N+1 query pattern).

    Raised only with ``DATABASE_NPLUSONE=raise``; the message names the model, the
    relationship, the count, the code location and the eager-loading fix.
    """


class SandboxError(DbkeelError):
    """dbkeel's pytest plugin (:mod:`dbkeel.testing`) refused something that would break
    a test's isolation: DDL that MariaDB would commit implicitly inside the test's
    transaction, or the test's shared connection held by another task for too long."""


class ManagerStateError(DbkeelError, RuntimeError):
    """The DatabaseManager was used before ``initialize()`` or after ``close()``."""


class InvalidValueError(DbkeelError, ValueError):
    """A column type refused a Python value; the message names the column and the value."""

    def __init__(self, message: str, *, column: str | None = None, value: Any = None) -> None:
        self.column = column
        self.value = value
        super().__init__(message)


class BulkRowError(InvalidValueError):
    """A row given to ``bulk_insert`` / ``bulk_upsert`` cannot be written as it is.

    ``row_index`` is the row's position in the input (0-based, counted across batches) and
    ``column`` the attribute at fault (None when the row as a whole is wrong). The value is
    shown in the message unless the column is encrypted or marked sensitive.
    """

    def __init__(
        self, message: str, *, row_index: int, column: str | None = None, value: Any = None
    ) -> None:
        self.row_index = row_index
        super().__init__(message, column=column, value=value)


class DecryptionError(DbkeelError, sqlalchemy.exc.DontWrapMixin):
    """A stored ciphertext could not be decrypted (tampered, wrong key, unknown key id...).

    The message names ``table.column`` and the key id, never the key or the plaintext.
    Raised as is, not wrapped in SQLAlchemy's ``StatementError``.
    """


class KeyRingError(ConfigurationError, sqlalchemy.exc.DontWrapMixin):
    """An encrypted or blind-index column was used without the keys it needs.

    Not wrapped in ``StatementError``: that wrapper would print the statement's
    parameters, which are plaintext before encryption.
    """


class EncryptedValueError(InvalidValueError, sqlalchemy.exc.DontWrapMixin):
    """An encrypted column refused a value. The message names the column and why, never
    the value (it is the plaintext); not wrapped in ``StatementError`` for the same reason."""


class DatabaseError(DbkeelError):
    """Base class of the errors that happen while talking to the database."""


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database cannot be reached, or the connection was lost under a statement.

    Raised by ``initialize()`` when the server does not answer within its budget, and by
    ``get_session()`` when a connection is refused, reset or dropped mid-transaction (the
    transaction was rolled back by the server; the pool replaces the connection). One
    type to catch for "database unreachable"; also a ``ConnectionError``. The driver's
    error is ``__cause__``.

    Example::

        try:
            async with db.get_session() as session:
                ...
        except DatabaseUnavailableError:
            return Response(status_code=503, headers={"Retry-After": "1"})
    """


class StatementTimeoutError(DatabaseError, TimeoutError):
    """A statement (or COMMIT) ran longer than a configured timeout and was stopped.

    ``setting`` names the timeout that fired (``DATABASE_COMMAND_TIMEOUT``, client-side,
    or ``DATABASE_STATEMENT_TIMEOUT`` / the server's ``lock_timeout``, server-side) and
    ``timeout`` its value in seconds (None when not known). Also a ``TimeoutError``, so
    ``except TimeoutError`` keeps working. A COMMIT that times out client-side raises
    :class:`CommitOutcomeUnknownError` instead: the server may still have committed.
    Your own ``asyncio.timeout()`` expiring is not translated: it stays the plain
    ``TimeoutError`` that ``asyncio`` raises.
    """

    def __init__(self, message: str, *, setting: str, timeout: float | None) -> None:
        self.setting = setting
        self.timeout = timeout
        super().__init__(message)


class PoolExhaustedError(DatabaseError, sqlalchemy.exc.TimeoutError):
    """No pooled connection became free within ``pool_timeout``.

    Subclasses SQLAlchemy's ``TimeoutError`` so existing ``except`` clauses keep working.
    """

    def __init__(
        self,
        *,
        pool_size: int,
        max_overflow: int,
        checked_out: int,
        timeout: float,
    ) -> None:
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.checked_out = checked_out
        self.timeout = timeout
        super().__init__(
            f"No database connection became free within {timeout:g} s: all "
            f"{checked_out} connections are checked out (pool_size={pool_size}, "
            f"max_overflow={max_overflow}). Either requests hold sessions too long (look for "
            f"a leak or a slow query), or the pool is too small for the load: raise "
            f"DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW (mind the server's max_connections) "
            f"or DATABASE_POOL_TIMEOUT."
        )


class ConcurrentUpdateError(DatabaseError):
    """An UPDATE or DELETE found a newer version of the row than the one it read.

    Raised for models using ``VersionMixin``; the original SQLAlchemy ``StaleDataError``
    is kept as ``__cause__``. Retry the whole unit of work (``run_in_transaction`` does).
    """

    def __init__(self, message: str, *, model: str | None = None, primary_key: Any = None) -> None:
        self.model = model
        self.primary_key = primary_key
        super().__init__(message)


class RetryableError(DatabaseError):
    """The database aborted the transaction but retrying the whole unit may succeed.

    Serialization failures (SQLSTATE 40001), deadlocks (40P01, MariaDB 1213) and lock wait
    timeouts (MariaDB 1205). The driver error is kept as ``__cause__``.
    """


class BulkLoadInterruptedError(DatabaseError):
    """A ``bulk_insert(..., commit_every=N)`` load stopped part-way.

    ``rows_committed`` rows (the first ones of the input) are committed; the chunk in
    flight was rolled back. Resume with a new copy of the input that skips them, e.g.
    ``itertools.islice(make_rows(), exc.rows_committed, None)``. If the connection was
    lost during a chunk's COMMIT, ``rows_in_doubt`` (else 0) is that chunk's size: those
    rows may or may not be committed - count them before resuming. The cause is
    ``__cause__``.
    """

    def __init__(self, message: str, *, rows_committed: int, rows_in_doubt: int = 0) -> None:
        self.rows_committed = rows_committed
        self.rows_in_doubt = rows_in_doubt
        super().__init__(message)


class ReadOnlyTransactionError(DatabaseError):
    """A session opened with ``get_session(read_only=True)`` tried to write.

    Raised the same way on a replica and on the primary (read-only sessions run
    ``SET TRANSACTION READ ONLY`` wherever they land). ``statement_kind`` is the refused
    verb (``INSERT``, ``UPDATE``...). Use ``db.get_session()`` for writes.
    """

    def __init__(self, message: str, *, statement_kind: str) -> None:
        self.statement_kind = statement_kind
        super().__init__(message)


class NoReplicaAvailableError(DatabaseError):
    """No replica is usable (down, lagging, not in recovery) and
    ``DATABASE_REPLICA_FALLBACK=raise`` forbids reading from the primary instead."""


class CommitOutcomeUnknownError(DatabaseError):
    """The connection was lost while COMMIT was in flight: the transaction may or may not
    have been committed. It is never retried automatically; check the data, then decide."""
