"""`podbay bench clone`: QEMU template clones, measured below the platform (podbay.isolation.qemu.template).

Per run: a fresh template is built (in a private directory, so its build time is measured), then `n` clones are
started one after another: clone start → the agent answers, → ready (volumes refreshed, guest reseeded), → the
first exec result (after the `init` the platform sends every pod). Host memory per idle clone (USS/PSS) with 1
and with 5 clones alive at once. The same clone times with a second template four times the memory: a clone's
cost must not grow with guest memory.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from podbay.bench.create import percentile
from podbay.bench.memory import tree_uss_pss_kib
from podbay.errors import GuestError
from podbay.images import find_images
from podbay.isolation.base import SandboxConfig
from podbay.isolation.qemu.snapshot import start_clone
from podbay.isolation.qemu.template import ClonedSandbox, Template, TemplateShape, build_template
from podbay.paths import PodbayPaths

SMALL_MIB = 256
LARGE_MIB = 1024
ALIVE = (1, 5)
IDLE_S = 2.0  # before memory is read: the clone settles (its first exec done, nothing running)


def stats(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 0.9),
        "min": min(values),
        "max": max(values),
    }


def spread(values: list[float]) -> dict[str, float]:
    """The median of several runs and how far apart they were."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_clone(paths: PodbayPaths, n: int, runs: int = 1) -> dict[str, Any]:
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
        "benchmark": "clone",
        "backend": "qemu",
        "accelerator": results[0]["accelerator"],
        "n": n,
        "runs": runs,
        "summary": {
            "template_build_s": across("template_build_s", str(SMALL_MIB)),
            "template_state_kib": across("template_state_kib", str(SMALL_MIB)),
            "clone_to_agent_ms_median": across("clone_to_agent_ms", "median"),
            "clone_to_agent_ms_p90": across("clone_to_agent_ms", "p90"),
            "clone_to_ready_ms_median": across("clone_to_ready_ms", "median"),
            "clone_to_first_exec_ms_median": across("clone_to_first_exec_ms", "median"),
            "clone_to_first_exec_ms_p90": across("clone_to_first_exec_ms", "p90"),
            "idle_uss_mib_1_alive": across("idle_memory_mib", "1_alive", "uss_median"),
            "idle_pss_mib_1_alive": across("idle_memory_mib", "1_alive", "pss_median"),
            "idle_uss_mib_5_alive": across("idle_memory_mib", "5_alive", "uss_median"),
            "idle_pss_mib_5_alive": across("idle_memory_mib", "5_alive", "pss_median"),
            f"clone_to_agent_ms_median_{SMALL_MIB}_mib": across("by_memory", str(SMALL_MIB), "median"),
            f"clone_to_agent_ms_median_{LARGE_MIB}_mib": across("by_memory", str(LARGE_MIB), "median"),
        },
        "per_run": results,
    }


