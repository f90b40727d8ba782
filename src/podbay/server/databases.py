"""The server databases (Postgres, Redis; `PodSpec.db`) as tenants and the operator reach them.

Tenant routes: `GET /databases` (the databases of the tenant's own pods, live or retained after the pod ended),
`GET /databases/{pod_id}/export` (the dump, streamed), `DELETE /databases/{pod_id}` (a retained one, for good).
Another tenant's database answers 404 exactly as one that does not exist: the registry's `pods` table says
which pods are (or were) the tenant's, and nothing else is looked up for a pod that is not.

Admin routes (`/admin/db/templates`): the Postgres templates pods branch from (`db_template=`): upload a dump,
list, remove. See docs/api.md.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from podbay.errors import HostError, InvalidSpec, NotFound
from podbay.models import NAME_PATTERN
from podbay.server.admin import admin
from podbay.server.errors import responses
from podbay.server.routes import ANY, BINARY, ServiceDep, TenantDep
from podbay.server.service import Service
from podbay.state.databases import PostgresTemplates
from podbay.state.servers import DUMP_SUFFIXES, DatabaseInfo, TemplateInfo

router = APIRouter()
admin_router = APIRouter(prefix="/admin/db", dependencies=[Depends(admin)])

OCTETS = "application/octet-stream"
MAX_DUMP_BYTES = 1 << 30  # an uploaded template dump; larger ones are refused while they are read
NAMED = (*ANY, 404, 422, 503)
ADMIN = (401, 403, 500, 503)
TemplateName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="the template's name")]
T = TypeVar("T")


def missing(pod_id: str) -> NotFound:
    """The one answer for a database that does not exist and for another tenant's."""
    return NotFound(f"no database of pod {pod_id!r}; `GET /databases` lists yours", pod_id=pod_id)


async def as_missing(pod_id: str, work: Awaitable[T]) -> T:
    """`work`, its NotFound rewritten to `missing`'s words (the platform's own name the operator's command)."""
    try:
        return await work
    except NotFound:
        raise missing(pod_id) from None


def tenant_pod(svc: Service, tenant: str, pod_id: str) -> str:
    if not svc.registry.owned_ever(tenant, pod_id):
        raise missing(pod_id)
    return pod_id


async def tenant_databases(svc: Service, tenant: str) -> list[DatabaseInfo]:
    owned = svc.registry.pods_ever(tenant)
    found = await svc.platform.databases.inventory()
    return [svc.redactor.database_info(info) for info in found if info.pod_id in owned]


@router.get("/databases", response_model=list[DatabaseInfo], responses=responses(*ANY, 503))
async def list_databases(svc: ServiceDep, who: TenantDep) -> list[DatabaseInfo]:
    """The server databases of your pods: live ones, and those kept after their pod ended (`db_retain`)."""
    return await tenant_databases(svc, who)


@router.get(
    "/databases/{pod_id}/export",
    response_class=FileResponse,
    responses={
        200: {"description": "the dump (Postgres: SQL text; Redis: an RDB file)", "content": {OCTETS: BINARY}},
        **responses(*NAMED),
    },
)
async def export_database(pod_id: str, svc: ServiceDep, who: TenantDep) -> FileResponse:
    """A dump of your pod's database (live, or retained after the pod ended)."""
    tenant_pod(svc, who, pod_id)
    workdir = scratch(svc, "export-")
    try:
        info = await as_missing(pod_id, svc.platform.databases.export(pod_id, workdir / "dump"))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return FileResponse(
        workdir / "dump",
        media_type=OCTETS,
        filename=f"{info.pod_id}{DUMP_SUFFIXES[info.provider]}",
        background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),  # once it is sent (or not)
    )


@router.delete("/databases/{pod_id}", response_model=DatabaseInfo, responses=responses(*NAMED, 409))
async def drop_database(pod_id: str, svc: ServiceDep, who: TenantDep) -> DatabaseInfo:
    """Remove a database kept after its pod ended, for good; 409 while the pod lives (destroy it)."""
    tenant_pod(svc, who, pod_id)
    live = [pod.id for pod in svc.platform.list()]
    info = await as_missing(pod_id, svc.platform.databases.drop(pod_id, live))
    return svc.redactor.database_info(info)


# ---- the operator's Postgres templates ---------------------------------------------------------------------


def templates(svc: Service) -> PostgresTemplates | None:
    """The Postgres templates, or None while this host uses no Postgres (listing them must not start one)."""
    databases = svc.platform.databases
    if "postgres" not in databases.kinds_in_use():
        return None
    return databases.postgres_templates()


@admin_router.post(
    "/templates/{name}",
    response_model=TemplateInfo,
    status_code=201,
    responses=responses(*ADMIN, 409, 422),
    openapi_extra={"requestBody": {"required": True, "content": {OCTETS: BINARY}}},
)
async def create_template(name: TemplateName, request: Request, svc: ServiceDep) -> TemplateInfo:
    """A Postgres template from the body, a plain SQL dump (`pg_dump`); pods get a copy of it with
    `db="postgres", db_template=NAME`. Bodies over the server's limit are refused (422)."""
    workdir = scratch(svc, "upload-")
    try:
        dump = await received(request, workdir / "dump.sql")
        created = await svc.platform.databases.postgres_templates().create(name, dump)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return svc.redactor.template_info(created)


@admin_router.get("/templates", response_model=list[TemplateInfo], responses=responses(*ADMIN))
async def list_templates(svc: ServiceDep) -> list[TemplateInfo]:
    found = templates(svc)
    return [svc.redactor.template_info(info) for info in await found.list()] if found is not None else []


@admin_router.delete("/templates/{name}", status_code=204, responses=responses(*ADMIN, 404, 409, 422))
async def delete_template(name: TemplateName, svc: ServiceDep) -> None:
    """Remove a template (pods branched from it keep their copies)."""
    found = templates(svc)
    if found is None:
        raise NotFound(f"no database template {name!r}; `GET /admin/db/templates` lists them")
    await found.remove(name)


def scratch(svc: Service, prefix: str) -> Path:
    """A new private directory for a dump on its way in or out, under the server's state (never a tenant's)."""
    root = svc.platform.paths.state / "db-transfers"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    except OSError as exc:
        raise HostError(f"cannot make a directory for a database dump in {root}: {exc}") from None


async def received(request: Request, dest: Path) -> Path:
    """The request's body, written to `dest` as it comes; refused once it passes MAX_DUMP_BYTES."""
    size = 0
    try:
        with dest.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_DUMP_BYTES:  # stop reading: it would never be taken
                    raise InvalidSpec("body", f"is more than {MAX_DUMP_BYTES} bytes", "upload a smaller dump")
                out.write(chunk)
    except OSError as exc:
        raise HostError(f"cannot store the uploaded dump in {dest.parent}: {exc}") from None
    if size == 0:
        raise InvalidSpec("body", "is empty", "send the dump's bytes (`pg_dump --format=plain`)")
    return dest
