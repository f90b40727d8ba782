"""The OCI bundle of a container pod (runc, gVisor): pure checks of config.json, no runtime needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.gvisor import GvisorBackend
from podbay.isolation.oci import (
    AGENT_ARGS,
    CAPABILITIES,
    BundlePaths,
    ContainerBackend,
    bundle_config,
    make_layer,
    mounts_under,
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
    assert {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq"} <= set(linux["readonlyPaths"])
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path), LOWER))
    assert "ro" in mounts["/sys"]["options"]


def test_scratch_space_is_in_memory(tmp_path: Path) -> None:
    mounts = mounts_by_destination(bundle_config(sandbox_config(tmp_path), LOWER))
    for destination in ("/tmp", "/run", "/dev/shm"):
        assert mounts[destination]["type"] == "tmpfs"
        assert {"nosuid", "nodev"} <= set(mounts[destination]["options"])


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
    assert resources["pids"]["limit"] > 0
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]


def test_seccomp_denies_escape_hatches_and_covers_the_32_bit_abi(tmp_path: Path) -> None:
    seccomp = bundle_config(sandbox_config(tmp_path), LOWER, machine="x86_64")["linux"]["seccomp"]
    assert seccomp["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    denied = {name for rule in seccomp["syscalls"] if "args" not in rule for name in rule["names"]}
    assert {"unshare", "setns", "mount", "bpf", "keyctl", "userfaultfd", "clone3"} <= denied
    clone = next(rule for rule in seccomp["syscalls"] if rule["names"] == ["clone"])
    assert clone["args"][0]["value"] == 0x10000000, "only clone(CLONE_NEWUSER) is refused"


def test_an_unknown_machine_gets_the_native_architecture_only(tmp_path: Path) -> None:
    seccomp = bundle_config(sandbox_config(tmp_path), LOWER, machine="riscv64")["linux"]["seccomp"]
    assert seccomp["architectures"] == []


def test_the_layer_is_an_upper_and_a_work_directory(tmp_path: Path) -> None:
    layer = make_layer(tmp_path)
    assert layer == BundlePaths(tmp_path).layer
    assert (layer / "upper").is_dir() and (layer / "work").is_dir()


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
