#!/bin/busybox sh
# podbay initramfs /init for Debian's stock cloud kernel (the full-VM backend). That kernel builds virtio and
# overlayfs as modules, so it cannot reach the root disk alone: load them (dependencies first), mount the
# root disk read-only and hand over to the root's init, /sbin/podbay-init, which sets up the pod exactly as
# on the microVM.
set -eu
/bin/busybox mount -n -t proc proc /proc
# The applet links, in /bin: on busybox sh's default PATH, which podbay-init inherits (/sbin:/usr/sbin:/bin:/usr/bin).
/bin/busybox --install -s /bin
mount -n -t devtmpfs dev /dev
root=/dev/vda fstype=ext4 init=/sbin/podbay-init
for word in $(cat /proc/cmdline); do
  case "$word" in
    root=*) root="${word#root=}" ;;
    rootfstype=*) fstype="${word#rootfstype=}" ;;
    init=*) init="${word#init=}" ;;
  esac
done
while read -r module; do insmod "/modules/$module"; done </modules/load-order
# A disk shows up once virtio_blk has probed it; allow a slow, emulated machine a few seconds.
tries=0
until [ -b "$root" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 200 ]; then
    echo "podbay initramfs: the root disk $root did not appear" >&2
    exit 1  # PID 1 exits: the kernel panics and, with panic=-1 and -no-reboot, QEMU ends
  fi
  sleep 0.05
done
mount -n -t "$fstype" -o ro "$root" /newroot
umount -n /proc
mount -n --move /dev /newroot/dev  # podbay-init sees /dev mounted and keeps it
exec switch_root /newroot "$init"
