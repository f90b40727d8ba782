"""A tenant's snapshots: `GET /snapshots` (its own, without host paths) and `DELETE /snapshots/{name}`, which
frees the snapshot quota. Another tenant's snapshot answers 404 exactly as a missing one. Taking and restoring
are pod routes (routes.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from podbay.errors import NotFound, PodbayError
from podbay.isolation.qemu.snapshot import Snapshot
from podbay.models import SnapshotInfo
from podbay.server.errors import responses
from podbay.server.routes import ANY, ServiceDep, TenantDep
from podbay.server.service import Service
from podbay.snapshots import describe

router = APIRouter()


def tenant_snapshots(svc: Service, tenant: str) -> list[SnapshotInfo]:
    """The tenant's snapshots that still exist, by name; one removed on the host or damaged is left out (a
    damaged one can still be deleted by name)."""
    found = []
    for name in svc.registry.snapshots(tenant):
        try:
            info = describe(name, Snapshot.load(svc.platform.snapshots.path(name)))
        except (PodbayError, OSError):  # damaged, or removed meanwhile
            continue
        found.append(svc.redactor.snapshot_info(info))
    return found


async def delete_tenant_snapshot(svc: Service, tenant: str, name: str) -> None:
    """Remove the tenant's snapshot `name` from the host and from its records: its quota slot is free at once."""
    svc.snapshot_of(tenant, name)  # NotFound for another tenant's, exactly as for a missing one
    try:
        await asyncio.to_thread(svc.platform.snapshots.remove, name)
    except (NotFound, FileNotFoundError):
        pass  # removed meanwhile (on the host, or by a request at the same time): only the record goes
    svc.registry.remove_snapshot(name, tenant)


@router.get("/snapshots", response_model=list[SnapshotInfo], responses=responses(*ANY))
async def list_snapshots(svc: ServiceDep, who: TenantDep) -> list[SnapshotInfo]:
    """The tenant's snapshots (`path` is empty: it is the server's), by name; restore one with
    POST /snapshots/{name}/restore."""
    return await asyncio.to_thread(tenant_snapshots, svc, who)


@router.delete("/snapshots/{name}", status_code=204, responses=responses(*ANY, 404, 422))
async def delete_snapshot(name: str, svc: ServiceDep, who: TenantDep) -> None:
    """Delete the tenant's snapshot for good (pods restored from it keep running); frees a snapshot of its
    quota."""
    await delete_tenant_snapshot(svc, who, name)
