"""`podbay serve --pool SIZE[:BACKEND]`: warm pools the server keeps from its start, refilled in the background
(the first requests claim from them as soon as members are up; `PUT /admin/pools` resizes them later).

`create_app(pools=...)` asks for them once its pods are recovered, through PUT /admin/pools's own function
(same model, same checks: a backend that cannot pool, or a pool that would not fit the host's memory, stops
the start with its error).
"""

from __future__ import annotations

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
