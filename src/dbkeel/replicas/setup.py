"""Start and stop the replica engines, the router and its prober for a manager.

Each replica engine gets what the primary's gets: the key ring, the query-insight
listeners (statistics, comment tags, spans) and, with monitoring on, a
:class:`~dbkeel.PoolMonitor` and the slow-query log, labelled with the node's name
(``replica-1``...) and ``host:port``.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from dbkeel.encryption.keys import KeyRing
from dbkeel.engine import create_engine
from dbkeel.insight.install import install_engine_insight
from dbkeel.monitoring.pool import PoolMonitor
from dbkeel.monitoring.slow_queries import SlowQueryLog
from dbkeel.replicas.prober import probe_once, run_prober
from dbkeel.replicas.router import ReplicaRouter
from dbkeel.settings import DatabaseSettings

__all__ = ["start_replicas", "stop_replicas"]


async def start_replicas(
    settings: DatabaseSettings, primary: AsyncEngine, key_ring: KeyRing | None
) -> tuple[ReplicaRouter, asyncio.Task[None]]:
    """One engine per replica (own pool, same key ring), probed once before first use."""
    from dbkeel.encryption.registry import install_key_ring

    engines = []
    for url in settings.replica_url_list:
        replica_settings = settings.model_copy(
            update={
                "database_url": url.render_as_string(hide_password=False),
                "pool_size": settings.replica_pool_size or settings.pool_size,
            }
        )
        engine = create_engine(replica_settings)
        install_key_ring(engine, key_ring)
        engines.append(engine)
    router = ReplicaRouter(settings, primary, engines)
    for node, url in zip(router.nodes, settings.replica_url_list, strict=True):
        install_engine_insight(node.engine, settings)
        if settings.effective_monitoring:
            # before the first probe, so its connect time is counted too
            options = PoolMonitor.options_from_settings(settings, node=node.name, url=url)
            node.monitor = PoolMonitor.setup_listeners(node.engine, options)
            if settings.slow_query_threshold > 0:
                SlowQueryLog.setup(
                    node.engine,
                    settings.slow_query_threshold,
                    log_parameters=settings.log_parameters,
                    app_name=settings.app_name,
                )
    # A replica that is down at startup is not an error: reads go to the primary.
    await probe_once(router)
    task = asyncio.get_running_loop().create_task(run_prober(router), name="dbkeel-replica-probe")
    return router, task


async def stop_replicas(router: ReplicaRouter, prober: asyncio.Task[None] | None) -> None:
    """Stop the prober and dispose of every replica engine."""
    if prober is not None:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)
    await router.dispose()
