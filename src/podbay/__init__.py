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
    Unauthorized,
    Unsupported,
)
from podbay.models import ExecEvent, ExecResult, FileEntry, Phase, PodInfo, PodSpec, PodState, SandboxInfo, SnapshotInfo
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.sdk import AsyncClient, AsyncRemotePod, Client, RemotePod
from podbay.sync import Platform, Pod

__all__ = [
    "AsyncClient",
    "AsyncPlatform",
    "AsyncPod",
    "AsyncRemotePod",
    "BackendUnavailable",
    "Client",
    "Conflict",
    "ExecEvent",
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
    "RemotePod",
    "SandboxInfo",
    "SnapshotInfo",
    "Timeout",
    "Unauthorized",
    "Unsupported",
]
