"""The image cache: keys follow their inputs, entries appear whole or not at all, misses say what to do.

No kernel or rootfs is built here: recipes and guest files are replaced by small temporary files.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

import podbay.images.kernel as kernel
import podbay.images.rootfs as rootfs
from podbay.errors import ImageMissing, PodbayError
from podbay.images import ImageSet, find_images, make_ext4
from podbay.images.cache import BuildLog, CacheEntry, content_key, kind_lock
from podbay.images.kernel import kernel_entry, unmet_options
from podbay.images.rootfs import base_entry, package_list, rootfs_entry
from podbay.paths import PodbayPaths


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the image modules at throw-away recipes and guest files under tmp_path/recipes."""
    root = tmp_path / "recipes"
    guest = root / "guest"
    guest.mkdir(parents=True)
    (root / "kernel.config").write_text("CONFIG_PVH=y\n")
    (root / "rootfs.packages").write_text("python3\n")
    (guest / "vminit.py").write_text("print('init')\n")
    (guest / "agent.py").write_text("print('agent')\n")
    monkeypatch.setattr(kernel, "FRAGMENT", root / "kernel.config")
    monkeypatch.setattr(kernel, "source_version", lambda: "6.1.0-test")
    monkeypatch.setattr(rootfs, "PACKAGES", root / "rootfs.packages")
    monkeypatch.setattr(rootfs, "GUEST_DIR", guest)
    return root


@pytest.fixture
def paths(tmp_path: Path) -> PodbayPaths:
    return PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")


def keys(images: Path) -> tuple[str, str, str]:
    return kernel_entry(images).key, base_entry(images).key, rootfs_entry(images).key


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


# --- keys


def test_content_key_is_stable_short_hex() -> None:
    key = content_key("kernel", [("a", b"1")])
    assert key == content_key("kernel", [("a", b"1")])
    assert len(key) == 16
    int(key, 16)


def test_content_key_separates_kinds_names_and_boundaries() -> None:
    key = content_key("kernel", [("a", b"12"), ("b", b"3")])
    assert key != content_key("rootfs", [("a", b"12"), ("b", b"3")])
    assert key != content_key("kernel", [("a", b"1"), ("b", b"23")])
    assert key != content_key("kernel", [("c", b"12"), ("b", b"3")])


def test_fragment_change_changes_only_the_kernel_key(recipes: Path, paths: PodbayPaths) -> None:
    before = keys(paths.images)
    (recipes / "kernel.config").write_text("CONFIG_PVH=y\nCONFIG_EXT4_FS=y\n")
    after = keys(paths.images)
    assert after[0] != before[0]
    assert after[1:] == before[1:]


