"""``PoolStatus``: a point-in-time snapshot of one connection pool, for any pool class.

SQLAlchemy's pools do not share one counting interface: ``QueuePool`` has ``size()``,
``checkedin()``, ``checkedout()`` and ``overflow()``, while ``NullPool`` and ``StaticPool``
have none of them (only ``status()``). :func:`pool_status` picks the figures each class can
give and fills the rest from what a :class:`~dbkeel.monitoring.PoolMonitor` counted, so a
caller never meets an ``AttributeError``::

    status = PoolMonitor.get_pool_status(db.engine)
    if status["waiting"]:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from sqlalchemy.pool import QueuePool, StaticPool

if TYPE_CHECKING:
    from sqlalchemy.pool import Pool

__all__ = ["PoolStatus", "pool_status"]


class PoolStatus(TypedDict):
    """Counts of one pool at one moment. ``None`` means the pool cannot know the figure.

    - ``pool_class``: e.g. ``"AsyncAdaptedQueuePool"``
    - ``size``: connections the pool keeps open (``pool_size``; 0 for NullPool, 1 for StaticPool)
    - ``checked_out``: connections lent to callers now
    - ``checked_in``: open connections idle in the pool
    - ``overflow``: connections open beyond ``size`` now (never negative)
    - ``total``: connections open now (``checked_in + checked_out``)
    - ``max``: the most the pool will open (``size + max_overflow``); ``None`` when unbounded
    - ``waiting``: callers waiting for a connection now; ``None`` when no monitor is attached
    """

    pool_class: str
    size: int
    checked_out: int | None
    checked_in: int
    overflow: int
    total: int | None
    max: int | None
    waiting: int | None


def pool_status(pool: Pool, *, held: int | None = None, waiting: int | None = None) -> PoolStatus:
    """The status of *pool*; *held* and *waiting* are a monitor's own counts, if any."""
    name = type(pool).__name__
    if isinstance(pool, QueuePool):
        # overflow() starts at -pool_size and counts up as connections are opened, so
        # size + overflow() is the number open now; only the part above size is "overflow".
        raw_overflow = pool.overflow()
        size = pool.size()
        checked_out = pool.checkedout()
        checked_in = pool.checkedin()
        max_overflow = pool._max_overflow  # no public accessor; -1 means unbounded
        return PoolStatus(
            pool_class=name,
            size=size,
            checked_out=checked_out,
            checked_in=checked_in,
            overflow=max(raw_overflow, 0),
            total=size + raw_overflow,
            max=None if max_overflow < 0 else size + max_overflow,
            waiting=waiting,
        )
    if isinstance(pool, StaticPool):
        # One connection, shared by every checkout; it exists once first used.
        opened = 1 if "connection" in pool.__dict__ else 0
        in_use = None if held is None else min(held, 1)
        return PoolStatus(
            pool_class=name,
            size=1,
            checked_out=held,
            checked_in=opened if in_use is None else max(opened - in_use, 0),
            overflow=0,
            total=opened,
            max=1,
            waiting=waiting,
        )
    # NullPool opens a connection per checkout and closes it at checkin: nothing is idle.
    # Other classes (SingletonThreadPool, AssertionPool, third-party) are reported the same
    # way, from the monitor's counts only.
    return PoolStatus(
        pool_class=name,
        size=0,
        checked_out=held,
        checked_in=0,
        overflow=0,
        total=held,
        max=None,
        waiting=waiting,
    )
