"""Counters and fixed-bucket histograms kept by a :class:`PoolMonitor`.

Plain attributes and a ``bisect`` per observation: cheap enough for every checkout, and
shaped so both exporters (Prometheus and OpenTelemetry) read the same numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["CONNECT_BUCKETS", "WAIT_BUCKETS", "Histogram", "PoolCounters"]

#: Upper bounds (seconds) of the checkout-wait buckets: a healthy pool answers in well
#: under a millisecond; seconds mean the pool is too small or connections are held too long.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Upper bounds (seconds) of the connect-latency buckets.
CONNECT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Observation counts per bucket, plus sum and count (Prometheus histogram semantics).

    ``counts[i]`` holds observations ``<= bounds[i]`` and above the previous bound; the last
    slot holds the ones above every bound (``+Inf``).
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        pairs = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


@dataclass
class PoolCounters:
    """Totals since the monitor was attached. Read them; only the monitor writes them."""

    connects: int = 0
    closes: int = 0
    checkouts: int = 0
    checkout_timeouts: int = 0
    hard_invalidations: int = 0
    soft_invalidations: int = 0
    #: connections discarded because the task using them was cancelled (a request timeout,
    #: a client that went away): not a fault of the server or the network
    cancellations: int = 0
    leaks: int = 0
    long_lived: int = 0
    checkout_wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BUCKETS))
    connect_time: Histogram = field(default_factory=lambda: Histogram(CONNECT_BUCKETS))
