"""The primary's WAL positions as the prober saw them, to bound a commit's position
without asking the server at commit time.

A commit that finished at monotonic time *t* wrote its commit record before *t*. A
sample of ``pg_current_wal_insert_lsn()`` sent to the primary after *t* is therefore at or
past that record: the position of the first sample started after *t* is a bound that is
never too small, and a replica that has replayed up to it has the commit. Until such a
sample exists the bound is unknown (:meth:`PrimarySamples.bound` returns None) and a read
that needs it goes to the primary.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["PrimarySamples"]


class PrimarySamples:
    """The recent samples of the primary's insert position, oldest first.

    One entry per distinct position, with the start time of the *latest* sample that
    found it: an idle primary reports the same position every round, and the latest of
    those is the one most likely to have started after a given commit. *keep* entries at
    most: a commit older than all of them is bounded by the oldest (later, so still safe).

    Example::

        samples = PrimarySamples()
        samples.add(started=10.0, lsn=0x1000)
        samples.bound(9.5)    # 0x1000: that sample started after a commit at 9.5
        samples.bound(10.5)   # None: no sample started after 10.5 yet
    """

    __slots__ = ("_keep", "_lsns", "_starts")

    def __init__(self, keep: int = 256) -> None:
        self._keep = keep
        self._starts: list[float] = []  # monotonic start times, non-decreasing
        self._lsns: list[int] = []

    def add(self, started: float, lsn: int) -> None:
        """Note that a query sent at monotonic time *started* found the primary at *lsn*.

        A sample started before the latest one (a concurrent on-demand read) is dropped:
        the list stays sorted by start time, and the later sample already bounds more.
        """
        starts, lsns = self._starts, self._lsns
        if starts and started < starts[-1]:
            return
        if lsns and lsns[-1] == lsn:
            starts[-1] = started
            return
        starts.append(started)
        lsns.append(lsn)
        if len(starts) > 2 * self._keep:  # trimmed in batches: the lists stay short
            del starts[: -self._keep], lsns[: -self._keep]

    def bound(self, since: float) -> int | None:
        """A position at or past every commit that finished by monotonic time *since*:
        that of the first sample started after it. None while there is none."""
        i = bisect_right(self._starts, since)
        return self._lsns[i] if i < len(self._lsns) else None

    @property
    def latest(self) -> int:
        """The last sampled position (0 before the first sample)."""
        return self._lsns[-1] if self._lsns else 0
