"""The data podbay takes and gives: pod specs, pod info, exec results, traces."""

from __future__ import annotations

import enum
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from podbay.errors import InvalidSpec

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DB_TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"  # a Postgres template's name (its database is tpl_<name>)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIX = "PODBAY_"
MAX_CONTEXT_BYTES = 256 << 10
MAX_CONTEXT_DEPTH = 64  # nesting the guest's JSON parser handles with room to spare
MAX_TIMEOUT_S = 30 * 24 * 3600.0  # a pod's timeout_s: at most 30 days


class PodState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    DESTROYED = "destroyed"
    FAILED = "failed"


class PodSpec(BaseModel):
    """What a pod should be. Every field is checked; a bad one raises InvalidSpec naming it and the fix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = "qemu"
    vcpus: int = Field(default=1, ge=1, le=16)
    memory_mib: int = Field(default=256, ge=64, le=16384)
    disk_mib: int = Field(default=1024, ge=64, le=65536, description="size of the pod's writable layer")
    memory_db: bool = False
    volume: str | None = Field(default=None, pattern=NAME_PATTERN)
    volume_mib: int = Field(default=256, ge=16, le=65536)
    db: Literal["postgres", "redis"] | None = Field(
        default=None,
        description="a private server database on the host (memory_db=True is SQLite on the pod's volume): the "
        "guest reaches it on 127.0.0.1 at its usual port through podbay's channel; PODBAY_DB_URL carries its "
        "credentials, minted for this pod and revoked when it ends",
    )
    db_template: str | None = Field(
        default=None,
        pattern=DB_TEMPLATE_PATTERN,
        description="postgres: branch the pod's database from this template (`podbay db templates create`)",
    )
    db_retain: bool = Field(
        default=False,
        description="keep the server database's data when the pod ends (its credentials are revoked either way); "
        "`podbay db export POD` dumps it, `podbay db rm POD` removes it",
    )
    env: dict[str, str] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    network: bool = False
    boot_timeout_s: float = Field(default=60.0, gt=0, le=600)
    cold: bool = Field(default=False, description="boot a fresh sandbox: no warm pool, no template clone")
    preload: str | None = Field(
        default=None,
        description="an absolute host path: the pod's template carries this file, read-only in the guest at "
        "/opt/podbay/preload/<name>; pods of one template share its pages (model weights, a dataset)",
    )
    snapshottable: bool = Field(
        default=False,
        description="keep the guest's RAM in a file of the pod's own, so snapshot() and fork() take milliseconds "
        "rather than streaming the RAM (costs a copy of the template's touched pages, ~50 MiB, per pod)",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TIMEOUT_S,
        allow_inf_nan=False,
        description="destroy the pod this many seconds after it is created (None: never); "
        "pod.set_timeout(seconds) moves the deadline to that many seconds from now",
    )
    keep_on_failure: bool = Field(
        default=False,
        description="when the pod fails (its timeout fires, a command is OOM-killed or times out), snapshot it "
        "as postmortem-<pod id> before destroying it, so it can be restored for inspection (`podbay debug POD`); "
        "its post-mortem says why when the backend cannot snapshot",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{name!r}: names starting with {RESERVED_ENV_PREFIX} are set by podbay")
            if "\0" in value:
                raise ValueError(f"the value of {name!r} contains a NUL byte")
        return env

    @field_validator("preload")
    @classmethod
    def _preload_is_absolute(cls, preload: str | None) -> str | None:
        if preload is not None and (not preload.startswith("/") or "\0" in preload):
            raise ValueError(f"{preload!r} is not an absolute host path")
        return preload

    @field_validator("network")
    @classmethod
    def _no_egress_yet(cls, network: bool) -> bool:
        if network:
            raise ValueError(
                "egress is not available yet: QEMU's user-mode network would let the guest reach the host's "
                "own services (10.0.2.2 is the host's loopback), and podbay does not filter it yet"
            )
        return network

    @field_validator("context")
    @classmethod
    def _context_is_json(cls, context: dict[str, Any]) -> dict[str, Any]:
        try:  # strict JSON, as the guest protocol sends it: no NaN or Infinity, no cycles, bounded depth
            size = len(json.dumps(context, allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"must be JSON-serialisable, without NaN or Infinity ({type(exc).__name__})") from None
        if size > MAX_CONTEXT_BYTES:
            raise ValueError(f"is {size} bytes of JSON; the limit is {MAX_CONTEXT_BYTES}")
        if _depth(context) > MAX_CONTEXT_DEPTH:
            raise ValueError(f"is nested more than {MAX_CONTEXT_DEPTH} levels deep")
        return context

    @model_validator(mode="after")
    def _one_database(self) -> PodSpec:
        # InvalidSpec itself (not ValueError), so the error names the field that is wrong, not the whole spec.
        if self.db is not None and self.memory_db:
            raise InvalidSpec("db", "a pod has one database: memory_db=True is SQLite, db= a server one", _FIXES["db"])
        if self.db_template is not None and self.db != "postgres":
            raise InvalidSpec("db_template", "is a Postgres template: it needs db='postgres'", _FIXES["db_template"])
        if self.db_retain and self.db is None:
            raise InvalidSpec("db_retain", "keeps a server database: there is none", _FIXES["db_retain"])
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _refused_as_invalid_spec(cls, data: Any, handler: ModelWrapValidatorHandler[PodSpec]) -> PodSpec:
        """However a spec is built (`PodSpec(...)`, `parse`, `model_validate`), a bad field raises InvalidSpec
        for the first bad field, never pydantic's ValidationError (pydantic lets other exceptions through)."""
        try:
            return handler(data)
        except RecursionError:
            raise InvalidSpec("context", "is nested too deeply", _fix_for("context")) from None
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "spec"
            raise InvalidSpec(field, error["msg"], _fix_for(field)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise InvalidSpec(
            name, "cannot be changed: a PodSpec is frozen", f"make a new one: spec.model_copy(update={{{name!r}: ...}})"
        )

    @classmethod
    def parse(cls, **fields: Any) -> PodSpec:
        """Build a spec from keyword fields (unknown ones included: they are refused with InvalidSpec too)."""
        return cls(**fields)


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest (iterative: a hostile value must not exhaust the stack)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_CONTEXT_DEPTH:
                pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


_FIXES = {
    "volume": "use 1-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
    "env": "use names like TASK or MY_VAR (letters, digits, '_'; not starting with PODBAY_) and string values",
    "context": "pass a dict of JSON values (str, int, float, bool, None, lists, dicts)",
    "vcpus": "use 1 to 16",
    "memory_mib": "use 64 to 16384",
    "disk_mib": "use 64 to 65536",
    "volume_mib": "use 16 to 65536",
    "preload": "pass the absolute path of a readable host file (it must fit in memory_mib with 128 MiB to spare)",
    "network": "leave network=False: a pod reaches its database through podbay's own channel, not a network",
    "backend": "pass a backend name such as 'qemu' (`podbay doctor` lists those that run here)",
    "boot_timeout_s": "use a number of seconds above 0, at most 600",
    "memory_db": "pass True or False",
    "db": "pass db='postgres' or db='redis' (or memory_db=True for SQLite), not both",
    "db_template": "pass db='postgres' with the name of a template (`podbay db templates ls`)",
    "db_retain": "pass True or False, with db='postgres' or db='redis'",
    "cold": "pass True or False",
    "snapshottable": "pass True or False",
    "keep_on_failure": "pass True or False",
    "timeout_s": f"use a number of seconds above 0, at most {MAX_TIMEOUT_S:.0f} (30 days), or None for no timeout",
}


def _fix_for(field: str) -> str:
    root = field.split(".")[0]
    known = ", ".join(PodSpec.model_fields)
    return _FIXES.get(root, f"check {root!r} against the PodSpec fields (unknown fields are refused): {known}")


class Phase(BaseModel):
    """One step of a pod's life, with monotonic-clock seconds relative to the pod's creation."""

    name: str
    start_s: float
    end_s: float
    detail: str = ""  # e.g. why the sandbox came from where it did

    @property
    def duration_ms(self) -> float:
        return (self.end_s - self.start_s) * 1000


class SandboxInfo(BaseModel):
    backend: str
    isolation: str
    accelerator: str
    security_boundary: bool
    note: str = ""
    pid: int | None = None
    console_log: str | None = None


class PodInfo(BaseModel):
    id: str
    state: PodState
    spec: PodSpec
    sandbox: SandboxInfo | None = None
    volume: str | None = None
    db_url: str | None = None
    created_at: float
    origin: str | None = None  # how the sandbox was obtained: pool claim, template clone, snapshot restore, cold boot
    trace: list[Phase] = Field(default_factory=list)
    error: str | None = None
    expires_at: float | None = None  # wall-clock epoch seconds when the pod's timeout destroys it; None: no timeout
    ended_reason: str | None = None  # why a destroyed pod ended, e.g. "timeout after 30 s"


class SnapshotInfo(BaseModel):
    """A saved pod (`pod.snapshot(name)`): restore it with `platform.restore(name)`, even from another process."""

    name: str
    path: str
    created_at: float
    vcpus: int
    memory_mib: int
    volumes: list[str] = Field(default_factory=list)  # where each saved volume is mounted in the guest
    ram: str  # "file": restores map it copy-on-write; "stream": the RAM is inside the device state
    disk_mib: float  # what the snapshot takes on the host's disk
    timings: dict[str, float] = Field(default_factory=dict)


class ExecResult(BaseModel):
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    signal: int | None = None
    timed_out: bool = False
    duration_s: float = 0.0
    truncated: bool = False  # stdout/stderr were cut at OUTPUT_LIMIT each; streaming callbacks saw everything

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ExecEvent(BaseModel):
    """One event of a streamed command (`pod.exec_stream`): a chunk of stdout or stderr as it came, and last
    the exit with the whole result. Over the REST API each is one NDJSON line; `data` is base64 there."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["stdout", "stderr", "exit"]
    data: bytes = b""
    result: ExecResult | None = None  # set on the exit event


class FileEntry(BaseModel):
    name: str
    type: str
    size: int
    mode: int
    mtime: float
