"""What the routes share: one AsyncPlatform, the registry, the tenant check in front of every pod, the
tenant's quotas in front of everything that makes a pod, a snapshot or a volume, its named volumes
(tenant_volumes.py), and what it may see of its pods (redact.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from podbay.errors import Conflict, InvalidSpec, NotFound, QuotaExceeded
from podbay.metering import PriceTable, UsageReport
from podbay.models import PodInfo, PodSpec, SnapshotInfo
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.server.redact import Redactor
from podbay.server.registry import QUOTA_KINDS, Registry
from podbay.server.tenant_volumes import TenantVolumes, as_tenant_sees
from podbay.server.usage import UsageLedger
from podbay.snapshots import load_snapshot


class Service:
    def __init__(self, platform: AsyncPlatform, registry: Registry, prices: PriceTable | None = None) -> None:
        self.platform = platform
        self.registry = registry
        # What creates, restores, forks and snapshots in flight will add, per tenant: counted by every quota
        # check, so that two requests at once cannot both pass it (see `reserve`).
        self.reserved: dict[str, Counter[str]] = {}
        self.prices = prices or PriceTable()
        self.ledger = UsageLedger(registry)
        self.volumes = TenantVolumes(platform.volumes, registry)
        self.redactor = Redactor([platform.paths.state, platform.paths.cache, platform.paths.databases])
        platform.on_pod_end(self.ledger.record)  # every end: destroy, timeout, shutdown
        platform.check_kept_snapshots(self.kept_snapshot_refusal)

    def shown(self, tenant: str, pod: AsyncPod) -> PodInfo:
        """The pod's info as its tenant may see it (see redact.py)."""
        return self.shown_info(tenant, pod.info())

    def shown_info(self, tenant: str, info: PodInfo) -> PodInfo:
        return self.redactor.pod_info(info, self.volumes.tenant_name(tenant, info.volume or info.spec.volume))

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
                found.append(self.shown(tenant, self.platform.get(pod_id)))
            except NotFound:
                self.registry.end_pod(pod_id, self.platform.ended_reason(pod_id) or "gone from the platform")
        return found

    async def create(self, tenant: str, spec: PodSpec) -> AsyncPod:
        check_servable(spec)
        if spec.volume is None:
            with self.reserve(tenant, pods=1, memory_mib=spec.memory_mib):
                pod = await self.platform.create(spec)
                await self.adopt(tenant, pod)
            return pod
        return await self.create_with_volume(tenant, spec, spec.volume)

    async def create_with_volume(self, tenant: str, spec: PodSpec, name: str) -> AsyncPod:
        """A pod on the tenant's volume `name`, made on first use (of spec.volume_mib, within its volume
        quotas); the platform sees only the volume's host name."""
        if not spec.memory_db:
            raise InvalidSpec("volume", "a volume holds the pod's database", "also pass memory_db=True")
        existing = self.registry.volume(tenant, name)
        adding = {"volumes": 1, "volume_mib": spec.volume_mib} if existing is None else {}
        with self.reserve(tenant, pods=1, memory_mib=spec.memory_mib, **adding):
            async with self.volumes.for_new_pod(tenant, name, spec.volume_mib) as record:
                with as_tenant_sees(record):
                    pod = await self.platform.create(spec.model_copy(update={"volume": record.host_name}))
                await self.adopt(tenant, pod)
        return pod

    async def create_volume(self, tenant: str, name: str, size_mib: int) -> None:
        with self.reserve(tenant, volumes=1, volume_mib=size_mib):
            await self.volumes.create(tenant, name, size_mib)

    async def restore(self, tenant: str, name: str) -> AsyncPod:
        self.snapshot_of(tenant, name)
        memory = self.snapshot_memory(name) if self.registry.quota(tenant).memory_mib is not None else 0
        with self.reserve(tenant, pods=1, memory_mib=memory):
            pod = await self.platform.restore(name)
            await self.adopt(tenant, pod)
        return pod

    async def fork(self, tenant: str, parent: AsyncPod, n: int) -> list[AsyncPod]:
        with self.reserve(tenant, pods=n, memory_mib=n * parent.spec.memory_mib):
            children = await parent.fork(n)
            for child in children:
                await self.adopt(tenant, child)
        return children

    async def snapshot(self, tenant: str, pod: AsyncPod, name: str) -> SnapshotInfo:
        self.check_snapshot_name(tenant, name)
        with self.reserve(tenant, snapshots=1):
            info = await pod.snapshot(name)
            self.registry.add_snapshot(name, tenant)
        return info

    def kept_snapshot_refusal(self, pod_id: str) -> str | None:
        """Why a failed keep_on_failure pod's snapshot is skipped: its tenant's snapshot quota is full (the
        snapshot would become the tenant's); None to take it."""
        tenant = self.ledger.owner(pod_id)
        limit = self.registry.quota(tenant).snapshots if tenant is not None else None
        if tenant is None or limit is None:
            return None
        have = len(self.held_snapshots(tenant)) + self.reserved.get(tenant, Counter())["snapshots"]
        if have < limit:
            return None
        fix = FIXES["snapshots"].format(t=tenant)
        return f"skipped: tenant {tenant}'s snapshot quota is full ({have} of {limit}); {fix}"

    def held_snapshots(self, tenant: str) -> list[str]:
        """The tenant's snapshots that still exist (one removed on the host no longer counts)."""
        return [name for name in self.registry.snapshots(tenant) if self.platform.snapshots.path(name).exists()]

    def snapshot_memory(self, name: str) -> int:
        """The guest memory a pod restored from snapshot `name` gets."""
        return load_snapshot(self.platform.snapshots, name).memory_mib

    # ---- quotas ------------------------------------------------------------------------------------------

    @contextmanager
    def reserve(self, tenant: str, **adding: int) -> Iterator[None]:
        """Check that what the tenant has, plus what is in flight, plus `adding` fits its quotas (QuotaExceeded,
        429, if not), and hold `adding` as in flight until the block ends. Check and reservation happen with no
        await between them, so concurrent requests on the event loop see each other's reservations; the block
        records what it made in the registry before the reservation is released."""
        limits = self.registry.quota(tenant).limits()
        reserved = self.reserved.setdefault(tenant, Counter())
        if any(limits[kind] is not None and adding.get(kind) for kind in limits):
            used = self.holdings(tenant)
            for kind, limit in limits.items():
                if limit is not None and adding.get(kind):
                    have = used[kind] + reserved[kind]
                    if have + adding[kind] > limit:
                        raise QuotaExceeded(exceeded(tenant, kind, have, adding[kind], limit))
        reserved.update(adding)
        try:
            yield
        finally:
            reserved.subtract(adding)

    def holdings(self, tenant: str) -> dict[str, int]:
        """What the tenant holds now: live pods (running or paused; ended and expired ones are freed), their
        guest memory, its snapshots that still exist, its named volumes and the sum of their sizes."""
        pods = self.pods(tenant)
        snapshots = self.held_snapshots(tenant)
        volumes = self.registry.volumes(tenant)
        held = {
            "pods": len(pods),
            "memory_mib": sum(info.spec.memory_mib for info in pods),
            "snapshots": len(snapshots),
            "volumes": len(volumes),
            "volume_mib": sum(volume.size_mib for volume in volumes),
        }
        assert set(held) == set(QUOTA_KINDS)
        return held

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


