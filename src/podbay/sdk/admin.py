"""`client.admin`: the /admin routes of `podbay serve` (tenants, tokens, quotas, warm pools, database templates),
for a client made with an admin token (`podbay tokens create --admin`); a tenant's token gets Forbidden from every one.
`AsyncAdmin` is the asyncio core, `Admin` its blocking wrapper."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

from pydantic import TypeAdapter

from podbay.errors import InvalidSpec
from podbay.state.servers import TemplateInfo
from podbay.sync import _Loop
from podbay.tenancy import NewToken, PoolStatus, QuotaInfo, TenantInfo, TokenInfo

if TYPE_CHECKING:
    from podbay.sdk.client import AsyncClient


class PoolFields(TypedDict, total=False):
    """AsyncAdmin.ensure_pool's keywords, for the blocking one's `**shape` (the defaults are the async one's)."""

    backend: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    wait_s: float | None


class AsyncAdmin:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def tenants(self) -> list[TenantInfo]:
        response = await self._client._request("GET", "/admin/tenants")
        return [TenantInfo.model_validate(item) for item in response.json()]

    async def tenant(self, name: str) -> TenantInfo:
        return TenantInfo.model_validate((await self._client._request("GET", f"/admin/tenants/{name}")).json())

    async def create_tenant(self, name: str) -> TenantInfo:
        response = await self._client._request("POST", "/admin/tenants", content=json.dumps({"name": name}))
        return TenantInfo.model_validate(response.json())

    async def delete_tenant(self, name: str) -> TenantInfo:
        """Delete a tenant that holds nothing (Conflict otherwise); its tokens are revoked."""
        return TenantInfo.model_validate((await self._client._request("DELETE", f"/admin/tenants/{name}")).json())

    async def quota(self, tenant: str) -> QuotaInfo:
        return QuotaInfo.model_validate((await self._client._request("GET", f"/admin/tenants/{tenant}/quota")).json())

    async def set_quota(self, tenant: str, **limits: int | None) -> QuotaInfo:
        """Change the limits named (pods, memory_mib, snapshots, volumes, volume_mib; None lifts one)."""
        url = f"/admin/tenants/{tenant}/quota"
        response = await self._client._request("PATCH", url, content=json.dumps(limits))
        return QuotaInfo.model_validate(response.json())

    async def tokens(self, tenant: str | None = None) -> list[TokenInfo]:
        params = {"tenant": tenant} if tenant is not None else {}
        response = await self._client._request("GET", "/admin/tokens", params=params)
        return [TokenInfo.model_validate(item) for item in response.json()]

    async def create_token(self, tenant: str) -> NewToken:
        """A token for an existing tenant: `.token` is shown this once."""
        response = await self._client._request("POST", "/admin/tokens", content=json.dumps({"tenant": tenant}))
        return NewToken.model_validate(response.json())

    async def revoke_token(self, token_id: str) -> TokenInfo:
        return TokenInfo.model_validate((await self._client._request("DELETE", f"/admin/tokens/{token_id}")).json())

    async def pools(self) -> list[PoolStatus]:
        response = await self._client._request("GET", "/admin/pools")
        return [PoolStatus.model_validate(item) for item in response.json()]

    async def ensure_pool(
        self,
        size: int,
        *,
        backend: str = "qemu",
        vcpus: int = 1,
        memory_mib: int = 256,
        disk_mib: int = 1024,
        wait_s: float | None = None,
    ) -> PoolStatus:
        """Keep `size` idle members of this shape (0 drains the pool); with `wait_s`, until they are all up."""
        body = {
            "size": size,
            "backend": backend,
            "vcpus": vcpus,
            "memory_mib": memory_mib,
            "disk_mib": disk_mib,
            "wait_s": wait_s,
        }
        response = await self._client._request("PUT", "/admin/pools", content=json.dumps(body))
        return PoolStatus.model_validate(response.json())

    async def db_templates(self) -> list[TemplateInfo]:
        """The Postgres templates pods branch from (`db="postgres", db_template=NAME`)."""
        response = await self._client._request("GET", "/admin/db/templates")
        return TEMPLATES.validate_python(response.json())

    async def create_db_template(self, name: str, dump: str | os.PathLike[str]) -> TemplateInfo:
        """A Postgres template from the local plain SQL dump `dump` (`pg_dump --format=plain`), uploaded."""
        source = Path(dump)
        if not os.access(source, os.R_OK) or not source.is_file():
            raise InvalidSpec("dump", f"{source} is not a readable file", "pass the path of a pg_dump file")
        headers = {"Content-Type": "application/octet-stream"}
        response = await self._client._request(
            "POST", f"/admin/db/templates/{name}", content=_chunks(source), headers=headers
        )
        return TEMPLATE.validate_python(response.json())

    async def delete_db_template(self, name: str) -> None:
        """Remove a template (pods branched from it keep their copies)."""
        await self._client._request("DELETE", f"/admin/db/templates/{name}")


async def _chunks(source: Path) -> AsyncIterator[bytes]:
    with source.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


CHUNK = 1 << 20
TEMPLATE = TypeAdapter(TemplateInfo)
TEMPLATES = TypeAdapter(list[TemplateInfo])


class Admin:
    """`client.admin` of the blocking `Client`: AsyncAdmin's methods, one line each."""

    def __init__(self, loop: _Loop, admin: AsyncAdmin) -> None:
        self._loop = loop
        self._admin = admin

    def tenants(self) -> list[TenantInfo]:
        return self._loop.run(self._admin.tenants())

    def tenant(self, name: str) -> TenantInfo:
        return self._loop.run(self._admin.tenant(name))

    def create_tenant(self, name: str) -> TenantInfo:
        return self._loop.run(self._admin.create_tenant(name))

    def delete_tenant(self, name: str) -> TenantInfo:
        return self._loop.run(self._admin.delete_tenant(name))

    def quota(self, tenant: str) -> QuotaInfo:
        return self._loop.run(self._admin.quota(tenant))

    def set_quota(self, tenant: str, **limits: int | None) -> QuotaInfo:
        return self._loop.run(self._admin.set_quota(tenant, **limits))

    def tokens(self, tenant: str | None = None) -> list[TokenInfo]:
        return self._loop.run(self._admin.tokens(tenant))

    def create_token(self, tenant: str) -> NewToken:
        return self._loop.run(self._admin.create_token(tenant))

    def revoke_token(self, token_id: str) -> TokenInfo:
        return self._loop.run(self._admin.revoke_token(token_id))

    def pools(self) -> list[PoolStatus]:
        return self._loop.run(self._admin.pools())

    def ensure_pool(self, size: int, **shape: Unpack[PoolFields]) -> PoolStatus:
        return self._loop.run(self._admin.ensure_pool(size, **shape))

    def db_templates(self) -> list[TemplateInfo]:
        return self._loop.run(self._admin.db_templates())

    def create_db_template(self, name: str, dump: str | os.PathLike[str]) -> TemplateInfo:
        return self._loop.run(self._admin.create_db_template(name, dump))

    def delete_db_template(self, name: str) -> None:
        self._loop.run(self._admin.delete_db_template(name))
