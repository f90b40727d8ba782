"""Every error the service answers, mapped to HTTP in this one place, always in podbay's one JSON shape.

| error                            | status | why                                                        |
|----------------------------------|--------|------------------------------------------------------------|
| InvalidSpec, request validation  | 422    | the body, query or path is wrong; `field` names it         |
| Unauthorized                     | 401    | missing, unknown or revoked token                          |
| Forbidden                        | 403    | a tenant's token on /admin, an admin token on tenant routes|
| NotFound                         | 404    | also for another tenant's pod or snapshot (never 403)      |
| ImageMissing                     | 503    | the server's images are not built: the operator's problem  |
| DatabaseUnavailable              | 503    | the database server is down, unreachable or out of slots   |
| Conflict                         | 409    | wrong state (a paused pod), a name taken                   |
| BackendUnavailable, Unsupported  | 501    | this host or backend does not implement that operation     |
| QuotaExceeded                    | 429    | a tenant's quota (pods, memory, snapshots, volumes): sums  |
| GuestError                       | 502    | the sandbox (the upstream of this request) failed          |
| Timeout                          | 504    |                                                            |
| HostError                        | 500    | the server's host failed podbay (a tool, a full disk)      |
| PodbayError, anything else       | 500    | with the shape, never a traceback (the server logs it)     |

Unknown routes answer 404 (NotFound), wrong methods 405 (InvalidSpec, field "method"), a body FastAPI cannot
even parse (JSON nested past Python's recursion limit) 400 (InvalidSpec, field "body").
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from podbay.errors import (
    BackendUnavailable,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    GuestError,
    HostError,
    ImageMissing,
    InvalidSpec,
    NotFound,
    PodbayError,
    QuotaExceeded,
    Timeout,
    Unauthorized,
)
from podbay.wire import ErrorBody, error_body, validation_error

log = logging.getLogger("podbay.server")

STATUS: dict[type[PodbayError], int] = {
    InvalidSpec: 422,
    Unauthorized: 401,
    Forbidden: 403,
    ImageMissing: 503,
    DatabaseUnavailable: 503,
    NotFound: 404,
    Conflict: 409,
    BackendUnavailable: 501,
    QuotaExceeded: 429,
    GuestError: 502,
    Timeout: 504,
    HostError: 500,
    PodbayError: 500,
}


# What each error status means, for the OpenAPI document (`responses` below); the table above is the source.
MEANING: dict[int, str] = {
    400: "InvalidSpec: the body could not even be parsed",
    401: "Unauthorized: missing, unknown or revoked token",
    403: "Forbidden: the token is of the wrong kind (a tenant's on /admin, an admin's on tenant routes)",
    404: "NotFound: no such pod, snapshot or route (also another tenant's)",
    409: "Conflict: the pod is in the wrong state, or the name is taken",
    422: "InvalidSpec: the body, query or path is wrong; `field` names it",
    429: "QuotaExceeded: the tenant's quota (pods, memory, snapshots, volumes) would be exceeded; the message says how",
    500: "HostError or an unexpected failure (the server logs it with an incident id)",
    501: "BackendUnavailable or Unsupported: this host or backend does not implement it",
    502: "GuestError: the sandbox failed",
    503: "ImageMissing or DatabaseUnavailable: the server's images are not built, or its database server is down",
    504: "Timeout",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for these error statuses: each in the one error shape (ErrorBody)."""
    return {status: {"model": ErrorBody, "description": MEANING[status]} for status in statuses}


def status_of(exc: PodbayError) -> int:
    """The status of the nearest class in `exc`'s ancestry that the table names."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(exc: PodbayError, pod_id: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(error_body(exc, pod_id), status_code=status_of(exc), headers=headers)


def install(app: FastAPI) -> None:
    """Route every error through `error_response`."""

    async def podbay_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PodbayError)
        service = getattr(request.app.state, "service", None)
        if service is not None:  # no host path or pid in any answer (see redact.py)
            service.redactor.error(exc)
        return error_response(exc, request.path_params.get("pod_id"))

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), request.path_params.get("pod_id"))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error: PodbayError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}; see docs/api.md")
        elif exc.status_code == 400:  # FastAPI gave up parsing the body (e.g. JSON nested past the recursion limit)
            error = InvalidSpec(
                "body", f"could not be parsed ({exc.detail})", "send one JSON object, not nested deeply"
            )
        elif exc.status_code == 405:
            error = InvalidSpec("method", f"{request.method} is not allowed on {request.url.path}", "see docs/api.md")
        else:
            error = InvalidSpec("request", str(exc.detail), "see docs/api.md")
        return JSONResponse(error_body(error), status_code=exc.status_code)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(4)
        log.error("incident %s: %s %s failed", incident, request.method, request.url.path, exc_info=exc)
        error = PodbayError(f"internal error; the server logged it as incident {incident}")
        return JSONResponse(error_body(error, request.path_params.get("pod_id")), status_code=500)

    app.add_exception_handler(PodbayError, podbay_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
