"""`podbay bench serve`: pool claim → first exec result through the REST API of a real server process, with 1,
10 and 50 concurrent clients, beside the same measurement on an embedded platform in this process: the
service's own overhead, as a ratio of medians.

Each side gets its own private state root (the image cache is shared) and a warm pool of `size` members, refilled
to full before each concurrency level. A claim is `create_agent(backend)` then `exec(["true"])`, timed from the
request to the exec's result; the pod is destroyed afterwards, untimed. Claims beyond the idle members fall back
to template clones (their origin is counted). The server is `podbay.server`'s app under uvicorn in a child
process started here (as `podbay serve` runs it), with the pool made before it listens: `podbay serve` has no
pool option, and a private `/_bench/refill` route, in the child only, refills the pool between levels.

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
from typing import Any

import httpx

from podbay.bench.create import percentile
from podbay.errors import HostError, InvalidSpec
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.sdk import AsyncClient

FILL_TIMEOUT_S = 600.0
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

            async def claim() -> tuple[float, str]:
                started = time.perf_counter()
                pod = await platform.create_agent(backend=backend)
                try:
                    await pod.exec(["true"])
                    return (time.perf_counter() - started) * 1000, pod.origin.value
                finally:
                    await pod.destroy()

            async def refill() -> None:
                await platform.pools.ensure(size, backend=backend, wait=FILL_TIMEOUT_S)

            result: dict[str, Any] = await _levels(levels, claims, claim, refill)
            return result


def _served(paths: PodbayPaths, levels: tuple[int, ...], claims: int, size: int, backend: str) -> dict[str, Any]:
    from podbay.server.registry import Registry

    with tempfile.TemporaryDirectory(prefix="podbay-bench-serve-") as state:
        registry = Registry(Path(state) / "server.db")
        token, _ = registry.create_token("bench")
        registry.close()
        port = _free_port()
        env = {**os.environ, "PODBAY_STATE": state, "PODBAY_CACHE": str(paths.cache)}
        log_path = Path(state) / "serve.log"
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "podbay.bench.serve", str(port), str(size), backend],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_until_up(url, child, log_path)
                result: dict[str, Any] = asyncio.run(_remote(url, token, levels, claims, backend))
                return result
            finally:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


async def _remote(url: str, token: str, levels: tuple[int, ...], claims: int, backend: str) -> dict[str, Any]:
    clients = [AsyncClient(url, token) for _ in range(max(levels))]  # one connection pool per client
    pick = iter(range(10**9))
    try:

        async def claim() -> tuple[float, str]:
            client = clients[next(pick) % len(clients)]
            started = time.perf_counter()
            pod = await client.create_agent(backend=backend)
            try:
                await pod.exec(["true"])
                elapsed = (time.perf_counter() - started) * 1000
                return elapsed, str((await pod.info()).origin)
            finally:
                await pod.destroy()

        async def refill() -> None:
            await clients[0]._request("POST", "/_bench/refill", timeout=FILL_TIMEOUT_S + 30)

        result: dict[str, Any] = await _levels(levels, claims, claim, refill)
        return result
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


def _wait_until_up(url: str, child: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + FILL_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise HostError(f"the bench server exited ({child.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise HostError(f"the bench server did not answer within {FILL_TIMEOUT_S:.0f} s")


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


def _child(port: int, size: int, backend: str) -> None:
    """The server side: the service's app over a platform whose pool is full before it listens."""
    import uvicorn
    from fastapi import FastAPI

    from podbay.server import create_app

    async def main() -> None:
        platform = AsyncPlatform()
        await platform.pools.ensure(size, backend=backend, wait=FILL_TIMEOUT_S)
        app: FastAPI = create_app(platform=platform)

        async def refill() -> dict[str, bool]:
            await platform.pools.ensure(size, backend=backend, wait=FILL_TIMEOUT_S)
            return {"ok": True}

        app.add_api_route("/_bench/refill", refill, methods=["POST"])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        await uvicorn.Server(config).serve()

    asyncio.run(main())


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
