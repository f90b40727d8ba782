#!/usr/bin/python3 -IS
"""podbay guest init, installed as /sbin/podbay-init: PID 1 of a VM, then the agent in the same process.

The root filesystem is the shared read-only image; the pod's own writable disk (`podbay.rw=` on the kernel
command line) is laid over it with overlayfs, the process chroots into the merged tree and becomes the agent.
Every mount is a direct mount(2) call: under TCG each fork+exec of a `mount` binary costs ~0.1-0.2 s, so a
shell script doing the same took well over a second of every boot.
"""

import ctypes
import errno
import os
import sys

GUEST_LIB = "/usr/lib/podbay"
NEW_ROOT = "/mnt/root"
LAYER = "/mnt/layer"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_MOVE = 1, 2, 4, 8, 1024, 8192

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "", busy_ok: bool = False) -> None:
    result = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if result != 0:
        code = ctypes.get_errno()
        if busy_ok and code == errno.EBUSY:
            return  # already mounted (by the kernel or an initramfs)
        raise OSError(code, f"mount {fstype} {source} on {target}: {os.strerror(code)}")


def kernel_options() -> dict[str, str]:
    with open("/proc/cmdline") as file:
        words = file.read().split()
    return dict(word.split("=", 1) for word in words if word.startswith("podbay.") and "=" in word)


def prepare_root(options: dict[str, str]) -> None:
    """Overlay the pod's writable layer on the read-only root and move the API filesystems into it."""
    layer_disk = options.get("podbay.rw")
    if layer_disk:
        mount(layer_disk, LAYER, "ext4", MS_NOATIME)
    else:
        mount("layer", LAYER, "tmpfs", 0, "mode=0755")  # no disk: the writable layer lives in memory
    for directory in ("upper", "work"):
        os.makedirs(f"{LAYER}/{directory}", exist_ok=True)
    mount("overlay", NEW_ROOT, "overlay", 0, f"lowerdir=/,upperdir={LAYER}/upper,workdir={LAYER}/work")
    for api in ("/proc", "/sys", "/dev"):
        mount(api, NEW_ROOT + api, "", MS_MOVE)
    mount("tmpfs", f"{NEW_ROOT}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", f"{NEW_ROOT}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for directory in ("pts", "shm"):
        os.makedirs(f"{NEW_ROOT}/dev/{directory}", exist_ok=True)
    mount("devpts", f"{NEW_ROOT}/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")
    mount("shm", f"{NEW_ROOT}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.chdir(NEW_ROOT)
    os.chroot(".")
    os.chdir("/")


def main() -> None:
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, busy_ok=True)
    mount("sys", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, busy_ok=True)
    mount("dev", "/dev", "devtmpfs", MS_NOSUID, busy_ok=True)
    options = kernel_options()
    prepare_root(options)
    sys.path.insert(0, GUEST_LIB)
    import agent  # type: ignore[import-not-found]  # from the new root, after the chroot

    agent.main([f"--transport={options.get('podbay.transport', 'virtio-serial')}"])


if __name__ == "__main__":
    main()
