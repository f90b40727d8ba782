"""`podbay volume export` against volumes a guest crafted: the image is the guest's, so export must stay bounded
in memory, read what the guest had committed (journal replayed on a private copy, the volume untouched), and
refuse what is not what it claims — writing nothing at the destination then.

Real ext4 images (mke2fs -d, and a loop mount for the crashed-guest case); no VM.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import GuestError
from podbay.images.ext4 import make_ext4
from podbay.state import volumes
from podbay.state.volumes import VolumeStore

pytestmark = pytest.mark.security

MIB = 2**20
RSS_BOUND_MIB = 200


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    return VolumeStore(tmp_path / "volumes")


def volume_from(store: VolumeStore, name: str, contents: Path, size_mib: int = 64) -> Path:
    store.root.mkdir(parents=True, exist_ok=True)
    image = store.image(name)
    make_ext4(image, size_mib, label=name[:16], journal=True, contents=contents)
    return image


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            sha.update(chunk)
    return sha.hexdigest()


def export_in_child(store: VolumeStore, name: str, destination: Path, prelude: str = "") -> tuple[str, int]:
    """Export in a fresh process (its address space capped at 2 GiB, so an unbounded export fails rather than
    swamping the host). Returns (its one line: "ok" or the error, the peak RSS in KiB of the export: the largest
    of the process's own (VmHWM, which counts only after its exec, not the test's memory it was forked from)
    and of every tool it ran (RUSAGE_CHILDREN))."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from podbay.state import volumes
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        {prelude}
        try:
            volumes.VolumeStore(Path({str(store.root)!r})).export({name!r}, Path({str(destination)!r}))
            said = "ok"
        except Exception as exc:
            said = type(exc).__name__ + ": " + str(exc)
        status = open("/proc/self/status").read()
        own = int(status.split("VmHWM:")[1].split()[0])
        print(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), said)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak, said = result.stdout.strip().split(" ", 1)
    return said, int(peak)


@pytest.fixture
def sparse_bomb(store: VolumeStore, tmp_path: Path) -> Path:
    """A 64 MiB volume whose memory.db claims 64 GiB: all hole (a 268 KB image once made export hold 6 GB)."""
    contents = tmp_path / "contents"
    contents.mkdir()
    with (contents / "memory.db").open("wb") as f:
        f.truncate(64 * 2**30)
    image = volume_from(store, "bomb", contents)
    assert image.stat().st_blocks * 512 < 16 * MIB
    return image


def test_a_huge_sparse_file_is_refused_with_bounded_memory(
    store: VolumeStore, sparse_bomb: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    before = digest(sparse_bomb)
    said, peak_kib = export_in_child(store, "bomb", out / "memory.db")
    print(f"export of the sparse bomb: peak RSS {peak_kib / 1024:.1f} MiB: {said}")
    assert said.startswith("GuestError") and "more than the whole volume" in said, said
    assert peak_kib < RSS_BOUND_MIB * 1024, f"export peaked at {peak_kib} KiB"
    assert not out.exists() or not list(out.iterdir())
    assert digest(sparse_bomb) == before
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # the private copy is gone


def test_the_stream_itself_stops_at_the_volume_size(store: VolumeStore, sparse_bomb: Path, tmp_path: Path) -> None:
    """Even when the size check is fooled (here: patched out), debugfs's output is cut at the volume's size."""
    out = tmp_path / "out"
    fooled = "volumes._Workdir._regular_file_size = lambda self, inner, volume: 4096"
    said, peak_kib = export_in_child(store, "bomb", out / "memory.db", prelude=fooled)
    print(f"export of the sparse bomb, size check fooled: peak RSS {peak_kib / 1024:.1f} MiB: {said}")
    assert said.startswith("GuestError") and "more bytes than the whole volume" in said and "debugfs stopped" in said, (
        said
    )
    assert peak_kib < RSS_BOUND_MIB * 1024, f"export peaked at {peak_kib} KiB"
    assert not out.exists() or not list(out.iterdir())


def test_a_file_that_is_not_sqlite_is_refused_and_nothing_is_written(store: VolumeStore, tmp_path: Path) -> None:
    contents = tmp_path / "contents"
    contents.mkdir()
    (contents / "memory.db").write_bytes(os.urandom(256 * 1024))
    volume_from(store, "junk", contents)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GuestError, match="SQLite header"):
        store.export("junk", out / "memory.db")
    assert list(out.iterdir()) == []


def test_a_damaged_database_fails_the_integrity_check(store: VolumeStore, tmp_path: Path) -> None:
    contents = tmp_path / "contents"
    contents.mkdir()
    db = sqlite3.connect(contents / "memory.db")
    db.execute("CREATE TABLE notes (body TEXT)")
    db.executemany("INSERT INTO notes VALUES (?)", [(f"note {i}" * 20,) for i in range(2000)])
    db.commit()
    db.close()
    data = bytearray((contents / "memory.db").read_bytes())
    page = 4096
    data[3 * page + 100 : 3 * page + 400] = os.urandom(300)  # inside a b-tree page; the header stays intact
    (contents / "memory.db").write_bytes(bytes(data))
    volume_from(store, "damaged", contents)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GuestError, match="not a sound SQLite database"):
        store.export("damaged", out / "memory.db")
    assert list(out.iterdir()) == []


