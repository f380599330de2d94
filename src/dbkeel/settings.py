"""``DatabaseSettings``: every knob of dbkeel, read from the environment and ``.env``.

Settings are plain values, validated when they are created; they hold no live objects
(the engine and the session factory belong to :class:`dbkeel.DatabaseManager`)::

    from dbkeel import DatabaseSettings

    settings = DatabaseSettings()                      # DATABASE_URL, ENVIRONMENT, ... from env
    settings = DatabaseSettings(pool_size=10)          # constructor arguments win over env
    print(settings)                                    # the URL's password shows as ***

A bad value fails here, at load time, with a :class:`~dbkeel.ConfigurationError` that
names the environment variable and the values it accepts.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dbkeel._masking import check_userinfo, mask_url
from dbkeel._settings_errors import describe_validation_error, unknown_settings
from dbkeel.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_SQLITE_URL",
    "POOL_SIZE_DEFAULT_RANGE",
    "DatabaseSettings",
    "Environment",
    "default_pool_size",
    "mask_url",
]

logger = logging.getLogger(__name__)

Environment = Literal["test", "development", "production"]

#: Where development and test runs keep their data when no DATABASE_URL is set.
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./dbkeel.sqlite3"

# Plain scheme -> the async driver dbkeel uses for it. `postgres://` is what Heroku-style
# platforms hand out; SQLAlchemy itself stopped accepting that spelling in 1.4.
_DEFAULT_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}
_SYNC_ONLY_DRIVERS = {"psycopg2", "pg8000", "pysqlite", "mysqldb", "pymysql", "mysqlconnector"}


def _cpu_count() -> int:
    # The CPUs this process may run on (a container's cpuset), not the host's count.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: The default pool_size is CPU count x 2 (the design's rule), clamped to this range.
POOL_SIZE_DEFAULT_RANGE = (4, 40)


def default_pool_size() -> int:
    """CPU count x 2 (the design's rule), clamped to :data:`POOL_SIZE_DEFAULT_RANGE`.

    Example: on 2 CPUs ``default_pool_size() == 4``; on 64 CPUs it is 40.
    """
    low, high = POOL_SIZE_DEFAULT_RANGE
    return max(low, min(high, _cpu_count() * 2))


def _var(env: str, **kwargs: Any) -> Any:
    """A settings field read from the environment variable *env* (and by field name)."""
    return Field(validation_alias=env, **kwargs)


class DatabaseSettings(BaseSettings):
    """Connection and pool settings for one database.

    Every field is read from the environment variable shown in brackets (or a ``.env``
    file in the working directory); constructor arguments, by field name, override it.
    Durations are in seconds.

    Example::

        settings = DatabaseSettings(
            database_url="postgresql+asyncpg://app@db.internal/app",
            environment="production",
            app_name="billing",
        )
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        # DATABASE_COMMAND_TIMEOUT=none switches off a knob whose default is a value.
        env_parse_none_str="none",
        extra="ignore",
        frozen=True,
    )

    database_url: str | None = _var(
        "DATABASE_URL",
        default=None,
        description="SQLAlchemy URL; without one, development and test use embedded SQLite.",
    )
    environment: Environment = _var(
        "ENVIRONMENT", default="development", description="Selects the engine profile."
    )
    app_name: str = _var(
        "APP_NAME",
        default="dbkeel",
        min_length=1,
        max_length=63,
        description="Sent to the server as application_name.",
    )
    pool_size: int = _var(
        "DATABASE_POOL_SIZE",
        default_factory=default_pool_size,
        ge=1,
        le=1000,
        description="Connections kept open (default CPU count x 2, clamped to 4..40).",
    )
    max_overflow: int | None = _var(
        "DATABASE_MAX_OVERFLOW",
        default=None,
        ge=0,
        le=1000,
        description="Extra connections above pool_size under load (default 50% of pool_size).",
    )
    pool_timeout: float = _var(
        "DATABASE_POOL_TIMEOUT",
        default=30.0,
        gt=0,
        description="Seconds to wait for a free connection before PoolExhaustedError.",
    )
    pool_recycle: int = _var(
        "DATABASE_POOL_RECYCLE",
        default=3600,
        ge=-1,
        description="Replace connections older than this at checkout; -1 disables.",
    )
    pool_pre_ping: bool | None = _var(
        "DATABASE_POOL_PRE_PING",
        default=None,
        description=(
            "Test connections at checkout (default: on in production). asyncpg: those idle "
            "for 0.5 s or more, and any the server has closed."
        ),
    )
    pool_use_lifo: bool = _var(
        "DATABASE_POOL_USE_LIFO",
        default=True,
        description="Reuse the most recently returned connection so idle ones can expire.",
    )
    command_timeout: float | None = _var(
        "DATABASE_COMMAND_TIMEOUT",
        default=60.0,
        gt=0,
        description="Client-side limit for one statement (asyncpg).",
    )
    statement_timeout: float | None = _var(
        "DATABASE_STATEMENT_TIMEOUT",
        default=None,
        gt=0,
        description="Server-side statement limit (PostgreSQL statement_timeout, "
        "MariaDB max_statement_time).",
    )
    connect_timeout: float = _var(
        "DATABASE_CONNECT_TIMEOUT",
        default=10.0,
        gt=0,
        description="Seconds allowed to open one connection.",
    )
    initialize_timeout: float = _var(
        "DATABASE_INITIALIZE_TIMEOUT",
        default=10.0,
        gt=0,
        description="Total budget of initialize()'s connection retries.",
    )
    initialize_backoff: float = _var(
        "DATABASE_INITIALIZE_BACKOFF",
        default=0.1,
        gt=0,
        le=10,
        description="First pause between initialize()'s attempts; doubles up to 2 s.",
    )
    echo: bool = _var(
        "DATABASE_ECHO",
        default=False,
        description="Log every SQL statement (parameters are hidden in production).",
    )
    isolation_level: (
        Literal[
            "SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"
        ]
        | None
    ) = _var(
        "DATABASE_ISOLATION_LEVEL",
        default=None,
        description="Default isolation level. AUTOCOMMIT makes rollback a no-op.",
    )
    pgbouncer: bool = _var(
        "DATABASE_PGBOUNCER",
        default=False,
        description="A PgBouncer in transaction mode sits in front: disable prepared "
        "statement caching and client pooling.",
    )
    encryption_keys: SecretStr | None = _var(
        "DATABASE_ENCRYPTION_KEYS",
        default=None,
        description="Keys of encrypted columns: comma-separated ID:BASE64KEY entries "
        "(make one with `dbkeel keys generate`).",
    )
    encryption_active_key: str | None = _var(
        "DATABASE_ENCRYPTION_ACTIVE_KEY",
        default=None,
        description="Id of the key new values are encrypted with (needed with several keys).",
    )
    blind_index_key: SecretStr | None = _var(
        "DATABASE_BLIND_INDEX_KEY",
        default=None,
        description="Key of blind-index columns, separate from the encryption keys.",
    )

    monitoring: bool | None = _var(
        "DATABASE_MONITORING",
        default=None,
        description="Attach a PoolMonitor and the slow query log (default: on in production).",
    )
    long_lived_threshold: float = _var(
        "DATABASE_LONG_LIVED_THRESHOLD",
        default=300.0,
        gt=0,
        description="Warn once when a connection older than this is checked out.",
    )
    leak_threshold: float = _var(
        "DATABASE_LEAK_THRESHOLD",
        default=60.0,
        gt=0,
        description="Warn when a connection is held (checked out) longer than this.",
    )
    capture_checkout_stack: bool = _var(
        "DATABASE_CAPTURE_CHECKOUT_STACK",
        default=False,
        description="Record where each connection is checked out, for leak warnings.",
    )
    slow_query_threshold: float = _var(
        "DATABASE_SLOW_QUERY_THRESHOLD",
        default=1.0,
        ge=0,
        description="Log statements slower than this; 0 turns the slow query log off.",
    )
    log_parameters: bool = _var(
        "DATABASE_LOG_PARAMETERS",
        default=False,
        description="Show bound parameters in the slow query log (they may hold user data).",
    )
    # Query insight (dbkeel.insight): N+1 detection and SQL comment tags.
    nplusone: Literal["off", "log", "raise"] | None = _var(
        "DATABASE_NPLUSONE",
        default=None,
        description="N+1 lazy-load detection: off, log or raise (default: log outside production).",
    )
    nplusone_threshold: int = _var(
        "DATABASE_NPLUSONE_THRESHOLD",
        default=10,
        ge=2,
        description="Report a relationship loaded this many times in one context.",
    )
    query_comment: bool = _var(
        "DATABASE_QUERY_COMMENT",
        default=False,
        description="Append sqlcommenter tags (application, route) to every statement.",
    )
    query_comment_traceparent: bool = _var(
        "DATABASE_QUERY_COMMENT_TRACEPARENT",
        default=False,
        description="Add the W3C traceparent of the current sampled OpenTelemetry span to the "
        "comment (a per-request text: prepared once per request; needs dbkeel[otel]).",
    )
    query_spans: bool = _var(
        "DATABASE_QUERY_SPANS",
        default=False,
        description="An OpenTelemetry span per statement (needs dbkeel[otel]).",
    )
    query_transaction_spans: bool = _var(
        "DATABASE_QUERY_TRANSACTION_SPANS",
        default=False,
        description="An OpenTelemetry span per transaction, parent of its statement spans "
        "(needs dbkeel[otel]).",
    )

    # -- read replicas (dbkeel.replicas; PostgreSQL, or MariaDB in window mode) ----------
    replica_urls: str | None = _var(
        "DATABASE_REPLICA_URLS",
        default=None,
        description="Comma-separated URLs of streaming replicas that serve "
        "get_session(read_only=True).",
    )
    replica_max_lag: float = _var(
        "DATABASE_REPLICA_MAX_LAG",
        default=5.0,
        gt=0,
        description="Seconds behind the primary after which a replica is not used.",
    )
    read_your_writes: str | None = _var(
        "DATABASE_READ_YOUR_WRITES",
        default=None,
        description="lsn (exact, PostgreSQL default), window:<seconds> (primary for that "
        "long after a write; default window:2 elsewhere) or off.",
    )
    replica_probe_interval: float = _var(
        "DATABASE_REPLICA_PROBE_INTERVAL",
        default=1.0,
        gt=0,
        description="Seconds between health probes of each replica (lag, recovery, reach).",
    )
    replica_wait: float = _var(
        "DATABASE_REPLICA_WAIT",
        default=0.0,
        ge=0,
        le=60,
        description="Seconds a read-your-writes read waits for a replica to catch up "
        "before it reads from the primary.",
    )
    replica_fallback: Literal["primary", "raise"] = _var(
        "DATABASE_REPLICA_FALLBACK",
        default="primary",
        description="With no usable replica: read from the primary, or raise "
        "NoReplicaAvailableError.",
    )
    replica_pool_size: int | None = _var(
        "DATABASE_REPLICA_POOL_SIZE",
        default=None,
        ge=1,
        le=1000,
        description="Pool size of each replica's engine (default: pool_size).",
    )

    # Environment variable name of each field, for error messages and the docs table.
    ENV_NAMES: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any) -> None:
        # Constructor arguments are given by field name; pydantic-settings matches them by
        # alias (the variable name). Not validate_by_name: that would also make the env
        # source read un-prefixed variables such as POOL_SIZE.
        unknown = unknown_settings(
            values, self.ENV_NAMES, env_file=type(self).model_config.get("env_file")
        )
        if unknown:
            raise ConfigurationError(unknown)
        values = {self.ENV_NAMES.get(key, key): value for key, value in values.items()}
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # `from None`: pydantic's own message repeats the input value, which for
            # DATABASE_URL would print the password in the traceback.
            raise ConfigurationError(
                describe_validation_error(exc, type(self).model_fields, self.ENV_NAMES)
            ) from None

    @model_validator(mode="after")
    def _check_url(self) -> DatabaseSettings:
        if self.database_url is None:
            if self.environment == "production":
                raise ValueError(
                    "DATABASE_URL is not set and ENVIRONMENT=production: dbkeel will not "
                    "fall back to embedded SQLite in production. Set DATABASE_URL, e.g. "
                    "postgresql+asyncpg://user:password@host:5432/dbname"
                )
            return self
        object.__setattr__(self, "database_url", _normalise_url(self.database_url))
        return self

    @model_validator(mode="after")
    def _check_replicas(self) -> DatabaseSettings:
        from dbkeel.replicas.config import check_replica_settings

        urls, mode = check_replica_settings(
            self.replica_urls, self.read_your_writes, self.url, _normalise_url
        )
        object.__setattr__(self, "replica_urls", urls)
        object.__setattr__(self, "read_your_writes", mode)
        return self

    @model_validator(mode="after")
    def _check_comment(self) -> DatabaseSettings:
        if self.query_comment_traceparent and not self.query_comment:
            raise ValueError(
                "DATABASE_QUERY_COMMENT_TRACEPARENT=true adds a tag to the SQL comment, but "
                "DATABASE_QUERY_COMMENT is off: set DATABASE_QUERY_COMMENT=true as well."
            )
        return self

    @model_validator(mode="after")
    def _check_timeouts(self) -> DatabaseSettings:
        # PostgreSQL and MySQL take whole milliseconds; a value below 1 ms would reach the
        # server as 0, which means "no limit": the opposite of what was asked.
        value = self.statement_timeout
        if value is not None and value < 0.001:
            raise ValueError(
                f"DATABASE_STATEMENT_TIMEOUT = {value!r} is below 1 millisecond: the server "
                f"counts whole milliseconds, so it would become 0, which means no limit "
                f"at all. Give at least 0.001 (seconds), or none for no limit."
            )
        return self

    @model_validator(mode="after")
    def _check_keys(self) -> DatabaseSettings:
        # Parsed here so a bad key fails at load time; no optional package is needed.
        # Errors raised below never contain key material (see dbkeel.encryption.keys).
        from dbkeel.encryption.keys import parse_index_key, parse_keys

        keys = {}
        if self.encryption_keys is not None:
            keys = parse_keys(self.encryption_keys.get_secret_value())
            active = self.encryption_active_key
            if active is None and len(keys) > 1:
                raise ValueError(
                    f"DATABASE_ENCRYPTION_KEYS holds {len(keys)} keys ({', '.join(keys)}) but "
                    f"DATABASE_ENCRYPTION_ACTIVE_KEY is not set: name the id new values are "
                    f"written with."
                )
            if active is not None and active not in keys:
                raise ValueError(
                    f"DATABASE_ENCRYPTION_ACTIVE_KEY={active!r} is not one of the ids in "
                    f"DATABASE_ENCRYPTION_KEYS ({', '.join(keys)})."
                )
        elif self.encryption_active_key is not None:
            raise ValueError(
                "DATABASE_ENCRYPTION_ACTIVE_KEY is set but DATABASE_ENCRYPTION_KEYS is not."
            )
        if self.blind_index_key is not None:
            index_key = parse_index_key(self.blind_index_key.get_secret_value())
            if index_key in keys.values():
                raise ValueError(
                    "DATABASE_BLIND_INDEX_KEY is also one of the encryption keys: give the "
                    "blind index a key of its own (`dbkeel keys generate`)."
                )
        return self

    # -- derived values -----------------------------------------------------------------

    @property
    def url(self) -> URL:
        """The effective URL (embedded SQLite when none is configured)."""
        if self.database_url is None:
            return make_url(DEFAULT_SQLITE_URL)
        return make_url(self.database_url)

    @property
    def uses_default_url(self) -> bool:
        """True when no DATABASE_URL was given and the embedded SQLite default is used."""
        return self.database_url is None

    @property
    def effective_max_overflow(self) -> int:
        """max_overflow, or 50% of pool_size when not set."""
        return self.max_overflow if self.max_overflow is not None else self.pool_size // 2

    @property
    def effective_pre_ping(self) -> bool:
        """pool_pre_ping, or True in production when not set."""
        if self.pool_pre_ping is not None:
            return self.pool_pre_ping
        return self.environment == "production"

    @property
    def effective_monitoring(self) -> bool:
        """monitoring, or True in production when not set."""
        if self.monitoring is not None:
            return self.monitoring
        return self.environment == "production"

    @property
    def effective_nplusone(self) -> Literal["off", "log", "raise"]:
        """nplusone, or ``log`` in development and test and ``off`` in production."""
        if self.nplusone is not None:
            return self.nplusone
        return "off" if self.environment == "production" else "log"

    @property
    def masked_url(self) -> str:
        """The effective URL with the password replaced by ``***``."""
        return mask_url(self.url)

    @property
    def replica_url_list(self) -> list[URL]:
        """The replica URLs, normalised (empty without DATABASE_REPLICA_URLS)."""
        from dbkeel.replicas.config import split_urls

        return [make_url(raw) for raw in split_urls(self.replica_urls)]

    @field_serializer("database_url", "replica_urls")
    def _serialize_url(self, value: str | None) -> str | None:
        # model_dump()/model_dump_json() are what people log or serve on debug pages.
        from dbkeel.replicas.config import mask_urls

        return None if value is None else mask_urls(value)

    def __repr_args__(self) -> Any:
        from dbkeel.replicas.config import mask_urls

        for name, value in super().__repr_args__():
            if name in ("database_url", "replica_urls") and value is not None:
                yield name, mask_urls(value)
            else:
                yield name, value


