"""The service's own state: a SQLite database (WAL) at `<state>/server.db`.

Tenants; API tokens, kept only as SHA-256 hashes (the token itself is shown once, when it is made): a tenant's
tokens act for it, admin tokens (table `admin_tokens`) for no tenant, only on /admin routes; which tenant owns
each pod, snapshot and named volume (a tenant's volume "customer-42" is, on the host, a volume with a random
name of its own, `tv-<20 hex>`, never shown to the tenant); each tenant's quotas. `podbay tokens`,
`podbay quotas` and `podbay serve` open it from separate processes: WAL and a busy timeout let them, and a
revoked token is refused (a quota applies) from the next request on.

A token is 32 random bytes (256 bits): an unsalted, fast hash is enough to store it, since nobody can guess
its preimage; lookups go by hash, so no comparison leaks a token's bytes through timing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from podbay.errors import Conflict, Forbidden, InvalidSpec, NotFound, Unauthorized
from podbay.models import NAME_PATTERN

TOKEN_PREFIX = "pb_"
TENANT_NAME = re.compile(NAME_PATTERN)
HOST_VOLUME_PREFIX = "tv-"  # a tenant's volume on the host: tv-<20 hex>, which no tenant name maps to by itself
NAME_FIX = "use 1-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS pods (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    created_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    created_at REAL NOT NULL
);
"""

# Limits per tenant (`podbay quotas set`); NULL, or no row at all, is unlimited.
QUOTA_SCHEMA = """
CREATE TABLE IF NOT EXISTS quotas (
    tenant TEXT PRIMARY KEY REFERENCES tenants(name),
    pods INTEGER,
    memory_mib INTEGER,
    snapshots INTEGER
);
"""
QUOTA_KINDS = ("pods", "memory_mib", "snapshots", "volumes", "volume_mib")

# Added after the first release: made in server.db files that lack them (see `_migrate`).
ADMIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS admin_tokens (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS volumes (
    tenant TEXT NOT NULL REFERENCES tenants(name),
    name TEXT NOT NULL,
    host_name TEXT NOT NULL UNIQUE,
    size_mib INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant, name)
);
"""
ADDED_COLUMNS = {
    "tenants": {"deleted_at": "REAL"},  # a deleted tenant's name is never given again (its usage stays)
    "quotas": {"volumes": "INTEGER", "volume_mib": "INTEGER"},
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    id: str
    tenant: str | None  # None: an admin token (it acts for no tenant)
    created_at: float
    revoked_at: float | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None is unlimited. `pods` and `memory_mib` count the pods alive (running or paused),
    `snapshots` the snapshots it owns that still exist, `volumes` and `volume_mib` its named volumes and the
    sum of their sizes."""

    tenant: str
    pods: int | None = None
    memory_mib: int | None = None
    snapshots: int | None = None
    volumes: int | None = None
    volume_mib: int | None = None

    def limits(self) -> dict[str, int | None]:
        return {kind: getattr(self, kind) for kind in QUOTA_KINDS}


@dataclass(frozen=True)
class TenantRecord:
    name: str
    created_at: float


@dataclass(frozen=True)
class VolumeRecord:
    """A tenant's named volume: `name` is the tenant's, `host_name` the volume store's (never shown)."""

    tenant: str
    name: str
    host_name: str
    size_mib: int
    created_at: float


