"""The service over the `local` test double (no VM) for the unit tests: in-process through httpx's ASGI transport
(`serve`), or under uvicorn on a loopback port of this process (`loopback_server`) where a response must stream
while the test still feeds it. Two tenants, acme and globex, each with a token."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx
import uvicorn
from fastapi import FastAPI

from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.server import create_app
from podbay.server.registry import Registry
from podbay.tenancy import PoolRequest

BASE_URL = "http://podbay"
LOOPBACK = "127.0.0.1"
LOCAL = {"backend": "local"}  # a pod body on the test double
# the scenario's transport to the app, acme's token, globex's token, and the operator's registry (what `podbay
# quotas | tokens` would change from another process)
Scenario = Callable[[httpx.ASGITransport, str, str, Registry], Awaitable[None]]


def local_app(paths: PodbayPaths, pools: Sequence[PoolRequest] = ()) -> FastAPI:
    """The app over a platform whose only backend is the test double (keeping `pools` from its start)."""
    return create_app(platform=AsyncPlatform(paths, backends={"local": LocalProcessBackend()}), pools=pools)


def serve(paths: PodbayPaths, scenario: Scenario, client: tuple[str, int] = (LOOPBACK, 123)) -> None:
    """Run `scenario` against the app in-process, between its start and shutdown; `client` is the address the
    app sees requests come from."""
    registry = Registry(paths.state / "server.db")
    token_a, _ = registry.create_token("acme")
    token_b, _ = registry.create_token("globex")

    async def main() -> None:
        app = local_app(paths)
        async with app.router.lifespan_context(app):
            await scenario(httpx.ASGITransport(app=app, client=client), token_a, token_b, registry)

    try:
        asyncio.run(main())
    finally:
        registry.close()


def raw(transport: httpx.ASGITransport, token: str | None) -> httpx.AsyncClient:
    """A plain HTTP client of the app, with `token` as its bearer (None: no Authorization header)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)


def loopback_server(paths: PodbayPaths) -> tuple[uvicorn.Server, str]:
    """A uvicorn server of `local_app` on a free loopback port, not started yet, and its URL; made in the event
    loop that will serve it."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(local_app(paths), host=LOOPBACK, port=port, log_level="warning")
    return uvicorn.Server(config), f"http://{LOOPBACK}:{port}"


def assert_no_pods_left(paths: PodbayPaths) -> None:
    assert not paths.pods.exists() or list(paths.pods.iterdir()) == [], "the shutdown destroys the pods"
