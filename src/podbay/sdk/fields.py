"""`PodFields`: PodSpec's fields as keyword arguments, for `create_agent(**fields: Unpack[PodFields])`.

The SDK's typed create_agent signature, so an editor completes and checks its keywords. It is one more copy of
PodSpec's field list (the embedded platform writes its own out in platform.py and sync.py for their defaults);
tests/unit/test_sdk_parity.py fails when any copy drifts from PodSpec: names and types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict


class PodFields(TypedDict, total=False):
    """PodSpec's fields (see podbay.models.PodSpec for each, its default and its limits)."""

    backend: str
    vcpus: int
    memory_mib: int
    disk_mib: int
    memory_db: bool
    volume: str | None
    volume_mib: int
    db: Literal["postgres", "redis"] | None
    db_template: str | None
    db_retain: bool
    env: Mapping[str, str] | None
    context: Mapping[str, Any] | None
    network: bool
    boot_timeout_s: float
    cold: bool
    preload: str | None
    snapshottable: bool
    timeout_s: float | None
    keep_on_failure: bool
