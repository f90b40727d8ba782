"""The routes of a tenant's named volumes: `GET/POST /volumes`, `GET/DELETE /volumes/{name}`. Each tenant has a
namespace of its own (see tenant_volumes.py); another tenant's volume answers 404 exactly as a missing one."""

from __future__ import annotations

from fastapi import APIRouter

from podbay.server.errors import responses
from podbay.server.routes import ANY, ServiceDep, TenantDep
from podbay.tenancy import TenantVolume, VolumeRequest

router = APIRouter()

NAMED = (*ANY, 404, 422)


@router.get("/volumes", response_model=list[TenantVolume], responses=responses(*ANY))
async def list_volumes(svc: ServiceDep, who: TenantDep) -> list[TenantVolume]:
    return svc.volumes.list(who)


@router.post("/volumes", response_model=TenantVolume, status_code=201, responses=responses(*ANY, 400, 409, 422, 429))
async def create_volume(body: VolumeRequest, svc: ServiceDep, who: TenantDep) -> TenantVolume:
    """A new volume holding an empty SQLite database (in WAL mode); a pod gets it with
    `memory_db=True, volume=NAME`, which also makes it on first use."""
    await svc.create_volume(who, body.name, body.size_mib)
    return svc.volumes.shown(svc.volumes.record(who, body.name))


@router.get("/volumes/{name}", response_model=TenantVolume, responses=responses(*NAMED))
async def get_volume(name: str, svc: ServiceDep, who: TenantDep) -> TenantVolume:
    return svc.volumes.shown(svc.volumes.record(who, name))


@router.delete("/volumes/{name}", response_model=TenantVolume, responses=responses(*NAMED, 409))
async def delete_volume(name: str, svc: ServiceDep, who: TenantDep) -> TenantVolume:
    """Delete the volume and its data for good; 409 while a pod holds it."""
    return await svc.volumes.delete(who, name)