async def _one_run(paths: PodbayPaths, n: int) -> dict[str, Any]:
    images = find_images(paths)
    work = Path(tempfile.mkdtemp(prefix="podbay-bench-clone-"))
    try:
        templates: dict[int, Template] = {}
        for memory in (SMALL_MIB, LARGE_MIB):
            templates[memory] = await build_template(
                paths, TemplateShape(memory_mib=memory), images=images, root=work / "templates"
            )
        small = templates[SMALL_MIB]
        agent, ready, first_exec = await _sequential(small, work, n)
        large_agent, _, _ = await _sequential(templates[LARGE_MIB], work, n)
        idle = {f"{alive}_alive": await _idle_memory(small, work, alive) for alive in ALIVE}
        return {
            "accelerator": small.accelerator,
            "template_build_s": {str(size): template.build_s for size, template in templates.items()},
            "template_state_kib": {
                str(size): template.state.stat().st_size / 1024 for size, template in templates.items()
            },
            "clone_to_agent_ms": stats(agent),
            "clone_to_ready_ms": stats(ready),
            "clone_to_first_exec_ms": stats(first_exec),
            "idle_memory_mib": idle,
            "by_memory": {str(SMALL_MIB): stats(agent), str(LARGE_MIB): stats(large_agent)},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def initialised_clone(template: Template, work: Path, index: int) -> ClonedSandbox:
    """A clone of `template` in `<work>/pods/pod-<index>`, given the `init` every new pod gets."""
    pod_id = f"pod-{index:012x}"
    run_dir = work / "pods" / pod_id
    run_dir.mkdir(parents=True)
    config = SandboxConfig(
        pod_id=pod_id, run_dir=run_dir, vcpus=template.shape.vcpus, memory_mib=template.shape.memory_mib, layer=None
    )
    sandbox = await start_clone(template, config)
    try:  # what the platform sends every new pod: the clone is then ready for its first exec
        await sandbox.channel.request(
            "init", env={"PODBAY_POD_ID": pod_id}, mounts=sandbox.guest_mounts, clock=time.time()
        )
    except BaseException:
        await sandbox.destroy()
        raise
    return sandbox


async def _discard(sandbox: ClonedSandbox, work: Path) -> None:
    await sandbox.destroy()
    for run_dir in (work / "pods").iterdir():
        shutil.rmtree(run_dir)


async def _sequential(template: Template, work: Path, n: int) -> tuple[list[float], list[float], list[float]]:
    """Clone → agent answers, → ready, → first exec result (ms), one clone at a time."""
    agent: list[float] = []
    ready: list[float] = []
    first_exec: list[float] = []
    for index in range(n):
        started = time.perf_counter()
        sandbox = await initialised_clone(template, work, index)
        try:
            result = await (await sandbox.channel.start_process(["true"])).wait()
            first_exec.append((time.perf_counter() - started) * 1000)
            if result.exit_code != 0:
                raise GuestError(f"`true` exited {result.exit_code} in a clone")
            agent.append(sandbox.timings["agent_answers_ms"])
            ready.append(sandbox.timings["ready_ms"])
        finally:
            await _discard(sandbox, work)
    return agent, ready, first_exec


async def _idle_memory(template: Template, work: Path, alive: int) -> dict[str, float]:
    """USS and PSS (MiB) of each of `alive` idle clones running at once: the median, and the sum."""
    sandboxes: list[ClonedSandbox] = []
    try:
        for index in range(alive):
            sandbox = await initialised_clone(template, work, index)
            sandboxes.append(sandbox)
            await (await sandbox.channel.start_process(["true"])).wait()
        await asyncio.sleep(IDLE_S)
        readings = [tree_uss_pss_kib(_pid(sandbox)) for sandbox in sandboxes]
    finally:
        for sandbox in sandboxes:
            await sandbox.destroy()
        shutil.rmtree(work / "pods", ignore_errors=True)
    uss = [reading[0] / 1024 for reading in readings]
    pss = [reading[1] / 1024 for reading in readings]
    return {
        "uss_median": statistics.median(uss),
        "pss_median": statistics.median(pss),
        "uss_total": sum(uss),
        "pss_total": sum(pss),
    }


def _pid(sandbox: ClonedSandbox) -> int:
    pid = sandbox.info.pid
    if pid is None:
        raise GuestError("a clone without a pid")
    return pid


def summary(result: dict[str, Any]) -> str:
    s = result["summary"]

    def fig(name: str, unit: str, digits: int = 0) -> str:
        value = s[name]
        return f"{value['median']:.{digits}f} {unit} ({value['min']:.{digits}f}..{value['max']:.{digits}f})"

    return (
        f"qemu/{result['accelerator']} template clones, median of {result['runs']} run(s) (min..max), n={result['n']}: "
        f"template build {fig('template_build_s', 's', 1)}; "
        f"clone → agent answers {fig('clone_to_agent_ms_median', 'ms')} "
        f"(p90 {fig('clone_to_agent_ms_p90', 'ms')}); → first exec {fig('clone_to_first_exec_ms_median', 'ms')}; "
        f"idle USS/PSS per clone, 1 alive {fig('idle_uss_mib_1_alive', 'MiB', 1)} / "
        f"{fig('idle_pss_mib_1_alive', 'MiB', 1)}, 5 alive {fig('idle_uss_mib_5_alive', 'MiB', 1)} / "
        f"{fig('idle_pss_mib_5_alive', 'MiB', 1)}; clone → agent at {SMALL_MIB} MiB "
        f"{fig(f'clone_to_agent_ms_median_{SMALL_MIB}_mib', 'ms')} vs {LARGE_MIB} MiB "
        f"{fig(f'clone_to_agent_ms_median_{LARGE_MIB}_mib', 'ms')}"
    )
