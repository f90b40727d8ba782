"""A template carrying a host file (shared read-only data): its clones read the file's exact bytes from memory,
and N clones hold one copy of it, not N (real QEMU; the template in a private directory)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay.bench.leaks import processes_mentioning
from podbay.bench.memory import uss_pss_kib
from podbay.errors import InvalidSpec
from podbay.images import find_images
from podbay.isolation.base import SandboxConfig
from podbay.isolation.qemu.snapshot import start_clone
from podbay.isolation.qemu.template import (
    PRELOAD_DIR,
    ClonedSandbox,
    Template,
    TemplateShape,
    build_template,
    template_key,
)
from podbay.paths import PodbayPaths

from .conftest import private_template

pytestmark = pytest.mark.integration
SIZE = 96 << 20  # ~100 MB of random bytes: nothing in it dedupes or compresses
SHAPE = TemplateShape(memory_mib=256, volume_slots=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "weights.bin"
    with open(path, "wb") as file:
        for _ in range(SIZE >> 20):
            file.write(os.urandom(1 << 20))
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[Template]:
    yield from private_template(tmp_path_factory, SHAPE, preload=weights)


def memory_file_kib(pid: int, memory: Path) -> tuple[int, int]:
    """(Rss, Private_Clean + Private_Dirty) KiB of `pid`'s mapping of the template's memory file."""
    rss = private = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if words and "-" in words[0] and not words[0].endswith(":"):
            inside = words[-1] == str(memory)
        elif inside and words[0] == "Rss:":
            rss += int(words[1])
        elif inside and words[0] in ("Private_Clean:", "Private_Dirty:"):
            private += int(words[1])
    return rss, private


async def run(sandbox: ClonedSandbox, argv: list[str]) -> str:
    result = await (await sandbox.channel.start_process(argv, timeout=300)).wait()
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_clones_read_the_preloaded_file_and_share_its_pages(template: Template, weights: Path, tmp_path: Path) -> None:
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert template.preload is not None and template.preload.sha256 == expected
    guest_path = template.preload.guest_path
    assert guest_path == f"{PRELOAD_DIR}/weights.bin"

    async def scenario() -> None:
        clones: list[ClonedSandbox] = []
        try:
            for name in ("pod-aaaaaaaaaaaa", "pod-bbbbbbbbbbbb"):
                run_dir = tmp_path / name
                run_dir.mkdir()
                config = SandboxConfig(pod_id=name, run_dir=run_dir, vcpus=1, memory_mib=256, layer=None)
                clone = await start_clone(template, config)
                clones.append(clone)
                await clone.channel.request("init", env={}, mounts=[], clock=time.time())
            for clone in clones:  # every clone reads the whole file: its pages are then mapped by both QEMUs
                assert (await run(clone, ["sha256sum", guest_path])).split()[0] == expected
            # Read-only for the pod: writing fails, and so does replacing it.
            refused = await (await clones[0].channel.start_process(["sh", "-c", f"echo x >> {guest_path}"])).wait()
            assert refused.exit_code != 0
            await asyncio.sleep(2)  # idle
            for clone in clones:
                assert clone.info.pid is not None
                mapped, private = memory_file_kib(clone.info.pid, template.memory)
                uss, _ = uss_pss_kib(clone.info.pid)
                # The data is in memory, mapped in this clone (the guest just read it all) ...
                assert mapped * 1024 >= SIZE, f"only {mapped} KiB of the template's memory mapped"
                # ... but shared: neither the clone's private pages of the memory file nor its whole USS hold it.
                assert private * 1024 < SIZE / 8, f"{private} KiB of the template's memory are private to a clone"
                # (An idle clone's USS is ~35 MiB under TCG, most of it QEMU's translated code: bench/density.py.)
                assert uss * 1024 < SIZE * 2 / 3, f"a clone's USS is {uss} KiB with a {SIZE >> 10} KiB file"
        finally:
            for clone in clones:
                await clone.destroy()

    asyncio.run(scenario())
    assert processes_mentioning(tmp_path) == []


def test_the_file_is_part_of_the_key_and_must_fit(template: Template, weights: Path) -> None:
    images = find_images(PodbayPaths.from_env())
    plain = template_key(images, SHAPE, template.accelerator)
    carrying = template_key(images, SHAPE, template.accelerator, preload=weights)
    assert carrying == template.key != plain
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a rewritten file is another template
        assert template_key(images, SHAPE, template.accelerator, preload=weights) != carrying
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(InvalidSpec, match="preload"):
        asyncio.run(build_template(PodbayPaths.from_env(), TemplateShape(memory_mib=192), preload=weights))
