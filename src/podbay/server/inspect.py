"""Looking into pods, live or ended: trace, console log, lifecycle events, post-mortems; and `GET /metrics`.

A tenant sees only its own pods' records: another tenant's pod, live or ended, answers 404 exactly as a pod that
never existed. The registry remembers which tenant owned a pod after it ended, so post-mortems stay the
tenant's. Everything answered goes through the service's one Redactor (redact.py): host paths, pids and a
volume's host name never reach a tenant (a console log or a sandbox's exit story may name them), and a
post-mortem's spec names the tenant's own volume.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from podbay.errors import NotFound
from podbay.models import Phase
from podbay.platform import AsyncPod
from podbay.postmortem import CONSOLE_KEPT, PodEvent, PostMortem, read_tail
from podbay.server.errors import responses
from podbay.server.observability import metrics_response
from podbay.server.routes import POD, ServiceDep, TenantDep
from podbay.server.service import Service

router = APIRouter()
TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}


def live_pod(svc: Service, tenant: str, pod_id: str) -> AsyncPod | None:
    """The tenant's pod if it still runs; None if it ended (then its post-mortem answers); NotFound if it is not
    the tenant's."""
    if not svc.registry.owned_ever(tenant, pod_id):
        raise NotFound(f"no pod {pod_id!r}")
    try:
        return svc.platform.get(pod_id)
    except NotFound:
        return None


def postmortem_of(svc: Service, tenant: str, pod_id: str) -> PostMortem:
    if not svc.registry.owned_ever(tenant, pod_id):
        raise NotFound(f"no post-mortem of pod {pod_id!r}")
    return redacted(svc, tenant, svc.platform.postmortems.load(pod_id))


def redacted(svc: Service, tenant: str, postmortem: PostMortem) -> PostMortem:
    """The post-mortem as its tenant may see it: scrubbed free text, its own name for the pod's volume."""
    host_volume = postmortem.spec.get("volume")
    shown = PostMortem.model_validate_json(svc.redactor.text(postmortem.model_dump_json()))
    if "volume" in shown.spec:
        shown.spec["volume"] = svc.volumes.tenant_name(tenant, host_volume if isinstance(host_volume, str) else None)
    return shown


def redacted_event(svc: Service, event: PodEvent) -> PodEvent:
    return event.model_copy(update={"detail": svc.redactor.text(event.detail)})


@router.get("/pods/{pod_id}/trace", response_model=list[Phase], responses=responses(*POD))
async def pod_trace(pod_id: str, svc: ServiceDep, who: TenantDep) -> list[Phase]:
    """The pod's phases (choose, prepare, boot or clone or claim, inject, snapshot, destroy) with their times,
    relative to the start of its creation; an ended pod's come from its post-mortem."""
    pod = live_pod(svc, who, pod_id)
    if pod is None:
        return postmortem_of(svc, who, pod_id).trace
    return [svc.redactor.phase(phase) for phase in pod.info().trace]


@router.get("/pods/{pod_id}/events", response_model=list[PodEvent], responses=responses(*POD))
async def pod_events(pod_id: str, svc: ServiceDep, who: TenantDep) -> list[PodEvent]:
    """The pod's lifecycle events, oldest first (the latest 512): created, paused, resumed, exec_started,
    exec_ended, snapshot, timeout_set, failed, ended."""
    pod = live_pod(svc, who, pod_id)
    if pod is None:
        return postmortem_of(svc, who, pod_id).events
    return [redacted_event(svc, event) for event in pod.history.events]


@router.get(
    "/pods/{pod_id}/console",
    response_class=Response,
    responses={200: {"description": "the tail of the console log", **TEXT}, **responses(*POD)},
)
async def pod_console(
    pod_id: str,
    svc: ServiceDep,
    who: TenantDep,
    tail: Annotated[int, Query(ge=1, le=CONSOLE_KEPT, description="bytes from the end")] = CONSOLE_KEPT,
) -> Response:
    """The tail of the pod's console log: the guest kernel's and agent's output (a VM), the runtime's stderr
    (a container). Never a command's output: that comes back from exec."""
    pod = live_pod(svc, who, pod_id)
    if pod is not None:
        data = read_tail(pod.sandbox.info.console_log, tail)
    else:
        postmortem_of(svc, who, pod_id)
        data = svc.platform.postmortems.console(pod_id)[-tail:]
    return Response(svc.redactor.text(data.decode(errors="replace")), media_type="text/plain; charset=utf-8")


@router.get("/postmortems", response_model=list[PostMortem], responses=responses(401, 500))
async def list_postmortems(svc: ServiceDep, who: TenantDep) -> list[PostMortem]:
    """The tenant's kept post-mortems, latest end first."""
    mine = svc.registry.pods_ever(who)
    return [redacted(svc, who, found) for found in svc.platform.postmortems.list() if found.pod_id in mine]


@router.get("/postmortems/{pod_id}", response_model=PostMortem, responses=responses(*POD))
async def get_postmortem(pod_id: str, svc: ServiceDep, who: TenantDep) -> PostMortem:
    """One of the tenant's post-mortems: why the pod ended, its trace, events, commands, and its snapshot if
    keep_on_failure kept one (restore it with POST /snapshots/{name}/restore)."""
    return postmortem_of(svc, who, pod_id)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text exposition format", **TEXT}, **responses(404)},
)
async def metrics(request: Request, svc: ServiceDep) -> Response:
    """Prometheus metrics, for loopback clients or the holder of PODBAY_METRICS_TOKEN (404 for everyone else);
    no tenant labels. See docs/api.md."""
    return metrics_response(request, request.app.state.metrics, svc.platform)
