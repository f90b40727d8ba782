"""podbay: a pod per agent task — an isolated sandbox plus a private database. Public surface only.

Every type a public method or attribute of these returns is exported here (tests/unit/test_public_surface.py
checks it), and every error is a PodbayError (see podbay.errors for the tree).
"""

from podbay.channel import GuestProcess
from podbay.errors import (
    BackendUnavailable,
    Conflict,
    GuestError,
    HostError,
    ImageMissing,
    InvalidSpec,
    NotFound,
    PodbayError,
    QuotaExceeded,
    Timeout,
    Unauthorized,
    Unsupported,
)
from podbay.isolation.base import Availability
from podbay.metering import Cost, PriceTable, Usage, UsageReport, UsageTotals
from podbay.models import (
    ExecEvent,
    ExecResult,
    FileEntry,
    Phase,
    PodInfo,
    PodSpec,
    PodState,
    SandboxInfo,
    SnapshotInfo,
)
from podbay.paths import PodbayPaths
from podbay.platform import AsyncFiles, AsyncPlatform, AsyncPod, Recovery
from podbay.pool.pools import AsyncPools
from podbay.pool.warm import Percentiles, PoolReport, PoolShape
from podbay.sdk import AsyncClient, AsyncRemotePod, Client, RemotePod
from podbay.snapshots import SnapshotStore
from podbay.state.volumes import VolumeInfo, VolumeStore
from podbay.sync import Files, Platform, Pod, Pools, Process

__all__ = [
    "AsyncClient",
    "AsyncFiles",
    "AsyncPlatform",
    "AsyncPod",
    "AsyncPools",
    "AsyncRemotePod",
    "Availability",
    "BackendUnavailable",
    "Client",
    "Conflict",
    "Cost",
    "ExecEvent",
    "ExecResult",
    "FileEntry",
    "Files",
    "GuestError",
    "GuestProcess",
    "HostError",
    "ImageMissing",
    "InvalidSpec",
    "NotFound",
    "Percentiles",
    "Phase",
    "Platform",
    "Pod",
    "PodInfo",
    "PodSpec",
    "PodState",
    "PodbayError",
    "PodbayPaths",
    "PoolReport",
    "PoolShape",
    "Pools",
    "PriceTable",
    "Process",
    "QuotaExceeded",
    "Recovery",
    "RemotePod",
    "SandboxInfo",
    "SnapshotInfo",
    "SnapshotStore",
    "Timeout",
    "Unauthorized",
    "Unsupported",
    "Usage",
    "UsageReport",
    "UsageTotals",
    "VolumeInfo",
    "VolumeStore",
]
