"""What the REST API's volume and admin routes take and give (shared by `podbay.server` and `podbay.sdk`).

A tenant's volumes are its own namespace: `TenantVolume.name` is the tenant's name for it; where it lives on
the host is never part of any of these. Admin models (tenants, tokens, quotas, pools) are for admin tokens.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from podbay.models import NAME_PATTERN

MAX_VOLUME_MIB = 65536


class VolumeRequest(BaseModel):
    """`POST /volumes`: a new, empty volume (its SQLite database made, in WAL mode) of `size_mib`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the tenant's name for it, e.g. customer-42")
    size_mib: int = Field(default=256, ge=16, le=MAX_VOLUME_MIB)


class TenantVolume(BaseModel):
    """A tenant's named volume, as the tenant sees it."""

    name: str
    size_mib: int
    used_kib: int = Field(description="what the volume takes on the host's disk (its image is sparse)")
    attached: bool = Field(description="a pod holds it now (it cannot be deleted until that pod is gone)")
    created_at: float


class TenantRequest(BaseModel):
    """`POST /admin/tenants`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)


class TenantInfo(BaseModel):
    name: str
    created_at: float
    live_pods: int
    volumes: int
    snapshots: int
    live_tokens: int


class TokenRequest(BaseModel):
    """`POST /admin/tokens`: a token for an existing tenant (admin tokens are made on the host only:
    `podbay tokens create --admin`)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=NAME_PATTERN)


class TokenInfo(BaseModel):
    """A token's record (never the token, never its hash)."""

    id: str
    tenant: str | None = Field(description="None for an admin token")
    created_at: float
    revoked_at: float | None = None


class NewToken(TokenInfo):
    """A token just made: `token` is shown this once; only its hash is kept."""

    token: str


class QuotaInfo(BaseModel):
    """A tenant's limits; null is unlimited."""

    tenant: str
    pods: int | None = None
    memory_mib: int | None = None
    snapshots: int | None = None
    volumes: int | None = None
    volume_mib: int | None = None


class QuotaUpdate(BaseModel):
    """`PATCH /admin/tenants/{name}/quota`: the limits named change (null lifts one); the others stay."""

    model_config = ConfigDict(extra="forbid")

    pods: int | None = Field(default=None, ge=0)
    memory_mib: int | None = Field(default=None, ge=0)
    snapshots: int | None = Field(default=None, ge=0)
    volumes: int | None = Field(default=None, ge=0)
    volume_mib: int | None = Field(default=None, ge=0)


class PoolRequest(BaseModel):
    """`PUT /admin/pools`: keep `size` idle members of this shape (PodSpec's fields); 0 drains the pool."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0, le=256)
    backend: str = "qemu"
    vcpus: int = Field(default=1, ge=1, le=16)
    memory_mib: int = Field(default=256, ge=64, le=16384)
    disk_mib: int = Field(default=1024, ge=64, le=65536)
    wait_s: float | None = Field(default=None, gt=0, le=600, description="wait until the members are all up")


class PoolShapeInfo(BaseModel):
    backend: str
    vcpus: int
    memory_mib: int
    layer_mib: int


class PercentilesInfo(BaseModel):
    n: int
    p50: float
    p90: float
    p99: float
    max: float


class PoolStatus(BaseModel):
    """One warm pool (`podbay.PoolReport` over the wire): its shape, size, idle members, hit rate, claim and
    member start latency (ms), refill rate, failures, and its idle members' host pids (admins only)."""

    shape: PoolShapeInfo
    size: int
    idle: int
    claims: int
    hits: int
    hit_rate: float | None
    claim_ms: PercentilesInfo | None
    member_start_ms: PercentilesInfo | None
    refill_per_s: float | None
    dead_replaced: int
    refill_errors: int
    last_error: str | None
    idle_member_pids: list[int]
