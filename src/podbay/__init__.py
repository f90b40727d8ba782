"""podbay: a pod per agent task — an isolated sandbox plus a private database. Public surface only."""

from podbay.errors import (
    BackendUnavailable,
    Conflict,
    GuestError,
    ImageMissing,
    InvalidSpec,
    NotFound,
    PodbayError,
    QuotaExceeded,
    Timeout,
    Unsupported,
)
from podbay.models import ExecResult, FileEntry, Phase, PodInfo, PodSpec, PodState, SandboxInfo, SnapshotInfo
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.sync import Platform, Pod

__all__ = [
    "AsyncPlatform",
    "AsyncPod",
    "BackendUnavailable",
    "Conflict",
    "ExecResult",
    "FileEntry",
    "GuestError",
    "ImageMissing",
    "InvalidSpec",
    "NotFound",
    "Phase",
    "Platform",
    "Pod",
    "PodInfo",
    "PodSpec",
    "PodState",
    "PodbayError",
    "QuotaExceeded",
    "SandboxInfo",
    "SnapshotInfo",
    "Timeout",
    "Unsupported",
]
