"""The FastAPI application: one AsyncPlatform for the whole service, made at start-up, closed at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from podbay.metering import PriceTable
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.server import admin, databases, errors, inspect, observability, processes, snapshots, volumes
from podbay.server.registry import Registry
from podbay.server.routes import router
from podbay.server.service import Service
from podbay.tenancy import PoolRequest

log = logging.getLogger("podbay")


def create_app(
    paths: PodbayPaths | None = None,
    platform: AsyncPlatform | None = None,
    prices: PriceTable | None = None,
    *,
    keep_pods: bool = False,
    pools: Sequence[PoolRequest] = (),
) -> FastAPI:
    """The service over `platform` (made from `paths`, or PODBAY_STATE/PODBAY_CACHE, at start-up if not given;
    a given platform is closed at shutdown too). Its registry is `<state>/server.db`; `prices` prices usage
    (PriceTable's defaults if None).

    At start-up it re-adopts the pods the registry holds as live (a previous server was restarted or killed):
    those it cannot are marked ended with the reason. Then it asks for `pools` as PUT /admin/pools does (they
    fill in the background; one the platform refuses stops the start with its error). At shutdown it destroys
    its pods, unless `keep_pods`: then the pods that can outlive it (`Capabilities.reattach`) are left running
    for the next server."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = platform or AsyncPlatform(paths)
        registry = Registry(owned.paths.state / "server.db")
        try:
            app.state.service = service = Service(owned, registry, prices)
            owned.on_pod_event(observability.pod_event_listener(metrics, service.ledger.owner, registry.add_snapshot))
            await recover_pods(owned, registry)  # after the listeners: a pod lost here is metered and counted
            for pool in pools:
                await admin.ensure_pool(pool, service)
            yield
        finally:
            try:
                kept = await owned.detach_all() if keep_pods else []
                await owned.close()
            finally:
                end_pods_except(registry, set(kept), "the server stopped")
                registry.close()

    app = FastAPI(title="podbay", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.state.metrics = metrics = observability.Metrics()
    observability.install(app, metrics)
    app.include_router(router)
    app.include_router(volumes.router)
    app.include_router(admin.router)
    app.include_router(processes.router)
    app.include_router(inspect.router)
    app.include_router(snapshots.router)
    app.include_router(databases.router)
    app.include_router(databases.admin_router)
    return app


async def recover_pods(platform: AsyncPlatform, registry: Registry) -> None:
    """Re-adopt the registry's live pods (see AsyncPlatform.recover); those lost end with their reason, which
    their tenant reads in the 404 for them."""
    recovery = await platform.recover(registry.all_live_pods())
    for pod_id, reason in recovery.lost.items():
        registry.end_pod(pod_id, reason)
    if recovery.adopted or recovery.lost:
        log.info("re-adopted %d pod(s); %d ended: %s", len(recovery.adopted), len(recovery.lost), recovery.lost)


def end_pods_except(registry: Registry, kept: set[str], reason: str) -> None:
    for pod_id in registry.all_live_pods():
        if pod_id not in kept:
            registry.end_pod(pod_id, reason)
