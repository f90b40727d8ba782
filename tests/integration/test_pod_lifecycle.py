"""Pods end to end: databases on volumes across pods, bad input, failures that leave nothing behind."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from podbay import AsyncPlatform, Conflict, GuestError, InvalidSpec, Platform, Timeout
from podbay.images import ImageSet, find_images
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.registry import default_backends
from podbay.isolation.supervise import is_gone
from podbay.paths import PodbayPaths

from .conftest import ALL_BACKENDS, assert_nothing_left, skip_unless_available

pytestmark = pytest.mark.integration

WRITE = """
import os, sqlite3
db = sqlite3.connect(os.environ["PODBAY_DB_PATH"])
db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
db.execute("INSERT INTO notes VALUES (?)", (os.environ["NOTE"],))
db.commit()
print(db.execute("SELECT COUNT(*) FROM notes").fetchone()[0])
"""


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_volume_carries_the_database_from_pod_to_pod_and_to_the_host(
    platform: Platform, backend: str, tmp_path: Path
) -> None:
    skip_unless_available(platform, backend)
    first = platform.create_agent(
        backend=backend, memory_db=True, volume="customer-42", env={"NOTE": "from the first pod"}
    )
    assert first.info().db_url == "sqlite:////data/memory.db"
    assert first.exec(["python3", "-c", WRITE]).stdout == "1\n"
    first.destroy()

    second = platform.create_agent(
        backend=backend, memory_db=True, volume="customer-42", env={"NOTE": "from the second pod"}
    )
    assert second.exec(["python3", "-c", WRITE]).stdout == "2\n", "the second pod sees the first pod's row"
    second.destroy()

    exported = platform.volumes.export("customer-42", tmp_path / "memory.db")
    rows = sqlite3.connect(exported).execute("SELECT text FROM notes").fetchall()
    assert rows == [("from the first pod",), ("from the second pod",)]


def test_a_volume_is_attached_to_one_pod_at_a_time(platform: Platform) -> None:
    holder = platform.create_agent(memory_db=True, volume="shared")
    try:
        with pytest.raises(Conflict, match="shared"):
            platform.create_agent(memory_db=True, volume="shared")
        with pytest.raises(Conflict):
            platform.volumes.export("shared", Path("/tmp/never-written.db"))
    finally:
        holder.destroy()
    platform.create_agent(memory_db=True, volume="shared").destroy()


def test_an_unnamed_database_lives_and_dies_with_its_pod(platform: Platform) -> None:
    pod = platform.create_agent(memory_db=True)
    assert pod.exec(["python3", "-c", WRITE], env={"NOTE": "x"}).stdout == "1\n"
    assert pod.info().volume is not None
    pod.destroy()
    assert platform.volumes.list() == []


def test_bad_input_names_the_field(platform: Platform) -> None:
    with pytest.raises(InvalidSpec, match="volume"):
        platform.create_agent(memory_db=True, volume="../../etc")
    with pytest.raises(InvalidSpec, match=r"backend.*firecracker, gvisor, qemu, qemu-q35, runc"):
        platform.create_agent(backend="hyperv")
    with pytest.raises(InvalidSpec, match=r"memory_db=True"):
        platform.create_agent(volume="orphan")


@pytest.mark.parametrize("cold", [True, False])  # the pod's own QEMU, or the template's it would be cloned from
def test_qemu_dying_at_start_is_reported_with_its_stderr(vm_paths: PodbayPaths, tmp_path: Path, cold: bool) -> None:
    real = find_images(vm_paths)
    broken_kernel = tmp_path / "vmlinux"
    broken_kernel.write_bytes(b"not a kernel")
    images = ImageSet(kernel=broken_kernel, rootfs_image=real.rootfs_image, rootfs_dir=real.rootfs_dir)
    with Platform(vm_paths, backends={"qemu": QemuBackend(vm_paths, images)}) as platform:
        with pytest.raises(GuestError, match="QEMU exited") as caught:
            platform.create_agent(memory_db=True, volume="survivor", cold=cold)
        assert "QEMU stderr" in str(caught.value)
        assert platform.list() == []
        assert not platform.volumes.info("survivor").attached, "a failed create must release the volume"
    assert_nothing_left(vm_paths)


@pytest.mark.parametrize("cold", [True, False])
def test_a_boot_timeout_kills_the_vm(platform: Platform, vm_paths: PodbayPaths, cold: bool) -> None:
    with pytest.raises(Timeout, match=r"waited 0\.05 s for the guest agent to answer; QEMU still runs"):
        platform.create_agent(boot_timeout_s=0.05, cold=cold)
    assert_nothing_left(vm_paths)


def test_closing_the_platform_destroys_its_pods(vm_paths: PodbayPaths) -> None:
    with Platform(vm_paths) as platform:
        platform.create_agent()
        assert len(platform.list()) == 1
    assert_nothing_left(vm_paths)


@pytest.mark.parametrize(("cold", "origin"), [(False, "template clone"), (True, "cold boot")])
def test_trace_has_each_phase_in_order_and_says_where_the_sandbox_came_from(
    platform: Platform, cold: bool, origin: str
) -> None:
    pod = platform.create_agent(memory_db=True, cold=cold)
    info = pod.info()
    phases = {phase.name: phase for phase in info.trace}
    pod.destroy()
    assert info.origin == origin
    assert {"choose", "prepare", "db provision", origin, "attach+inject"} <= set(phases)
    assert phases[origin].start_s >= max(phases["prepare"].end_s, phases["db provision"].end_s)
    assert phases["attach+inject"].start_s >= phases[origin].end_s
    expected = "a cold boot was asked for" if cold else "no warm pool of this shape; the shape's template"
    assert expected in phases[origin].detail


def test_qemu_runs_unprivileged_when_started_as_root(platform: Platform) -> None:
    pod = platform.create_agent()
    try:
        info = pod.info().sandbox
        assert info is not None and info.pid is not None
        status = Path(f"/proc/{info.pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        import os

        if os.geteuid() == 0:
            assert uid != "0", "QEMU must drop root (-runas) after opening its files"
        assert "Seccomp:\t2" in status, "QEMU must run under its seccomp sandbox"
    finally:
        pod.destroy()


def test_pods_created_concurrently_are_isolated_from_each_other(vm_paths: PodbayPaths) -> None:
    async def scenario() -> list[str]:
        platform = AsyncPlatform(vm_paths)
        try:
            pods = await asyncio.gather(*(platform.create_agent(env={"NAME": f"pod{i}"}) for i in range(3)))
            for pod in pods:
                await pod.exec(["sh", "-c", 'echo "$NAME" > /work/mine'])
            seen = [(await pod.exec(["cat", "/work/mine"])).stdout.strip() for pod in pods]
            assert len({pod.info().sandbox.pid for pod in pods if pod.info().sandbox}) == 3
            return seen
        finally:
            await platform.close()

    assert asyncio.run(scenario()) == ["pod0", "pod1", "pod2"], "each pod sees only its own writes"
    assert_nothing_left(vm_paths)


def test_destroying_a_pod_ends_its_running_commands(platform: Platform) -> None:
    pod = platform.create_agent()
    process = pod.start_process(["sleep", "600"])
    pod.destroy()
    with pytest.raises(GuestError, match="closed"):
        process.wait()


def test_the_host_kernel_never_mounts_a_volume_a_vm_has_written(platform: Platform) -> None:
    skip_unless_available(platform, "runc")
    platform.create_agent(backend="runc", memory_db=True, volume="shared-notes").destroy()  # host-mounted: fine
    platform.create_agent(backend="qemu", memory_db=True, volume="shared-notes").destroy()  # a guest kernel wrote it
    with pytest.raises(InvalidSpec, match="written inside a VM"):
        platform.create_agent(backend="runc", memory_db=True, volume="shared-notes")
    assert not platform.volumes.info("shared-notes").attached, "the refused pod released the volume"
    platform.create_agent(backend="qemu", memory_db=True, volume="shared-notes").destroy()  # VMs may go on


ORPHAN_MAKER = """
import os, signal, sys
from pathlib import Path
from podbay import Platform
from podbay.paths import PodbayPaths
platform = Platform(PodbayPaths(cache=Path(sys.argv[1]), state=Path(sys.argv[2])))
for backend in sys.argv[3:]:
    pod = platform.create_agent(backend=backend, memory_db=True, volume=f"orphan-{backend}")
    print(pod.info().sandbox.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the controller dies without destroying anything
"""


def test_pods_of_a_killed_controller_are_reaped_by_the_next_platform(vm_paths: PodbayPaths) -> None:
    backends = ["qemu"] + [name for name in ("runc",) if default_backends(vm_paths)[name].availability().available]
    made = subprocess.run(
        [sys.executable, "-c", ORPHAN_MAKER, str(vm_paths.cache), str(vm_paths.state), *backends],
        capture_output=True,
        text=True,
        timeout=300,
    )
    pids = [int(line) for line in made.stdout.split()]
    assert len(pids) == len(backends), made.stderr
    assert all(Path(f"/proc/{pid}").exists() for pid in pids), "the orphans are still running"
    assert len(list(vm_paths.pods.iterdir())) == len(backends)

    with Platform(vm_paths) as platform:
        platform.create_agent().destroy()  # the first create reaps what a dead controller left
        for backend in backends:  # the volumes are free again, and the host never kept a mount
            platform.create_agent(
                backend="qemu" if backend == "qemu" else backend, memory_db=True, volume=f"orphan-{backend}"
            ).destroy()
    assert all(map(is_gone, pids)), "the orphans were killed (a zombie waits for whichever init adopted it)"
    assert_nothing_left(vm_paths)
