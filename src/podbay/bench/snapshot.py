"""`podbay bench snapshot` and `podbay bench fork`: QEMU pod snapshots and forks, measured below the platform
(podbay.isolation.qemu.snapshot).

Per run and per guest size (256 and 1024 MiB), a fresh template is built in a private directory and a source
pod is cloned from it with a RAM file of its own and a SQLite volume holding a committed row.

snapshot: the pod is saved `n` times into a directory on disk, each way: as `save_snapshot` does by default
(freeze, fsync), without the fsync, and without the freeze either; then `n` pods are restored from the first
snapshot one after another: restore → the agent answers, → ready (reseeded, thawed), → the first exec result.

fork: `n` forks of one child each, one after another (fork → the child is ready, → the child's first exec), then
one fork of `n` children at once (fork → every child ready). The parent runs on throughout.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from podbay.bench.clone import spread, stats
from podbay.errors import GuestError
from podbay.images import find_images, make_ext4
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.snapshot import (
    SnapshotSandbox,
    fork,
    save_snapshot,
    start_clone,
    start_from_snapshot,
)
from podbay.isolation.qemu.template import Template, TemplateShape, build_template
from podbay.paths import PodbayPaths

SIZES_MIB = (256, 1024)
SAVE_WAYS: dict[str, dict[str, bool]] = {
    "default": {"quiesce": True, "durable": True},
    "no_fsync": {"quiesce": True, "durable": False},
    "no_freeze_no_fsync": {"quiesce": False, "durable": False},
}
SAVE_PHASES = ("freeze_ms", "state_ms", "copy_ms", "paused_ms", "write_ms", "copied_mib")
CREATE_ROW = (
    "import sqlite3; c = sqlite3.connect('/data/db'); c.execute('create table t(x)'); "
    "c.execute('insert into t values (1)'); c.commit()"
)
RunFn = Callable[[Template, Path, int], Coroutine[Any, Any, dict[str, Any]]]


def bench_snapshot(paths: PodbayPaths, n: int, runs: int = 1) -> dict[str, Any]:
    results = [asyncio.run(_one_run(paths, n, _snapshot_run)) for _ in range(runs)]
    summary: dict[str, Any] = {}
    for size in map(str, SIZES_MIB):
        for way in SAVE_WAYS:
            summary[f"save_{way}_ms_median_{size}_mib"] = _across(results, size, "save", way, "total_ms", "median")
        for phase in SAVE_PHASES:
            summary[f"save_{phase}_median_{size}_mib"] = _across(results, size, "save", "default", phase, "median")
        for step in ("agent_answers_ms", "ready_ms", "first_exec_ms"):
            summary[f"restore_{step}_median_{size}_mib"] = _across(results, size, "restore", step, "median")
            summary[f"restore_{step}_p90_{size}_mib"] = _across(results, size, "restore", step, "p90")
    return _result("snapshot", n, runs, results, summary)


def bench_fork(paths: PodbayPaths, n: int, runs: int = 1) -> dict[str, Any]:
    results = [asyncio.run(_one_run(paths, n, _fork_run)) for _ in range(runs)]
    summary: dict[str, Any] = {}
    for size in map(str, SIZES_MIB):
        for step in ("snapshot_ms", "ready_ms", "first_exec_ms"):
            summary[f"fork_one_{step}_median_{size}_mib"] = _across(results, size, "one_child", step, "median")
            summary[f"fork_one_{step}_p90_{size}_mib"] = _across(results, size, "one_child", step, "p90")
        summary[f"fork_{n}_all_ready_ms_{size}_mib"] = _across(results, size, "n_children", "all_ready_ms")
    return _result("fork", n, runs, results, summary)


def _result(name: str, n: int, runs: int, results: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": name,
        "backend": "qemu",
        "accelerator": results[0]["accelerator"],
        "n": n,
        "runs": runs,
        "summary": summary,
        "per_run": results,
    }


def _across(results: list[dict[str, Any]], *keys: str) -> dict[str, float]:
    values = []
    for result in results:
        value: Any = result["by_memory"]
        for key in keys:
            value = value[key]
        values.append(float(value))
    return spread(values)


async def _one_run(paths: PodbayPaths, n: int, measure: RunFn) -> dict[str, Any]:
    images = find_images(paths)
    work = Path(tempfile.mkdtemp(prefix="podbay-bench-snapshot-"))
    try:
        by_memory: dict[str, Any] = {}
        accelerator = "?"
        for size in SIZES_MIB:
            template = await build_template(
                paths, TemplateShape(memory_mib=size), images=images, root=work / "templates"
            )
            accelerator = template.accelerator
            by_memory[str(size)] = await measure(template, work / f"{size}", n)
        return {"accelerator": accelerator, "by_memory": by_memory}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _config(work: Path, name: str, memory_mib: int, volumes: tuple[VolumeAttachment, ...] = ()) -> SandboxConfig:
    run_dir = work / "pods" / name
    run_dir.mkdir(parents=True)
    return SandboxConfig(pod_id=name, run_dir=run_dir, vcpus=1, memory_mib=memory_mib, layer=None, volumes=volumes)


async def _source(template: Template, work: Path) -> SnapshotSandbox:
    """A pod with a SQLite volume at /data holding one committed row."""
    image = work / "volume.ext4"
    await asyncio.to_thread(make_ext4, image, 64, "podbay-volume")
    volume = VolumeAttachment(name="db", image=image, target="/data")
    config = _config(work, "pod-source", template.shape.memory_mib, (volume,))
    pod = await start_clone(template, config, owned=True)
    try:
        await pod.channel.request("init", env={}, mounts=pod.guest_mounts, clock=time.time())
        await _exec(pod, ["python3", "-c", CREATE_ROW])
    except BaseException:
        await pod.destroy()
        raise
    return pod


async def _exec(pod: SnapshotSandbox, argv: list[str]) -> None:
    result = await (await pod.channel.start_process(argv, timeout=120)).wait()
    if result.exit_code != 0:
        raise GuestError(f"{argv} exited {result.exit_code} in a pod: {result.stderr}")


async def _snapshot_run(template: Template, work: Path, n: int) -> dict[str, Any]:
    work.mkdir()
    source = await _source(template, work)
    saves: dict[str, dict[str, list[float]]] = {way: {} for way in SAVE_WAYS}
    first: Path | None = None
    try:
        for index in range(n):
            for way, options in SAVE_WAYS.items():
                quiesce, durable = options["quiesce"], options["durable"]
                snapshot = await save_snapshot(
                    source, work / f"snapshot-{way}-{index}", quiesce=quiesce, durable=durable
                )
                for key, value in snapshot.timings.items():
                    saves[way].setdefault(key, []).append(value)
                if first is None:
                    first = snapshot.path
                else:
                    shutil.rmtree(snapshot.path)
    finally:
        await source.destroy()
    assert first is not None
    restore: dict[str, list[float]] = {"agent_answers_ms": [], "ready_ms": [], "first_exec_ms": []}
    for index in range(n):
        started = time.perf_counter()
        pod = await start_from_snapshot(first, _config(work, f"pod-restored-{index}", template.shape.memory_mib))
        try:
            await _exec(pod, ["true"])
            restore["first_exec_ms"].append((time.perf_counter() - started) * 1000)
            restore["agent_answers_ms"].append(pod.timings["agent_answers_ms"])
            restore["ready_ms"].append(pod.timings["ready_ms"])
        finally:
            await pod.destroy()
    return {
        "save": {way: {key: stats(values) for key, values in phases.items()} for way, phases in saves.items()},
        "restore": {key: stats(values) for key, values in restore.items()},
    }


async def _fork_run(template: Template, work: Path, n: int) -> dict[str, Any]:
    work.mkdir()
    parent = await _source(template, work)
    one: dict[str, list[float]] = {"snapshot_ms": [], "ready_ms": [], "first_exec_ms": []}
    try:
        for index in range(n):
            started = time.perf_counter()
            forked = await fork(parent, [_config(work, f"pod-child-{index}", template.shape.memory_mib)])
            (child,) = forked.children
            try:
                await _exec(child, ["true"])
                one["first_exec_ms"].append((time.perf_counter() - started) * 1000)
                one["snapshot_ms"].append(forked.timings["snapshot_ms"])
                one["ready_ms"].append(forked.timings["children_answer_ms"])
            finally:
                await child.destroy()
        configs = [_config(work, f"pod-sibling-{index}", template.shape.memory_mib) for index in range(n)]
        forked = await fork(parent, configs)
        all_ready_ms = forked.timings["children_answer_ms"]
        await asyncio.gather(*(child.destroy() for child in forked.children))
        await _exec(parent, ["true"])  # the parent runs on
    finally:
        await parent.destroy()
    return {
        "one_child": {key: stats(values) for key, values in one.items()},
        "n_children": {"all_ready_ms": all_ready_ms},
    }


def summary(result: dict[str, Any]) -> str:
    s = result["summary"]

    def fig(name: str, unit: str = "ms", digits: int = 0) -> str:
        value = s[name]
        return f"{value['median']:.{digits}f} {unit} ({value['min']:.{digits}f}..{value['max']:.{digits}f})"

    head = f"qemu/{result['accelerator']} {result['benchmark']}, median of {result['runs']} run(s) (min..max), "
    head += f"n={result['n']}"
    all_ready = f"fork_{result['n']}_all_ready_ms"
    parts = []
    for size in SIZES_MIB:

        def at(name: str, unit: str = "ms", size: int = size) -> str:
            return fig(f"{name}_{size}_mib", unit)

        if result["benchmark"] == "snapshot":
            parts.append(
                f"{size} MiB: save {at('save_default_ms_median')}, without fsync {at('save_no_fsync_ms_median')}, "
                f"without freeze and fsync {at('save_no_freeze_no_fsync_ms_median')} "
                f"(pod paused {at('save_paused_ms_median')}, RAM copied {at('save_copied_mib_median', 'MiB')}); "
                f"restore → agent answers {at('restore_agent_answers_ms_median')}, → ready "
                f"{at('restore_ready_ms_median')}, → first exec {at('restore_first_exec_ms_median')}"
            )
        else:
            parts.append(
                f"{size} MiB: fork → child ready {at('fork_one_ready_ms_median')} (snapshot "
                f"{at('fork_one_snapshot_ms_median')}), → first exec {at('fork_one_first_exec_ms_median')}; "
                f"{result['n']} children at once → all ready {at(all_ready)}"
            )
    return head + ": " + "; ".join(parts)
