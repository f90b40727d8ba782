"""Metering: what a pod used (vCPU-seconds, memory MiB-seconds, storage MiB-hours, database bytes) and what it
costs under a price table.

A pod is metered from the moment it is handed to its caller (create, a pool claim, a restore or a fork returns
it: boot time is not billed) until its teardown succeeds (a failed destroy leaves it FAILED and still holding
its resources, so it keeps accruing until a retry succeeds). Durations come from a monotonic clock (injectable,
for tests); wall-clock times are only labels.

- vCPU-seconds: vcpus x seconds the pod was not paused (a paused VM's vCPUs do not run);
- memory MiB-seconds: memory_mib x seconds alive, paused or not (a paused VM keeps its RAM);
- storage MiB-hours: (disk_mib, plus volume_mib if the pod has a database volume) x hours alive;
- database bytes: the blocks the database volume's image has allocated on the host (it is sparse), sampled
  when the pod ends (or now, for a live pod); 0 without a database.

Money is `Decimal`, never float: prices are tiny (1e-9 per MiB-second), sums run over many pods, and a bill
must add up exactly and round the same way everywhere; in JSON it is a string ("0.000014"), so no client parses
it into a float by accident. Every amount is in `PriceTable.currency`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

Clock = Callable[[], float]
MIB = 1 << 20
GIB = 1 << 30


class PriceTable(BaseModel):
    """What each unit costs. The defaults are list prices of the order of hosted agent sandboxes (about
    $0.05 an hour for 1 vCPU with 1 GiB), not a quote: a service sets its own (`podbay serve --prices FILE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(default="USD", min_length=1, max_length=8)
    vcpu_second: Decimal = Field(default=Decimal("0.000014"), ge=0, description="per vCPU-second (running)")
    memory_mib_second: Decimal = Field(
        default=Decimal("0.0000000044"), ge=0, description="per MiB of memory per second alive (~$0.0000045/GiB-s)"
    )
    storage_mib_hour: Decimal = Field(
        default=Decimal("0.00000014"), ge=0, description="per MiB of disk per hour alive (~$0.10 per GiB-month)"
    )
    database_gib: Decimal = Field(
        default=Decimal("0.10"), ge=0, description="per GiB of database at the pod's end (once per pod)"
    )

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """A price table from a JSON file (fields left out keep their defaults; unknown ones are refused)."""
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


class Cost(BaseModel):
    """What a usage costs under a price table, by resource, in `currency`."""

    currency: str
    vcpu: Decimal
    memory: Decimal
    storage: Decimal
    database: Decimal
    total: Decimal


class Usage(BaseModel):
    """What one pod used, from its hand-over to its end (`ended_at` None: still running, usage so far)."""

    pod_id: str
    tenant: str | None = None  # set by the service
    started_at: float  # wall-clock epoch seconds
    ended_at: float | None = None
    vcpus: int
    memory_mib: int
    storage_mib: int  # disk_mib, plus volume_mib with a database volume
    alive_s: float
    paused_s: float
    vcpu_seconds: float
    memory_mib_seconds: float
    storage_mib_hours: float
    database_bytes: int

    def cost(self, prices: PriceTable | None = None) -> Cost:
        """This usage priced under `prices` (the default table if None)."""
        return _price(prices or PriceTable(), [self])


class UsageTotals(BaseModel):
    """Sums over several pods' usage."""

    pods: int
    vcpu_seconds: float
    memory_mib_seconds: float
    storage_mib_hours: float
    database_bytes: int


class UsageReport(BaseModel):
    """`GET /usage`: each pod's usage and cost, their sums and the total cost, under the server's prices."""

    start: float | None = None  # the time range asked for (pods that ended in [start, end)), if any
    end: float | None = None
    prices: PriceTable
    pods: list[Usage]
    costs: list[Cost]  # one per pod, in the same order
    totals: UsageTotals
    cost: Cost

    @classmethod
    def of(
        cls, usages: list[Usage], prices: PriceTable, start: float | None = None, end: float | None = None
    ) -> UsageReport:
        return cls(
            start=start,
            end=end,
            prices=prices,
            pods=usages,
            costs=[usage.cost(prices) for usage in usages],
            totals=UsageTotals(
                pods=len(usages),
                vcpu_seconds=sum(usage.vcpu_seconds for usage in usages),
                memory_mib_seconds=sum(usage.memory_mib_seconds for usage in usages),
                storage_mib_hours=sum(usage.storage_mib_hours for usage in usages),
                database_bytes=sum(usage.database_bytes for usage in usages),
            ),
            cost=_price(prices, usages),
        )


def _price(prices: PriceTable, usages: Iterable[Usage]) -> Cost:
    """Priced per pod, then summed: exact in Decimal (a float's repr goes in, not its binary expansion)."""
    vcpu = memory = storage = database = Decimal(0)
    for usage in usages:
        vcpu += Decimal(repr(usage.vcpu_seconds)) * prices.vcpu_second
        memory += Decimal(repr(usage.memory_mib_seconds)) * prices.memory_mib_second
        storage += Decimal(repr(usage.storage_mib_hours)) * prices.storage_mib_hour
        database += Decimal(usage.database_bytes) / GIB * prices.database_gib
    return Cost(
        currency=prices.currency,
        vcpu=vcpu,
        memory=memory,
        storage=storage,
        database=database,
        total=vcpu + memory + storage + database,
    )


class Meter:
    """One pod's clock: started at construction, paused and resumed with the pod, stopped at its end."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._wall_start = time.time()
        self._paused_since: float | None = None
        self._paused_s = 0.0
        self._end: float | None = None
        self._database_bytes = 0

    @classmethod
    def resumed(cls, clock: Clock, wall_start: float, paused_s: float, paused: bool) -> Meter:
        """A meter carried over from an earlier process (a pod re-adopted after a restart): it started at
        `wall_start` (wall clock) and had been paused `paused_s` in all; `paused`: it is paused now."""
        meter = cls(clock)
        meter._start = meter._start - max(0.0, time.time() - wall_start)
        meter._wall_start = wall_start
        meter._paused_s = paused_s
        if paused:
            meter.pause()
        return meter

    @property
    def stopped(self) -> bool:
        return self._end is not None

    def pause(self) -> None:
        if self._paused_since is None and self._end is None:
            self._paused_since = self._clock()

    def resume(self) -> None:
        if self._paused_since is not None:
            self._paused_s += self._clock() - self._paused_since
            self._paused_since = None

    def stop(self, database_bytes: int) -> None:
        if self._end is None:
            self.resume()  # the paused stretch counts as paused up to the end
            self._end = self._clock()
            self._database_bytes = database_bytes

    def usage(self, pod_id: str, vcpus: int, memory_mib: int, storage_mib: int, database_bytes: int) -> Usage:
        """The usage so far (or in all, once stopped; `database_bytes` is then the one sampled at the stop)."""
        now = self._end if self._end is not None else self._clock()
        alive = max(0.0, now - self._start)
        paused = self._paused_s + (now - self._paused_since if self._paused_since is not None else 0.0)
        paused = min(alive, max(0.0, paused))
        return Usage(
            pod_id=pod_id,
            started_at=self._wall_start,
            ended_at=self._wall_start + alive if self._end is not None else None,
            vcpus=vcpus,
            memory_mib=memory_mib,
            storage_mib=storage_mib,
            alive_s=alive,
            paused_s=paused,
            vcpu_seconds=vcpus * (alive - paused),
            memory_mib_seconds=memory_mib * alive,
            storage_mib_hours=storage_mib * alive / 3600,
            database_bytes=self._database_bytes if self._end is not None else database_bytes,
        )


def allocated_bytes(image: Path) -> int:
    """The bytes a (sparse) volume image has allocated on the host; 0 if it is gone."""
    try:
        return image.stat().st_blocks * 512
    except OSError:
        return 0
