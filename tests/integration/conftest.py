"""Integration fixtures: real QEMU microVMs (TCG here, KVM where the host has it) over the real cached images.

The image cache is the user's (built by `podbay images build`, which `make test` runs first); all state
(pods, volumes) goes to a private temporary directory, which must be empty of pods after every test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import Platform
from podbay.bench.leaks import host_leaks, processes_mentioning
from podbay.errors import ImageMissing
from podbay.images import find_images
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.qemu.template import Template, TemplateShape, build_template
from podbay.paths import PodbayPaths

ALL_BACKENDS = ("qemu", "qemu-q35", "firecracker", "gvisor", "runc")


def assert_nothing_left(paths: PodbayPaths) -> None:
    """No process, mount, loop device, run directory or anonymous volume of any pod under `paths.state`."""
    leaks = {kind: found for kind, found in host_leaks(paths, pod_ids=set()).items() if found}
    assert leaks == {}, f"pods left things behind: {leaks}"


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


def private_template(
    tmp_path_factory: pytest.TempPathFactory, shape: TemplateShape, preload: Path | None = None
) -> Iterator[Template]:
    """A QEMU template of `shape` built in a private directory (the image cache is the user's), for tests of
    the mechanism below the platform; no process may keep its files open once the module is done."""
    real = PodbayPaths.from_env()
    availability = QemuBackend(real).availability()
    if not availability.available:
        pytest.skip(availability.reason)
    try:
        images = find_images(real)
    except ImageMissing as missing:
        pytest.skip(str(missing))
    root = tmp_path_factory.mktemp("templates")
    yield asyncio.run(build_template(real, shape, images=images, root=root, preload=preload))
    assert processes_mentioning(root) == [], "no process may keep the template's files open"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    """The default shape's template (256 MiB, one volume slot), private to the test module."""
    yield from private_template(tmp_path_factory, TemplateShape(memory_mib=256, volume_slots=1))
