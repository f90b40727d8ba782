"""The one exception tree of podbay: nothing else escapes a public method (a wrong call, such as an unknown
keyword argument, is Python's own TypeError, as anywhere).

PodbayError                 root: catch this to catch everything podbay raises; `.pod_id` names the pod, if any
├── NotFound                a pod, volume, snapshot, image or file does not exist
│   └── ImageMissing        the kernel or rootfs is not built yet (says how to build it)
├── Conflict                the name is taken, the resource is in use (a volume attached elsewhere), or the
│                           pod is in the wrong state for the operation (paused, destroyed)
├── InvalidSpec             bad input; `.field` names it, `.fix` says what to pass instead
├── BackendUnavailable      the isolation backend cannot run on this host (the reason says why)
│   └── Unsupported         the backend cannot do this operation (names the backend and the alternative)
├── DatabaseUnavailable     a pod's database server is not installed, down, unreachable or out of slots
├── GuestError              the sandbox or its agent failed (crash, protocol error, malformed answer)
├── HostError               the host failed podbay: a tool is missing, a disk is full, a file cannot be written
├── Timeout                 an operation did not finish in time
├── QuotaExceeded           a limit was hit
├── Unauthorized            the REST API's token is missing, unknown or revoked (podbay serve, podbay.Client)
└── Forbidden               the token is of the wrong kind: a tenant's on /admin routes, an admin's elsewhere

Every error about one pod carries its id in `pod_id` (None where no pod is concerned). Over the REST API each
one crosses the wire as `{"error": {"type", "message", "field", "pod_id"}}` and the SDK raises the same class
again (`podbay.wire`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

C = TypeVar("C", bound=type)


class PodbayError(Exception):
    """Root of every error podbay raises. `pod_id` is the pod the error concerns, or None."""

    def __init__(self, *args: object, pod_id: str | None = None) -> None:
        super().__init__(*args)
        self.pod_id = pod_id


class NotFound(PodbayError):
    """A pod, volume, snapshot, image or file does not exist."""


class ImageMissing(NotFound):
    """A kernel or root filesystem has not been built yet."""


class Conflict(PodbayError):
    """The name is taken, the resource is in use, or the pod is in the wrong state for the operation."""


class InvalidSpec(PodbayError):
    """Bad input. The message names the field and says how to fix it."""

    def __init__(self, field: str, problem: str, fix: str, *, pod_id: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}; {fix}", pod_id=pod_id)

    def __reduce__(self) -> tuple[type[InvalidSpec], tuple[str, str, str], dict[str, object]]:
        return (type(self), (self.field, self.problem, self.fix), self.__dict__)


class BackendUnavailable(PodbayError):
    """The isolation backend cannot run here; the message gives the reason."""


class Unsupported(BackendUnavailable):
    """The backend runs here but cannot do this (template clone, snapshot, fork); the message names the
    backend and the alternative."""

    def __init__(self, backend: str, operation: str, alternative: str, *, pod_id: str | None = None) -> None:
        self.backend = backend
        self.operation = operation
        self.alternative = alternative
        super().__init__(f"{backend} cannot {operation}; {alternative}", pod_id=pod_id)

    def __reduce__(self) -> tuple[type[Unsupported], tuple[str, str, str], dict[str, object]]:
        return (type(self), (self.backend, self.operation, self.alternative), self.__dict__)


class DatabaseUnavailable(PodbayError):
    """A pod's database server cannot serve it: not installed, not running, unreachable, out of connection
    slots. The message says which and what to do; nothing of the pod was made."""


class GuestError(PodbayError):
    """The sandbox or its guest agent failed."""


class HostError(PodbayError):
    """The host failed podbay: a tool is missing, a disk is full, a file cannot be written or read."""


class Timeout(PodbayError):
    """An operation did not finish in time."""


class QuotaExceeded(PodbayError):
    """A limit was hit."""


class Unauthorized(PodbayError):
    """The REST API's bearer token is missing, unknown or revoked."""


class Forbidden(PodbayError):
    """The REST API's bearer token is valid but of the wrong kind: a tenant's token on an /admin route, or an
    admin token (which acts for no tenant) on a tenant's route."""


@contextmanager
def concerning(pod_id: str | None) -> Iterator[None]:
    """Give every PodbayError raised inside the block this `pod_id`, unless it names a pod already."""
    try:
        yield
    except PodbayError as exc:
        if exc.pod_id is None:
            exc.pod_id = pod_id
        raise


def errors_name_the_pod(pod_id_of: Callable[[Any], str | None]) -> Callable[[C], C]:
    """Class decorator: every public method (plain or async) runs `concerning(pod_id_of(self))`, so each
    PodbayError it raises names the pod, written once for the whole class."""

    def decorate(cls: C) -> C:
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(member):
                setattr(cls, name, _naming_the_pod(member, pod_id_of))
        return cls

    return decorate


def _naming_the_pod(method: Callable[..., Any], pod_id_of: Callable[[Any], str | None]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def named_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            with concerning(pod_id_of(self)):
                return await method(self, *args, **kwargs)

        return named_async

    @functools.wraps(method)
    def named(self: Any, *args: Any, **kwargs: Any) -> Any:
        with concerning(pod_id_of(self)):
            return method(self, *args, **kwargs)

    return named
