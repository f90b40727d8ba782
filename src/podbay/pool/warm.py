"""Warm pools: pre-started sandboxes of one shape, paused while they wait, claimed by pods.

A pool keeps `size` idle members of one `SandboxShape`. A member is started the way a pod would be (a
template clone where the backend has templates, else a cold boot) but with no pod's state in it: no volume,
no environment, no context. It is paused while it waits (a paused guest costs no CPU). A claim takes the
oldest member, resumes it and, for a clone, reseeds it (fresh randomness, clock, name): that exchange is
also the health check, so a member that died while waiting is destroyed and replaced, never handed out.
The pod that claims a member owns it from then on (and its run directory): a member is never reused.

Refill runs in the background, one member at a time, so it never takes more than one core's worth of start
work away from the claims and creates going on beside it. A refill that fails (a template build, a boot)
is retried with a growing pause and reported in the stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypedDict

from podbay.errors import GuestError, HostError, InvalidSpec, PodbayError, Timeout
from podbay.isolation.base import Sandbox, SandboxShape
from podbay.isolation.qemu.template import ClonedSandbox
from podbay.rundir import RunDir

log = logging.getLogger("podbay")
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# What a member costs the host beyond its guest memory, at most (VMM, page tables, the layer's page cache);
# used only to refuse a pool that cannot fit, before anything starts.
MEMBER_OVERHEAD_MIB = 64


class PoolShape(TypedDict):
    backend: str
    vcpus: int
    memory_mib: int
    layer_mib: int


class Percentiles(TypedDict):
    n: int
    p50: float
    p90: float
    p99: float
    max: float


class PoolReport(TypedDict):
    """One warm pool's state and statistics (`platform.pools.report()`, `ensure`)."""

    shape: PoolShape
    size: int
    idle: int
    claims: int
    hits: int
    hit_rate: float | None
    claim_ms: Percentiles | None
    member_start_ms: Percentiles | None
    refill_per_s: float | None
    dead_replaced: int
    refill_errors: int
    last_error: str | None
    idle_member_pids: list[int]


@dataclass
class Member:
    run_dir: RunDir
    sandbox: Sandbox
    ready_at: float = field(default_factory=time.monotonic)


@dataclass
class PoolStats:
    claims: int = 0
    hits: int = 0
    claim_ms: list[float] = field(default_factory=list)  # resume + reseed/health of each hit
    started: int = 0
    start_ms: list[float] = field(default_factory=list)
    dead_replaced: int = 0
    refill_errors: int = 0
    last_error: str | None = None
    first_start_at: float | None = None


