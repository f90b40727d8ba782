"""The /admin routes: tenants, their tokens and quotas, and the warm pools. They take only an admin token
(`podbay tokens create --admin`, which acts for no tenant): a tenant's token answers 403 (Forbidden), as an
admin token does on a tenant's route. See docs/api.md."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from podbay.errors import Conflict, Unauthorized
from podbay.server.errors import responses
from podbay.server.registry import TokenRecord
from podbay.server.routes import ServiceDep, service
from podbay.server.service import Service
from podbay.tenancy import (
    NewToken,
    PoolRequest,
    PoolStatus,
    QuotaInfo,
    QuotaUpdate,
    TenantInfo,
    TenantRequest,
    TokenInfo,
    TokenRequest,
)

admin_bearer = HTTPBearer(
    scheme_name="admin_token",
    description="an admin token (`podbay tokens create --admin` on the server's host), shown once when made",
    auto_error=False,
)


def admin(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)]) -> str:
    """The id of the request's admin token: every /admin route needs one."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise Unauthorized("no admin token: send `Authorization: Bearer <token>` (`podbay tokens create --admin`)")
    return service(request).registry.admin_of(token)


router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])

ADMIN = (401, 403, 500)
NAMED = (*ADMIN, 404, 422)
BODY = (400, 422)


def tenant_info(svc: Service, name: str) -> TenantInfo:
    svc.registry.require_tenant(name)
    held = svc.holdings(name)
    record = next(tenant for tenant in svc.registry.tenants() if tenant.name == name)
    live_tokens = sum(1 for token in svc.registry.tokens(name) if token.revoked_at is None)
    return TenantInfo(
        name=name,
        created_at=record.created_at,
        live_pods=held["pods"],
        volumes=held["volumes"],
        snapshots=held["snapshots"],
        live_tokens=live_tokens,
    )


def token_info(record: TokenRecord) -> TokenInfo:
    return TokenInfo(id=record.id, tenant=record.tenant, created_at=record.created_at, revoked_at=record.revoked_at)


@router.get("/tenants", response_model=list[TenantInfo], responses=responses(*ADMIN))
async def list_tenants(svc: ServiceDep) -> list[TenantInfo]:
    return [tenant_info(svc, tenant.name) for tenant in svc.registry.tenants()]


@router.post("/tenants", response_model=TenantInfo, status_code=201, responses=responses(*ADMIN, *BODY, 409))
async def create_tenant(body: TenantRequest, svc: ServiceDep) -> TenantInfo:
    svc.registry.create_tenant(body.name)
    return tenant_info(svc, body.name)


@router.get("/tenants/{name}", response_model=TenantInfo, responses=responses(*NAMED))
async def get_tenant(name: str, svc: ServiceDep) -> TenantInfo:
    return tenant_info(svc, name)


@router.delete("/tenants/{name}", response_model=TenantInfo, responses=responses(*NAMED, 409))
async def delete_tenant(name: str, svc: ServiceDep) -> TenantInfo:
    """Delete a tenant that holds nothing (no live pod, volume or snapshot): its tokens are revoked, its usage
    records kept, and its name is never given again."""
    info = tenant_info(svc, name)
    held = {"live pods": info.live_pods, "volumes": info.volumes, "snapshots": info.snapshots}
    if any(held.values()):
        listed = ", ".join(f"{count} {kind}" for kind, count in held.items() if count)
        raise Conflict(f"tenant {name!r} still holds {listed}; they must go first (its pods, volumes, snapshots)")
    svc.registry.delete_tenant(name)
    return info.model_copy(update={"live_tokens": 0})


@router.get("/tenants/{name}/quota", response_model=QuotaInfo, responses=responses(*NAMED))
async def get_quota(name: str, svc: ServiceDep) -> QuotaInfo:
    svc.registry.require_tenant(name)
    return QuotaInfo(**dataclasses.asdict(svc.registry.quota(name)))


@router.patch("/tenants/{name}/quota", response_model=QuotaInfo, responses=responses(*NAMED, 400))
async def set_quota(name: str, body: QuotaUpdate, svc: ServiceDep) -> QuotaInfo:
    """Change the limits the body names (null lifts one, to unlimited); the others stay as they are. The
    server enforces them from the next request on."""
    limits = {kind: getattr(body, kind) for kind in body.model_fields_set}
    return QuotaInfo(**dataclasses.asdict(svc.registry.set_quota(name, limits)))


@router.get("/tokens", response_model=list[TokenInfo], responses=responses(*ADMIN, 422))
async def list_tokens(
    svc: ServiceDep, tenant: Annotated[str | None, Query(description="only this tenant's tokens")] = None
) -> list[TokenInfo]:
    """Every token's record (admin tokens have tenant null); never a token or its hash."""
    return [token_info(record) for record in svc.registry.tokens(tenant)]


@router.post("/tokens", response_model=NewToken, status_code=201, responses=responses(*ADMIN, *BODY, 404))
async def create_token(body: TokenRequest, svc: ServiceDep) -> NewToken:
    """A token for an existing tenant, shown in this answer only. (Admin tokens are made on the host only.)"""
    token, record = svc.registry.create_token(body.tenant, make_tenant=False)
    return NewToken(token=token, **token_info(record).model_dump())


@router.delete("/tokens/{token_id}", response_model=TokenInfo, responses=responses(*NAMED))
async def revoke_token(token_id: str, svc: ServiceDep) -> TokenInfo:
    """Revoke a token by its id: the server refuses it (401) from the next request on."""
    return token_info(svc.registry.revoke(token_id))


@router.get("/pools", response_model=list[PoolStatus], responses=responses(*ADMIN))
async def list_pools(svc: ServiceDep) -> list[PoolStatus]:
    """Each warm pool: its shape, size, idle members, hit rate, claim latency, refill rate, failures."""
    return [PoolStatus.model_validate(report) for report in svc.platform.pools.report()]


@router.put("/pools", response_model=PoolStatus, responses=responses(*ADMIN, *BODY, 409, 501, 502, 503, 504))
async def ensure_pool(body: PoolRequest, svc: ServiceDep) -> PoolStatus:
    """Keep `size` idle members of this shape refilled in the background (0 drains the pool); with `wait_s`,
    answer once they are all up (or 504)."""
    report = await svc.platform.pools.ensure(
        body.size,
        wait=body.wait_s,
        backend=body.backend,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        disk_mib=body.disk_mib,
    )
    return PoolStatus.model_validate(report)
