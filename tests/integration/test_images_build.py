"""The built images hold what the backends rely on, and the kernel boots the root filesystem under QEMU.

These use the images in the cache (``podbay images build`` first); they are skipped when none are built.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from podbay.errors import ImageMissing
from podbay.images import ImageSet, find_images
from podbay.images.kernel import FRAGMENT, unmet_options
from podbay.paths import PodbayPaths

pytestmark = pytest.mark.integration

PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU looks for in an ELF kernel
QEMU = "qemu-system-x86_64"
MICROVM = "microvm,x-option-roms=off,acpi=off"


@pytest.fixture(scope="module")
def images() -> ImageSet:
    try:
        return find_images(PodbayPaths.from_env())
    except ImageMissing as missing:
        pytest.skip(str(missing))


def elf_notes(path: Path) -> list[tuple[str, int]]:
    """(owner, type) of every note in the PT_NOTE segments of a little-endian ELF64 file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not an ELF64 file"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    notes: list[tuple[str, int]] = []
    for index in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        if p_type != PT_NOTE:
            continue
        offset, end = p_offset, p_offset + p_filesz
        while offset + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", data, offset)
            name = data[offset + 12 : offset + 12 + namesz].rstrip(b"\0").decode()
            notes.append((name, note_type))
            offset += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return notes


def test_kernel_is_an_elf_with_a_pvh_entry(images: ImageSet) -> None:
    assert ("Xen", XEN_ELFNOTE_PHYS32_ENTRY) in elf_notes(images.kernel)


def test_kernel_config_has_every_fragment_setting(images: ImageSet) -> None:
    config = (images.kernel.parent / "config").read_text()
    assert unmet_options(FRAGMENT.read_text(), config) == []


def test_rootfs_tree_has_python_init_and_agent(images: ImageSet) -> None:
    tree = images.rootfs_dir
    assert os.access(tree / "usr/bin/python3", os.X_OK)
    init = tree / "sbin/podbay-init"
    assert init.stat().st_mode & 0o777 == 0o755
    assert init.read_bytes() == (Path(__file__).parents[2] / "src/podbay/guest/vminit.py").read_bytes()
    assert (tree / "usr/lib/podbay/agent.py").is_file()
    assert (tree / "usr/lib/podbay/protocol.py").is_file()
    for mountpoint in ("mnt/layer", "mnt/root", "data", "work", "proc", "sys", "dev", "tmp", "run"):
        assert (tree / mountpoint).is_dir(), mountpoint
    # Without CONFIG_DEVTMPFS_MOUNT the kernel opens PID 1's stdio on the image's own /dev/console.
    assert stat.S_ISCHR((tree / "dev/console").lstat().st_mode)
    assert (tree / "etc/machine-id").read_text() == ""
    assert (tree / "etc/hostname").read_text() == "pod\n"


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")
def test_rootfs_image_is_a_journal_less_ext4_of_the_tree(images: ImageSet) -> None:
    header = subprocess.run(
        ["dumpe2fs", "-h", str(images.rootfs_image)], capture_output=True, text=True, check=True
    ).stdout
    assert "Filesystem volume name:   podbay-root" in header
    assert "has_journal" not in header
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /usr/lib/podbay", str(images.rootfs_image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "agent.py" in listing


@pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"needs {QEMU}")
def test_kernel_boots_the_rootfs_and_runs_python(images: ImageSet) -> None:
    # Python as init proves the kernel finds the virtio disk, mounts the ext4 root and runs the Debian userland
    # (sqlite3 and ctypes load); its exit panics the kernel, which -no-reboot turns into QEMU's exit.
    # The program is passed as plain init arguments, not after `--`: QEMU appends the virtio_mmio.device=
    # announcements at the end of the command line, and after `--` init would get them instead of the
    # kernel. Such a token must hold no '=' (it would become an environment variable) nor '.' (a module
    # parameter), hence __import__ and getattr.
    program = "print('podbay-boot-ok',getattr(__import__('sqlite3'),'sqlite_version'),__import__('ctypes'))"
    cmdline = f"console=ttyS0 reboot=t panic=-1 root=/dev/vda ro rootfstype=ext4 init=/usr/bin/python3 -c {program}"
    result = subprocess.run(
        [
            QEMU,
            "-M",
            MICROVM,
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(images.kernel),
            "-append",
            cmdline,
            "-drive",
            f"id=root,file={images.rootfs_image},format=raw,if=none,readonly=on",
            "-device",
            "virtio-blk-device,drive=root",
            "-serial",
            "stdio",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "podbay-boot-ok 3." in result.stdout, result.stdout[-3000:]
    assert "module 'ctypes'" in result.stdout
