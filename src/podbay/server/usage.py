"""The service's usage ledger: each pod's usage, recorded in the registry (`<state>/server.db`, table `usage`)
when the pod ends, so it outlives the pod and the server. See podbay.metering for what is measured."""

from __future__ import annotations

from podbay.errors import InvalidSpec
from podbay.metering import Usage
from podbay.server.registry import Registry

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS usage (
    pod_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    storage_mib INTEGER NOT NULL,
    alive_s REAL NOT NULL,
    paused_s REAL NOT NULL,
    vcpu_seconds REAL NOT NULL,
    memory_mib_seconds REAL NOT NULL,
    storage_mib_hours REAL NOT NULL,
    database_bytes INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS usage_by_tenant ON usage (tenant, ended_at)",
)
COLUMNS = (
    "pod_id, tenant, started_at, ended_at, vcpus, memory_mib, storage_mib, alive_s, paused_s, vcpu_seconds, "
    "memory_mib_seconds, storage_mib_hours, database_bytes"
)


class UsageLedger:
    """Usage records in the registry's database (its own table, made on first use)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        for statement in SCHEMA:
            registry._run(statement)

    def owner(self, pod_id: str) -> str | None:
        """The tenant a pod belongs (or belonged) to; None if the service never recorded it."""
        rows = self.registry._run("SELECT tenant FROM pods WHERE id = ?", pod_id)
        return str(rows[0][0]) if rows else None

    def record(self, usage: Usage) -> bool:
        """Record a pod's final usage under its owner; False (nothing recorded) for a pod of no tenant."""
        tenant = usage.tenant or self.owner(usage.pod_id)
        if tenant is None or usage.ended_at is None:
            return False
        row = usage.model_copy(update={"tenant": tenant}).model_dump()
        self.registry._run(
            f"INSERT OR REPLACE INTO usage ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(', ')))})",
            *(row[name] for name in COLUMNS.split(", ")),
        )
        return True

    def of_pod(self, tenant: str, pod_id: str) -> Usage | None:
        """The recorded usage of the tenant's pod; None if none (another tenant's pod included)."""
        rows = self.registry._run(f"SELECT {COLUMNS} FROM usage WHERE pod_id = ? AND tenant = ?", pod_id, tenant)
        return _usage(rows[0]) if rows else None

    def of_tenant(self, tenant: str, start: float | None = None, end: float | None = None) -> list[Usage]:
        """The tenant's recorded usage of pods that ended in [start, end) (either bound open if None), oldest
        end first. A pod counts whole in the range its end falls in: ranges that tile time bill each pod once."""
        if start is not None and end is not None and start > end:
            raise InvalidSpec("from", f"{start} is after to={end}", "pass from <= to (epoch seconds)")
        rows = self.registry._run(
            f"SELECT {COLUMNS} FROM usage WHERE tenant = ? AND ended_at >= ? AND ended_at < ? ORDER BY ended_at",
            tenant,
            float("-inf") if start is None else start,
            float("inf") if end is None else end,
        )
        return [_usage(row) for row in rows]


def _usage(row: tuple[object, ...]) -> Usage:
    return Usage.model_validate(dict(zip(COLUMNS.split(", "), row, strict=True)))
