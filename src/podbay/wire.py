"""What crosses the REST API besides podbay's models: request bodies and the one error shape.

Shared by the server (`podbay.server`) and the client (`podbay.sdk`), so both read and write the same JSON.
Every error is `{"error": {"type": "<PodbayError subclass>", "message": ..., "field": ..., "pod_id": ...}}`;
`error_from_body` raises the same class on the client side (an unknown type becomes the nearest known one).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from podbay.errors import HostError, InvalidSpec, PodbayError, Unsupported
from podbay.models import MAX_TIMEOUT_S, ExecResult, PodSpec, _fix_for


class ExecRequest(BaseModel):
    """`POST /pods/{id}/exec` and `/exec/stream`: one command; `stdin` is base64 in JSON."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes | None = None
    timeout: float | None = Field(None, gt=0)


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class TimeoutRequest(BaseModel):
    """`POST /pods/{id}/timeout`: destroy the pod this many seconds from now."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=16)


class FileWritten(BaseModel):
    path: str
    size: int


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None
    pod_id: str | None = None
    request_id: str | None = None  # the X-Request-Id of the request that failed: quote it to the operator


# The id of the request being served (set by the service's middleware, podbay.server.observability).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("podbay_request_id", default=None)


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(exc: PodbayError, pod_id: str | None = None) -> dict[str, Any]:
    """The JSON of `exc` (the pod id from the error, else the one the request named)."""
    detail = ErrorDetail(
        type=type(exc).__name__,
        message=str(exc),
        field=getattr(exc, "field", None),
        pod_id=exc.pod_id or pod_id,
        request_id=REQUEST_ID.get(),
    )
    return ErrorBody(error=detail).model_dump()


def validation_error(problems: Sequence[Any]) -> InvalidSpec:
    """pydantic's (or FastAPI's) list of problems as InvalidSpec for the first one, naming the field."""
    first: dict[str, Any] = dict(problems[0]) if problems else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        context = first.get("ctx") or {}
        problem = f"is not valid JSON ({context.get('error', 'JSON decode error')})"
        return InvalidSpec("body", problem, "send one JSON object (Content-Type: application/json)")
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "body"
    root = field.split(".")[0]
    fix = _fix_for(field) if root in PodSpec.model_fields else "see docs/api.md for this route's fields"
    return InvalidSpec(field, str(first.get("msg", "invalid")), fix)


def _classes() -> dict[str, type[PodbayError]]:
    found: dict[str, type[PodbayError]] = {}
    pending: list[type[PodbayError]] = [PodbayError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == PodbayError.__module__:
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def error_from_body(status: int, body: Any) -> PodbayError:
    """Rebuild the error a server answered (the same subclass, message, field and pod id)."""
    try:
        detail = ErrorBody.model_validate(body).error
    except ValueError:
        return HostError(f"the server answered HTTP {status} without podbay's error shape: {str(body)[:200]}")
    cls = _classes().get(detail.type, PodbayError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, detail.message)  # the message is the server's whole text; no re-formatting
    if isinstance(exc, InvalidSpec):
        exc.field, exc.problem, exc.fix = detail.field or "request", detail.message, ""
    if isinstance(exc, Unsupported):
        exc.backend, exc.operation = "", ""
    exc.pod_id = detail.pod_id
    return exc


class ProcessRequest(BaseModel):
    """`POST /pods/{id}/processes`: start a long-running command; with `stdin: true` it reads what
    `POST .../stdin` sends (until `?eof=true`)."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    stdin: bool = False
    timeout: float | None = Field(None, gt=0)


class SignalRequest(BaseModel):
    """`POST /pods/{id}/processes/{process_id}/signal`."""

    model_config = ConfigDict(extra="forbid")

    signal: int = Field(ge=1, le=64)


class ProcessInfo(BaseModel):
    """A process of a pod: running, exited (with its result) or failed (with the error, in the error shape)."""

    id: str
    pod_id: str
    argv: list[str]
    state: Literal["running", "exited", "failed"]
    stdin_open: bool
    result: ExecResult | None = None
    error: str | None = None  # "<PodbayError subclass>: message" when failed; the output stream has it in full