class WarmPool:
    def __init__(
        self,
        shape: SandboxShape,
        size: int,
        start_member: Callable[[], Awaitable[Member]],
        discard: Callable[[Member], Awaitable[None]],
    ) -> None:
        self.shape = shape
        self.size = size
        self._start_member = start_member
        self._discard = discard
        self._idle: deque[Member] = deque()
        self._wanted = asyncio.Event()
        self._wanted.set()
        self._refiller: asyncio.Task[None] | None = None
        self._closed = False
        self._discarding: set[asyncio.Task[None]] = set()
        self.stats = PoolStats()

    def start(self) -> None:
        if self._refiller is None:
            self._refiller = asyncio.create_task(self._refill())

    def resize(self, size: int) -> None:
        """A new target; idle members beyond it are destroyed (in the background)."""
        self.size = size
        while len(self._idle) > size:
            self._discard_in_background(self._idle.pop())
        self._wanted.set()

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def wait_full(self, timeout: float) -> None:
        """Until `size` members are idle (for benchmarks and tests; a claim never waits for the pool)."""
        deadline = time.monotonic() + timeout
        while len(self._idle) < self.size:
            if time.monotonic() > deadline:
                failed = f"; the last start failed: {self.stats.last_error}" if self.stats.last_error else ""
                raise Timeout(f"the pool has {len(self._idle)} of {self.size} members after {timeout} s{failed}")
            await asyncio.sleep(0.05)

    async def claim(self) -> Member | None:
        """A resumed, reseeded member, or None if none is idle (the caller falls back)."""
        self.stats.claims += 1
        while self._idle:
            member = self._idle.popleft()
            self._wanted.set()
            started = time.perf_counter()
            try:
                if not member.sandbox.alive:
                    raise GuestError("its sandbox exited while it waited")
                await member.sandbox.resume()
                if isinstance(member.sandbox, ClonedSandbox):
                    await member.sandbox.reseed(member.run_dir.pod_id)
                else:
                    await member.sandbox.channel.request("health", timeout=5.0)
            except PodbayError as exc:
                log.warning("pool member %s is dead (%s); replacing it", member.run_dir.pod_id, exc)
                self.stats.dead_replaced += 1
                self._discard_in_background(member)
                continue
            self.stats.hits += 1
            self.stats.claim_ms.append((time.perf_counter() - started) * 1000)
            return member
        return None

    async def _refill(self) -> None:
        delay = RETRY_FIRST_S
        while not self._closed:
            if len(self._idle) >= self.size:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            started = time.perf_counter()
            try:
                member = await self._start_member()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a refill must outlive a failed start: retry, slower each time
                self.stats.refill_errors += 1
                self.stats.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("a warm pool member failed to start: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            if len(self._idle) >= self.size:  # shrunk while it started
                self._discard_in_background(member)
                continue
            try:
                await member.sandbox.pause()
            except BaseException:
                await self._discard_quietly(member)
                raise
            self.stats.started += 1
            self.stats.first_start_at = self.stats.first_start_at or time.monotonic()
            self.stats.start_ms.append((time.perf_counter() - started) * 1000)
            self._idle.append(member)

    def _discard_in_background(self, member: Member) -> None:
        discarding = asyncio.create_task(self._discard_quietly(member))
        self._discarding.add(discarding)
        discarding.add_done_callback(self._discarding.discard)

    async def _discard_quietly(self, member: Member) -> None:
        try:
            await self._discard(member)
        except PodbayError as exc:  # the reaper retries what destroy could not undo
            log.warning("could not destroy pool member %s: %s", member.run_dir.pod_id, exc)

    async def close(self) -> None:
        """Stop refilling and destroy every idle member."""
        self._closed = True
        if self._refiller is not None:
            self._refiller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refiller
        members, self._idle = list(self._idle), deque()
        await asyncio.gather(*(self._discard_quietly(member) for member in members), *self._discarding)

    def report(self) -> PoolReport:
        """Hit rate, claim latency, refill rate: what `podbay pool` and the benchmark print."""
        stats = self.stats
        elapsed = time.monotonic() - stats.first_start_at if stats.first_start_at else 0.0
        return {
            "shape": {
                "backend": self.shape.backend,
                "vcpus": self.shape.vcpus,
                "memory_mib": self.shape.memory_mib,
                "layer_mib": self.shape.layer_mib,
            },
            "size": self.size,
            "idle": len(self._idle),
            "claims": stats.claims,
            "hits": stats.hits,
            "hit_rate": stats.hits / stats.claims if stats.claims else None,
            "claim_ms": _percentiles(stats.claim_ms),
            "member_start_ms": _percentiles(stats.start_ms),
            "refill_per_s": stats.started / elapsed if elapsed > 0 else None,
            "dead_replaced": stats.dead_replaced,
            "refill_errors": stats.refill_errors,
            "last_error": stats.last_error,
            "idle_member_pids": [m.sandbox.info.pid for m in self._idle if m.sandbox.info.pid is not None],
        }


def check_fits(shape: SandboxShape, size: int, available_mib: int) -> None:
    """Refuse a pool whose members could not all fit in the host's available memory, with the arithmetic."""
    per_member = shape.memory_mib + MEMBER_OVERHEAD_MIB
    if size * per_member > available_mib:
        raise InvalidSpec(
            "size",
            f"{size} members x ({shape.memory_mib} MiB guest memory + {MEMBER_OVERHEAD_MIB} MiB overhead) = "
            f"{size * per_member} MiB, but the host has {available_mib} MiB available",
            f"use size ≤ {available_mib // per_member}, or less memory per pod",
        )


def available_memory_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise HostError("/proc/meminfo has no MemAvailable line")


def _percentiles(samples: list[float]) -> Percentiles | None:
    if not samples:
        return None
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}
