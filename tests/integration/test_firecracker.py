"""The Firecracker backend against the real firecracker binary (scripts/setup installs it).

Everything up to InstanceStart runs on any Linux host, since Firecracker needs KVM only to start the microVM:
the whole configuration sequence is checked here against the real process. Booting a guest and running
commands in it need hardware KVM; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from podbay import BackendUnavailable, GuestError, Platform
from podbay.images import ImageSet
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.firecracker.api import FirecrackerApiError
from podbay.isolation.firecracker.backend import FirecrackerBackend, FirecrackerSandbox, boot_args
from podbay.isolation.firecracker.install import VERSION, find_firecracker
from podbay.isolation.host import hardware_kvm
from podbay.paths import PodbayPaths

pytestmark = pytest.mark.integration

KVM = hardware_kvm()


def firecracker_processes_under(root: Path) -> list[int]:
    """PIDs of Firecracker processes whose command line mentions `root` (our sandboxes' run directories)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "firecracker" in cmdline and str(root) in cmdline:
            pids.append(int(entry.name))
    return pids


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sparse_file(path: Path, size_mib: int = 1) -> Path:
    with path.open("wb") as file:
        file.truncate(size_mib * 2**20)
    return path


@pytest.fixture
def backend(vm_paths: PodbayPaths) -> FirecrackerBackend:
    binary, origin = find_firecracker(vm_paths)
    if binary is None:
        pytest.fail(f"{origin}: run scripts/setup, which installs Firecracker v{VERSION}")
    return FirecrackerBackend(vm_paths)


@pytest.fixture
def placeholder_images(tmp_path: Path) -> ImageSet:
    """Firecracker opens the kernel and disks when they are put, but reads the kernel only at InstanceStart."""
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF (placeholder: read only at InstanceStart)")
    return ImageSet(kernel=kernel, rootfs_image=sparse_file(tmp_path / "rootfs.ext4"), rootfs_dir=tmp_path)


def sandbox_config(run_dir: Path, tmp_path: Path, with_disks: bool = False) -> SandboxConfig:
    run_dir.mkdir(parents=True)
    volumes = (VolumeAttachment("data", sparse_file(tmp_path / "data.ext4"), "/data"),) if with_disks else ()
    layer = sparse_file(tmp_path / "layer.ext4") if with_disks else None
    return SandboxConfig(pod_id=run_dir.name, run_dir=run_dir, vcpus=2, memory_mib=256, layer=layer, volumes=volumes)


def run_launched(
    backend: FirecrackerBackend, config: SandboxConfig, scenario: Callable[[FirecrackerSandbox], Awaitable[None]]
) -> int:
    """Launch Firecracker, run `scenario(sandbox)`, destroy the sandbox; return Firecracker's pid."""

    async def main() -> int:
        sandbox = await backend.launch(config)
        try:
            await scenario(sandbox)
        finally:
            await sandbox.destroy()
        assert sandbox.info.pid is not None
        return sandbox.info.pid

    return asyncio.run(main())


def test_the_configuration_sequence_is_accepted_and_reflected(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-config", tmp_path, with_disks=True)
    assert config.layer is not None

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        info = await sandbox.api.describe_instance()
        assert (info.id, info.state, info.vmm_version, info.app_name) == (
            "fc-config",
            "Not started",
            VERSION,
            "Firecracker",
        )
        await sandbox.configure(placeholder_images)
        machine = await sandbox.api.get_machine_config()
        assert (machine["vcpu_count"], machine["mem_size_mib"], machine["smt"]) == (2, 256, False)
        vm = await sandbox.api.get_vm_config()
        assert vm["machine-config"] == machine
        assert vm["boot-source"]["kernel_image_path"] == str(placeholder_images.kernel)
        assert vm["boot-source"]["boot_args"] == boot_args(config)
        assert [(d["drive_id"], d["path_on_host"], d["is_read_only"], d["is_root_device"]) for d in vm["drives"]] == [
            ("rootfs", str(placeholder_images.rootfs_image), True, False),
            ("layer", str(config.layer), False, False),
            ("vol0", str(config.volumes[0].image), False, False),
        ]
        assert vm["vsock"] == {"guest_cid": 3, "uds_path": str(sandbox.files.vsock)}
        # /vm/config does not show metrics; that they are set shows in Firecracker refusing to set them twice.
        with pytest.raises(FirecrackerApiError, match="Reinitialization of metrics not allowed"):
            await sandbox.api.put_metrics(sandbox.files.metrics)
        log = sandbox.files.log.read_text()
        assert f"[fc-config:main:INFO] Running Firecracker v{VERSION}" in log, "the log holds the start, with levels"
        assert '[fc-config:fc_api:INFO] The API server received a Put request on "/vsock"' in log
        assert sandbox.guest_mounts == [{"source": "/dev/vdc", "target": "/data", "fstype": "ext4"}]

    pid = run_launched(backend, config, scenario)
    assert not is_running(pid)
    assert not config.run_dir.exists()
    assert firecracker_processes_under(vm_paths.state) == []


def test_the_boot_arguments_match_qemus_with_the_vsock_transport(tmp_path: Path) -> None:
    args = boot_args(sandbox_config(tmp_path / "fc-args", tmp_path, with_disks=True)).split()
    for word in ["console=ttyS0", "reboot=k", "panic=-1", "root=/dev/vda", "ro", "rootfstype=ext4"]:
        assert word in args
    assert args[-3:] == ["init=/sbin/podbay-init", "podbay.rw=/dev/vdb", "podbay.transport=vsock:1024"]


def test_the_logger_can_move_to_another_file(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-logger", tmp_path)
    other_log = tmp_path / "api.log"
    other_log.touch()

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        await sandbox.api.put_logger(other_log, "Debug", show_level=True, show_log_origin=True)
        await sandbox.api.describe_instance()

    run_launched(backend, config, scenario)
    assert 'The API server received a Get request on "/"' in other_log.read_text()
    assert "parsed_request.rs" in other_log.read_text(), "show_log_origin adds the source file"


def test_bad_requests_fail_with_firecrackers_own_explanation(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-errors", tmp_path)

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        with pytest.raises(FirecrackerApiError) as caught:
            await sandbox.api.put_machine_config(0, 256)
        assert caught.value.status == 400
        assert "The number of vCPUs must be greater than 0" in caught.value.fault_message
        assert str(caught.value).startswith("firecracker PUT /machine-config answered 400: Machine config error")
        assert (await sandbox.api.get_machine_config())["vcpu_count"] == 1, "a refused request changes nothing"
        with pytest.raises(FirecrackerApiError, match=r"No such file or directory .*/missing\.ext4"):
            await sandbox.api.put_drive("rootfs", tmp_path / "missing.ext4", is_root_device=False, is_read_only=True)
        with pytest.raises(FirecrackerApiError, match="not supported before starting the microVM"):
            await sandbox.api.pause()
        with pytest.raises(FirecrackerApiError, match="Cannot start microvm without kernel configuration"):
            await sandbox.api.start_instance()
        assert (await sandbox.api.describe_instance()).state == "Not started"

    run_launched(backend, config, scenario)
    assert not config.run_dir.exists()


def test_firecracker_dying_at_start_fails_with_its_own_words_and_leaves_nothing(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "not a valid id", tmp_path)  # Firecracker refuses ids with spaces
    with pytest.raises(GuestError, match=r"(?s)Firecracker exited with status .*Invalid instance ID"):
        asyncio.run(backend.launch(config))
    assert not config.run_dir.exists()
    assert firecracker_processes_under(vm_paths.state) == []


def test_a_missing_binary_makes_the_backend_unavailable_with_the_fix(
    vm_paths: PodbayPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODBAY_FIRECRACKER", str(tmp_path / "no-firecracker"))
    backend = FirecrackerBackend(vm_paths)
    available = backend.availability()
    assert not available.available
    assert available.reason.startswith(f"$PODBAY_FIRECRACKER={tmp_path / 'no-firecracker'} is not an executable file")
    assert available.reason.endswith("run scripts/setup to install Firecracker v1.12.1")
    config = sandbox_config(tmp_path / "fc-missing", tmp_path)
    for step in (backend.start, backend.launch):
        with pytest.raises(BackendUnavailable, match=r"^firecracker: .*no-firecracker is not an executable file"):
            asyncio.run(step(config))
        assert list(config.run_dir.iterdir()) == []


@pytest.mark.skipif(KVM.available, reason="this host has hardware KVM, so Firecracker is available here")
def test_the_platform_refuses_firecracker_without_hardware_kvm(platform: Platform, vm_paths: PodbayPaths) -> None:
    backend = FirecrackerBackend(vm_paths)
    assert backend.availability().reason == f"Firecracker needs hardware KVM: {KVM.reason}"
    with pytest.raises(BackendUnavailable) as caught:
        platform.create_agent(backend="firecracker")
    assert str(caught.value) == f"firecracker: Firecracker needs hardware KVM: {KVM.reason}"
    assert platform.list() == []
    assert firecracker_processes_under(vm_paths.state) == []
    assert not vm_paths.pods.exists() or list(vm_paths.pods.iterdir()) == [], "refused before making anything"


def test_a_pod_boots_runs_commands_and_pauses(platform: Platform, vm_paths: PodbayPaths) -> None:
    if not KVM.available:
        pytest.skip("needs hardware KVM: " + KVM.reason)
    pod = platform.create_agent(backend="firecracker", memory_db=True)
    sandbox = pod.info().sandbox
    assert sandbox is not None
    assert (sandbox.backend, sandbox.accelerator, sandbox.security_boundary) == ("firecracker", "kvm", True)
    assert pod.exec(["python3", "-c", "print(6 * 7)"]).stdout == "42\n"
    pod.files.write("/work/note.txt", "written through the vsock")
    assert pod.files.read("/work/note.txt") == b"written through the vsock"
    assert pod.exec(["sh", "-c", "grep -c ' /data ' /proc/mounts"]).stdout == "1\n", "the volume is mounted"
    pod.pause()
    pod.resume()
    assert pod.exec(["true"]).exit_code == 0
    pod.destroy()
    assert firecracker_processes_under(vm_paths.state) == []
