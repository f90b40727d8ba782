"""The OCI bundle of a container pod (runc, gVisor): pure checks of config.json, no runtime needed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.gvisor import GvisorBackend
from podbay.isolation.oci import (
    AGENT_ARGS,
    CAPABILITIES,
    ENOSYS,
    OUT_OF_MEMORY,
    OUT_OF_PIDS,
    PIDS_LIMIT,
    BundlePaths,
    ContainerBackend,
    bundle_config,
    kill_cgroups,
    limits_hit,
    mounts_under,
    nested_cgroups,
    recorded_cgroups,
    tmpfs_sizes_mib,
)
from podbay.isolation.runc import RuncBackend
from podbay.paths import PodbayPaths

LOWER = Path("/cache/rootfs/tree")


def sandbox_config(run_dir: Path, **fields: Any) -> SandboxConfig:
    defaults: dict[str, Any] = {
        "pod_id": "pod-0123456789ab",
        "run_dir": run_dir,
        "vcpus": 2,
        "memory_mib": 512,
        "layer": run_dir / "layer",
    }
    return SandboxConfig(**{**defaults, **fields})


def mounts_by_destination(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["destination"]: mount for mount in spec["mounts"]}


def test_the_agent_is_the_container_process_on_stdio(tmp_path: Path) -> None:
    process = bundle_config(sandbox_config(tmp_path), LOWER)["process"]
    assert process["args"] == AGENT_ARGS
    assert process["args"][-1] == "--transport=stdio"
    assert process["terminal"] is False, "with a terminal the runtime would not pass our pipes through"
    assert process["cwd"] == "/work"
    assert process["noNewPrivileges"] is True


def test_with_a_layer_the_root_is_the_writable_overlay_in_the_run_dir(tmp_path: Path) -> None:
    spec = bundle_config(sandbox_config(tmp_path), LOWER)
    assert spec["root"] == {"path": str(tmp_path / "rootfs"), "readonly": False}


def test_without_a_layer_the_shared_tree_is_the_root_read_only(tmp_path: Path) -> None:
    spec = bundle_config(sandbox_config(tmp_path, layer=None), LOWER)
    assert spec["root"] == {"path": str(LOWER), "readonly": True}


def test_no_host_namespace_is_shared(tmp_path: Path) -> None:
    linux = bundle_config(sandbox_config(tmp_path), LOWER)["linux"]
    kinds = {namespace["type"] for namespace in linux["namespaces"]}
    assert {"pid", "network", "ipc", "uts", "mount"} <= kinds
    assert all("path" not in namespace for namespace in linux["namespaces"]), "a path would join a host namespace"
    assert bundle_config(sandbox_config(tmp_path), LOWER)["hostname"] == "pod"


def test_capabilities_are_the_minimal_default_set(tmp_path: Path) -> None:
    capabilities = bundle_config(sandbox_config(tmp_path), LOWER)["process"]["capabilities"]
    assert set(capabilities) == {"bounding", "effective", "permitted", "ambient"}
    for granted in capabilities.values():
        assert sorted(granted) == sorted(CAPABILITIES) == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def test_kernel_interfaces_are_masked_or_read_only(tmp_path: Path) -> None:
    linux = bundle_config(sandbox_config(tmp_path), LOWER)["linux"]
    assert {"/proc/kcore", "/proc/keys", "/sys/firmware"} <= set(linux["maskedPaths"])
    # Loop devices name their backing files (other pods' layers and volumes): every view of them is masked.
    block_views = {"/sys/block", "/sys/class/block", "/sys/dev/block", "/sys/devices/virtual/block"}
    assert block_views | {"/proc/partitions", "/proc/diskstats", "/sys/fs/ext4", "/proc/fs/ext4"} <= set(
        linux["maskedPaths"]
    )
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq"} <= set(linux["readonlyPaths"])
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path), LOWER))
    assert "ro" in mounts["/sys"]["options"]


def test_scratch_space_is_in_memory(tmp_path: Path) -> None:
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path), LOWER))
    for destination in ("/tmp", "/run", "/dev/shm"):
        assert mounts[destination]["type"] == "tmpfs"
        assert {"nosuid", "nodev"} <= set(mounts[destination]["options"])


@pytest.mark.parametrize(
    ("memory_mib", "sizes"),
    [(512, {"/dev/shm": 64, "/tmp": 256, "/run": 16}), (64, {"/dev/shm": 64, "/tmp": 32, "/run": 16})],
)
def test_in_memory_mounts_have_explicit_sizes_within_the_pods_memory(
    tmp_path: Path, memory_mib: int, sizes: dict[str, int]
) -> None:
    assert tmpfs_sizes_mib(memory_mib) == sizes
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path, memory_mib=memory_mib), LOWER))
    for destination, mib in sizes.items():
        assert f"size={mib << 10}k" in mounts[destination]["options"]
        assert mib <= memory_mib


def test_volumes_are_bind_mounted_from_their_loop_mount_at_their_target(tmp_path: Path) -> None:
    volume = VolumeAttachment(name="v1", image=tmp_path / "v1.ext4", target="/data")
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path, volumes=(volume,)), LOWER))
    assert mounts["/data"] == {
        "destination": "/data",
        "type": "bind",
        "source": str(BundlePaths(tmp_path).volumes / "v1"),
        "options": ["bind", "rw", "nosuid", "nodev"],
    }


def test_no_volume_no_data_mount(tmp_path: Path) -> None:
    assert "/data" not in mounts_by_destination(bundle_config(sandbox_config(tmp_path), LOWER))


def test_resources_follow_the_spec_in_a_cgroup_of_their_own(tmp_path: Path) -> None:
    linux = bundle_config(sandbox_config(tmp_path, vcpus=2, memory_mib=512), LOWER)["linux"]
    assert linux["cgroupsPath"] == "podbay/pod-0123456789ab"
    assert not linux["cgroupsPath"].startswith("/"), "relative: nested under the control plane's cgroup"
    resources = linux["resources"]
    assert resources["memory"] == {"limit": 512 << 20}
    assert resources["cpu"]["quota"] == 2 * resources["cpu"]["period"]
    assert 0 < resources["pids"]["limit"] == PIDS_LIMIT <= 1024, "a fork bomb stops there"
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]


def test_seccomp_denies_escape_hatches_and_covers_the_32_bit_abi(tmp_path: Path) -> None:
    seccomp = bundle_config(sandbox_config(tmp_path), LOWER, machine="x86_64")["linux"]["seccomp"]
    assert seccomp["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    denied = {name for rule in seccomp["syscalls"] if "args" not in rule for name in rule["names"]}
    assert {"unshare", "setns", "mount", "bpf", "keyctl", "userfaultfd", "clone3"} <= denied
    clone = next(rule for rule in seccomp["syscalls"] if rule["names"] == ["clone"])
    assert clone["args"][0]["value"] == 0x10000000, "only clone(CLONE_NEWUSER) is refused"
    io_uring = next(rule for rule in seccomp["syscalls"] if "io_uring_setup" in rule["names"])
    assert set(io_uring["names"]) == {"io_uring_setup", "io_uring_enter", "io_uring_register"}
    assert io_uring["action"] == "SCMP_ACT_ERRNO" and io_uring["errnoRet"] == ENOSYS, "as if not built in"


def test_an_unknown_machine_gets_the_native_architecture_only(tmp_path: Path) -> None:
    seccomp = bundle_config(sandbox_config(tmp_path), LOWER, machine="riscv64")["linux"]["seccomp"]
    assert seccomp["architectures"] == []


def test_the_layer_is_a_sparse_ext4_image_of_disk_mib(tmp_path: Path) -> None:
    backend = RuncBackend(PodbayPaths(cache=tmp_path, state=tmp_path))
    image = asyncio.run(backend.prepare_layer(tmp_path, 64))
    assert image.parent == tmp_path and image != BundlePaths(tmp_path).layer
    assert image.stat().st_size == 64 << 20, "the pod's root can hold disk_mib, no more"
    assert image.stat().st_blocks * 512 < 4 << 20, "sparse: the host's disk holds only what is written"
    assert b"podbay-layer" in image.read_bytes()[1024:2048], "an ext4 superblock"


def test_nothing_is_mounted_under_a_fresh_directory(tmp_path: Path) -> None:
    assert mounts_under(tmp_path) == []
    assert Path("/") in mounts_under(Path("/")), "the root itself counts"


@pytest.mark.parametrize(("backend", "name"), [(RuncBackend, "runc"), (GvisorBackend, "gvisor")])
def test_backends_are_named_as_specs_choose_them(
    backend: Callable[[PodbayPaths], ContainerBackend], name: str, tmp_path: Path
) -> None:
    instance = backend(PodbayPaths(cache=tmp_path, state=tmp_path))
    assert instance.name == name
    assert instance.availability().reason


HYBRID_CGROUPS = """9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
"""
HYBRID_MOUNTS = """24 23 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw,nsdelegate
26 24 0:22 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
27 24 0:23 / /sys/fs/cgroup/pids rw,nosuid shared:7 - cgroup cgroup rw,pids
28 24 0:24 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
29 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
30 1 0:26 / /proc rw,nosuid - proc proc rw
"""


def test_a_containers_cgroups_nest_under_the_callers_own_in_every_hierarchy() -> None:
    assert nested_cgroups(HYBRID_CGROUPS, HYBRID_MOUNTS, "podbay/pod-1") == [
        Path("/sys/fs/cgroup/unified/podbay/pod-1"),
        Path("/sys/fs/cgroup/systemd/podbay/pod-1"),
        Path("/sys/fs/cgroup/pids/podbay/pod-1"),
        Path("/sys/fs/cgroup/memory/process_api/abc/podbay/pod-1"),
        Path("/sys/fs/cgroup/cpu,cpuacct/podbay/pod-1"),
    ]


def test_cgroups_of_a_controller_in_a_user_session_on_a_v2_host() -> None:
    own = "0::/user.slice/user-1000.slice/session-3.scope\n"
    mounts = "25 24 0:21 / /sys/fs/cgroup rw,nosuid shared:5 - cgroup2 cgroup2 rw,nsdelegate\n"
    assert nested_cgroups(own, mounts, "podbay/pod-1") == [
        Path("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/podbay/pod-1")
    ]


def test_a_cgroup_mount_of_a_subtree_is_read_relative_to_its_root() -> None:
    own = "0::/machine/outer/inner\n"
    mounts = "25 24 0:21 /machine/outer /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert nested_cgroups(own, mounts, "podbay/p") == [Path("/sys/fs/cgroup/inner/podbay/p")]
    elsewhere = "25 24 0:21 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert nested_cgroups(own, elsewhere, "podbay/p") == [], "our own cgroup is not in that mount"


def test_the_limits_a_pod_hit_are_read_from_its_cgroups(tmp_path: Path) -> None:
    memory, pids = tmp_path / "memory", tmp_path / "pids"
    memory.mkdir()
    pids.mkdir()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (pids / "pids.events").write_text("max 0\n")
    assert limits_hit([memory, pids, tmp_path / "gone"]) == set()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (pids / "pids.events").write_text("max 17\n")
    assert limits_hit([memory, pids]) == {OUT_OF_MEMORY, OUT_OF_PIDS}
    (memory / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")  # v2
    assert limits_hit([memory]) == {OUT_OF_MEMORY}


def test_a_cgroup_is_frozen_killed_and_thawed(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "cgroup.procs").write_text(f"{child.pid}\n")
        (tmp_path / "freezer.state").write_text("THAWED\n")
        # A plain directory never empties, as a cgroup would: what is left is reported, after the timeout.
        left = asyncio.run(kill_cgroups([tmp_path], timeout=0.2))
        assert left == {tmp_path: {child.pid}}
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert (tmp_path / "freezer.state").read_text() == "THAWED", "thawed again, so the killed can die"
        assert asyncio.run(kill_cgroups([tmp_path / "gone"])) == {}, "a cgroup that is gone holds nothing"
    finally:
        child.kill()
        child.wait()


def test_a_reaper_in_another_cgroup_finds_the_cgroups_recorded_at_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "pod-0123456789ab"
    run_dir.mkdir()
    recorded = ["/sys/fs/cgroup/memory/session-of-the-dead-controller/podbay/pod-0123456789ab"]
    BundlePaths(run_dir).cgroups_file.write_text(json.dumps(recorded))
    found = recorded_cgroups(run_dir)
    assert found[0] == Path(recorded[0])
    assert all(path.parts[-2:] == ("podbay", "pod-0123456789ab") for path in found), "and where we would put them"
