"""The guest root filesystem: Debian bookworm (minbase + python3) plus podbay's guest files.

Two cache entries, so that editing the guest agent never re-runs mmdebstrap:

* ``rootfs-base-<key>/tree``: the mmdebstrap tree, keyed by the package list and mmdebstrap's options;
* ``rootfs-<key>/{tree,rootfs.ext4}``: the base plus ``/sbin/podbay-init`` and ``/usr/lib/podbay/*.py``,
  keyed by the base key and the guest files, as a directory (the OCI bundle root of runc and gVisor) and as
  a read-only ext4 image (the microVM's ``/dev/vda``; ext4 rather than squashfs: nothing to decompress
  under TCG).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from podbay.errors import HostError
from podbay.images.cache import BuildLog, CacheEntry, content_key, human_size, kind_lock, tree_size

PACKAGES = Path(__file__).parent / "recipes" / "rootfs.packages"
GUEST_DIR = Path(__file__).parents[1] / "guest"
GUEST_LIB = "usr/lib/podbay"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# The security and updates suites too: a sandbox image should not ship a Python with known holes.
SOURCES = [
    f"deb {MIRROR} {SUITE} main",
    f"deb {MIRROR} {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
]
# Documentation, manuals and translations are a third of the tree and nobody reads them in a pod;
# the copyright files stay (licences travel with the binaries).
MMDEBSTRAP_OPTIONS = [
    "--variant=minbase",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/lintian/*",
]
# A read-only image needs no journal nor reserved blocks; the slack leaves room for filesystem metadata.
SLACK = 1.2
# The guest kernel has no IPv6 (see kernel.config): localhost is only 127.0.0.1.
HOSTS = "127.0.0.1\tlocalhost pod\n"


def package_list(text: str) -> list[str]:
    """Package names of a ``rootfs.packages`` text: one per line, ``#`` starts a comment."""
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [name for name in names if name]


def guest_files() -> list[Path]:
    """The files copied into the image: every guest Python module (``vminit.py`` is the VM's init), sorted."""
    return sorted(GUEST_DIR.glob("*.py"))


def base_entry(images: Path) -> CacheEntry:
    parts = [
        ("packages", "\n".join(package_list(PACKAGES.read_text())).encode()),
        ("options", "\n".join([*MMDEBSTRAP_OPTIONS, SUITE, *SOURCES]).encode()),
    ]
    return CacheEntry(images, "rootfs-base", content_key("rootfs-base", parts))


def rootfs_entry(images: Path) -> CacheEntry:
    parts = [("base", base_entry(images).key.encode())]
    parts += [(f"guest/{path.name}", path.read_bytes()) for path in guest_files() if path.exists()]
    return CacheEntry(images, "rootfs", content_key("rootfs", parts))


def build_rootfs(images: Path, console: Console, force: bool = False) -> CacheEntry:
    """Return the cached rootfs entry (``tree/`` and ``rootfs.ext4``), building what is missing."""
    base = _build_base(images, console, force)
    entry = rootfs_entry(images)
    with kind_lock(images, "rootfs", console):
        if entry.exists() and not force:
            return entry
        _require_root()
        log = BuildLog(entry.log_path, console)
        console.print(f"Building the guest root filesystem; log: {log.path}")
        with entry.building(replace=force) as tmp:
            tree = tmp / "tree"
            # Hard links: no copy of the 200 MB base. Files changed below are replaced, never written in
            # place, so the base entry stays untouched.
            log.run("link the base tree", ["cp", "-al", base.path / "tree", tree])
            with log.step("add podbay guest files"):
                _install_guest_files(tree)
            log.run(
                "precompile guest modules",
                ["chroot", tree, "/usr/bin/python3", "-m", "compileall", "-q", f"/{GUEST_LIB}"],
            )
            _make_image(tree, tmp / "rootfs.ext4", log)
    _report(entry, console)
    return entry


def _build_base(images: Path, console: Console, force: bool) -> CacheEntry:
    entry = base_entry(images)
    with kind_lock(images, "rootfs-base", console):
        if entry.exists() and not force:
            return entry
        _require_root()
        log = BuildLog(entry.log_path, console)
        console.print(f"Building the Debian {SUITE} base tree with mmdebstrap; log: {log.path}")
        packages = ",".join(package_list(PACKAGES.read_text()))
        with entry.building(replace=force) as tmp:
            log.run(
                "mmdebstrap",
                ["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={packages}", SUITE, tmp / "tree", *SOURCES],
            )
    return entry


def _require_root() -> None:
    # mmdebstrap's root mode keeps real owners and device nodes, and the precompile step runs in a chroot.
    if os.geteuid() != 0:
        raise HostError("building the guest root filesystem needs root: run `sudo podbay images build`")


def _install_guest_files(tree: Path) -> None:
    for path in guest_files():
        if not path.exists():
            continue
        if path.name == "vminit.py":
            _replace_file(tree / "sbin/podbay-init", path.read_bytes(), 0o755)
        else:
            _replace_file(tree / GUEST_LIB / path.name, path.read_bytes(), 0o644)
    for mountpoint in ("mnt/layer", "mnt/root", "data", "work"):
        (tree / mountpoint).mkdir(parents=True, exist_ok=True)
    # Every pod boots the same image: an empty machine-id (not a shared one) lets systemd-less tools
    # treat it as unset, and the hostname is the same generic name everywhere.
    _replace_file(tree / "etc/machine-id", b"", 0o444)
    _replace_file(tree / "etc/hostname", b"pod\n", 0o644)
    _replace_file(tree / "etc/hosts", HOSTS.encode(), 0o644)
    # mmdebstrap copied the build host's resolver; a pod has no network unless it asks for egress.
    (tree / "etc/resolv.conf").unlink(missing_ok=True)


def _replace_file(path: Path, content: bytes, mode: int) -> None:
    """Write *path* as a new inode: the tree is hard-linked to the base; writing in place changes both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_bytes(content)
    path.chmod(mode)


def _make_image(tree: Path, image: Path, log: BuildLog) -> None:
    used, inodes = tree_size(tree)
    size_mib = int(used * SLACK / 2**20) + 16
    with image.open("wb") as disk:
        disk.truncate(size_mib * 2**20)
    log.run(
        f"pack rootfs.ext4 ({size_mib} MiB)",
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-L",
            "podbay-root",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-N",
            str(int(inodes * SLACK) + 1024),
            "-d",
            tree,
            image,
        ],
    )


def _report(entry: CacheEntry, console: Console) -> None:
    image = entry.path / "rootfs.ext4"
    used, _ = tree_size(entry.path / "tree")
    allocated = os.stat(image).st_blocks * 512
    console.print(
        f"rootfs: {entry.path}  (tree {human_size(used)}, rootfs.ext4 {human_size(image.stat().st_size)}"
        f" apparent, {human_size(allocated)} on disk)"
    )
