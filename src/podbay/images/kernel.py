"""The guest kernel: Debian's linux-source-6.1, ``tinyconfig`` plus the fragment in ``recipes/kernel.config``.

The result is the uncompressed ``vmlinux`` ELF, whose PVH entry note lets ``qemu-system-x86_64 -M microvm
-kernel`` boot it without firmware or a bzImage decompressor. The source is extracted once per Debian
package version and built out of tree (``make O=``) in a build directory that is kept, so a change to the
fragment recompiles only what the changed options touch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from podbay.errors import HostError
from podbay.images.cache import BuildLog, CacheEntry, content_key, human_size, kind_lock

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = Path(__file__).parent / "recipes" / "kernel.config"

_ASSIGNED = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", re.MULTILINE)
_DISABLED = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$", re.MULTILINE)
_COMPILED = re.compile(r"^\s+CC\s")


def source_version() -> str:
    """Version of the installed Debian kernel source package, or ``not-installed``."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:  # not a Debian host
        return "not-installed"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not-installed"


def kernel_entry(images: Path) -> CacheEntry:
    key = content_key(
        "kernel",
        [("fragment", FRAGMENT.read_bytes()), ("source-version", source_version().encode())],
    )
    return CacheEntry(images, "kernel", key)


def build_kernel(images: Path, console: Console, force: bool = False) -> Path:
    """Return the cached ``vmlinux``, building it first if needed (about 4 minutes on 2 cores)."""
    entry = kernel_entry(images)
    with kind_lock(images, "kernel", console):
        if entry.exists() and not force:
            return entry.path / "vmlinux"
        version = source_version()
        if version == "not-installed" or not SOURCE_TARBALL.exists():
            raise HostError(
                f"cannot build the guest kernel: {SOURCE_TARBALL} is missing; "
                f"install it with `apt-get install {SOURCE_PACKAGE}`"
            )
        log = BuildLog(entry.log_path, console)
        console.print(f"Building the guest kernel ({SOURCE_PACKAGE} {version}); log: {log.path}")
        source = _extracted_source(images, version, log)
        build_dir = images / f"kernel-build-{version}"
        if force:
            shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(exist_ok=True)
        _configure(source, build_dir, log)
        log.run(
            "compile vmlinux",
            ["make", "-C", build_dir, f"-j{os.cpu_count() or 1}", "vmlinux"],
            count=_COMPILED,
            count_label="compiled",
        )
        with entry.building(replace=force) as tmp:
            shutil.copy2(build_dir / "vmlinux", tmp / "vmlinux")
            shutil.copy2(build_dir / ".config", tmp / "config")
    vmlinux = entry.path / "vmlinux"
    console.print(f"kernel: {vmlinux} ({human_size(vmlinux.stat().st_size)})")
    return vmlinux


def _extracted_source(images: Path, version: str, log: BuildLog) -> Path:
    """The pristine source tree for *version*, extracted on first use (atomically, like an entry)."""
    source = images / f"linux-source-{version}"
    if (source / "Makefile").exists():
        return source
    tmp = images / f".tmp-linux-source-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log.run("extract kernel source", ["tar", "-xJf", SOURCE_TARBALL, "-C", tmp, "--strip-components=1"])
    shutil.rmtree(source, ignore_errors=True)
    tmp.rename(source)
    return source


def _configure(source: Path, build_dir: Path, log: BuildLog) -> None:
    log.run("make tinyconfig", ["make", "-C", source, f"O={build_dir}", "tinyconfig"])
    # merge_config.sh writes its temporary files into the current directory: run it in the build dir.
    log.run(
        "merge config fragment",
        [
            source / "scripts" / "kconfig" / "merge_config.sh",
            "-m",
            "-O",
            build_dir,
            build_dir / ".config",
            FRAGMENT,
        ],
        cwd=build_dir,
    )
    log.run("make olddefconfig", ["make", "-C", build_dir, "olddefconfig"])
    unmet = unmet_options(FRAGMENT.read_text(), (build_dir / ".config").read_text())
    if unmet:
        raise HostError(
            f"the final kernel config differs from {FRAGMENT} (an unmet dependency, or an option another "
            f"one selects; adjust the fragment), wanted: {', '.join(unmet)}"
        )


def unmet_options(fragment: str, final_config: str) -> list[str]:
    """The settings of *fragment* that *final_config* does not have, as ``CONFIG_X=y`` / ``CONFIG_X=n``.

    Kconfig drops a ``=y`` whose dependencies are off, clamps a value to its allowed range, and turns on an
    option the fragment disables when another option selects it, all without an error: this is the check
    that notices.
    """
    final = dict(_ASSIGNED.findall(final_config))
    changed = [f"{option}={value}" for option, value in _ASSIGNED.findall(fragment) if final.get(option) != value]
    forced = [f"{option}=n" for option in _DISABLED.findall(fragment) if option in final]
    return changed + forced