FIXES = {
    "pods": "destroy a pod first, or ask the operator to raise it (`podbay quotas set --tenant {t} --pods N`)",
    "memory_mib": "destroy a pod or ask for less memory_mib, or ask the operator to raise it "
    "(`podbay quotas set --tenant {t} --memory-mib M`)",
    "snapshots": "ask the operator to remove one (`podbay snapshot rm NAME`) or to raise it "
    "(`podbay quotas set --tenant {t} --snapshots S`)",
    "volumes": "delete a volume (`DELETE /volumes/NAME`), or ask the operator to raise it "
    "(`podbay quotas set --tenant {t} --volumes V`)",
    "volume_mib": "delete a volume or ask for a smaller one, or ask the operator to raise it "
    "(`podbay quotas set --tenant {t} --volume-mib M`)",
}


def exceeded(tenant: str, kind: str, have: int, adding: int, limit: int) -> str:
    """What was exceeded, with the arithmetic and the fix: `tenant acme: 3 running pods + 1 = 4 > quota 3; ...`."""
    total = have + adding
    if kind == "pods":
        sums = f"{have} running pods + {adding} = {total} > quota {limit}"
    elif kind == "memory_mib":
        sums = f"{have} MiB of guest memory in running pods + {adding} MiB = {total} MiB > quota {limit} MiB"
    elif kind == "volume_mib":
        sums = f"{have} MiB of volumes + {adding} MiB = {total} MiB > quota {limit} MiB"
    else:
        sums = f"{have} {kind} + {adding} = {total} > quota {limit}"
    return f"tenant {tenant}: {sums}; {FIXES[kind].format(t=tenant)}"


def check_servable(spec: PodSpec) -> None:
    """Fields the service refuses from tenants: host paths. (A volume name is the tenant's own: see
    create_with_volume.)"""
    if spec.preload is not None:
        raise InvalidSpec(
            "preload", "names a file on the server's host", "the service does not take host paths; leave it out"
        )
