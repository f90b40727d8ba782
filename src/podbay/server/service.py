"""What the routes share: one AsyncPlatform, the registry, and the tenant check in front of every pod."""

from __future__ import annotations

from podbay.errors import Conflict, InvalidSpec, NotFound
from podbay.metering import PriceTable, UsageReport
from podbay.models import PodInfo, PodSpec
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.server.registry import Registry
from podbay.server.usage import UsageLedger


class Service:
    def __init__(self, platform: AsyncPlatform, registry: Registry, prices: PriceTable | None = None) -> None:
        self.platform = platform
        self.registry = registry
        self.prices = prices or PriceTable()
        self.ledger = UsageLedger(registry)
        platform.on_pod_end(self.ledger.record)  # every end: destroy, timeout, shutdown

    def usage(self, tenant: str, pod_id: str | None, start: float | None, end: float | None) -> UsageReport:
        """One pod's usage (recorded if it ended, so far if it runs), or the tenant's pods that ended in
        [start, end). Another tenant's pod answers as one that does not exist."""
        if pod_id is None:
            return UsageReport.of(self.ledger.of_tenant(tenant, start, end), self.prices, start, end)
        recorded = self.ledger.of_pod(tenant, pod_id)
        usage = recorded or self.pod(tenant, pod_id).usage().model_copy(update={"tenant": tenant})
        return UsageReport.of([usage], self.prices)

    def pod(self, tenant: str, pod_id: str) -> AsyncPod:
        """The tenant's pod; another tenant's answers exactly as a pod that does not exist."""
        if not self.registry.owns_pod(tenant, pod_id):
            ended = self.registry.end_reason(tenant, pod_id)  # only the tenant's own pod says why it is gone
            raise NotFound(f"no pod {pod_id!r}: it ended ({ended})" if ended else f"no pod {pod_id!r}")
        try:
            return self.platform.get(pod_id)
        except NotFound:
            ended = self.platform.ended_reason(pod_id)
            self.registry.end_pod(pod_id, ended or "gone from the platform")
            raise NotFound(f"no pod {pod_id!r}: it ended ({ended})" if ended else f"no pod {pod_id!r}") from None

    def pods(self, tenant: str) -> list[PodInfo]:
        found = []
        for pod_id in self.registry.live_pods(tenant):
            try:
                found.append(self.platform.get(pod_id).info())
            except NotFound:
                self.registry.end_pod(pod_id, self.platform.ended_reason(pod_id) or "gone from the platform")
        return found

    async def create(self, tenant: str, spec: PodSpec) -> AsyncPod:
        check_servable(spec)
        pod = await self.platform.create(spec)
        await self.adopt(tenant, pod)
        return pod

    async def adopt(self, tenant: str, pod: AsyncPod) -> None:
        """Record `pod` as the tenant's; a pod that cannot be recorded is destroyed (nobody could reach it)."""
        try:
            self.registry.add_pod(pod.id, tenant)
        except BaseException:
            await pod.destroy()
            raise

    async def destroy(self, pod: AsyncPod) -> None:
        try:
            await pod.destroy()
        except BaseException as exc:
            self.registry.end_pod(pod.id, f"destroy failed: {exc}")
            raise
        self.registry.end_pod(pod.id, "destroyed")

    def check_snapshot_name(self, tenant: str, name: str) -> None:
        """Snapshot names are one namespace for the host: a name another tenant holds is refused as taken
        (which says no more than that the name is in use)."""
        if self.platform.snapshots.path(name).exists() and not self.registry.owns_snapshot(tenant, name):
            raise Conflict(f"the snapshot name {name!r} is taken; choose another name")

    def snapshot_of(self, tenant: str, name: str) -> str:
        """The tenant's snapshot `name`, checked here so that the store's own NotFound (which lists every
        snapshot on the host) never reaches a tenant."""
        path = self.platform.snapshots.path(name)  # InvalidSpec for a bad name
        if not self.registry.owns_snapshot(tenant, name) or not path.exists():
            raise NotFound(f"no snapshot {name!r}")
        return name


def check_servable(spec: PodSpec) -> None:
    """Fields the service refuses from tenants: host paths, and names shared across tenants."""
    if spec.preload is not None:
        raise InvalidSpec(
            "preload", "names a file on the server's host", "the service does not take host paths; leave it out"
        )
    if spec.volume is not None:
        raise InvalidSpec(
            "volume",
            "named volumes are not served by the REST API yet (they are not separated by tenant)",
            "leave volume out: memory_db=True gives the pod its own database",
        )
