#!/usr/bin/python3 -IS
"""podbay guest init, installed as /sbin/podbay-init: PID 1 of a VM, then the agent in the same process.

The root filesystem is the shared read-only image; the pod's own writable disk (`podbay.rw=` on the kernel
command line) is laid over it with overlayfs, the process chroots into the merged tree and becomes the agent.
Every mount is a direct mount(2) call (the agent's): under TCG each fork+exec of a `mount` binary costs
~0.1-0.2 s, so a shell script doing the same took well over a second of every boot.
"""

import os
import sys

sys.path.insert(0, "/usr/lib/podbay")  # the same file in the old root and, after the chroot, the new one
import agent  # type: ignore[import-not-found]

NEW_ROOT = "/mnt/root"
LAYER = "/mnt/layer"
RESTRICTED = agent.MS_NOSUID | agent.MS_NODEV


def kernel_options() -> dict[str, str]:
    with open("/proc/cmdline") as file:
        words = file.read().split()
    return dict(word.split("=", 1) for word in words if word.startswith("podbay.") and "=" in word)


def prepare_root(options: dict[str, str]) -> int | None:
    """Overlay the pod's writable layer on the read-only root and move the API filesystems into it. Return a
    descriptor of the layer's ext4 (None without a layer disk): after the chroot the agent can reach it only
    so, and `freeze` needs it (FIFREEZE on the overlay itself is not supported)."""
    layer_disk = options.get("podbay.rw")
    layer_fd = None
    if layer_disk:
        agent.mount(layer_disk, LAYER, "ext4", agent.MS_NOATIME)
        layer_fd = os.open(LAYER, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        agent.mount("layer", LAYER, "tmpfs", 0, "mode=0755")  # no disk: the writable layer lives in memory
    for directory in ("upper", "work"):
        os.makedirs(f"{LAYER}/{directory}", exist_ok=True)
    agent.mount("overlay", NEW_ROOT, "overlay", 0, f"lowerdir=/,upperdir={LAYER}/upper,workdir={LAYER}/work")
    for api in ("/proc", "/sys", "/dev"):
        agent.mount(api, NEW_ROOT + api, "", agent.MS_MOVE)
    agent.mount("tmpfs", f"{NEW_ROOT}/tmp", "tmpfs", RESTRICTED, "mode=1777")
    agent.mount("tmpfs", f"{NEW_ROOT}/run", "tmpfs", RESTRICTED, "mode=0755")
    for directory in ("pts", "shm"):
        os.makedirs(f"{NEW_ROOT}/dev/{directory}", exist_ok=True)
    agent.mount(
        "devpts", f"{NEW_ROOT}/dev/pts", "devpts", agent.MS_NOSUID | agent.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"
    )
    agent.mount("shm", f"{NEW_ROOT}/dev/shm", "tmpfs", RESTRICTED, "mode=1777")
    os.chdir(NEW_ROOT)
    os.chroot(".")
    os.chdir("/")
    return layer_fd


def main() -> None:
    agent.mount("proc", "/proc", "proc", RESTRICTED | agent.MS_NOEXEC, busy_ok=True)
    agent.mount("sys", "/sys", "sysfs", RESTRICTED | agent.MS_NOEXEC, busy_ok=True)
    agent.mount("dev", "/dev", "devtmpfs", agent.MS_NOSUID, busy_ok=True)
    options = kernel_options()
    layer_fd = prepare_root(options)
    arguments = [f"--transport={options.get('podbay.transport', 'virtio-serial')}"]
    agent.main(arguments + ([f"--layer-fd={layer_fd}"] if layer_fd is not None else []))


if __name__ == "__main__":
    main()
