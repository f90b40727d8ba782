"""`podbay bench serve`: pool claim → first exec result through the REST API of a real server process, with 1,
10 and 50 concurrent clients, beside the same measurement on an embedded platform in this process: the
service's own overhead, as a ratio of medians.

Each side gets its own private state root (the image cache is shared) and a warm pool of `size` members, refilled
to full before each concurrency level. A claim is `create_agent(backend)` then `exec(["true"])`, timed from the
request to the exec's result; the pod is destroyed afterwards, untimed. Claims beyond the idle members fall back
to template clones (their origin is counted). The server is a real `podbay serve --pool SIZE:BACKEND` process
(its pool fills in the background from its start), with a tenant token and an admin token made by `podbay
tokens create`; before each level the admin token refills the pool through `PUT /admin/pools` (waiting until
every member is up).

Read the ratio with care on a small host: the embedded side's clients share one process and event loop with
the platform they measure, while the served side's clients run in another process than the server, so on 2
cores the served figures can come out lower than the embedded ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from podbay.bench.create import percentile
from podbay.errors import HostError, InvalidSpec
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.sdk import AsyncClient
from podbay.sdk.client import AsyncRemotePod

FILL_TIMEOUT_S = 600.0  # PUT /admin/pools waits at most this long
PODBAY = [sys.executable, "-m", "podbay.cli"]
DEFAULT_LEVELS = (1, 10, 50)
Claim = Callable[[], Awaitable[tuple[float, str]]]  # one claim → first exec: (milliseconds, pod origin)


def bench_serve(
    paths: PodbayPaths, levels: tuple[int, ...], claims: int, size: int, backend: str = "qemu"
) -> dict[str, Any]:
    """Both sides, one after the other (never at once: they would share the host's cores)."""
    if not levels or any(level < 1 for level in levels):
        raise InvalidSpec("concurrency", f"{levels!r} must be counts of at least 1", "pass e.g. --concurrency 1,10,50")
    embedded = asyncio.run(_embedded(paths, levels, claims, size, backend))
    served = _served(paths, levels, claims, size, backend)
    overhead = {
        str(level): served[str(level)]["p50"] / embedded[str(level)]["p50"]
        for level in levels
        if embedded[str(level)]["p50"] > 0
    }
    return {
        "benchmark": "serve",
        "backend": backend,
        "pool_size": size,
        "claims_per_level": {str(level): max(claims, level) for level in levels},
        "served_ms": served,
        "embedded_ms": embedded,
        "overhead_p50_ratio": overhead,
    }


async def _levels(levels: tuple[int, ...], claims: int, claim: Claim, refill: Callable[[], Awaitable[None]]) -> Any:
    """Per level: `max(claims, level)` claims by `level` concurrent clients, after a refill of the pool."""
    results: dict[str, Any] = {}
    for level in levels:
        await refill()
        results[str(level)] = _stats(await _concurrently(level, max(claims, level), claim))
    return results


class _Claimed(Protocol):
    async def exec(self, argv: list[str], /) -> object: ...
    async def destroy(self) -> None: ...


ClaimedPod = TypeVar("ClaimedPod", bound=_Claimed)


async def _timed_claim(
    create: Callable[[], Awaitable[ClaimedPod]], origin: Callable[[ClaimedPod], Awaitable[str]]
) -> tuple[float, str]:
    """One claim, embedded or served: the milliseconds from asking for a pod to its first exec's end, and the
    pod's origin (asked after the clock stops); the pod is destroyed after."""
    started = time.perf_counter()
    pod = await create()
    try:
        await pod.exec(["true"])
        elapsed = (time.perf_counter() - started) * 1000
        return elapsed, await origin(pod)
    finally:
        await pod.destroy()


async def _concurrently(clients: int, total: int, claim: Claim) -> list[tuple[float, str]]:
    """`total` claims made by `clients` concurrent clients, each taking the next claim when its last is done."""
    queue = iter(range(total))
    samples: list[tuple[float, str]] = []

    async def client() -> None:
        for _ in queue:  # the clients share one count of claims
            samples.append(await claim())

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


async def _embedded(
    paths: PodbayPaths, levels: tuple[int, ...], claims: int, size: int, backend: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="podbay-bench-serve-") as state:
        async with AsyncPlatform(PodbayPaths(cache=paths.cache, state=Path(state))) as platform:

            async def origin(pod: AsyncPod) -> str:
                return pod.origin.value

            async def claim() -> tuple[float, str]:
                return await _timed_claim(lambda: platform.create_agent(backend=backend), origin)

            async def refill() -> None:
                await platform.pools.ensure(size, backend=backend, wait=FILL_TIMEOUT_S)

            result: dict[str, Any] = await _levels(levels, claims, claim, refill)
            return result


def _served(paths: PodbayPaths, levels: tuple[int, ...], claims: int, size: int, backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="podbay-bench-serve-") as state:
        env = {**os.environ, "PODBAY_STATE": state, "PODBAY_CACHE": str(paths.cache)}
        token = _podbay(env, "tokens", "create", "--tenant", "bench")
        admin_token = _podbay(env, "tokens", "create", "--admin")
        listen = f"127.0.0.1:{_free_port()}"
        log_path = Path(state) / "serve.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [*PODBAY, "serve", "--listen", listen, "--pool", f"{size}:{backend}", "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://{listen}"
                _wait_until_up(url, server, log_path)
                result: dict[str, Any] = asyncio.run(_remote(url, token, admin_token, levels, claims, size, backend))
                return result
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _podbay(env: dict[str, str], *args: str) -> str:
    """Run a podbay command and return what it printed on stdout (a token, for `tokens create`)."""
    done = subprocess.run([*PODBAY, *args], env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HostError(f"podbay {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


async def _remote(
    url: str, token: str, admin_token: str, levels: tuple[int, ...], claims: int, size: int, backend: str
) -> dict[str, Any]:
    clients = [AsyncClient(url, token) for _ in range(max(levels))]  # one connection pool per client
    admin = AsyncClient(url, admin_token, timeout=FILL_TIMEOUT_S + 30)
    pick = iter(range(10**9))
    try:

        async def origin(pod: AsyncRemotePod) -> str:
            return str((await pod.info()).origin)

        async def claim() -> tuple[float, str]:
            client = clients[next(pick) % len(clients)]
            return await _timed_claim(lambda: client.create_agent(backend=backend), origin)

        async def refill() -> None:
            await admin.admin.ensure_pool(size, backend=backend, wait_s=FILL_TIMEOUT_S)

        result: dict[str, Any] = await _levels(levels, claims, claim, refill)
        return result
    finally:
        await asyncio.gather(admin.aclose(), *(client.aclose() for client in clients))


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + FILL_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise HostError(f"podbay serve exited ({server.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise HostError(f"podbay serve did not answer within {FILL_TIMEOUT_S:.0f} s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stats(samples: list[tuple[float, str]]) -> dict[str, Any]:
    values = [ms for ms, _ in samples]
    origins: dict[str, int] = {}
    for _, origin in samples:
        origins[origin] = origins.get(origin, 0) + 1
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "origins": origins,
    }


def summary(result: dict[str, Any]) -> str:
    parts = []
    for level, served in result["served_ms"].items():
        embedded = result["embedded_ms"][level]
        ratio = result["overhead_p50_ratio"].get(level)
        parts.append(
            f"{level} client{'s' if level != '1' else ''}: served p50 {served['p50']:.1f} / p99 {served['p99']:.1f} ms,"
            f" embedded p50 {embedded['p50']:.1f} ms" + (f" (x{ratio:.2f})" if ratio is not None else "")
        )
    return f"{result['backend']} pool of {result['pool_size']}, claim → first exec: " + "; ".join(parts)
