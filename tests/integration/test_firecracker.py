"""The Firecracker backend against the real firecracker and jailer binaries (scripts/setup installs them).

Everything up to InstanceStart runs on any Linux host, since Firecracker needs KVM only to start the microVM:
the jail (chroot, the pod's own uid, cgroups, namespaces, what is placed in the chroot and how), the jailer's
start and the whole configuration sequence are checked here against the real processes, started by the
backend's own launch path, and so is everything destroy and the reaper must undo. Booting a guest and running
commands in it need hardware KVM; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from podbay import BackendUnavailable, GuestError, Platform
from podbay.images import ImageSet
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.firecracker import acl
from podbay.isolation.firecracker import jail as jails
from podbay.isolation.firecracker.api import FirecrackerApiError
from podbay.isolation.firecracker.backend import FirecrackerBackend, FirecrackerSandbox, boot_args
from podbay.isolation.firecracker.install import VERSION, find_firecracker
from podbay.isolation.host import hardware_kvm
from podbay.isolation.oci import mounts_under
from podbay.isolation.uids import LOCK_DIR, allocate_uid
from podbay.paths import PodbayPaths

pytestmark = pytest.mark.integration

KVM = hardware_kvm()


def firecracker_processes_under(root: Path) -> list[int]:
    """PIDs of the wrappers (unshare, jailer) whose command line mentions `root` (our sandboxes' run
    directories); the jailed Firecracker's own command line names only paths of its chroot."""
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
    """Alive, and not a zombie: a zombie still shows its uid in /proc, so the allocator would skip it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def uid_is_locked(uid: int) -> bool:
    fd = os.open(LOCK_DIR / f"{uid}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def open_files(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    return {os.readlink(fds / fd) for fd in os.listdir(fds)}


def sparse_file(path: Path, size_mib: int = 1) -> Path:
    with path.open("wb") as file:
        file.truncate(size_mib * 2**20)
    return path


@pytest.fixture
def backend(vm_paths: PodbayPaths) -> FirecrackerBackend:
    binary, origin = find_firecracker(vm_paths)
    if binary is None:
        pytest.fail(f"{origin}: run scripts/setup, which installs Firecracker v{VERSION}")
    tools = jails.jail_tools(vm_paths, binary)
    if isinstance(tools, str):
        pytest.fail(f"the jailer cannot run here: {tools}")
    return FirecrackerBackend(vm_paths)


def placeholder(directory: Path) -> ImageSet:
    """Firecracker opens the kernel and disks when they are put, but reads the kernel only at InstanceStart."""
    kernel = directory / "vmlinux"
    kernel.write_bytes(b"\x7fELF (placeholder: read only at InstanceStart)")
    kernel.chmod(0o644)
    return ImageSet(kernel=kernel, rootfs_image=sparse_file(directory / "rootfs.ext4"), rootfs_dir=directory)


@pytest.fixture
def placeholder_images(tmp_path: Path) -> ImageSet:
    return placeholder(tmp_path)


def sandbox_config(run_dir: Path, tmp_path: Path, with_disks: bool = False) -> SandboxConfig:
    run_dir.mkdir(parents=True)
    volumes = (VolumeAttachment("data", sparse_file(tmp_path / "data.ext4"), "/data"),) if with_disks else ()
    layer = sparse_file(run_dir / "layer.ext4") if with_disks else None
    return SandboxConfig(pod_id=run_dir.name, run_dir=run_dir, vcpus=2, memory_mib=256, layer=layer, volumes=volumes)


def run_launched(
    backend: FirecrackerBackend,
    config: SandboxConfig,
    images: ImageSet,
    scenario: Callable[[FirecrackerSandbox], Awaitable[None]],
) -> FirecrackerSandbox:
    """Launch Firecracker as the backend does (jailed, up to its API answering), run `scenario(sandbox)`,
    destroy the sandbox, check it left only its logs in the run directory; return it (destroyed)."""

    async def main() -> FirecrackerSandbox:
        sandbox = await backend.launch(config, images)
        try:
            await scenario(sandbox)
        finally:
            await sandbox.destroy()
        return sandbox

    sandbox = asyncio.run(main())
    assert_only_logs_left(config.run_dir)
    return sandbox


def assert_only_logs_left(run_dir: Path) -> None:
    """The backend undid its jail, chroot and binds, and left the run directory (the test's: it made it) with
    only the logs it wrote there, beside what the test put there; then the test removes it, as its maker."""
    assert mounts_under(run_dir) == []
    assert {path.name for path in run_dir.iterdir()} <= {"console.log", "firecracker.stderr", "layer.ext4"}
    shutil.rmtree(run_dir)


def assert_undone(sandbox: FirecrackerSandbox, unshare: int) -> None:
    """Everything destroy must undo: processes, chroot, cgroups, the uid's lock."""
    assert sandbox.info.pid is not None
    assert not is_running(sandbox.info.pid), "Firecracker outlived destroy"
    assert not is_running(unshare), "unshare outlived destroy"
    assert [path for path in sandbox.jail.cgroup_dirs if path.exists()] == []
    assert not uid_is_locked(sandbox.jail.uid), "the uid is released"


# ---- the jail -------------------------------------------------------------------------------------------


def test_firecracker_runs_jailed_under_its_own_uid_and_destroy_undoes_everything(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-jail", tmp_path, with_disks=True)
    volume = config.volumes[0].image
    volume_lock = os.open(tmp_path / "data.lock", os.O_RDWR | os.O_CREAT)
    config = dataclasses.replace(config, volumes=(VolumeAttachment("data", volume, "/data", volume_lock),))
    seen: dict[str, int] = {}

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        jail, pid = sandbox.jail, sandbox.info.pid
        assert pid is not None and pid == sandbox.vmm_pid
        seen["unshare"] = sandbox._process.pid
        fields = status(pid)
        # Its own uid and gid (real, effective, saved, filesystem), no supplementary groups, no capabilities.
        assert fields["Uid"].split() == [str(jail.uid)] * 4
        assert fields["Gid"].split() == [str(jail.gid)] * 4
        assert jail.uid >= 1_000_000
        assert fields["Groups"] == ""
        assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
        # Its root is the chroot (seen from here, /proc/<pid>/root reads "/": it is in its own mount namespace).
        root, chroot = os.stat(f"/proc/{pid}/root"), os.stat(jail.chroot)
        assert (root.st_dev, root.st_ino) == (chroot.st_dev, chroot.st_ino)
        assert sorted(os.listdir(f"/proc/{pid}/root")) == sorted(os.listdir(jail.chroot))
        # New pid (it is its pid 1), network, IPC and mount namespaces.
        for namespace in ("pid", "net", "ipc", "mnt"):
            assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}")
        assert fields["NSpid"].split() == [str(pid), "1"]
        # In its own cgroups, with the limits.
        for directory in jail.cgroup_dirs:
            assert (directory / "cgroup.procs").read_text().split() == [str(pid)]
            assert directory.parent.name == "podbay" and directory.name == "fc-jail"
        for directory in jail.cgroup_dirs:
            for name, expected in (
                ("memory.limit_in_bytes", (256 + jails.MEMORY_OVERHEAD_MIB) * 2**20),
                ("memory.max", (256 + jails.MEMORY_OVERHEAD_MIB) * 2**20),
                ("pids.max", jails.PIDS_MAX),
            ):
                if (directory / name).exists():
                    assert int((directory / name).read_text()) == expected
        # The API answers, over the socket in the chroot.
        info = await sandbox.api.describe_instance()
        assert (info.id, info.state) == ("fc-jail", "Not started")
        assert sandbox.files.api_socket.is_socket() and sandbox.files.api_socket.stat().st_uid == jail.uid
        # What the chroot holds, and how: shared images linked and root-owned, the layer owned by the VMM,
        # the volume root-owned with one ACL entry for the VMM's uid.
        assert jail.host("vmlinux").samefile(placeholder_images.kernel)
        assert jail.host("rootfs.ext4").samefile(placeholder_images.rootfs_image)
        assert jail.host("rootfs.ext4").stat().st_uid == 0
        assert config.layer is not None and jail.host("layer.ext4").samefile(config.layer)
        assert (config.layer.stat().st_uid, stat.S_IMODE(config.layer.stat().st_mode)) == (jail.uid, 0o600)
        assert jail.host("vol0.ext4").samefile(volume)
        assert volume.stat().st_uid == 0
        assert acl.user_entries(volume) == {jail.uid: 6}
        assert jail.host("firecracker.log").stat().st_uid == jail.uid
        # Firecracker opens each of them as its uid (a drive is opened when it is put).
        await sandbox.configure()
        # unshare, the VMM's parent, holds the uid's and the volume's locks; the jailer closed them before exec.
        lock_files = {str(LOCK_DIR / f"{jail.uid}.lock"), str(tmp_path / "data.lock")}
        assert lock_files <= open_files(seen["unshare"])
        assert not lock_files & open_files(pid)
        assert uid_is_locked(jail.uid)

    try:
        sandbox = run_launched(backend, config, placeholder_images, scenario)
    finally:
        os.close(volume_lock)
    assert_undone(sandbox, seen["unshare"])
    assert acl.user_entries(volume) == {} and stat.S_IMODE(volume.stat().st_mode) == 0o644, "the volume as it was"
    assert "system.posix_acl_access" not in os.listxattr(volume)
    assert volume.stat().st_nlink == 1 and placeholder_images.kernel.stat().st_nlink == 1


def test_two_sandboxes_run_under_two_uids(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    async def main() -> list[int]:
        configs = [sandbox_config(vm_paths.pods / f"fc-uid{n}", tmp_path / f"d{n}") for n in range(2)]
        sandboxes = [await backend.launch(config, placeholder_images) for config in configs]
        try:
            return [int(status(sandbox.info.pid or 0)["Uid"].split()[0]) for sandbox in sandboxes]
        finally:
            for sandbox in sandboxes:
                await sandbox.destroy()

    for n in range(2):
        (tmp_path / f"d{n}").mkdir()
    uids = asyncio.run(main())
    assert uids[0] != uids[1], "two VMMs share a uid: one VMM escape would reach the other"
    for n in range(2):
        assert_only_logs_left(vm_paths.pods / f"fc-uid{n}")


def test_a_volume_without_the_pods_acl_entry_cannot_be_opened(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    """Least privilege, shown: the jailed VMM opens the volume only through the entry naming its uid."""
    config = sandbox_config(vm_paths.pods / "fc-acl", tmp_path, with_disks=True)

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        acl.revoke(sandbox.jail.host("vol0.ext4"), sandbox.jail.uid)
        with pytest.raises(FirecrackerApiError, match="Permission denied"):
            await sandbox.api.put_drive("vol0", Path("/vol0.ext4"), is_root_device=False, is_read_only=False)
        await sandbox.api.put_drive("vol0", Path("/vol0.ext4"), is_root_device=False, is_read_only=True)

    run_launched(backend, config, placeholder_images, scenario)


def test_images_on_another_filesystem_are_bind_mounted_read_only_and_unmounted(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the run directory")
    other = Path(tempfile.mkdtemp(dir=shm, prefix="podbay-test-"))
    try:
        images = placeholder(other)
        config = sandbox_config(vm_paths.pods / "fc-bind", tmp_path)

        async def scenario(sandbox: FirecrackerSandbox) -> None:
            mounted = mounts_under(sandbox.jail.run_dir)
            assert sorted(mounted) == sorted([sandbox.jail.host("vmlinux"), sandbox.jail.host("rootfs.ext4")])
            with pytest.raises(OSError) as caught:
                sandbox.jail.host("rootfs.ext4").open("r+b")  # even root: the bind is read-only
            assert caught.value.errno == errno.EROFS
            await sandbox.configure()

        run_launched(backend, config, images, scenario)
        assert mounts_under(other) == []
    finally:
        shutil.rmtree(other)


CONTROLLER = """
import asyncio, json, os, sys
from pathlib import Path
from podbay.images import ImageSet
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.firecracker.backend import FirecrackerBackend
from podbay.paths import PodbayPaths

state, run_dir, tmp = (Path(arg) for arg in sys.argv[1:])
images = ImageSet(kernel=tmp / "vmlinux", rootfs_image=tmp / "rootfs.ext4", rootfs_dir=tmp)
volumes = (VolumeAttachment("data", tmp / "data.ext4", "/data"),)
config = SandboxConfig(run_dir.name, run_dir, 1, 128, None, volumes)

async def main():
    sandbox = await FirecrackerBackend(PodbayPaths(cache=state, state=state)).launch(config, images)
    print(json.dumps({"pid": sandbox.info.pid, "unshare": sandbox._process.pid, "uid": sandbox.jail.uid}), flush=True)
    os._exit(0)  # the controller dies without destroying its sandbox

asyncio.run(main())
"""


def test_the_uid_stays_reserved_after_the_controller_dies_and_the_reaper_undoes_the_jail(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    run_dir = vm_paths.pods / "fc-orphan"
    config = sandbox_config(run_dir, tmp_path, with_disks=True)
    volume = config.volumes[0].image
    controller = subprocess.run(
        [sys.executable, "-c", CONTROLLER, str(vm_paths.state), str(run_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PODBAY_FIRECRACKER": str(find_firecracker(vm_paths)[0])},
    )
    assert controller.returncode == 0, controller.stderr
    orphan = json.loads(controller.stdout)
    try:
        assert is_running(orphan["pid"]) and is_running(orphan["unshare"])
        assert uid_is_locked(orphan["uid"]), "unshare holds the uid's lock while the VMM lives"
        lease = allocate_uid()
        try:
            assert lease.uid != orphan["uid"]
        finally:
            lease.release()
        assert acl.user_entries(volume) == {orphan["uid"]: 6}
    finally:
        asyncio.run(backend.reap(run_dir))
    for pid in (orphan["pid"], orphan["unshare"]):
        for _ in range(500):  # not our children: the host's init reaps them
            if not is_running(pid):
                break
            asyncio.run(asyncio.sleep(0.01))
        assert not is_running(pid)
    jail = jails.Jail.load(run_dir)
    assert jail is not None and [path for path in jail.cgroup_dirs if path.exists()] == []
    assert acl.user_entries(volume) == {} and stat.S_IMODE(volume.stat().st_mode) == 0o644
    assert not uid_is_locked(orphan["uid"])
    shutil.rmtree(run_dir)  # the platform's part of reaping


# ---- the API, through the jail ----------------------------------------------------------------------------


def test_the_configuration_sequence_is_accepted_and_reflected(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-config", tmp_path, with_disks=True)
    assert config.layer is not None
    seen: dict[str, int] = {}

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        seen["unshare"] = sandbox._process.pid
        info = await sandbox.api.describe_instance()
        assert (info.id, info.state, info.vmm_version, info.app_name) == (
            "fc-config",
            "Not started",
            VERSION,
            "Firecracker",
        )
        await sandbox.configure()
        machine = await sandbox.api.get_machine_config()
        assert (machine["vcpu_count"], machine["mem_size_mib"], machine["smt"]) == (2, 256, False)
        vm = await sandbox.api.get_vm_config()
        assert vm["machine-config"] == machine
        # Paths as the jailed Firecracker sees its chroot.
        assert vm["boot-source"]["kernel_image_path"] == "/vmlinux"
        assert vm["boot-source"]["boot_args"] == boot_args(config)
        assert [(d["drive_id"], d["path_on_host"], d["is_read_only"], d["is_root_device"]) for d in vm["drives"]] == [
            ("rootfs", "/rootfs.ext4", True, False),
            ("layer", "/layer.ext4", False, False),
            ("vol0", "/vol0.ext4", False, False),
        ]
        assert vm["vsock"] == {"guest_cid": 3, "uds_path": "/v.sock"}
        assert sandbox.files.vsock.is_socket(), "the hybrid vsock listens in the chroot, where the host reaches it"
        # /vm/config does not show metrics; that they are set shows in Firecracker refusing to set them twice.
        with pytest.raises(FirecrackerApiError, match="Reinitialization of metrics not allowed"):
            await sandbox.api.put_metrics(Path("/metrics.json"))
        # What the boot does next, before InstanceStart: the VMM keeps working with the chroot's root locked.
        jails.lock_down(sandbox.jail)
        root = sandbox.jail.chroot.stat()
        assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (0, 0, 0o711)
        await sandbox.api.put_drive("vol0", Path("/vol0.ext4"), is_root_device=False, is_read_only=False)
        assert (await sandbox.api.describe_instance()).state == "Not started"
        log = sandbox.files.log.read_text()
        assert f"[fc-config:main:INFO] Running Firecracker v{VERSION}" in log, "the log holds the start, with levels"
        assert '[fc-config:fc_api:INFO] The API server received a Put request on "/vsock"' in log
        assert sandbox.guest_mounts == [{"source": "/dev/vdc", "target": "/data", "fstype": "ext4"}]

    sandbox = run_launched(backend, config, placeholder_images, scenario)
    assert_undone(sandbox, seen["unshare"])
    assert firecracker_processes_under(vm_paths.state) == []


def test_the_boot_arguments_match_qemus_with_the_vsock_transport(tmp_path: Path) -> None:
    args = boot_args(sandbox_config(tmp_path / "fc-args", tmp_path, with_disks=True)).split()
    for word in ["console=ttyS0", "reboot=k", "panic=-1", "root=/dev/vda", "ro", "rootfstype=ext4"]:
        assert word in args
    assert args[-3:] == ["init=/sbin/podbay-init", "podbay.rw=/dev/vdb", "podbay.transport=vsock:1024"]


def test_the_logger_can_move_to_another_file_in_the_chroot(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "fc-logger", tmp_path)
    logged: dict[str, str] = {}

    async def scenario(sandbox: FirecrackerSandbox) -> None:
        other_log = sandbox.jail.host("api.log")
        other_log.touch()
        os.chown(other_log, sandbox.jail.uid, sandbox.jail.gid)
        await sandbox.api.put_logger(Path("/api.log"), "Debug", show_level=True, show_log_origin=True)
        await sandbox.api.describe_instance()
        logged["text"] = other_log.read_text()
        with pytest.raises(FirecrackerApiError, match="No such file or directory"):
            await sandbox.api.put_logger(tmp_path / "outside.log")  # nothing outside the chroot exists for it

    (tmp_path / "outside.log").touch()
    run_launched(backend, config, placeholder_images, scenario)
    assert 'The API server received a Get request on "/"' in logged["text"]
    assert "parsed_request.rs" in logged["text"], "show_log_origin adds the source file"


def test_bad_requests_fail_with_firecrackers_own_explanation(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
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
            await sandbox.api.put_drive("rootfs", Path("/missing.ext4"), is_root_device=False, is_read_only=True)
        with pytest.raises(FirecrackerApiError, match="not supported before starting the microVM"):
            await sandbox.api.pause()
        with pytest.raises(FirecrackerApiError, match="Cannot start microvm without kernel configuration"):
            await sandbox.api.start_instance()
        assert (await sandbox.api.describe_instance()).state == "Not started"

    run_launched(backend, config, placeholder_images, scenario)


def test_firecracker_dying_at_start_fails_with_its_own_words_and_leaves_nothing(
    backend: FirecrackerBackend, vm_paths: PodbayPaths, placeholder_images: ImageSet, tmp_path: Path
) -> None:
    config = sandbox_config(vm_paths.pods / "not a valid id", tmp_path)  # the jailer refuses ids with spaces
    with pytest.raises(GuestError, match=r"(?s)Firecracker \(or its jailer\) exited with status .*Invalid instance ID"):
        asyncio.run(backend.launch(config, placeholder_images))
    assert_only_logs_left(config.run_dir)
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
    assert sandbox.pid is not None
    vmm = status(sandbox.pid)
    assert int(vmm["Uid"].split()[0]) >= 1_000_000, "the booted VMM runs under the pod's own uid"
    assert "under its jailer" in sandbox.note
    assert pod.exec(["python3", "-c", "print(6 * 7)"]).stdout == "42\n"
    pod.files.write("/work/note.txt", "written through the vsock")
    assert pod.files.read("/work/note.txt") == b"written through the vsock"
    assert pod.exec(["sh", "-c", "grep -c ' /data ' /proc/mounts"]).stdout == "1\n", "the volume is mounted"
    pod.pause()
    pod.resume()
    assert pod.exec(["true"]).exit_code == 0
    pod.destroy()
    assert firecracker_processes_under(vm_paths.state) == []
