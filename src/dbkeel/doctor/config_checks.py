"""Checks that need only the settings: pool sizing, pre-ping, logging, naming, SQLite use.

Each function returns the findings of one check, or nothing when the check does not
apply to this backend or profile. The ``fix`` always names the variable to set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbkeel.doctor.findings import Finding
from dbkeel.settings import POOL_SIZE_DEFAULT_RANGE, DatabaseSettings, _cpu_count

if TYPE_CHECKING:
    from dbkeel.doctor.findings import DoctorOptions

__all__ = ["check_settings", "pooled_limits"]

ENV = DatabaseSettings.ENV_NAMES
_DEFAULT_APP_NAME = "dbkeel"
_DEFAULT_POOL_SIZE_MAX = POOL_SIZE_DEFAULT_RANGE[1]


def pooled_limits(settings: DatabaseSettings, pool_kwargs: dict[str, object]) -> tuple[int, int]:
    """(pool_size, max_overflow) one worker's engine really uses, after profile caps."""
    size = pool_kwargs.get("pool_size", settings.pool_size)
    overflow = pool_kwargs.get("max_overflow", settings.effective_max_overflow)
    return int(size), int(overflow)  # type: ignore[call-overload]


def check_settings(
    settings: DatabaseSettings, pool_kwargs: dict[str, object], options: DoctorOptions
) -> list[Finding]:
    """Every settings-only check, in report order."""
    findings: list[Finding] = []
    pooled = "pool_size" in pool_kwargs
    if pooled and settings.environment == "production":
        findings += _pool_size(settings, options.cpu_count or _cpu_count())
        findings += _max_overflow(settings)
    if settings.environment == "production" and pooled:
        findings += _pre_ping(settings)
    findings += _log_parameters(settings)
    findings += _application_name(settings)
    if settings.url.get_backend_name() == "sqlite":
        findings += _sqlite_in_production(settings)
    return findings


def _pool_size(settings: DatabaseSettings, cpus: int) -> list[Finding]:
    # The library's own default (CPUs x 2, clamped to 4..40) must pass: above 20 CPUs
    # it stops at 40, since one process rarely keeps more connections busy.
    low, high = min(cpus * 2, _DEFAULT_POOL_SIZE_MAX), cpus * 4
    size = settings.pool_size
    rule = f"rule: {low}..{high}, CPUs x 2-4"
    if low < cpus * 2:
        rule += f", at least {_DEFAULT_POOL_SIZE_MAX} = dbkeel's default cap"
    what = f"DATABASE_POOL_SIZE={size} on {cpus} CPUs ({rule})"
    if low <= size <= high:
        return [Finding("pool.size", "ok", what)]
    if size < low:
        why = (
            "Fewer connections than the CPUs can keep busy: requests queue for a connection "
            "while the host idles, and PoolExhaustedError appears under bursts."
        )
    else:
        why = (
            "More connections than the CPUs can serve: they contend for the GIL and the "
            "server's locks, latency rises, and each worker holds server memory for nothing."
        )
    return [Finding("pool.size", "warning", what, why, f"{ENV['pool_size']}={low}")]


def _max_overflow(settings: DatabaseSettings) -> list[Finding]:
    overflow, size = settings.effective_max_overflow, settings.pool_size
    limit = -(-size // 2)  # 50% of pool_size, rounded up
    what = f"DATABASE_MAX_OVERFLOW={overflow} with pool_size {size} (rule: <= 50% = {limit})"
    if overflow <= limit:
        return [Finding("pool.overflow", "ok", what)]
    return [
        Finding(
            "pool.overflow",
            "warning",
            what,
            "Overflow connections are opened under bursts and closed right after, each "
            "paying a full connect (TLS, auth); a large overflow means the pool is sized "
            "for the wrong load and multiplies the fleet's worst case on the server.",
            f"{ENV['max_overflow']}={size // 2} (or raise {ENV['pool_size']} instead)",
        )
    ]


def _pre_ping(settings: DatabaseSettings) -> list[Finding]:
    if settings.effective_pre_ping:
        return [Finding("pool.pre-ping", "ok", "pool_pre_ping is on in production")]
    return [
        Finding(
            "pool.pre-ping",
            "error",
            "ENVIRONMENT=production with DATABASE_POOL_PRE_PING=false",
            "A pooled connection closed by a failover, a restart or an idle timeout is "
            "handed to a request, which then fails; pre-ping tests it at checkout and "
            "replaces it silently.",
            f"{ENV['pool_pre_ping']}=true (or unset it: production turns it on)",
        )
    ]


def _log_parameters(settings: DatabaseSettings) -> list[Finding]:
    if not settings.echo:
        return [Finding("log.parameters", "ok", "SQL echo is off")]
    if settings.environment == "production":
        return [
            Finding(
                "log.parameters",
                "ok",
                "SQL echo is on, bound parameters hidden (production sets hide_parameters)",
            )
        ]
    return [
        Finding(
            "log.parameters",
            "warning",
            f"DATABASE_ECHO=true with ENVIRONMENT={settings.environment}: every statement "
            "is logged with its bound parameters",
            "Parameters carry passwords, tokens and personal data; in logs they are copied "
            "to every log store and kept for as long as the logs are.",
            f"{ENV['echo']}=false (production always hides parameters)",
        )
    ]


def _application_name(settings: DatabaseSettings) -> list[Finding]:
    if settings.app_name != _DEFAULT_APP_NAME:
        return [Finding("app.application-name", "ok", f"APP_NAME={settings.app_name}")]
    return [
        Finding(
            "app.application-name",
            "warning",
            "APP_NAME is not set: the server sees every service as 'dbkeel'",
            "application_name is how pg_stat_activity, slow-query logs and connection "
            "counts tell services apart; without it a runaway query has no owner.",
            f"{ENV['app_name']}=<service name>, e.g. APP_NAME=billing-api",
        )
    ]


def _sqlite_in_production(settings: DatabaseSettings) -> list[Finding]:
    if settings.environment != "production":
        what = f"SQLite with ENVIRONMENT={settings.environment}"
        return [Finding("sqlite.production", "ok", what)]
    return [
        Finding(
            "sqlite.production",
            "warning",
            "ENVIRONMENT=production on SQLite",
            "SQLite allows one writer at a time and lives on one host's disk: a second "
            "worker or instance waits on 'database is locked', and the data has no replica.",
            "DATABASE_URL=postgresql+asyncpg://... (keep SQLite only for a single-process app "
            "on durable local disk)",
        )
    ]
