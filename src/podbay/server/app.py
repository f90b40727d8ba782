"""The FastAPI application: one AsyncPlatform for the whole service, made at start-up, closed at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from podbay.metering import PriceTable
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.server import admin, errors, inspect, observability, processes, snapshots, volumes
from podbay.server.registry import Registry
from podbay.server.routes import router
from podbay.server.service import Service


def create_app(
    paths: PodbayPaths | None = None, platform: AsyncPlatform | None = None, prices: PriceTable | None = None
) -> FastAPI:
    """The service over `platform` (made from `paths`, or PODBAY_STATE/PODBAY_CACHE, at start-up if not given;
    a given platform is closed at shutdown too). Its registry is `<state>/server.db`; `prices` prices usage
    (PriceTable's defaults if None)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = platform or AsyncPlatform(paths)
        registry = Registry(owned.paths.state / "server.db")
        registry.end_all_pods("the server stopped; pods do not outlive it yet")
        app.state.service = service = Service(owned, registry, prices)
        owned.on_pod_event(observability.pod_event_listener(metrics, service.ledger.owner, registry.add_snapshot))
        try:
            yield
        finally:
            try:
                await owned.close()
            finally:
                registry.end_all_pods("the server stopped")
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
    return app
