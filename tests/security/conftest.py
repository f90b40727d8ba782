"""The standing security suite: escape attempts, resource attacks, hostile input and fault injection, on every
backend this host can run. Each test asserts the outcome: the host stays healthy, nothing of the pod is left,
the caller gets a clear error, and the next pod starts.

It shares the integration fixtures (real sandboxes, private state, nothing-left checks).
"""

from tests.integration.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    platform,
    shared_paths,
    shared_platform,
    vm_paths,
)
