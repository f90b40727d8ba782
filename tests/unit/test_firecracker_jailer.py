"""Firecracker's jail without starting anything: the cgroup choice, the exact command, the record the reaper
trusts, the ACL grant, the jailer lookup and what availability() says. Real jailed processes are tested in
tests/integration/test_firecracker.py."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podbay.errors import PodbayError
from podbay.isolation.base import Availability
from podbay.isolation.firecracker import acl
from podbay.isolation.firecracker import backend as firecracker_backend
from podbay.isolation.firecracker import jail as jails
from podbay.isolation.firecracker.backend import FirecrackerBackend, note
from podbay.isolation.firecracker.install import find_jailer
from podbay.isolation.firecracker.jail import Cgroups, Jail, Tools, detect_cgroups, jailer_command
from podbay.paths import PodbayPaths

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"


def offers(*controllers: str) -> Callable[[Path], set[str]]:
    return lambda root: set(controllers)


def test_cgroup_v2_is_chosen_where_its_unified_hierarchy_offers_memory_and_pids() -> None:
    setup = detect_cgroups(UNIFIED_MOUNTS, offers("cpuset", "cpu", "io", "memory", "pids"))
    assert setup == Cgroups(2, (Path("/sys/fs/cgroup"),))
    assert setup.settings(256) == [f"memory.max={(256 + 128) * 2**20}", "pids.max=64"]
    assert setup.dirs("pod-1") == (Path("/sys/fs/cgroup/podbay/pod-1"),)


def test_a_hybrid_host_uses_v1_when_the_unified_hierarchy_lacks_the_controllers() -> None:
    setup = detect_cgroups(HYBRID_MOUNTS, offers("hugetlb"))
    assert setup == Cgroups(1, (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")))
    assert setup.settings(512) == [f"memory.limit_in_bytes={(512 + 128) * 2**20}", "pids.max=64"]
    assert setup.dirs("pod-1") == (
        Path("/sys/fs/cgroup/memory/podbay/pod-1"),
        Path("/sys/fs/cgroup/pids/podbay/pod-1"),
    )


def test_v1_controllers_mounted_together_make_one_cgroup() -> None:
    mounts = "cgroup /sys/fs/cgroup/memory,pids cgroup rw,memory,pids 0 0\n"
    assert detect_cgroups(mounts, offers()) == Cgroups(1, (Path("/sys/fs/cgroup/memory,pids"),))


def test_no_usable_cgroups_is_a_reason() -> None:
    reason = detect_cgroups("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n", offers())
    assert reason == "no cgroup hierarchy offers the memory and pids controllers (v2: not mounted; v1: [])"


def a_jail(tmp_path: Path, **changes: Any) -> Jail:
    jail = Jail(
        run_dir=tmp_path,
        jail_id="pod-0123",
        exec_name="firecracker",
        uid=1_000_007,
        gid=1_000_007,
        cgroup_dirs=(Path("/sys/fs/cgroup/memory/podbay/pod-0123"),),
        grants=("vol0.ext4",),
    )
    return dataclasses.replace(jail, **changes)


def test_the_jailer_command_line(tmp_path: Path) -> None:
    tools = Tools(
        firecracker=Path("/opt/fc/firecracker"),
        jailer=Path("/opt/fc/jailer"),
        unshare=Path("/usr/bin/unshare"),
        cgroups=Cgroups(1, (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids"))),
    )
    jail = a_jail(tmp_path)
    assert jail.chroot == tmp_path / "j" / "firecracker" / "pod-0123" / "root"
    assert jailer_command(tools, jail, 256, ["--api-sock", "/fc.sock"]) == [
        "/usr/bin/unshare", "--pid", "--net", "--ipc", "--fork", "--kill-child", "--",
        "/opt/fc/jailer", "--id", "pod-0123", "--exec-file", "/opt/fc/firecracker",
        "--uid", "1000007", "--gid", "1000007", "--chroot-base-dir", str(tmp_path / "j"),
        "--cgroup-version", "1", "--parent-cgroup", "podbay",
        "--cgroup", f"memory.limit_in_bytes={384 * 2**20}", "--cgroup", "pids.max=64",
        "--", "--api-sock", "/fc.sock",
    ]  # fmt: skip


def test_the_record_round_trips_and_a_tampered_one_is_ignored(tmp_path: Path) -> None:
    jail = a_jail(tmp_path)
    jail.save()
    assert Jail.load(tmp_path) == jail
    for bad in (
        {"cgroup_dirs": (Path("/sys/fs/cgroup/memory"),)},  # the reaper would kill a whole hierarchy
        {"cgroup_dirs": (Path("/sys/fs/cgroup/memory/podbay/other-pod"),)},
        {"grants": ("../../volumes/x.ext4",)},
        {"jail_id": ".."},
    ):
        a_jail(tmp_path, **bad).save()
        assert Jail.load(tmp_path) is None, bad
    (tmp_path / "jail.json").write_text("{not json")
    assert Jail.load(tmp_path) is None
    assert Jail.load(tmp_path / "missing") is None


def test_an_acl_grant_is_taken_back_to_the_exact_mode(tmp_path: Path) -> None:
    image = tmp_path / "vol.ext4"
    image.write_bytes(b"")
    image.chmod(0o640)
    acl.grant(image, 1_000_001)
    acl.grant(image, 1_000_002, acl.READ)
    assert acl.user_entries(image) == {1_000_001: 6, 1_000_002: 4}
    assert stat.S_IMODE(image.stat().st_mode) == 0o660, "the group bits show the mask"
    acl.revoke(image, 1_000_001)
    assert acl.user_entries(image) == {1_000_002: 4}
    acl.revoke(image, 1_000_002)
    assert acl.user_entries(image) == {}
    assert stat.S_IMODE(image.stat().st_mode) == 0o640
    assert "system.posix_acl_access" not in os.listxattr(image)
    acl.revoke(image, 1_000_002)  # nothing to take back: untouched
    assert stat.S_IMODE(image.stat().st_mode) == 0o640


def test_a_shared_image_that_others_cannot_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    jail = a_jail(tmp_path)
    jail.chroot.mkdir(parents=True)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"")
    kernel.chmod(0o600)
    with pytest.raises(PodbayError, match=rf"is not world-readable \(mode 0600\).*chmod o\+r {kernel}$"):
        jails.place(jail, kernel, "vmlinux", "read")
    assert not jail.host("vmlinux").exists()


def script(path: Path, output: str) -> Path:
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_the_jailer_beside_firecracker_must_be_of_the_same_release(
    tmp_path: Path, paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PODBAY_JAILER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    firecracker = script(tmp_path / "firecracker", "Firecracker v1.12.1")
    assert find_jailer(paths, firecracker) == (
        None,
        f"the jailer is not installed (not beside {firecracker}, not on PATH, $PODBAY_JAILER unset, "
        f"not in {paths.cache / 'firecracker-v1.12.1'})",
    )
    jailer = script(tmp_path / "jailer", "Jailer v1.12.1")
    assert find_jailer(paths, firecracker) == (jailer, "beside firecracker")
    other = script(tmp_path / "other-jailer", "Jailer v1.7.0")
    monkeypatch.setenv("PODBAY_JAILER", str(other))
    jailer_found, reason = find_jailer(paths, firecracker)
    assert jailer_found is None
    assert reason == (
        f"the jailer {other} (from $PODBAY_JAILER) is v1.7.0 but Firecracker {firecracker} is v1.12.1: "
        "they must come from the same release"
    )


@pytest.fixture
def with_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the host has hardware KVM, to see what availability() says next (nothing is booted)."""
    monkeypatch.setattr(firecracker_backend, "hardware_kvm", lambda: Availability(True, "pretended"))


