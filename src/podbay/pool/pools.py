"""`platform.pools`: one warm pool per sandbox shape, started and sized by `ensure`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from podbay.channel import check_timeout
from podbay.errors import GuestError, InvalidSpec
from podbay.isolation.base import Backend, PodAssignment, Sandbox, SandboxShape
from podbay.models import PodSpec
from podbay.pool.factory import SandboxFactory, require
from podbay.pool.warm import Member, PoolReport, WarmPool, available_memory_mib, check_fits

MAX_POOL_SIZE = 256
MEMBER_BOOT_TIMEOUT_S = 120.0  # a member may be the one that builds the template
WARM_UP_RUNS = 2


def shape_of(spec: PodSpec) -> SandboxShape:
    return SandboxShape(
        backend=spec.backend,
        vcpus=spec.vcpus,
        memory_mib=spec.memory_mib,
        layer_mib=spec.disk_mib,
        volume_slots=1,
        preload=Path(spec.preload) if spec.preload is not None else None,
    )


class AsyncPools:
    """`platform.pools` (asyncio): warm pools of pre-started sandboxes, one per shape."""

    def __init__(self, pools: Pools) -> None:
        self._pools = pools

    async def ensure(
        self,
        size: int,
        *,
        wait: float | None = None,
        backend: str = "qemu",
        vcpus: int = 1,
        memory_mib: int = 256,
        disk_mib: int = 1024,
        preload: str | None = None,
    ) -> PoolReport:
        """Keep `size` idle members of this shape (PodSpec's fields of the same names) refilled in the
        background; `size=0` empties the pool. With `wait`, wait up to that many seconds until they are all up.
        A pod's own fields (memory_db, volume, env, context...) are not a pool's: a claim injects them."""
        if wait is not None:
            check_timeout(wait, "wait")
        spec = PodSpec.parse(backend=backend, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib, preload=preload)
        pool = await self._pools.ensure(size, spec)
        if wait is not None:
            await pool.wait_full(wait)
        return pool.report()

    def report(self) -> list[PoolReport]:
        """Per pool: size, idle members, hit rate, claim latency, refill rate, failures."""
        return self._pools.report()


class Pools:
    """The warm pools themselves (the platform's; callers use AsyncPools or podbay.Pools)."""

    def __init__(self, factory: SandboxFactory, backend_for: Callable[[str], Backend]) -> None:
        self._factory = factory
        self._backend_for = backend_for
        self._pools: dict[SandboxShape, WarmPool] = {}

    async def ensure(self, size: int, spec: PodSpec) -> WarmPool:
        """Keep `size` idle members of `spec`'s sandbox shape refilled in the background; `size=0` empties the
        pool. Returns at once."""
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_POOL_SIZE:
            raise InvalidSpec("size", f"{size!r} is not an integer from 0 to {MAX_POOL_SIZE}", "pass e.g. size=8")
        runs_on = self._backend_for(spec.backend)
        require(runs_on, "pool", "keep a warm pool", "create pods directly")
        shape = shape_of(spec)
        pool = self._pools.get(shape)
        growth = size - (pool.size if pool else 0)
        if growth > 0:
            check_fits(shape, growth, available_memory_mib())
        if pool is None:
            pool = WarmPool(shape, size, lambda: self._start_member(runs_on, shape), _discard)
            self._pools[shape] = pool
            pool.start()
        pool.resize(size)
        return pool

    async def claim(self, shape: SandboxShape) -> tuple[Member | None, str]:
        """A ready member of `shape`, or None and why not (for the pod's trace)."""
        pool = self._pools.get(shape)
        if pool is None or pool.size == 0:
            return None, "no warm pool of this shape"
        member = await pool.claim()
        if member is None:
            return None, f"the warm pool of this shape is empty ({pool.size} wanted, refilling)"
        return member, f"{pool.idle} of {pool.size} left idle"

    def report(self) -> list[PoolReport]:
        return [pool.report() for pool in self._pools.values()]

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools))

    async def _start_member(self, backend: Backend, shape: SandboxShape) -> Member:
        start = self._factory.new_start(backend, shape, cold=False, boot_timeout_s=MEMBER_BOOT_TIMEOUT_S)
        sandbox: Sandbox | None = None
        try:
            await start.prepare()
            sandbox = await start.sandbox(PodAssignment(pod_id=start.run_dir.pod_id))
            await _warm_up(sandbox)
        except BaseException:
            if sandbox is not None:
                await sandbox.destroy()
            start.run_dir.remove()
            raise
        return Member(start.run_dir, sandbox)


async def _warm_up(sandbox: Sandbox) -> None:
    """Run a command before the member waits: a fresh VMM has translated none of the guest's code yet under
    TCG (and its page tables are cold under KVM), so the claim's first command would pay for it."""
    for _ in range(WARM_UP_RUNS):
        result = await (await sandbox.channel.start_process(["true"], cwd="/", timeout=30)).wait()
        if not result.ok:
            raise GuestError(f"a new pool member failed its warm-up command (exit {result.exit_code})")


async def _discard(member: Member) -> None:
    await member.sandbox.destroy()  # raises if anything may still run: the run directory stays for the reaper
    member.run_dir.remove()
