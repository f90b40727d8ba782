"""Content-addressed build cache for images, and the progress display of the slow steps that fill it.

An entry is a directory ``<images>/<kind>-<key>/`` where *key* is a hash of everything that went into it.
It is built in a hidden temporary directory next to its final place and renamed into place only once
complete, so a directory under its final name is always whole; an interrupted build leaves only a
``.tmp-*`` directory that the next build of that kind removes. One ``fcntl`` lock per kind keeps two
concurrent builds (two terminals, two test sessions) from working in the same place.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from podbay.errors import HostError

# Bump when the build procedure changes in a way the hashed inputs do not show (new steps, other flags):
# every key changes with it, so stale artefacts are never reused.
BUILDER_VERSION = "1"

KEY_LENGTH = 16
LOG_TAIL_LINES = 40


def content_key(kind: str, parts: Iterable[tuple[str, bytes]]) -> str:
    """Hash named inputs into a short hex key.

    Each name and content is length-prefixed so that moving bytes from one input to the next can never
    produce the same key.
    """
    digest = hashlib.sha256()
    for name, data in [("kind", kind.encode()), ("builder", BUILDER_VERSION.encode()), *parts]:
        for field in (name.encode(), data):
            digest.update(len(field).to_bytes(8, "little"))
            digest.update(field)
    return digest.hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class CacheEntry:
    """One artefact of the cache: ``<root>/<kind>-<key>/``."""

    root: Path
    kind: str
    key: str

    @property
    def path(self) -> Path:
        return self.root / f"{self.kind}-{self.key}"

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / f"{self.kind}-{self.key}.log"

    def exists(self) -> bool:
        return self.path.is_dir()

    @contextmanager
    def building(self, replace: bool = False) -> Iterator[Path]:
        """Yield an empty temporary directory; publish it as :attr:`path` if the block succeeds.

        Call with the kind's lock held. With ``replace`` an existing entry is swapped out; otherwise an
        existing entry is an error (the caller should have reused it).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".tmp-{self.kind}-*"):
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.kind}-{self.key}-", dir=self.root))
        try:
            yield tmp
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the tree is read by other users (runc bundles)
            if replace and self.exists():
                old = self.root / f".tmp-{self.kind}-old-{self.key}"
                self.path.rename(old)
                shutil.rmtree(old)
            tmp.rename(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def kind_lock(root: Path, kind: str, console: Console) -> Iterator[None]:
    """Hold the build lock of one kind of artefact (blocks while another process builds it)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{kind}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"[yellow]waiting for another podbay process building the {kind}…[/]")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class BuildLog:
    """A build's full log file plus a live, one-line-per-step progress display on the console.

    The console shows a spinner, the elapsed time and the latest output line of the running step; the
    file keeps every line, and a failure raises :class:`PodbayError` quoting the file's tail.
    """

    def __init__(self, path: Path, console: Console) -> None:
        self.path = path
        self.console = console
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def _write(self, text: str) -> None:
        with self.path.open("a") as log:
            log.write(text)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Show *title* as running with its elapsed time while the block runs; print ✓ and the time after."""
        started = time.monotonic()
        self._write(f"\n=== {title}\n")
        with self._progress() as progress:
            progress.add_task(title, total=None, detail="")
            yield
        self.console.print(f"[green]✓[/] {title} [dim]({format_seconds(time.monotonic() - started)})[/]")

    def run(
        self,
        title: str,
        cmd: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        count: re.Pattern[str] | None = None,
        count_label: str = "",
    ) -> None:
        """Run *cmd* as one step, logging its output; lines matching *count* are counted on screen."""
        started = time.monotonic()
        argv = [str(arg) for arg in cmd]
        self._write(f"\n=== {title}\n$ {' '.join(argv)}\n")
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        with self._progress() as progress, self.path.open("a") as log:
            task = progress.add_task(title, total=None, detail="")
            proc = _start(argv, cwd)
            assert proc.stdout is not None  # stdout=PIPE guarantees it
            matched = 0
            try:
                for line in proc.stdout:
                    log.write(line)
                    tail.append(line.rstrip())
                    if count is not None and count.search(line):
                        matched += 1
                    detail = f"{matched} {count_label}  " if count is not None else ""
                    progress.update(task, detail=detail + line.strip()[:60])
            except BaseException:  # Ctrl-C or a display error: do not leave a compiler running
                proc.kill()
                proc.wait()
                raise
            returncode = proc.wait()
        if returncode != 0:
            raise HostError(
                f"{title} failed (exit status {returncode}). Last lines of {self.path}:\n" + "\n".join(tail)
            )
        self.console.print(f"[green]✓[/] {title} [dim]({format_seconds(time.monotonic() - started)})[/]")

    def _progress(self) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}", markup=False, style="dim"),  # raw output: no markup
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,  # a log file or CI gets the ✓ lines only
        )


def _start(argv: list[str], cwd: Path | None) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as missing:
        raise HostError(f"{argv[0]} is not installed (needed to build the guest images)") from missing


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)} m {secs:04.1f} s" if minutes else f"{secs:.1f} s"


def tree_size(root: Path) -> tuple[int, int]:
    """Return (bytes allocated in 4 KiB blocks, number of inodes) of a directory tree, links not followed."""
    total, inodes = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            size = os.lstat(os.path.join(dirpath, name)).st_size
            total += -(-size // 4096) * 4096
            inodes += 1
    return total, inodes + 1


def human_size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.0f} MiB"
