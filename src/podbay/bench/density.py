"""`podbay bench density`: what an idle running pod costs the host, with 1, 10, 50, ... pods alive at once.

Pods are QEMU template clones (podbay.isolation.qemu.template), started below the platform, one after another,
each in its own run directory under a temporary state directory, given the `init` and first exec every pod
gets, then left idle. After they settle, for each count:

* memory per pod: USS and PSS of each QEMU (bench/memory.py), and what the host holds for all of them at once:
  every clone's pages that no other process shares *except* the clean pages of the template's memory file
  (page cache: one copy for all clones), plus that file's resident pages counted once (`fincore`);
* CPU per idle pod: each QEMU's utime+stime (/proc/PID/stat, all its threads, dead ones included) over a
  window of `window_s` seconds, in % of one host core, the mean over the pods (one pod's figure is a handful of
  10 ms clock ticks); beside it the same from the scheduler's nanosecond run times of the threads alive at both
  ends (/proc/PID/task/*/schedstat), which resolves what ticks cannot. The host's own busy share over the
  window is recorded too: other work on the host is why figures from one run to the next differ;
* the guest's interrupts per second in the first clone over the same window (`/proc/interrupts` read before
  and after through the agent), which says what wakes an idle guest up.

With `preload`, the template is built with that host file copied into its guest (see
`podbay.isolation.qemu.template`), every clone reads it whole once it is started (so its pages are mapped by
every clone's QEMU), and the memory figures show whether N pods hold one copy of it or N.

Counts are reached by adding clones to the ones already running (1, then 9 more, then 40 more): a run costs
the largest count's start-ups once. Every clone is destroyed at the end, whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from podbay.bench.clone import initialised_clone, spread
from podbay.bench.memory import descendants, tree_uss_pss_kib
from podbay.errors import GuestError, InvalidSpec
from podbay.images import find_images
from podbay.isolation.qemu.template import (
    ClonedSandbox,
    Template,
    TemplateShape,
    build_template,
)
from podbay.paths import PodbayPaths

COUNTS = (1, 10, 50)
WINDOW_S = 10.0  # the CPU window: at 100 clock ticks/s, one tick over 10 s is 0.1 % of a core
SETTLE_S = 5.0  # after the last clone of a count started: its start-up work is over before the window opens
MEMORY_MIB = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bench_density(
    paths: PodbayPaths,
    counts: tuple[int, ...] = COUNTS,
    *,
    runs: int = 1,
    memory_mib: int = MEMORY_MIB,
    window_s: float = WINDOW_S,
    settle_s: float = SETTLE_S,
    preload: Path | None = None,
    read_preload: bool = True,
    root: Path | None = None,
) -> dict[str, Any]:
    """Idle cost per pod with each of `counts` pods alive, `runs` times (median and spread across runs).

    `root`: where the template is built and cached (the image cache's `templates/` by default).
    `preload`: a host file the template carries into its guest (the shared read-only data mode); every clone
    reads it whole after its start unless `read_preload` is False.
    """
    if not counts or any(count < 1 for count in counts):
        raise InvalidSpec("counts", f"{counts!r} has a count below 1", "pass pod counts of 1 or more, e.g. 1,10,50")
    shape = TemplateShape(memory_mib=memory_mib)
    results = [
        asyncio.run(_one_run(paths, sorted(set(counts)), shape, window_s, settle_s, preload, read_preload, root))
        for _ in range(runs)
    ]

    def across(count: int, key: str) -> dict[str, float] | None:
        values = [result["by_count"][str(count)][key] for result in results]
        return None if any(value is None for value in values) else spread([float(value) for value in values])

    keys = (
        "uss_mib_median",
        "pss_mib_median",
        "host_mib_total",
        "host_mib_per_pod",
        "pss_mib_total",
        "cpu_pct_per_pod",
        "cpu_pct_per_pod_sched",
        "cpu_pct_total",
        "host_busy_pct",
    )
    return {
        "benchmark": "density",
        "backend": "qemu",
        "accelerator": results[0]["accelerator"],
        "memory_mib": memory_mib,
        "counts": sorted(set(counts)),
        "runs": runs,
        "window_s": window_s,
        "preload": results[0]["preload"],
        "summary": {str(count): {key: across(count, key) for key in keys} for count in sorted(set(counts))},
        "per_run": results,
    }


async def _one_run(
    paths: PodbayPaths,
    counts: list[int],
    shape: TemplateShape,
    window_s: float,
    settle_s: float,
    preload: Path | None,
    read_preload: bool,
    root: Path | None,
) -> dict[str, Any]:
    template = await build_template(paths, shape, images=find_images(paths), root=root, preload=preload)
    work = Path(tempfile.mkdtemp(prefix="podbay-bench-density-"))
    sandboxes: list[ClonedSandbox] = []
    by_count: dict[str, Any] = {}
    try:
        for count in counts:
            while len(sandboxes) < count:
                sandbox = await _clone(template, work, len(sandboxes))
                sandboxes.append(sandbox)
                if template.preload is not None and read_preload:  # map the file's pages into this clone's QEMU
                    await _run(sandbox, ["dd", f"if={template.preload.guest_path}", "of=/dev/null", "bs=1M"])
            await asyncio.sleep(settle_s)
            by_count[str(count)] = await _measure(template, sandboxes, window_s)
    finally:
        await asyncio.gather(*(sandbox.destroy() for sandbox in sandboxes), return_exceptions=True)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "accelerator": template.accelerator,
        "template": template.key,
        "preload": None if template.preload is None else {**template.preload.describe(), "read": read_preload},
        "by_count": by_count,
    }


async def _clone(template: Template, work: Path, index: int) -> ClonedSandbox:
    """A new pod as a user leaves it: `init`, then one exec."""
    sandbox = await initialised_clone(template, work, index)
    try:
        await _run(sandbox, ["true"])
    except BaseException:
        await sandbox.destroy()
        raise
    return sandbox


async def _run(sandbox: ClonedSandbox, argv: list[str]) -> str:
    result = await (await sandbox.channel.start_process(argv, timeout=300)).wait()
    if result.exit_code != 0:
        raise GuestError(f"{argv} exited {result.exit_code} in a clone: {result.stderr.strip()}")
    return result.stdout


async def _measure(template: Template, sandboxes: list[ClonedSandbox], window_s: float) -> dict[str, Any]:
    pids = [_pid(sandbox) for sandbox in sandboxes]
    interrupts_before = await _run(sandboxes[0], ["cat", "/proc/interrupts"])
    host_before, cpu_before, started = _host_cpu(), [_cpu_ticks(pid) for pid in pids], time.monotonic()
    run_before = [_run_ns(pid) for pid in pids]
    await asyncio.sleep(window_s)
    host_after, cpu_after, elapsed = _host_cpu(), [_cpu_ticks(pid) for pid in pids], time.monotonic() - started
    run_after = [_run_ns(pid) for pid in pids]
    interrupts_after = await _run(sandboxes[0], ["cat", "/proc/interrupts"])
    cpu_pct = [
        100 * (after - before) / CLOCK_TICKS / elapsed for before, after in zip(cpu_before, cpu_after, strict=True)
    ]
    ran_ns = [
        sum(ns - before.get(task, 0) for task, ns in after.items() if task in before)
        for before, after in zip(run_before, run_after, strict=True)
    ]
    busy, total = (after - before for before, after in zip(host_before, host_after, strict=True))

    readings = [tree_uss_pss_kib(pid) for pid in pids]
    uss = [uss / 1024 for uss, _ in readings]
    pss = [pss / 1024 for _, pss in readings]
    memory_file = [_mapping_kib(pid, template.memory) for pid in pids]
    resident = _resident_mib(template.memory)
    # What the host holds for these pods: each one's private pages, less the clean pages of the template's
    # memory file that only it happens to map (page cache, not a copy), plus that file's page cache once.
    private_copies = [u - clean / 1024 for u, (clean, _) in zip(uss, memory_file, strict=True)]
    host_total = None if resident is None else sum(private_copies) + resident
    return {
        "pods": len(pids),
        "uss_mib": uss,
        "uss_mib_median": statistics.median(uss),
        "pss_mib_median": statistics.median(pss),
        "pss_mib_total": sum(pss),
        "cow_copies_mib_median": statistics.median(dirty / 1024 for _, dirty in memory_file),
        "memory_file_resident_mib": resident,
        "host_mib_total": host_total,
        "host_mib_per_pod": None if host_total is None else host_total / len(pids),
        "cpu_pct": cpu_pct,
        "cpu_pct_per_pod": sum(cpu_pct) / len(cpu_pct),  # the mean: one pod's figure is a few 10 ms ticks
        "cpu_pct_total": sum(cpu_pct),
        "cpu_pct_per_pod_sched": 100 * sum(ran_ns) / 1e9 / elapsed / len(pids),
        "host_busy_pct": 100 * busy / total if total else 0.0,
        "host_cores": os.cpu_count(),
        "window_s": elapsed,
        "guest_interrupts_per_s": _interrupt_rates(interrupts_before, interrupts_after, window_s),
    }


def _pid(sandbox: ClonedSandbox) -> int:
    if sandbox.info.pid is None:
        raise GuestError("a clone without a pid")
    return sandbox.info.pid


def _cpu_ticks(pid: int) -> int:
    """utime+stime of `pid` and its descendants, in clock ticks (a process's figure includes its dead threads)."""
    ticks = 0
    for member in descendants(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted after the name
    return ticks


def _run_ns(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of `pid` has run (/proc/PID/task/TID/schedstat, first field), by thread id."""
    ran: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ran[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return ran


def _host_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole host since boot (/proc/stat)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _mapping_kib(pid: int, path: Path) -> tuple[int, int]:
    """(Private_Clean, Private_Dirty) KiB of `pid`'s mappings of `path` (/proc/PID/smaps)."""
    clean = dirty = 0
    inside = False
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == str(path)
        elif inside and line.startswith("Private_Clean:"):
            clean += int(line.split()[1])
        elif inside and line.startswith("Private_Dirty:"):
            dirty += int(line.split()[1])
    return clean, dirty


def _resident_mib(path: Path) -> float | None:
    """How much of `path` the host's page cache holds (util-linux `fincore`), or None without it."""
    if shutil.which("fincore") is None:
        return None
    result = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(result.stdout.split()[0]) / (1 << 20) if result.returncode == 0 and result.stdout.strip() else None


def _interrupt_rates(before: str, after: str, window_s: float) -> dict[str, float]:
    """Interrupts per second by source (the label, e.g. `LOC`, or `<irq> <chip name>`), nonzero ones only."""

    def counts(text: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for line in text.splitlines()[1:]:
            label, _, rest = line.partition(":")
            words = rest.split()
            numbers = [int(word) for word in words if word.isdigit()]
            names = [word for word in words if not word.isdigit()]
            key = label.strip() if not label.strip().isdigit() else f"{label.strip()} {' '.join(names[-1:])}"
            found[key] = sum(numbers)
        return found

    first, second = counts(before), counts(after)
    rates = {key: (second[key] - first.get(key, 0)) / window_s for key in second}
    return {key: round(rate, 2) for key, rate in rates.items() if rate > 0}


def summary(result: dict[str, Any]) -> str:
    """One line: per count, USS/PSS per pod, host memory per pod and CPU per pod (median of runs, min..max)."""

    def fig(value: dict[str, float] | None, unit: str, digits: int) -> str:
        if value is None:
            return "n/a"
        return f"{value['median']:.{digits}f} {unit} ({value['min']:.{digits}f}..{value['max']:.{digits}f})"

    parts = []
    for count in result["counts"]:
        s = result["summary"][str(count)]
        parts.append(
            f"{count} pod(s): USS {fig(s['uss_mib_median'], 'MiB', 1)}, PSS {fig(s['pss_mib_median'], 'MiB', 1)}, "
            f"host {fig(s['host_mib_per_pod'], 'MiB', 1)} per pod; CPU {fig(s['cpu_pct_per_pod'], '%', 2)} per pod "
            f"(scheduler {fig(s['cpu_pct_per_pod_sched'], '%', 3)})"
        )
    preload = result["preload"]
    reading = "each reading" if preload and preload.get("read", True) else "not reading"
    shared = f", {reading} a {preload['size'] / 1e6:.0f} MB preloaded file" if preload else ""
    return (
        f"qemu/{result['accelerator']} idle pods ({result['memory_mib']} MiB){shared}, median of {result['runs']} "
        f"run(s) (min..max), CPU over {result['window_s']:.0f} s in % of one core: " + "; ".join(parts)
    )
