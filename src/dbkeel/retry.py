"""Run a unit of work in a transaction and retry it when the database says "try again".

Retried: :class:`ConcurrentUpdateError` (stale ``VersionMixin`` row), PostgreSQL
serialization failures (40001) and deadlocks (40P01), MariaDB deadlocks (1213) and lock
wait timeouts (1205), and a primary that went away before COMMIT (failover: the
connection dropped, the server shut down, or it is now a standby). Each retry runs *fn*
again from the start in a fresh session, after a jittered exponential pause. A
connection lost during COMMIT is never retried: the transaction may have committed, so
:class:`CommitOutcomeUnknownError` is raised.

Example::

    async def transfer(session: AsyncSession) -> None:
        src = await session.get(Account, 1)
        src.balance -= 10

    await db.run_in_transaction(transfer, retries=5, backoff=0.05)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel._translate import commit, failover_reason, retryable_reason, translate_errors
from dbkeel.exceptions import (
    ConcurrentUpdateError,
    ConfigurationError,
    RetryableError,
)

if TYPE_CHECKING:
    from dbkeel.manager import DatabaseManager
    from dbkeel.settings import DatabaseSettings

__all__ = ["run_in_transaction"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAUSE = 2.0  # seconds: the exponential backoff stops growing here


async def run_in_transaction(
    db: DatabaseManager,
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    retries: int = 5,
    backoff: float = 0.05,
) -> T:
    """Run ``await fn(session)`` and commit; retry the whole unit on transient conflicts.

    *retries* is how many times to try again after the first attempt; *backoff* the
    first pause in seconds (doubled each time up to 2 s, each pause drawn from
    50-100 % of that). After the last attempt the last error is raised:
    ``ConcurrentUpdateError`` as is, a database conflict as :class:`RetryableError`.
    *fn* may run several times: keep side effects outside the database out of it.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(
            f"run_in_transaction(retries={retries!r}): retries must be an int >= 0 "
            f"(how many times to try again after the first attempt)."
        )
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
        raise ConfigurationError(
            f"run_in_transaction(backoff={backoff!r}): backoff must be a number of "
            f"seconds >= 0, e.g. 0.05."
        )
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(db, fn)
        except (ConcurrentUpdateError, RetryableError) as exc:
            if attempt > retries:
                logger.warning("run_in_transaction gave up after %d attempts: %s", attempt, exc)
                raise
            pause = min(backoff * 2 ** (attempt - 1), MAX_PAUSE) * random.uniform(0.5, 1.0)
            logger.info(
                "transaction conflict (%s), attempt %d of %d; retrying in %.3f s",
                type(exc).__name__,
                attempt,
                retries + 1,
                pause,
                extra={"attempt": attempt},
            )
            await asyncio.sleep(pause)


async def _attempt(db: DatabaseManager, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    session = db.session_factory()
    try:
        with translate_errors(
            db.engine.pool, pool_timeout=db.settings.pool_timeout, settings=db.settings
        ):
            try:
                result = await fn(session)
                # Flush first, so that an error raised while writing is told apart from
                # one raised by the COMMIT itself (only the latter has an unknown outcome).
                await session.flush()
            except ConcurrentUpdateError:
                raise
            except Exception as exc:
                # before COMMIT: a lost primary (failover) is as safe to retry as a conflict
                reason = retryable_reason(exc) or failover_reason(exc)
                if reason is None:
                    raise
                raise _retryable(reason, exc) from exc
            await _commit(session, db.settings)
            return result
    finally:
        # shielded: cancellation must still roll back and return the connection.
        await asyncio.shield(_cleanup(session))


async def _commit(session: AsyncSession, settings: DatabaseSettings) -> None:
    try:
        await commit(session, settings)
    except Exception as exc:
        reason = retryable_reason(exc)
        if reason is not None:  # e.g. a serialization failure reported at COMMIT: rolled back
            raise _retryable(reason, exc) from exc
        raise


def _retryable(reason: str, exc: BaseException) -> RetryableError:
    return RetryableError(
        f"The database aborted the transaction: {reason}. Retrying the whole unit of work "
        f"may succeed; run_in_transaction() does so up to its retries limit. "
        f"Original error: {type(exc).__name__}: {exc}"
    )


async def _cleanup(session: AsyncSession) -> None:
    try:
        if session.in_transaction():
            await session.rollback()
    except Exception:
        logger.warning("rollback after a failed attempt failed", exc_info=True)
    finally:
        await session.close()
