"""The one exception tree of podbay.

PodbayError                 root: catch this to catch everything podbay raises
├── NotFound                a pod, volume, image or file does not exist
│   └── ImageMissing        the kernel or rootfs is not built yet (says how to build it)
├── Conflict                the name is taken, or the resource is in use (a volume attached elsewhere)
├── InvalidSpec             bad input; the message names the field and the fix
├── BackendUnavailable      the isolation backend cannot run on this host (the reason says why)
│   └── Unsupported         the backend cannot do this operation (names the backend and the alternative)
├── GuestError              the sandbox or its agent failed (crash, protocol error, command refused)
├── Timeout                 an operation did not finish in time
├── QuotaExceeded           a limit was hit
└── Unauthorized            the REST API's token is missing, unknown or revoked (podbay serve, podbay.Client)

Every error may carry `pod_id` (None where no pod is concerned). Over the REST API each one crosses the wire as
`{"error": {"type", "message", "field", "pod_id"}}` and the SDK raises the same class again (`podbay.wire`).
"""

from __future__ import annotations


class PodbayError(Exception):
    """Root of every error podbay raises."""

    pod_id: str | None = None  # the pod concerned, where there is one


class NotFound(PodbayError):
    """A pod, volume, image or file does not exist."""


class ImageMissing(NotFound):
    """A kernel or root filesystem has not been built yet."""


class Conflict(PodbayError):
    """The name is taken or the resource is in use."""


class InvalidSpec(PodbayError):
    """Bad input. The message names the field and says how to fix it."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}; {fix}")


class BackendUnavailable(PodbayError):
    """The isolation backend cannot run here; the message gives the reason."""


class Unsupported(BackendUnavailable):
    """The backend runs here but cannot do this (template clone, snapshot, fork); the message names the
    backend and the alternative."""

    def __init__(self, backend: str, operation: str, alternative: str) -> None:
        self.backend = backend
        self.operation = operation
        super().__init__(f"{backend} cannot {operation}; {alternative}")


class GuestError(PodbayError):
    """The sandbox or its guest agent failed."""


class Timeout(PodbayError):
    """An operation did not finish in time."""


class QuotaExceeded(PodbayError):
    """A limit was hit."""


class Unauthorized(PodbayError):
    """The REST API's bearer token is missing, unknown or revoked."""