def test_source_version_changes_the_kernel_key(
    recipes: Path, paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = kernel_entry(paths.images).key
    monkeypatch.setattr(kernel, "source_version", lambda: "6.1.0-newer")
    assert kernel_entry(paths.images).key != before


def test_guest_file_change_changes_rootfs_but_not_base(recipes: Path, paths: PodbayPaths) -> None:
    before = keys(paths.images)
    (recipes / "guest" / "agent.py").write_text("print('agent v2')\n")
    after = keys(paths.images)
    assert after[2] != before[2]
    assert after[:2] == before[:2]


def test_new_guest_module_changes_rootfs_key(recipes: Path, paths: PodbayPaths) -> None:
    before = rootfs_entry(paths.images).key
    (recipes / "guest" / "protocol.py").write_text("VERSION = 1\n")
    assert rootfs_entry(paths.images).key != before


def test_package_change_changes_base_and_rootfs(recipes: Path, paths: PodbayPaths) -> None:
    before = keys(paths.images)
    (recipes / "rootfs.packages").write_text("python3\nbusybox\n")
    after = keys(paths.images)
    assert after[0] == before[0]
    assert after[1] != before[1]
    assert after[2] != before[2]


def test_comments_in_package_list_do_not_change_keys(recipes: Path, paths: PodbayPaths) -> None:
    before = keys(paths.images)
    (recipes / "rootfs.packages").write_text("# the guest needs python\npython3  # full, not -minimal\n\n")
    assert keys(paths.images) == before


def test_unrelated_files_do_not_change_keys(recipes: Path, paths: PodbayPaths) -> None:
    before = keys(paths.images)
    (recipes / "guest" / "README.md").write_text("notes\n")
    (recipes / "other.config").write_text("CONFIG_SOUND=y\n")
    assert keys(paths.images) == before


def test_package_list_parsing() -> None:
    text = "# comment\npython3\n  sqlite3  # inline\n\n"
    assert package_list(text) == ["python3", "sqlite3"]


def test_unmet_options_lists_dropped_and_forced_options() -> None:
    fragment = (
        "# x\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=y\n# CONFIG_E is not set\n"
        'CONFIG_N=16\nCONFIG_S="x"\n'
    )
    final = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=m\nCONFIG_E=y\nCONFIG_N=8\nCONFIG_S="x"\n'
    assert unmet_options(fragment, final) == ["CONFIG_B=y", "CONFIG_D=y", "CONFIG_N=16", "CONFIG_E=n"]


def test_real_recipes_are_parsed() -> None:
    assert "python3" in package_list(rootfs.PACKAGES.read_text())
    fragment = kernel.FRAGMENT.read_text()
    assert "CONFIG_PVH=y" not in unmet_options(fragment, "CONFIG_PVH=y\n")
    assert "CONFIG_PVH=y" in unmet_options(fragment, "")
    assert "CONFIG_MODULES=n" in unmet_options(fragment, "CONFIG_MODULES=y\n")


# --- entries


def test_building_publishes_a_complete_entry(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "kernel", "0123456789abcdef")
    with entry.building() as tmp:
        (tmp / "vmlinux").write_text("elf")
        assert not entry.exists()  # nothing under the final name until the block ends
    assert (entry.path / "vmlinux").read_text() == "elf"
    assert list(tmp_path.glob(".tmp-*")) == []


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "kernel", "0123456789abcdef")
    with pytest.raises(RuntimeError), entry.building() as tmp:
        (tmp / "vmlinux").write_text("half")
        raise RuntimeError("compiler died")
    assert not entry.exists()
    assert list(tmp_path.glob(".tmp-*")) == []


def test_stale_temporary_dirs_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-kernel-dead-xyz").mkdir()
    (tmp_path / ".tmp-rootfs-other").mkdir()
    entry = CacheEntry(tmp_path, "kernel", "0123456789abcdef")
    with entry.building():
        pass
    assert not (tmp_path / ".tmp-kernel-dead-xyz").exists()
    assert (tmp_path / ".tmp-rootfs-other").exists()  # another kind's build may be running


def test_replace_swaps_an_existing_entry(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "rootfs", "0123456789abcdef")
    for content in ("old", "new"):
        with entry.building(replace=True) as tmp:
            (tmp / "rootfs.ext4").write_text(content)
    assert (entry.path / "rootfs.ext4").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs-0123456789abcdef"]


def test_kind_lock_waits_for_the_holder(tmp_path: Path) -> None:
    console_out = io.StringIO()
    console = Console(file=console_out, width=200)
    order: list[str] = []

    def second() -> None:
        with kind_lock(tmp_path, "kernel", console):
            order.append("second")

    with kind_lock(tmp_path, "kernel", console):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(timeout=5)
    assert order == ["first", "second"]
    assert "waiting for another podbay process" in console_out.getvalue()


# --- find_images


def test_find_images_names_both_missing_parts(recipes: Path, paths: PodbayPaths) -> None:
    with pytest.raises(ImageMissing, match=r"kernel and rootfs .* run `podbay images build`"):
        find_images(paths)


