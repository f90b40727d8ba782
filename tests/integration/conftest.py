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
from podbay.paths import PodbayPaths


def qemu_processes_under(root: Path) -> list[int]:
    """PIDs of QEMU processes whose command line mentions `root` (our pods' run directories)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(root) in cmdline:
            pids.append(int(entry.name))
    return pids


def assert_nothing_left(paths: PodbayPaths) -> None:
    assert qemu_processes_under(paths.state) == [], "a QEMU process outlived its pod"
    leftovers = list(paths.pods.iterdir()) if paths.pods.exists() else []
    assert leftovers == [], f"pod run directories left behind: {leftovers}"


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
    return {**os.environ, "PODBAY_STATE": str(paths.state), "PODBAY_CACHE": str(paths.cache)}