def fake_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    firecracker = script(directory / "firecracker", "Firecracker v1.12.1")
    script(directory / "jailer", "Jailer v1.12.1")
    monkeypatch.setenv("PODBAY_FIRECRACKER", str(firecracker))
    monkeypatch.delenv("PODBAY_JAILER", raising=False)
    return firecracker


@pytest.mark.usefixtures("with_kvm")
def test_with_kvm_a_missing_jailer_makes_firecracker_unavailable(
    tmp_path: Path, paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_binaries(tmp_path, monkeypatch)
    monkeypatch.setenv("PODBAY_JAILER", str(tmp_path / "no-jailer"))
    available = FirecrackerBackend(paths).availability()
    assert available == Availability(
        False,
        "Firecracker runs only under its jailer, which cannot run here: "
        f"$PODBAY_JAILER={tmp_path / 'no-jailer'} is not an executable file",
    )


@pytest.mark.usefixtures("with_kvm")
def test_with_kvm_the_jailer_needs_root(tmp_path: Path, paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_binaries(tmp_path, monkeypatch)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    available = FirecrackerBackend(paths).availability()
    assert not available.available
    assert available.reason.endswith(
        "the jailer needs root (it chroots, makes /dev/kvm in the chroot and drops to the pod's own uid)"
    )


@pytest.mark.usefixtures("with_kvm")
def test_with_kvm_and_the_jailer_firecracker_is_available_and_says_how_it_runs(
    tmp_path: Path, paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    firecracker = fake_binaries(tmp_path, monkeypatch)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(jails, "host_cgroups", lambda: Cgroups(1, (Path("/sys/fs/cgroup/memory"),)))
    available = FirecrackerBackend(paths).availability()
    assert available == Availability(
        True,
        f"{firecracker} (from $PODBAY_FIRECRACKER) under {firecracker.parent / 'jailer'} (cgroup v1); KVM: pretended",
    )


def test_a_binary_the_jailer_would_refuse_is_a_reason(tmp_path: Path, paths: PodbayPaths) -> None:
    binary = script(tmp_path / "vmm", "Firecracker v1.12.1")
    assert jails.jail_tools(paths, binary) == (
        "the jailer runs only a binary whose name contains 'firecracker', not 'vmm'"
    )


def test_the_note_says_it_runs_under_the_jailer_with_its_own_uid() -> None:
    assert FirecrackerBackend.describe().note == note()
    assert "under its jailer: chrooted, as a uid of its own, in cgroups (memory, pids)" in note()
    assert "as uid 1000042 (its own, gid 1000042)" in note(1_000_042)
    assert "new pid, network and IPC namespaces" in note(1_000_042)
