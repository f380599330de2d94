"""What the web integrations answer, without any framework: the error-to-status map, the
readiness report and the metrics text. :mod:`~dbkeel.integrations.starlette` (FastAPI)
and :mod:`~dbkeel.integrations.litestar` only wrap these in their own response classes,
so both frameworks answer the same failure with the same status and body.

Example (a framework of your own)::

    found = error_response(exc)            # None: not a database error dbkeel maps
    if found is not None:
        return MyResponse(found.body(), status=found.status, headers=found.headers())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from dbkeel.exceptions import ConcurrentUpdateError, DatabaseUnavailableError, PoolExhaustedError
from dbkeel.manager import DatabaseManager
from dbkeel.monitoring.status import PoolStatus, pool_status

__all__ = [
    "ERROR_RESPONSES",
    "METRICS_MEDIA_TYPE",
    "ErrorResponse",
    "error_response",
    "metrics_text",
    "prometheus_installed",
    "readiness",
]

#: The media type of the Prometheus text exposition format.
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class ErrorResponse:
    """How an exception class is answered: status, a stable error code, a message."""

    status: int
    error: str
    message: str
    retry_after: int | None = None

    def body(self) -> dict[str, str]:
        # never the exception's text: a driver's message can hold SQL and other users' values
        return {"error": self.error, "message": self.message}

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else None


#: The default mapping. Copy and change it, or pass ``errors={IntegrityError:
#: ErrorResponse(422, ...)}`` to ``install()`` / ``DbkeelConfig``.
ERROR_RESPONSES: dict[type[BaseException], ErrorResponse] = {
    PoolExhaustedError: ErrorResponse(
        503, "database_busy", "Every database connection is in use; retry shortly.", 1
    ),
    DatabaseUnavailableError: ErrorResponse(
        503, "database_unavailable", "The database cannot be reached; retry shortly.", 5
    ),
    ConcurrentUpdateError: ErrorResponse(
        409, "concurrent_update", "The record changed meanwhile; reload it and retry."
    ),
    IntegrityError: ErrorResponse(
        409, "conflict", "The request conflicts with existing data (a unique or reference rule)."
    ),
}


def error_response(
    exc: BaseException, errors: Mapping[type[BaseException], ErrorResponse] | None = None
) -> ErrorResponse | None:
    """The answer for *exc*: its most specific class in *errors* (default
    :data:`ERROR_RESPONSES`), or ``None`` when no class of it is mapped."""
    table = ERROR_RESPONSES if errors is None else errors
    for cls in type(exc).__mro__:
        found = table.get(cls)
        if found is not None:
            return found
    return None


async def readiness(db: DatabaseManager) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for a readiness probe: 200 when the primary answers and the pool
    is not exhausted, else 503. The body holds no URL, user or password."""
    # an exhausted pool answers at once: health() would wait pool_timeout for a connection
    pool = pool_status(db.engine.pool)
    exhausted = _exhausted(pool)
    if exhausted:
        body: dict[str, Any] = {"status": "not_ready", "reachable": None, "latency_ms": None}
    else:
        report = await db.health()
        pool = report["pool"]
        exhausted = _exhausted(pool)
        ready = report["reachable"] and not exhausted
        body = {
            "status": "ready" if ready else "not_ready",
            "reachable": report["reachable"],
            "latency_ms": report["latency_ms"],
        }
    body.update(
        {"pool_exhausted": exhausted, "backend": db.engine.dialect.name, "pool": dict(pool)}
    )
    return (200 if body["status"] == "ready" else 503), body


def _exhausted(pool: PoolStatus) -> bool:
    return (
        pool["max"] is not None
        and pool["checked_out"] is not None
        and pool["checked_out"] >= pool["max"]
    )


def metrics_text(db: DatabaseManager) -> str:
    """The manager's pool metrics in Prometheus text ("" when monitoring is off): every
    node's pool, the primary's first, then each replica's (label node=replica-N)."""
    from dbkeel.monitoring.prometheus import prometheus_text

    monitors = db.monitors
    return prometheus_text(*monitors) if monitors else ""


def prometheus_installed() -> bool:
    """Whether ``prometheus-client`` (``dbkeel[prometheus]``) can be imported."""
    import importlib.util

    return importlib.util.find_spec("prometheus_client") is not None
