"""What a :class:`~dbkeel.monitoring.PoolMonitor` is told (options) and whom it tells (sinks).

Example::

    options = MonitorOptions(app_name="billing", leak_threshold=30, capture_stack=True)
    PoolMonitor.setup_listeners(engine, options)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dbkeel.exceptions import ConfigurationError

__all__ = ["MetricSink", "MonitorOptions"]


@dataclass(frozen=True)
class MonitorOptions:
    """How a :class:`PoolMonitor` labels its figures and when it warns (seconds).

    *node* names the database node of the pool (``primary``, ``replica-1``...) and
    *address* its ``host:port`` (never credentials); the manager sets both.
    """

    app_name: str = "dbkeel"
    pool_name: str = "default"
    long_lived_threshold: float = 300.0
    leak_threshold: float = 60.0
    capture_stack: bool = False
    node: str = "primary"
    address: str = ""

    def __post_init__(self) -> None:
        for name in ("long_lived_threshold", "leak_threshold"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigurationError(
                    f"PoolMonitor {name}={value!r} is invalid: it is a number of seconds "
                    f"and must be > 0 (e.g. 300 for long-lived, 60 for leaks)."
                )


class MetricSink(Protocol):
    """Receives each timing as it happens (the OpenTelemetry exporter's histograms)."""

    def checkout_wait(self, seconds: float) -> None: ...
    def connect_time(self, seconds: float) -> None: ...
    def use_time(self, seconds: float) -> None: ...
    def checkout_timeout(self) -> None: ...
