"""Integration fixtures: real QEMU microVMs (TCG here, KVM where the host has it) over the real cached images.

The image cache is the user's (built by `podbay images build`, which `make test` runs first); all state
(pods, volumes) goes to a private temporary directory, which must be empty of pods after every test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import Platform
from podbay.isolation.oci import mounts_under
from podbay.paths import PodbayPaths

ALL_BACKENDS = ("qemu", "qemu-q35", "firecracker", "gvisor", "runc")


def processes_mentioning(root: Path) -> list[str]:
    """Processes whose command line mentions `root` (our pods' run directories): VMMs, runtimes, gofers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(paths: PodbayPaths) -> None:
    assert processes_mentioning(paths.state) == [], "a sandbox process outlived its pod"
    assert mounts_under(paths.state) == [], "a root overlay or volume is still mounted on the host"
    leftovers = list(paths.pods.iterdir()) if paths.pods.exists() else []
    assert leftovers == [], f"pod run directories left behind: {leftovers}"


def skip_unless_available(platform: Platform, backend: str) -> None:
    availability = platform.doctor()[backend]
    if not availability.available:
        pytest.skip(f"{backend} cannot run on this host: {availability.reason}")


@pytest.fixture
def vm_paths(tmp_path: Path) -> Iterator[PodbayPaths]:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path / "state")
    yield paths
    assert_nothing_left(paths)


@pytest.fixture
def platform(vm_paths: PodbayPaths) -> Iterator[Platform]:
    with Platform(vm_paths) as platform:
        yield platform


@pytest.fixture(scope="module")
def shared_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodbayPaths]:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path_factory.mktemp("state"))
    yield paths
    assert_nothing_left(paths)


@pytest.fixture(scope="module")
def shared_platform(shared_paths: PodbayPaths) -> Iterator[Platform]:
    with Platform(shared_paths) as platform:
        yield platform


def cli_env(paths: PodbayPaths) -> dict[str, str]:
    # A wide terminal, so rich does not wrap the tables the tests read.
    return {**os.environ, "PODBAY_STATE": str(paths.state), "PODBAY_CACHE": str(paths.cache), "COLUMNS": "400"}
