"""The service's own state: a SQLite database (WAL) at `<state>/server.db`.

Tenants; API tokens, kept only as SHA-256 hashes (the token itself is shown once, when it is made); which
tenant owns each pod and each snapshot; each tenant's quotas. `podbay tokens`, `podbay quotas` and `podbay serve`
open it from separate processes: WAL and a busy timeout let them, and a revoked token is refused (a quota
applies) from the next request on.

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

from podbay.errors import InvalidSpec, NotFound, Unauthorized
from podbay.models import NAME_PATTERN

TOKEN_PREFIX = "pb_"
TENANT_NAME = re.compile(NAME_PATTERN)

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
QUOTA_KINDS = ("pods", "memory_mib", "snapshots")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    id: str
    tenant: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None is unlimited. `pods` and `memory_mib` count the pods alive (running or paused),
    `snapshots` the snapshots it owns that still exist."""

    tenant: str
    pods: int | None = None
    memory_mib: int | None = None
    snapshots: int | None = None


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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- tenants and tokens ------------------------------------------------------------------------------

    def create_token(self, tenant: str) -> tuple[str, TokenRecord]:
        """A new token for `tenant` (made if new): the token itself, which is stored only as its hash, and its
        record (whose id names it for `podbay tokens revoke`)."""
        if not TENANT_NAME.match(tenant):
            raise InvalidSpec(
                "tenant",
                f"{tenant!r} is not a tenant name",
                "use 1-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(id="tok_" + secrets.token_hex(6), tenant=tenant, created_at=time.time(), revoked_at=None)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO tenants VALUES (?, ?)", (tenant, record.created_at))
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)",
                (record.id, tenant, hash_token(token), record.created_at),
            )
        return token, record

    def revoke(self, token_or_id: str) -> TokenRecord:
        """Revoke a token, named by its id (`tok_...`) or by the token itself."""
        key = hash_token(token_or_id) if token_or_id.startswith(TOKEN_PREFIX) else None
        rows = self._run(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR sha256 = ? "
            "RETURNING id, tenant, created_at, revoked_at",
            time.time(),
            token_or_id,
            key,
        )
        if not rows:
            raise NotFound(f"no token {token_or_id!r}; `podbay tokens ls` lists them")
        return _token(rows[0])

    def tokens(self) -> list[TokenRecord]:
        rows = self._run("SELECT id, tenant, created_at, revoked_at FROM tokens ORDER BY created_at")
        return [_token(row) for row in rows]

    def tenant_of(self, token: str) -> str:
        """The tenant a live token belongs to; Unauthorized if it is unknown or revoked."""
        rows = self._run("SELECT tenant, revoked_at FROM tokens WHERE sha256 = ?", hash_token(token))
        if not rows:
            raise Unauthorized("unknown API token; make one with `podbay tokens create --tenant NAME`")
        if rows[0][1] is not None:
            raise Unauthorized("this API token was revoked; make a new one with `podbay tokens create`")
        return str(rows[0][0])

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

    def snapshots(self, tenant: str) -> list[str]:
        return [str(row[0]) for row in self._run("SELECT name FROM snapshots WHERE tenant = ? ORDER BY name", tenant)]

    # ---- quotas ------------------------------------------------------------------------------------------

    def require_tenant(self, tenant: str) -> None:
        if not self._run("SELECT 1 FROM tenants WHERE name = ?", tenant):
            raise NotFound(f"no tenant {tenant!r}; tenants are made with their first token (`podbay tokens create`)")

    def quota(self, tenant: str) -> Quota:
        """The tenant's limits (all None, unlimited, unless set)."""
        rows = self._run("SELECT pods, memory_mib, snapshots FROM quotas WHERE tenant = ?", tenant)
        if not rows:
            return Quota(tenant)
        pods, memory, snapshots = (None if value is None else int(str(value)) for value in rows[0])
        return Quota(tenant, pods=pods, memory_mib=memory, snapshots=snapshots)

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


def _token(row: tuple[object, ...]) -> TokenRecord:
    revoked = row[3]
    return TokenRecord(
        id=str(row[0]),
        tenant=str(row[1]),
        created_at=float(str(row[2])),
        revoked_at=float(str(revoked)) if revoked is not None else None,
    )
