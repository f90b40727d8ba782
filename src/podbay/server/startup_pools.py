"""`podbay serve --pool SIZE[:BACKEND]`: warm pools the server keeps from its start, refilled in the background
(the first requests claim from them as soon as members are up; `PUT /admin/pools` resizes them later).

The pools are asked for once the service is up, as `PUT /admin/pools` would ask (same model, same checks:
a backend that cannot pool, or a pool that would not fit the host's memory, stops the start with its error).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import ValidationError

from podbay.errors import InvalidSpec
from podbay.tenancy import PoolRequest
from podbay.wire import validation_error


def parse_pool(text: str) -> PoolRequest:
    """`SIZE` or `SIZE:BACKEND` (e.g. `8`, `4:runc`) as the pool of PUT /admin/pools's model (PodSpec's other
    shape fields take their defaults)."""
    size_text, _, backend = text.partition(":")
    if not size_text.strip().isdigit():
        raise InvalidSpec("pool", f"{text!r} is not SIZE[:BACKEND]", "pass e.g. --pool 8 or --pool 4:runc")
    fields: dict[str, object] = {"size": int(size_text)}
    if backend.strip():
        fields["backend"] = backend.strip()
    try:
        return PoolRequest.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def with_pools(app: FastAPI, pools: Sequence[PoolRequest]) -> FastAPI:
    """`app`, asking its platform for `pools` once its own start-up is done (they fill in the background)."""
    if not pools:
        return app
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with inner(served):
            platform = served.state.service.platform
            for pool in pools:
                await platform.pools.ensure(
                    pool.size,
                    backend=pool.backend,
                    vcpus=pool.vcpus,
                    memory_mib=pool.memory_mib,
                    disk_mib=pool.disk_mib,
                )
            yield

    app.router.lifespan_context = lifespan
    return app
