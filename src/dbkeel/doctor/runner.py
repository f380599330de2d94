"""``run_doctor()``: run every check against the settings and the live database."""

from __future__ import annotations

import importlib
import os
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData

from dbkeel.doctor.config_checks import check_settings
from dbkeel.doctor.findings import DoctorOptions, Report
from dbkeel.doctor.probe import probe_server
from dbkeel.doctor.replica_checks import check_replicas
from dbkeel.doctor.schema_checks import check_schema
from dbkeel.doctor.server_checks import ServerContext, check_server
from dbkeel.engine import build_engine_options
from dbkeel.exceptions import ConfigurationError
from dbkeel.manager import DatabaseManager
from dbkeel.settings import DatabaseSettings

if TYPE_CHECKING:
    from dbkeel.doctor.findings import Finding

__all__ = ["load_metadata", "resolve_workers", "run_doctor"]


async def run_doctor(
    settings: DatabaseSettings | None = None,
    *,
    workers: int | None = None,
    metadata: MetaData | None = None,
    options: DoctorOptions | None = None,
) -> Report:
    """Audit *settings* (default: from the environment) against the live database.

    *workers* is the number of processes sharing the configuration (default
    ``WEB_CONCURRENCY``, else 1); *metadata* adds the schema checks. Raises
    :class:`~dbkeel.DatabaseUnavailableError` when the database cannot be reached.

    Example::

        report = await run_doctor(DatabaseSettings(), workers=4, metadata=Base.metadata)
        for finding in report.problems:
            print(finding.level, finding.id, finding.what, finding.fix)
    """
    start = time.perf_counter()
    settings = settings if settings is not None else DatabaseSettings()
    options = options or DoctorOptions()
    worker_count = resolve_workers(workers)
    pool_kwargs = {
        key: value
        for key, value in build_engine_options(settings).kwargs.items()
        if key in ("pool_size", "max_overflow")
    }
    findings: list[Finding] = check_settings(settings, pool_kwargs, options)
    # The doctor opens connections the way the application does, but without a pool of
    # its own: an app configured with pool_size=1 must not make the doctor wait on itself.
    # Replicas are checked one by one below, not routed to (no prober at startup).
    probe_settings = settings.model_copy(update={"environment": "test", "replica_urls": None})
    # An empty metadata: the probe reads no encrypted column, so it needs no keys.
    async with DatabaseManager(probe_settings, metadata=MetaData()) as db:
        facts = await probe_server(db.engine, settings.app_name)
        replica_findings = await check_replicas(settings, db.engine)
    ctx = ServerContext(settings, pool_kwargs, worker_count, options)
    findings += check_server(ctx, facts)
    findings += replica_findings
    if metadata is not None:
        findings += check_schema(metadata, facts.backend)
    return Report(
        url=settings.masked_url,
        backend=facts.backend,
        environment=settings.environment,
        workers=worker_count,
        server_version=facts.version_text,
        elapsed_ms=(time.perf_counter() - start) * 1000,
        findings=findings,
    )


def resolve_workers(workers: int | None) -> int:
    """*workers*, else ``WEB_CONCURRENCY`` (gunicorn's and uvicorn's variable), else 1."""
    if workers is None:
        raw = os.environ.get("WEB_CONCURRENCY", "").strip()
        if not raw:
            return 1
        try:
            workers = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"WEB_CONCURRENCY = {raw!r} is not a whole number. It counts the worker "
                f"processes that share these settings; set it to e.g. 4, or pass --workers."
            ) from None
        source = "WEB_CONCURRENCY"
    else:
        source = "--workers"
    if workers < 1:
        raise ConfigurationError(
            f"{source} = {workers} is invalid: the number of worker processes must be >= 1."
        )
    return workers


def load_metadata(spec: str) -> MetaData:
    """Import ``package.module:Name`` and return its ``MetaData`` (a declarative base's
    ``.metadata``, or a ``MetaData`` itself).

    Example::

        metadata = load_metadata("myapp.models:Base")
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigurationError(
            f"--models {spec!r} is not of the form package.module:Name, e.g. "
            f"myapp.models:Base (the declarative base or a MetaData)."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"--models {spec!r}: module {module_name!r} cannot be imported ({exc}). Run "
            f"from the project root or make the package importable (pip install -e .)."
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(
                f"--models {spec!r}: {type(target).__name__} {getattr(target, '__name__', '')!r}"
                f" has no attribute {part!r}. Name the declarative base, e.g. "
                f"{module_name}:Base."
            )
        target = getattr(target, part)
    metadata = target if isinstance(target, MetaData) else getattr(target, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"--models {spec!r} is a {type(target).__name__}, not a declarative base or a "
            f"MetaData: point it at the class your models inherit from."
        )
    return metadata