# --- a guest killed mid-work: its committed rows are in the ext4 journal, not yet in place ---


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image, mount point): a loop mount on the host, as the guest's kernel would mount the volume (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a loop mount needs root")
    store = VolumeStore(tmp_path / "volumes")
    image, _ = store.ensure("crash", 64)
    point = tmp_path / "mnt"
    point.mkdir()
    result = subprocess.run(["mount", "-o", "loop", str(image), str(point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {result.stderr.strip()}")
    try:
        yield image, point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def crash_copy(image: Path, before: Path, crashed: Path) -> None:
    """What the host holds after the VMM is killed between the journal's commit and its checkpoint: the
    mounted image as it is now (data in place, ordered mode), with every block the journal logs put back as
    it was in *before*, so only a journal replay shows the new metadata."""
    shutil.copyfile(image, crashed)
    log = subprocess.run(
        ["debugfs", "-c", "-R", "logdump -a", str(crashed)], capture_output=True, text=True, check=True
    )
    logged = {int(block) for block in re.findall(r"FS block (\d+) logged", log.stdout)}
    assert logged, log.stdout
    with before.open("rb") as old, crashed.open("r+b") as new:
        for block in logged:
            old.seek(block * 4096)
            new.seek(block * 4096)
            new.write(old.read(4096))


def test_export_replays_the_journal_of_a_crashed_guest_on_a_copy(mounted: tuple[Path, Path], tmp_path: Path) -> None:
    image, point = mounted
    subprocess.run(["sync"], check=True)
    before = tmp_path / "before.ext4"
    shutil.copyfile(image, before)
    script = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA synchronous=OFF')  # one journal transaction (the sync below) holds all the metadata\n"
        "db.execute('CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)')\n"
        "for i in range(100):\n"
        "    db.execute('INSERT INTO notes (body) VALUES (?)', (f'note {i}',))\n"
        "os._exit(0)  # killed: no checkpoint, no close\n"
    )
    subprocess.run([sys.executable, "-c", script, str(point / "memory.db")], check=True)
    assert (point / "memory.db-wal").stat().st_size > 0
    subprocess.run(["sync"], check=True)  # committed: in the journal; checkpointed in place maybe not
    crashed = tmp_path / "crashed.ext4"
    crash_copy(image, before, crashed)

    header = subprocess.run(["dumpe2fs", "-h", str(crashed)], capture_output=True, text=True, check=True).stdout
    assert "needs_recovery" in header
    naive = subprocess.run(["debugfs", "-c", "-R", "ls /", str(crashed)], capture_output=True, text=True).stdout
    assert "memory.db-wal" not in naive  # without a replay the log and its rows do not exist

    crashed_volume = VolumeStore(tmp_path / "crashed-volumes")
    crashed_volume.root.mkdir()
    target = crashed_volume.image("crash")
    shutil.copyfile(crashed, target)
    sha = digest(target)
    exported = crashed_volume.export("crash", tmp_path / "out" / "memory.db")
    bodies = [b for (b,) in sqlite3.connect(exported).execute("SELECT body FROM notes ORDER BY id")]
    assert bodies == [f"note {i}" for i in range(100)]
    assert digest(target) == sha  # replayed on a private copy: the volume is as the guest left it
    assert "needs_recovery" in subprocess.run(["dumpe2fs", "-h", str(target)], capture_output=True, text=True).stdout


def test_a_symlink_in_the_volume_never_reaches_the_host(store: VolumeStore, tmp_path: Path) -> None:
    contents = tmp_path / "contents"
    contents.mkdir()
    (contents / "memory.db").symlink_to("/etc/passwd")
    volume_from(store, "links", contents)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GuestError, match="not a regular file"):
        store.export("links", out / "memory.db")
    assert list(out.iterdir()) == []


def test_every_tool_that_reads_the_guests_bytes_runs_confined(
    store: VolumeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ensure("notes", 32)
    calls: list[list[str]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        return real_run(argv, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "run", spy)  # the module volumes uses
    store.export("notes", tmp_path / "memory.db")
    tools = {Path(next(a for a in argv[1:] if a.startswith("/") and "setpriv" not in a)).name for argv in calls}
    assert {"e2fsck", "debugfs", Path(sys.executable).name} <= tools, calls
    for argv in calls:
        assert Path(argv[0]).name == "prlimit", argv
        assert f"--as={volumes.TOOL_MEMORY_BYTES}" in argv and "--core=0" in argv, argv
        assert any(a.startswith("--cpu=") for a in argv) and any(a.startswith("--fsize=") for a in argv), argv
        if os.geteuid() == 0 and sys.executable not in argv:
            nobody = pwd.getpwnam("nobody")
            assert f"--reuid={nobody.pw_uid}" in argv and "--clear-groups" in argv and "--no-new-privs" in argv, argv
