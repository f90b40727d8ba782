"""A pod's own volume given to a running template clone (podbay.isolation.qemu.attach), measured below the platform.

Per run: a fresh template is built (in a private directory), then `n` times, one clone at a time: a clone is
started with its volume slots empty (a warm pool's member), a fresh 64 MiB ext4 volume is made and locked, and
then the claim is timed: attach (QMP: the placeholder swapped for the volume) → `init` with the mount answered
(the guest waits for the new size, drops cached blocks, mounts) → the first `true` exec result. The same claim
without a volume (`init` + `true`) is the floor the volume adds to. Under TCG a fresh QEMU process translates
every guest code path the first time it runs (a clone's first ext4 mount ~30-50 ms, a later one ~5 ms), so the
claim is also timed on a *primed* member that ran `true` twice before it was claimed, as a pool can do while
it fills. Host load is recorded: the host is shared.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from podbay.bench.clone import spread, stats
from podbay.flock import try_flock
from podbay.images import find_images, make_ext4
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.attach import attach_volumes, free_slots
from podbay.isolation.qemu.template import ClonedSandbox, Template, TemplateShape, build_template, start_clone
from podbay.paths import PodbayPaths

VOLUME_MIB = 64
MEMORY_MIB = 256


def bench_attach(paths: PodbayPaths, n: int, runs: int = 3) -> dict[str, Any]:
    results = [asyncio.run(_one_run(paths, n)) for _ in range(runs)]

    def across(*keys: str) -> dict[str, float]:
        values = []
        for result in results:
            value: Any = result
            for key in keys:
                value = value[key]
            values.append(float(value))
        return spread(values)

    return {
        "benchmark": "attach",
        "backend": "qemu",
        "accelerator": results[0]["accelerator"],
        "swap": results[0]["swap"],
        "n": n,
        "runs": runs,
        "volume_mib": VOLUME_MIB,
        "summary": {
            "attach_qmp_ms_median": across("attach_qmp_ms", "median"),
            "attach_to_mounted_ms_median": across("attach_to_mounted_ms", "median"),
            "claim_to_first_exec_ms_median": across("claim_to_first_exec_ms", "median"),
            "claim_to_first_exec_ms_p90": across("claim_to_first_exec_ms", "p90"),
            "primed_attach_to_mounted_ms_median": across("primed_attach_to_mounted_ms", "median"),
            "primed_claim_to_first_exec_ms_median": across("primed_claim_to_first_exec_ms", "median"),
            "no_volume_claim_to_first_exec_ms_median": across("no_volume_claim_to_first_exec_ms", "median"),
            "load_1min": across("load_1min"),
        },
        "per_run": results,
    }


async def _one_run(paths: PodbayPaths, n: int) -> dict[str, Any]:
    images = find_images(paths)
    work = Path(tempfile.mkdtemp(prefix="podbay-bench-attach-"))
    try:
        shape = TemplateShape(memory_mib=MEMORY_MIB, volume_slots=1)
        template = await build_template(paths, shape, images=images, root=work / "templates")
        load = os.getloadavg()[0]
        qmp: list[float] = []
        mounted: list[float] = []
        claim: list[float] = []
        primed_mounted: list[float] = []
        primed_claim: list[float] = []
        floor: list[float] = []
        swap = ""
        for index in range(n):
            timings, swap = await _claim_with_volume(template, work, index, prime=False)
            qmp.append(timings[0])
            mounted.append(timings[1])
            claim.append(timings[2])
            timings, _ = await _claim_with_volume(template, work, index, prime=True)
            primed_mounted.append(timings[1])
            primed_claim.append(timings[2])
            floor.append(await _claim_without_volume(template, work, index))
        return {
            "accelerator": template.accelerator,
            "swap": swap,
            "attach_qmp_ms": stats(qmp),
            "attach_to_mounted_ms": stats(mounted),
            "claim_to_first_exec_ms": stats(claim),
            "primed_attach_to_mounted_ms": stats(primed_mounted),
            "primed_claim_to_first_exec_ms": stats(primed_claim),
            "no_volume_claim_to_first_exec_ms": stats(floor),
            "load_1min": (load + os.getloadavg()[0]) / 2,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _member(template: Template, work: Path, pod_id: str) -> ClonedSandbox:
    """A pool member: a running, reseeded clone whose volume slots hold placeholders."""
    run_dir = work / "pods" / pod_id
    run_dir.mkdir(parents=True)
    config = SandboxConfig(pod_id=pod_id, run_dir=run_dir, vcpus=1, memory_mib=MEMORY_MIB, layer=None)
    return await start_clone(template, config)


async def _claim_with_volume(
    template: Template, work: Path, index: int, prime: bool
) -> tuple[tuple[float, float, float], str]:
    """(attach, attach → mounted, attach → first exec) in ms, and how the slot was swapped."""
    pod_id = f"pod-{index:012x}"
    image = work / f"{pod_id}-db.ext4"
    await asyncio.to_thread(make_ext4, image, VOLUME_MIB, "podbay-volume")
    lock_fd = try_flock(image.with_suffix(".lock"))
    if lock_fd is None:
        raise RuntimeError(f"the fresh volume {image} is locked by another process")
    sandbox = await _member(template, work, pod_id)
    try:
        swap = "reopen" if all(slot.named for slot in await free_slots(sandbox)) else "mirror"
        for _ in range(2 if prime else 0):
            await (await sandbox.channel.start_process(["true"])).wait()
        volume = VolumeAttachment(name=f"{pod_id}-db", image=image, target="/data", lock_fd=lock_fd)
        started = time.perf_counter()
        mounts = await attach_volumes(sandbox, [volume])
        attached = time.perf_counter()
        await sandbox.channel.request("init", env={"PODBAY_POD_ID": pod_id}, mounts=mounts, clock=time.time())
        mounted = time.perf_counter()
        result = await (await sandbox.channel.start_process(["true"])).wait()
        done = time.perf_counter()
        if result.exit_code != 0:
            raise RuntimeError(f"`true` exited {result.exit_code} in a clone with an attached volume")
        return ((attached - started) * 1000, (mounted - started) * 1000, (done - started) * 1000), swap
    finally:
        await sandbox.destroy()
        os.close(lock_fd)
        shutil.rmtree(work / "pods" / pod_id)
        image.unlink()
        image.with_suffix(".lock").unlink()


async def _claim_without_volume(template: Template, work: Path, index: int) -> float:
    pod_id = f"pod-{index:012x}"
    sandbox = await _member(template, work, pod_id)
    try:
        started = time.perf_counter()
        await sandbox.channel.request("init", env={"PODBAY_POD_ID": pod_id}, mounts=[], clock=time.time())
        result = await (await sandbox.channel.start_process(["true"])).wait()
        if result.exit_code != 0:
            raise RuntimeError(f"`true` exited {result.exit_code} in a clone")
        return (time.perf_counter() - started) * 1000
    finally:
        await sandbox.destroy()
        shutil.rmtree(work / "pods" / pod_id)


def summary(result: dict[str, Any]) -> str:
    s = result["summary"]

    def fig(name: str, unit: str = "ms", digits: int = 1) -> str:
        value = s[name]
        unit = f" {unit}" if unit else ""
        return f"{value['median']:.{digits}f}{unit} ({value['min']:.{digits}f}..{value['max']:.{digits}f})"

    return (
        f"qemu/{result['accelerator']} volume attach to a running clone ({result['swap']}), median of "
        f"{result['runs']} run(s) (min..max), n={result['n']}, {result['volume_mib']} MiB volume: "
        f"attach {fig('attach_qmp_ms_median')}; attach → mounted {fig('attach_to_mounted_ms_median')}; "
        f"claim → first exec {fig('claim_to_first_exec_ms_median')} "
        f"(p90 {fig('claim_to_first_exec_ms_p90')}); primed member: → mounted "
        f"{fig('primed_attach_to_mounted_ms_median')}, → first exec {fig('primed_claim_to_first_exec_ms_median')}; "
        f"without a volume {fig('no_volume_claim_to_first_exec_ms_median')}"
        f"; host load {fig('load_1min', '', 1)}"
    )