def test_find_images_names_the_one_missing_part(recipes: Path, paths: PodbayPaths) -> None:
    kernel_entry(paths.images).path.mkdir(parents=True)
    with pytest.raises(ImageMissing, match=r"guest rootfs for .* is not built"):
        find_images(paths)


def test_find_images_returns_the_current_entries(recipes: Path, paths: PodbayPaths) -> None:
    kernel_dir = kernel_entry(paths.images).path
    rootfs_dir = rootfs_entry(paths.images).path
    kernel_dir.mkdir(parents=True)
    rootfs_dir.mkdir(parents=True)
    assert find_images(paths) == ImageSet(
        kernel=kernel_dir / "vmlinux", rootfs_image=rootfs_dir / "rootfs.ext4", rootfs_dir=rootfs_dir / "tree"
    )
    (recipes / "guest" / "agent.py").write_text("print('changed')\n")
    with pytest.raises(ImageMissing, match="rootfs"):
        find_images(paths)  # an agent edit makes the old rootfs stale


def test_half_built_entry_does_not_count(recipes: Path, paths: PodbayPaths) -> None:
    for entry in (kernel_entry(paths.images), rootfs_entry(paths.images)):
        (entry.root / f".tmp-{entry.kind}-{entry.key}-abc").mkdir(parents=True)
    with pytest.raises(ImageMissing):
        find_images(paths)


# --- build log


def test_build_log_keeps_output_and_quotes_its_tail_on_failure(tmp_path: Path) -> None:
    log = BuildLog(tmp_path / "logs" / "x.log", quiet_console())
    log.run("say hello", [sys.executable, "-c", "print('hello')"])
    script = "import sys\nfor i in range(100): print(f'line {i}')\nsys.exit(3)"
    with pytest.raises(PodbayError, match=r"(?s)explode failed \(exit status 3\).*line 99") as info:
        log.run("explode", [sys.executable, "-c", script])
    assert "line 10\n" not in str(info.value)  # only the tail, not everything
    text = log.path.read_text()
    assert "hello" in text
    assert "line 0\n" in text


def test_build_log_shows_raw_output_on_a_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    log = BuildLog(tmp_path / "x.log", Console(file=out, force_terminal=True, color_system=None, width=120))
    log.run("odd output", [sys.executable, "-c", "print('[/bold] [mem 0x0-0x1] CC x.o')"])  # not rich markup
    assert "✓ odd output" in out.getvalue()


def test_build_log_names_a_missing_tool(tmp_path: Path) -> None:
    log = BuildLog(tmp_path / "x.log", quiet_console())
    with pytest.raises(PodbayError, match="no-such-builder is not installed"):
        log.run("build", ["no-such-builder", "--now"])


# --- make_ext4


def dumpe2fs(image: Path) -> str:
    return subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
@pytest.mark.parametrize("journal", [True, False])
def test_make_ext4_makes_a_sparse_labelled_filesystem(tmp_path: Path, journal: bool) -> None:
    image = tmp_path / "disk.ext4"
    make_ext4(image, 256, "scratch", journal=journal)
    assert image.stat().st_size == 256 * 2**20
    assert image.stat().st_blocks * 512 < 4 * 2**20  # sparse: the journal's zeros are not written
    header = dumpe2fs(image)
    assert "Filesystem volume name:   scratch" in header
    assert ("has_journal" in header) is journal


def test_make_ext4_refuses_a_non_positive_size(tmp_path: Path) -> None:
    with pytest.raises(PodbayError, match="must be positive"):
        make_ext4(tmp_path / "zero.ext4", 0, "x")


def test_make_ext4_reports_mkfs_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mkfs.ext4"
    fake.write_text("#!/bin/sh\necho 'disk on fire' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    image = tmp_path / "disk.ext4"
    with pytest.raises(PodbayError, match=r"mkfs.ext4 failed .*exit status 1.*disk on fire"):
        make_ext4(image, 16, "x")
    assert not image.exists()
