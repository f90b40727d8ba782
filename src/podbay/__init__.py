"""podbay: a pod per agent task — an isolated sandbox plus a private database. Public surface only.

Every type a public method or attribute of these returns is exported here (tests/unit/test_public_surface.py
checks it), and every error is a PodbayError (see podbay.errors for the tree).
"""

from podbay.channel import GuestProcess
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
from podbay.postmortem import ExecRecord, PodEvent, PostMortem, PostMortemStore
from podbay.sdk import (
    Admin,
    AsyncAdmin,
    AsyncClient,
    AsyncRemotePod,
    AsyncRemoteProcess,
    Client,
    RemotePod,
    RemoteProcess,
)
from podbay.snapshots import SnapshotStore
from podbay.state.servers import DatabaseInfo, TemplateInfo
from podbay.state.volumes import VolumeInfo, VolumeStore
from podbay.sync import Files, Platform, Pod, Pools, Process
from podbay.tenancy import (
    NewToken,
    PercentilesInfo,
    PoolShapeInfo,
    PoolStatus,
    QuotaInfo,
    TenantInfo,
    TenantVolume,
    TokenInfo,
)
from podbay.wire import ProcessInfo

__all__ = [
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "AsyncFiles",
    "AsyncPlatform",
    "AsyncPod",
    "AsyncPools",
    "AsyncRemotePod",
    "AsyncRemoteProcess",
    "Availability",
    "BackendUnavailable",
    "Client",
    "Conflict",
    "Cost",
    "DatabaseInfo",
    "DatabaseUnavailable",
    "ExecEvent",
    "ExecRecord",
    "ExecResult",
    "FileEntry",
    "Files",
    "Forbidden",
    "GuestError",
    "GuestProcess",
    "HostError",
    "ImageMissing",
    "InvalidSpec",
    "NewToken",
    "NotFound",
    "Percentiles",
    "PercentilesInfo",
    "Phase",
    "Platform",
    "Pod",
    "PodEvent",
    "PodInfo",
    "PodSpec",
    "PodState",
    "PodbayError",
    "PodbayPaths",
    "PoolReport",
    "PoolShape",
    "PoolShapeInfo",
    "PoolStatus",
    "Pools",
    "PostMortem",
    "PostMortemStore",
    "PriceTable",
    "Process",
    "ProcessInfo",
    "QuotaExceeded",
    "QuotaInfo",
    "Recovery",
    "RemotePod",
    "RemoteProcess",
    "SandboxInfo",
    "SnapshotInfo",
    "SnapshotStore",
    "TemplateInfo",
    "TenantInfo",
    "TenantVolume",
    "Timeout",
    "TokenInfo",
    "Unauthorized",
    "Unsupported",
    "Usage",
    "UsageReport",
    "UsageTotals",
    "VolumeInfo",
    "VolumeStore",
]
