#!/bin/sh
# podbay guest init: PID 1 for the first few milliseconds of a microVM.
# The root filesystem is the shared read-only image; the pod's own writable disk (podbay.rw= on the kernel
# command line) is laid over it with overlayfs, then the agent replaces this shell as PID 1 inside that root.
set -eu
mount -n -t proc proc /proc
mount -n -t sysfs sys /sys
grep -q " /dev " /proc/mounts || mount -n -t devtmpfs dev /dev  # the kernel may have mounted it (DEVTMPFS_MOUNT)
rw=""
transport=virtio-serial  # how the agent reaches the host: QEMU's virtio-serial port, or vsock:PORT (Firecracker)
for word in $(cat /proc/cmdline); do
  case "$word" in
    podbay.rw=*) rw="${word#podbay.rw=}" ;;
    podbay.transport=*) transport="${word#podbay.transport=}" ;;
  esac
done
new=/mnt/root
if [ -n "$rw" ]; then
  mount -n -t ext4 -o noatime "$rw" /mnt/layer
else
  mount -n -t tmpfs -o mode=0755 layer /mnt/layer   # no disk given: the writable layer lives in memory
fi
mkdir -p /mnt/layer/upper /mnt/layer/work
mount -n -t overlay overlay -o "lowerdir=/,upperdir=/mnt/layer/upper,workdir=/mnt/layer/work" "$new"
for fs in proc sys dev; do mount -n --move "/$fs" "$new/$fs"; done
mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$new/tmp"
mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$new/run"
mkdir -p "$new/dev/pts" "$new/dev/shm"
mount -n -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$new/dev/pts" || true
mount -n -t tmpfs -o mode=1777,nosuid,nodev shm "$new/dev/shm"
cd "$new"
exec chroot . /usr/bin/python3 -I -S /usr/lib/podbay/agent.py --transport="$transport"