DatabaseSettings.ENV_NAMES = {
    name: str(field.validation_alias) for name, field in DatabaseSettings.model_fields.items()
}


def _normalise_url(raw: str, variable: str = "DATABASE_URL") -> str:
    check_userinfo(raw, variable)
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError(
            f"{variable} is not a valid SQLAlchemy URL. Expected "
            "dialect+driver://user:password@host:port/dbname, e.g. "
            "postgresql+asyncpg://app@localhost:5432/app"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if not driver:
        if backend not in _DEFAULT_DRIVERS:
            raise ValueError(
                f"{variable} uses the database {backend!r}, which dbkeel does not know. "
                f"Accepted: postgresql+asyncpg, postgresql+psycopg, sqlite+aiosqlite, "
                f"mysql+asyncmy, mariadb+asyncmy (or another async driver, spelled out)."
            )
        url = url.set(drivername=_DEFAULT_DRIVERS[backend])
    elif driver in _SYNC_ONLY_DRIVERS:
        async_name = _DEFAULT_DRIVERS.get(backend, "an async driver")
        raise ValueError(
            f"{variable} uses the driver {driver!r}, which is synchronous: dbkeel needs "
            f"an asyncio driver. Use {async_name} instead (install dbkeel[postgres], "
            f"dbkeel[sqlite] or dbkeel[mysql])."
        )
    if url.drivername.startswith("postgres+"):
        url = url.set(drivername="postgresql+" + url.drivername.partition("+")[2])
    return url.render_as_string(hide_password=False)