class Registry:
    """One connection, shared by the server's event loop and its worker threads under a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._db.executescript(QUOTA_SCHEMA)
        self._db.executescript(ADMIN_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a server.db made by an older podbay lacks (ALTER TABLE, once)."""
        for table, columns in ADDED_COLUMNS.items():
            have = {str(row[1]) for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- tenants and tokens ------------------------------------------------------------------------------

    def create_token(self, tenant: str, *, make_tenant: bool = True) -> tuple[str, TokenRecord]:
        """A new token for `tenant` (made if new, with `make_tenant`; else NotFound): the token itself, which is
        stored only as its hash, and its record (whose id names it for `podbay tokens revoke`)."""
        check_tenant_name(tenant)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="tok_" + secrets.token_hex(6), tenant=tenant, created_at=time.time(), revoked_at=None)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if make_tenant:
                self._db.execute(
                    "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, record.created_at)
                )
            self._require_live_tenant(tenant)
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)",
                (record.id, tenant, hash_token(token), record.created_at),
            )
        return token, record

    def create_admin_token(self) -> tuple[str, TokenRecord]:
        """A new admin token: it acts for no tenant, only on the /admin routes."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="adm_" + secrets.token_hex(6), tenant=None, created_at=time.time(), revoked_at=None)
        self._run("INSERT INTO admin_tokens VALUES (?, ?, ?, NULL)", record.id, hash_token(token), record.created_at)
        return token, record

    def revoke(self, token_or_id: str) -> TokenRecord:
        """Revoke a token (a tenant's or an admin's), named by its id (`tok_...`, `adm_...`) or by the token
        itself."""
        key = hash_token(token_or_id) if token_or_id.startswith(TOKEN_PREFIX) else None
        now = time.time()
        rows = self._run(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR sha256 = ? "
            "RETURNING id, tenant, created_at, revoked_at",
            now,
            token_or_id,
            key,
        )
        if not rows:
            rows = self._run(
                "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR sha256 = ? "
                "RETURNING id, NULL, created_at, revoked_at",
                now,
                token_or_id,
                key,
            )
        if not rows:
            raise NotFound(f"no token {token_or_id!r}; `podbay tokens ls` lists them")
        return _token(rows[0])

    def tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        """Every token (admin tokens included), or only `tenant`'s; never a hash."""
        if tenant is not None:
            rows = self._run(
                "SELECT id, tenant, created_at, revoked_at FROM tokens WHERE tenant = ? ORDER BY created_at", tenant
            )
            return [_token(row) for row in rows]
        rows = self._run(
            "SELECT id, tenant, created_at, revoked_at FROM tokens UNION ALL "
            "SELECT id, NULL, created_at, revoked_at FROM admin_tokens ORDER BY created_at"
        )
        return [_token(row) for row in rows]

    def tenant_of(self, token: str) -> str:
        """The tenant a live token belongs to; Unauthorized if it is unknown or revoked, Forbidden for an admin
        token (it acts for no tenant)."""
        rows = self._run("SELECT tenant, revoked_at FROM tokens WHERE sha256 = ?", hash_token(token))
        if not rows:
            if self._live_admin(token):
                raise Forbidden(
                    "this is an admin token: it acts for no tenant, only on /admin routes; "
                    "use a tenant's token here (`podbay tokens create --tenant NAME`)"
                )
            raise Unauthorized("unknown API token; make one with `podbay tokens create --tenant NAME`")
        if rows[0][1] is not None:
            raise Unauthorized("this API token was revoked; make a new one with `podbay tokens create`")
        return str(rows[0][0])

    def admin_of(self, token: str) -> str:
        """The id of a live admin token; Forbidden for a tenant's token, Unauthorized for an unknown or revoked
        one."""
        if self._live_admin(token):
            return str(self._run("SELECT id FROM admin_tokens WHERE sha256 = ?", hash_token(token))[0][0])
        if self._run("SELECT 1 FROM admin_tokens WHERE sha256 = ?", hash_token(token)):
            raise Unauthorized("this admin token was revoked; make a new one with `podbay tokens create --admin`")
        if self._run("SELECT 1 FROM tokens WHERE sha256 = ? AND revoked_at IS NULL", hash_token(token)):
            raise Forbidden("/admin routes need an admin token (`podbay tokens create --admin`), not a tenant's")
        raise Unauthorized("unknown API token; /admin routes need an admin token (`podbay tokens create --admin`)")

    def _live_admin(self, token: str) -> bool:
        return bool(self._run("SELECT 1 FROM admin_tokens WHERE sha256 = ? AND revoked_at IS NULL", hash_token(token)))

    def create_tenant(self, name: str) -> TenantRecord:
        """A new tenant (Conflict if the name is taken, or was a deleted tenant's)."""
        check_tenant_name(name)
        created = time.time()
        if not self._run(
            "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?) RETURNING name", name, created
        ):
            raise Conflict(f"the tenant name {name!r} is taken (or was a deleted tenant's); choose another name")
        return TenantRecord(name, created)

    def tenants(self) -> list[TenantRecord]:
        rows = self._run("SELECT name, created_at FROM tenants WHERE deleted_at IS NULL ORDER BY name")
        return [TenantRecord(str(row[0]), float(str(row[1]))) for row in rows]

    def delete_tenant(self, name: str) -> None:
        """Mark the tenant deleted and revoke its tokens (its usage records stay; its name is never given
        again). The caller checks first that it holds nothing."""
        self.require_tenant(name)
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE tenants SET deleted_at = ? WHERE name = ?", (now, name))
            self._db.execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE tenant = ?", (now, name))
            self._db.execute("DELETE FROM quotas WHERE tenant = ?", (name,))

    # ---- ownership ---------------------------------------------------------------------------------------

    def add_pod(self, pod_id: str, tenant: str) -> None:
        self._run("INSERT INTO pods VALUES (?, ?, ?, NULL, NULL)", pod_id, tenant, time.time())

    def end_pod(self, pod_id: str, reason: str) -> None:
        self._run(
            "UPDATE pods SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
            time.time(),
            reason,
            pod_id,
        )

    def owns_pod(self, tenant: str, pod_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM pods WHERE id = ? AND tenant = ? AND ended_at IS NULL", pod_id, tenant))

    def end_reason(self, tenant: str, pod_id: str) -> str | None:
        """Why the tenant's pod `pod_id` ended (e.g. "timeout after 30 s"); None if it did not or is not theirs."""
        rows = self._run(
            "SELECT end_reason FROM pods WHERE id = ? AND tenant = ? AND ended_at IS NOT NULL", pod_id, tenant
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def owned_ever(self, tenant: str, pod_id: str) -> bool:
        """Whether `pod_id` is or was the tenant's pod (a retained database outlives its pod)."""
        return bool(self._run("SELECT 1 FROM pods WHERE id = ? AND tenant = ?", pod_id, tenant))

    def pods_ever(self, tenant: str) -> set[str]:
        """Every pod the tenant has or had, live or ended."""
        return {str(row[0]) for row in self._run("SELECT id FROM pods WHERE tenant = ?", tenant)}

    def live_pods(self, tenant: str) -> list[str]:
        rows = self._run("SELECT id FROM pods WHERE tenant = ? AND ended_at IS NULL ORDER BY created_at", tenant)
        return [str(row[0]) for row in rows]

    def all_live_pods(self) -> list[str]:
        """Every tenant's live pods (what a restarted server re-adopts)."""
        return [str(row[0]) for row in self._run("SELECT id FROM pods WHERE ended_at IS NULL ORDER BY created_at")]

    def end_all_pods(self, reason: str) -> int:
        """Mark every pod still recorded as live as ended (the server stopped, or starts after a stop)."""
        return len(
            self._run(
                "UPDATE pods SET ended_at = ?, end_reason = ? WHERE ended_at IS NULL RETURNING id", time.time(), reason
            )
        )

    def add_snapshot(self, name: str, tenant: str) -> None:
        self._run("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", name, tenant, time.time())

    def owns_snapshot(self, tenant: str, name: str) -> bool:
        return bool(self._run("SELECT 1 FROM snapshots WHERE name = ? AND tenant = ?", name, tenant))

    def remove_snapshot(self, name: str, tenant: str) -> None:
        self._run("DELETE FROM snapshots WHERE name = ? AND tenant = ?", name, tenant)

    def snapshots(self, tenant: str) -> list[str]:
        return [str(row[0]) for row in self._run("SELECT name FROM snapshots WHERE tenant = ? ORDER BY name", tenant)]

    # ---- quotas ------------------------------------------------------------------------------------------

    def require_tenant(self, tenant: str) -> None:
        if not self._run("SELECT 1 FROM tenants WHERE name = ? AND deleted_at IS NULL", tenant):
            raise NotFound(f"no tenant {tenant!r}; tenants are made with their first token (`podbay tokens create`)")

    def _require_live_tenant(self, tenant: str) -> None:
        """require_tenant inside a transaction the caller holds the lock for."""
        if not self._db.execute("SELECT 1 FROM tenants WHERE name = ? AND deleted_at IS NULL", (tenant,)).fetchall():
            raise NotFound(
                f"no tenant {tenant!r}: make it first (`POST /admin/tenants`); a deleted tenant's name is not "
                "given again"
            )

    def quota(self, tenant: str) -> Quota:
        """The tenant's limits (all None, unlimited, unless set)."""
        rows = self._run(f"SELECT {', '.join(QUOTA_KINDS)} FROM quotas WHERE tenant = ?", tenant)
        if not rows:
            return Quota(tenant)
        values = (None if value is None else int(str(value)) for value in rows[0])
        return Quota(tenant, **dict(zip(QUOTA_KINDS, values, strict=True)))

    def set_quota(self, tenant: str, limits: dict[str, int | None]) -> Quota:
        """Set some of the tenant's limits (`QUOTA_KINDS`; None lifts one); those not named stay as they are."""
        self.require_tenant(tenant)
        for kind, value in limits.items():
            if kind not in QUOTA_KINDS:
                raise InvalidSpec(kind, "is not a quota", f"use one of {', '.join(QUOTA_KINDS)}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidSpec(kind, f"{value!r} is not a limit", "use a whole number >= 0, or None (unlimited)")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO quotas (tenant) VALUES (?)", (tenant,))
            for kind, value in limits.items():  # kind is one of QUOTA_KINDS, checked above
                self._db.execute(f"UPDATE quotas SET {kind} = ? WHERE tenant = ?", (value, tenant))
        return self.quota(tenant)

    # ---- tenants' named volumes --------------------------------------------------------------------------

    def add_volume(self, tenant: str, name: str, size_mib: int) -> tuple[VolumeRecord, bool]:
        """The tenant's volume `name`, recorded now (with a new host name) if it was not: (record, made)."""
        host_name = HOST_VOLUME_PREFIX + secrets.token_hex(10)
        self._run(
            "INSERT OR IGNORE INTO volumes VALUES (?, ?, ?, ?, ?)", tenant, name, host_name, size_mib, time.time()
        )
        record = self.volume(tenant, name)
        assert record is not None  # just inserted, or there before
        return record, record.host_name == host_name

    def volume(self, tenant: str, name: str) -> VolumeRecord | None:
        rows = self._run(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE tenant = ? AND name = ?", tenant, name)
        return _volume(rows[0]) if rows else None

    def volume_by_host_name(self, host_name: str) -> VolumeRecord | None:
        rows = self._run(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE host_name = ?", host_name)
        return _volume(rows[0]) if rows else None

    def volumes(self, tenant: str) -> list[VolumeRecord]:
        rows = self._run(f"SELECT {VOLUME_COLUMNS} FROM volumes WHERE tenant = ? ORDER BY name", tenant)
        return [_volume(row) for row in rows]

    def remove_volume(self, tenant: str, name: str) -> None:
        self._run("DELETE FROM volumes WHERE tenant = ? AND name = ?", tenant, name)


VOLUME_COLUMNS = "tenant, name, host_name, size_mib, created_at"


def check_tenant_name(name: str) -> None:
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise InvalidSpec("tenant", f"{name!r} is not a tenant name", NAME_FIX)


def _volume(row: tuple[object, ...]) -> VolumeRecord:
    return VolumeRecord(
        tenant=str(row[0]),
        name=str(row[1]),
        host_name=str(row[2]),
        size_mib=int(str(row[3])),
        created_at=float(str(row[4])),
    )


def _token(row: tuple[object, ...]) -> TokenRecord:
    revoked = row[3]
    return TokenRecord(
        id=str(row[0]),
        tenant=None if row[1] is None else str(row[1]),
        created_at=float(str(row[2])),
        revoked_at=float(str(revoked)) if revoked is not None else None,
    )
