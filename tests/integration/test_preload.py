"""Shared read-only data through the platform: `create_agent(preload=PATH)` gives a clone of a template that
carries the file; its pool members carry it too; what cannot carry it says so. (The mechanism, and that
clones share the file's pages, is tested in test_qemu_template_preload.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from podbay import InvalidSpec, Platform, Unsupported

from .conftest import skip_unless_available

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preload") / "weights.bin"
    path.write_bytes(os.urandom(4 << 20))
    return path


def test_a_pod_and_a_pool_member_read_the_preloaded_file(platform: Platform, weights: Path) -> None:
    skip_unless_available(platform, "qemu")
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    pod = platform.create_agent(preload=str(weights))
    assert pod.info().origin == "template clone"
    check = ["sha256sum", "/opt/podbay/preload/weights.bin"]
    assert pod.exec(check).stdout.split()[0] == expected
    assert not pod.exec(["sh", "-c", "echo x > /opt/podbay/preload/weights.bin"]).ok, "the file is read-only"
    platform.pools.ensure(1, preload=str(weights), wait=300)
    member = platform.create_agent(preload=str(weights))
    assert member.info().origin == "pool claim"
    assert member.exec(check).stdout.split()[0] == expected
    plain = platform.create_agent()
    assert plain.info().origin == "template clone", "a pod without the file never takes a member that has it"
    assert not plain.exec(["test", "-e", "/opt/podbay/preload/weights.bin"]).ok


def test_what_cannot_carry_a_preloaded_file_says_so(platform: Platform, weights: Path) -> None:
    skip_unless_available(platform, "qemu")
    with pytest.raises(Unsupported, match="a cold boot cannot preload a file"):
        platform.create_agent(preload=str(weights), cold=True)
    with pytest.raises(InvalidSpec) as caught:
        platform.create_agent(preload="weights.bin")
    assert caught.value.field == "preload"
    with pytest.raises(InvalidSpec, match="preload"):
        platform.create_agent(preload=str(weights.parent / "missing.bin"))
    if platform.doctor()["runc"].available:
        with pytest.raises(Unsupported, match=r"^runc cannot preload a file"):
            platform.create_agent(backend="runc", preload=str(weights))
