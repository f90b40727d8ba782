"""Each tenant's named volumes, a namespace of its own over the host's one volume store.

A tenant's "customer-42" is, in the volume store, a volume with a random name of its own (`tv-<20 hex>`,
recorded in the registry's `volumes` table), so two tenants' "customer-42" are two volumes, and no name a
tenant can send reaches another tenant's volume or one made on the host (`podbay volume`). The host name never
leaves the server: errors that carry it are rewritten to the tenant's name (`as_tenant_sees`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from podbay.errors import Conflict, NotFound, PodbayError
from podbay.server.registry import Registry, VolumeRecord
from podbay.state.volumes import VolumeStore
from podbay.tenancy import TenantVolume

log = logging.getLogger(__name__)


class TenantVolumes:
    def __init__(self, store: VolumeStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._starting: Counter[str] = Counter()  # host name -> creates starting a pod on it now

    def record(self, tenant: str, name: str) -> VolumeRecord:
        """The tenant's volume `name`; another tenant's answers exactly as one that does not exist."""
        found = self.registry.volume(tenant, name)
        if found is None:
            raise NotFound(f"no volume {name!r}; `GET /volumes` lists yours")
        return found

    def shown(self, record: VolumeRecord) -> TenantVolume:
        """The volume as its tenant sees it: sizes and whether a pod holds it, no host name or path."""
        try:
            info = self.store.info(record.host_name)
            size_mib, used_kib, attached = info.size_mib, info.used_kib, info.attached
        except NotFound:  # recorded, but its image not made yet (its first pod failed before)
            size_mib, used_kib, attached = record.size_mib, 0, False
        return TenantVolume(
            name=record.name, size_mib=size_mib, used_kib=used_kib, attached=attached, created_at=record.created_at
        )

    def list(self, tenant: str) -> list[TenantVolume]:
        return [self.shown(record) for record in self.registry.volumes(tenant)]

    async def create(self, tenant: str, name: str, size_mib: int) -> TenantVolume:
        """A new volume with an empty database (Conflict if the tenant has one of that name)."""
        record, made = self.registry.add_volume(tenant, name, size_mib)
        if not made:
            raise Conflict(f"you have a volume named {name!r} already; choose another name, or use that one")
        try:
            with as_tenant_sees(record):
                self.store.attach(record.host_name)  # a pod asking for it meanwhile waits, as for a held volume
                try:
                    await asyncio.to_thread(self.store.ensure, record.host_name, size_mib)
                finally:
                    self.store.detach(record.host_name)
        except BaseException:
            self.registry.remove_volume(tenant, name)
            raise
        return self.shown(record)

    async def delete(self, tenant: str, name: str) -> TenantVolume:
        """Delete the volume and its data (Conflict while a pod holds it)."""
        record = self.record(tenant, name)
        shown = self.shown(record)
        with as_tenant_sees(record):
            try:
                await asyncio.to_thread(self.store.delete, record.host_name)
            except NotFound:
                pass  # its image was never made: only the record goes
        self.registry.remove_volume(tenant, name)
        return shown.model_copy(update={"attached": False, "used_kib": 0})

    @asynccontextmanager
    async def for_new_pod(self, tenant: str, name: str, size_mib: int) -> AsyncIterator[VolumeRecord]:
        """The record of the volume a new pod of the tenant's asks for by name, made now if new. If the block
        fails (the pod did not start), a volume made here that no other create is starting a pod on is removed
        again: no pod ever ran on it, and the tenant never asked for it alone."""
        record, made = self.for_pod(tenant, name, size_mib)
        self._starting[record.host_name] += 1
        try:
            yield record
        except Exception:
            if made and self._starting[record.host_name] == 1:
                await self.discard_unused(tenant, record)
            raise
        finally:
            self._starting[record.host_name] -= 1
            if not self._starting[record.host_name]:
                del self._starting[record.host_name]

    async def discard_unused(self, tenant: str, record: VolumeRecord) -> None:
        """Remove a volume that a create made on first use when its pod then failed to start (its image holds
        only the empty database, if it was made at all). One that a pod holds meanwhile stays."""
        try:
            await asyncio.to_thread(self.store.delete, record.host_name)
        except NotFound:
            pass  # its image was never made: only the record goes
        except PodbayError as exc:
            log.warning("volume %s of tenant %s stays: %s", record.name, tenant, exc)
            return
        self.registry.remove_volume(tenant, record.name)

    def for_pod(self, tenant: str, name: str, size_mib: int) -> tuple[VolumeRecord, bool]:
        """The record of the volume a tenant's pod asks for by name, made now if new: (record, made)."""
        return self.registry.add_volume(tenant, name, size_mib)

    def tenant_name(self, tenant: str, host_name: str | None) -> str | None:
        """The tenant's name for a volume the store calls `host_name` (None if it is not the tenant's)."""
        if host_name is None:
            return None
        record = self.registry.volume_by_host_name(host_name)
        return record.name if record is not None and record.tenant == tenant else None


@contextmanager
def as_tenant_sees(record: VolumeRecord) -> Iterator[None]:
    """Rewrite the volume's host name to the tenant's name in any PodbayError raised in the block."""
    try:
        yield
    except PodbayError as exc:
        exc.args = tuple(
            arg.replace(record.host_name, record.name) if isinstance(arg, str) else arg for arg in exc.args
        )
        raise
