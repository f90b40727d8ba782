#!/usr/bin/python3 -I -S
"""podbay guest agent: PID 1 inside a microVM (or the container's first process), stdlib only.

It serves framed, multiplexed requests from the host over one byte stream (see protocol.py and
docs/guest-protocol.md): exec with streamed output, stdin, signals and timeouts; file write/read/list/stat;
environment and task-context injection; volume mounts; health. One thread and one selector: children are
reaped on SIGCHLD (as PID 1 it also reaps orphans), so nothing here blocks for long.
"""

from __future__ import annotations

import errno
import os
import selectors
import stat
import sys
import time

# Typing-only imports: importing typing costs ~60 ms of every cold boot under TCG (mypy honours this flag).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any

    Header = dict[str, Any]
    import signal
else:  # the C module behind `signal`, without its enum wrappers: ~0.1 s less of a cold boot under TCG
    import _signal as signal

if __package__:
    from . import protocol
else:  # run as a script inside the guest, beside protocol.py (-I leaves the script's folder off sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import protocol  # type: ignore[import-not-found,no-redef]

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
DEFAULT_CWD = "/work"
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_MOVE = 2, 4, 8, 1024, 8192
STATE_DIR = "/run/podbay"  # per-boot, in memory (tmpfs): injected context lives here, never in the image


class RequestError(Exception):
    """Refuse one request; the host sees `kind` and `message` and the agent carries on."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Port:
    """The byte stream to the host. A virtio-serial port reads EOF while no host is connected: wait, retry."""

    def __init__(self, read_fd: int, write_fd: int, reconnects: bool) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.reconnects = reconnects

    def send(self, header: Header, payload: bytes = b"") -> None:
        data = memoryview(protocol.encode(header, payload))
        while data:
            try:
                data = data[os.write(self.write_fd, data) :]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                return  # host went away; the next read sees it too

    def hang_up(self) -> None:
        """The host went away. A virtio-serial port stays open: the same fd reads again once a host is back."""

    def reopen(self) -> bool:
        """Ready to read again? A virtio-serial port always is (it reads EOF again while no host is there)."""
        return True


class ListeningPort(Port):
    """A listening socket (AF_VSOCK under Firecracker): one host connection at a time; when it closes, the next."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.connection, _ = self.listener.accept()  # blocking: there is nothing to serve before the host comes
        self.listener.setblocking(False)  # later connections are polled for, so children are still served
        fd = self.connection.fileno()
        super().__init__(fd, fd, reconnects=True)

    def hang_up(self) -> None:
        self.connection.close()
        self.read_fd = self.write_fd = -1  # sends while no host is connected fail (EBADF), never reach a reused fd

    def reopen(self) -> bool:
        try:
            self.connection, _ = self.listener.accept()
        except BlockingIOError:
            return False
        self.connection.setblocking(True)
        self.read_fd = self.write_fd = self.connection.fileno()
        return True


class Process:
    """One exec: a child in its own session with piped stdio."""

    def __init__(self, request_id: int, pid: int, stdin_fd: int | None, deadline: float | None) -> None:
        self.request_id = request_id
        self.pid = pid
        self.stdin_fd = stdin_fd
        self.stdin_pending = bytearray()
        self.stdin_eof = False
        self.deadline = deadline
        self.timed_out = False
        self.started = time.monotonic()
        self.output_fds: dict[int, str] = {}


class Agent:
    def __init__(self, port: Port, state_dir: str = STATE_DIR, workdir: str = DEFAULT_CWD) -> None:
        self.port = port
        self.state_dir = state_dir
        self.workdir = workdir
        self.selector = selectors.DefaultSelector()
        self.env: dict[str, str] = dict(BASE_ENV)
        self.processes: dict[int, Process] = {}  # by pid
        self.mounts: list[str] = []
        self.booted = time.monotonic()
        self.decoder = protocol.FrameDecoder()
        self.retry_port_at: float | None = None
        self.ops: dict[str, Callable[[Header, bytes], None]] = {
            "health": self.op_health,
            "init": self.op_init,
            "exec": self.op_exec,
            "stdin": self.op_stdin,
            "signal": self.op_signal,
            "file_write": self.op_file_write,
            "file_read": self.op_file_read,
            "file_list": self.op_file_list,
            "file_stat": self.op_file_stat,
            "shutdown": self.op_shutdown,
        }

    # ---- main loop -------------------------------------------------------------------------------------

    def serve(self) -> None:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_read, selectors.EVENT_READ, ("wakeup", None))
        self.selector.register(self.port.read_fd, selectors.EVENT_READ, ("port", None))
        while True:
            for key, events in self.selector.select(self.next_timeout()):
                self.dispatch(key, events)
            self.reap()
            self.enforce_deadlines()
            self.maybe_retry_port()

    def dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        kind, process = key.data
        if kind == "wakeup":
            _drain(key.fd)
        elif kind == "port":
            self.read_port()
        elif kind == "output":
            self.read_output(process, key.fd)
        elif kind == "stdin":
            self.flush_stdin(process)

    def next_timeout(self) -> float | None:
        moments = [p.deadline for p in self.processes.values() if p.deadline and not p.timed_out]
        if self.retry_port_at is not None:
            moments.append(self.retry_port_at)
        return max(0.0, min(moments) - time.monotonic()) if moments else None

    def read_port(self) -> None:
        try:
            data = os.read(self.port.read_fd, protocol.CHUNK)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET: a vsock whose transport was reset (snapshot restore) lost its host too
            data = b""
        if not data:
            if not self.port.reconnects:
                sys.exit(0)  # stdio/socket transport: the host is gone, so is the sandbox
            self.selector.unregister(self.port.read_fd)
            self.port.hang_up()
            self.decoder = protocol.FrameDecoder()  # the next host starts a fresh stream
            self.retry_port_at = time.monotonic() + 0.01
            return
        try:
            frames = self.decoder.feed(data)
        except protocol.FrameError as exc:
            self.decoder = protocol.FrameDecoder()
            self.port.send({"id": 0, "event": "error", "error": "protocol", "message": str(exc)})
            return
        for header, payload in frames:
            self.handle(header, payload)

    def maybe_retry_port(self) -> None:
        if self.retry_port_at is None or time.monotonic() < self.retry_port_at:
            return
        if not self.port.reopen():
            self.retry_port_at = time.monotonic() + 0.01
            return
        self.retry_port_at = None
        self.selector.register(self.port.read_fd, selectors.EVENT_READ, ("port", None))

    def handle(self, header: Header, payload: bytes) -> None:
        request_id = header.get("id")
        op = self.ops.get(str(header.get("op")))
        try:
            if not isinstance(request_id, int):
                raise RequestError("invalid", "every request needs an integer 'id'")
            if op is None:
                raise RequestError("invalid", f"unknown op {header.get('op')!r}; known: {sorted(self.ops)}")
            op(header, payload)
        except RequestError as exc:
            self.port.send({"id": request_id, "event": "error", "error": exc.kind, "message": str(exc)})
        except OSError as exc:
            kind = "not_found" if exc.errno == errno.ENOENT else "os"
            self.port.send({"id": request_id, "event": "error", "error": kind, "message": str(exc)})

    def result(self, request: Header, payload: bytes = b"", **fields: Any) -> None:
        self.port.send({"id": request["id"], "event": "result", **fields}, payload)

    # ---- lifecycle ops ---------------------------------------------------------------------------------

    def op_health(self, request: Header, _: bytes) -> None:
        self.result(
            request,
            version=protocol.PROTOCOL_VERSION,
            pid=os.getpid(),
            uptime=time.monotonic() - self.booted,
            system_uptime=time.clock_gettime(time.CLOCK_BOOTTIME),
            running=len(self.processes),
        )

    def op_init(self, request: Header, _: bytes) -> None:
        """Inject environment, task context and volume mounts: everything secret arrives here, at start."""
        clock = request.get("clock")
        if clock is not None and abs(time.time() - float(clock)) > 1:  # microVMs have no RTC: take the host's
            try:
                time.clock_settime(time.CLOCK_REALTIME, float(clock))
            except PermissionError:
                pass  # a container shares the host's clock anyway
        for mount in request.get("mounts", []):
            self.mount(str(mount["source"]), str(mount["target"]), str(mount.get("fstype", "ext4")))
        env = request.get("env", {})
        self.env.update({str(k): str(v) for k, v in env.items()})
        context = request.get("context")
        if context is not None:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            context_file = os.path.join(self.state_dir, "context.json")
            _write_atomic(context_file, protocol.dumps(context).encode(), 0o600)
            self.env["PODBAY_CONTEXT_FILE"] = context_file
            self.env["PODBAY_CONTEXT"] = protocol.dumps(context)
        os.makedirs(self.workdir, exist_ok=True)
        self.result(request)

    def mount(self, source: str, target: str, fstype: str) -> None:
        os.makedirs(target, exist_ok=True)
        try:
            mount(source, target, fstype, MS_NOATIME)
        except OSError as exc:
            raise RequestError("mount", str(exc)) from None
        self.mounts.append(target)

    def op_shutdown(self, request: Header, _: bytes) -> None:
        """Make volumes consistent before the host stops the sandbox: stop children, sync, unmount."""
        for pid in list(self.processes):
            _killpg(pid, signal.SIGKILL)
        os.sync()
        for target in reversed(self.mounts):
            try:
                unmount(target)
            except OSError:
                pass  # busy: the sync above already put the data on the disk
        self.mounts.clear()
        self.result(request)

    # ---- exec ------------------------------------------------------------------------------------------

    def op_exec(self, request: Header, _: bytes) -> None:
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RequestError("invalid", "'argv' must be a non-empty list of strings")
        env = {**self.env, **{str(k): str(v) for k, v in request.get("env", {}).items()}}
        cwd = str(request.get("cwd") or self.workdir)
        timeout = request.get("timeout")
        deadline = time.monotonic() + float(timeout) if timeout else None
        process = self.spawn(request["id"], argv, env, cwd, bool(request.get("stdin")), deadline)
        self.processes[process.pid] = process
        self.port.send({"id": request["id"], "event": "started", "pid": process.pid})

    def spawn(
        self,
        request_id: int,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        with_stdin: bool,
        deadline: float | None,
    ) -> Process:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if with_stdin else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        try:
            pid = _spawn(argv, env, cwd, (in_r, out_w, err_w))
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        process = Process(request_id, pid, in_w if with_stdin else None, deadline)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            process.output_fds[fd] = name
            self.selector.register(fd, selectors.EVENT_READ, ("output", process))
        if process.stdin_fd is not None:
            os.set_blocking(process.stdin_fd, False)
        return process

    def read_output(self, process: Process, fd: int) -> None:
        try:
            data = os.read(fd, protocol.CHUNK)
        except BlockingIOError:
            return
        if data:
            self.port.send({"id": process.request_id, "event": process.output_fds[fd]}, data)
        else:
            self.close_output(process, fd)

    def close_output(self, process: Process, fd: int) -> None:
        self.selector.unregister(fd)
        os.close(fd)
        del process.output_fds[fd]

    def find_process(self, request: Header) -> Process:
        target = request.get("target")
        for process in self.processes.values():
            if process.request_id == target:
                return process
        raise RequestError("not_found", f"no running exec with id {target!r}")

    def op_stdin(self, request: Header, payload: bytes) -> None:
        process = self.find_process(request)
        if process.stdin_fd is None:
            raise RequestError("invalid", "this exec was started without stdin=True")
        process.stdin_pending += payload
        process.stdin_eof = process.stdin_eof or bool(request.get("eof"))
        self.flush_stdin(process)

    def flush_stdin(self, process: Process) -> None:
        fd = process.stdin_fd
        if fd is None:
            return
        try:
            while process.stdin_pending:
                del process.stdin_pending[: os.write(fd, process.stdin_pending)]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            process.stdin_pending.clear()
            process.stdin_eof = True
        registered = fd in self.selector.get_map()
        if process.stdin_pending and not registered:
            self.selector.register(fd, selectors.EVENT_WRITE, ("stdin", process))
        elif not process.stdin_pending:
            if registered:
                self.selector.unregister(fd)
            if process.stdin_eof:
                os.close(fd)
                process.stdin_fd = None

    def op_signal(self, request: Header, _: bytes) -> None:
        process = self.find_process(request)
        _killpg(process.pid, int(request.get("signal", signal.SIGTERM)))
        self.result(request)

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for process in self.processes.values():
            if process.deadline is not None and not process.timed_out and now >= process.deadline:
                process.timed_out = True
                _killpg(process.pid, signal.SIGKILL)

    def reap(self) -> None:
        """Collect every exited child; as PID 1 this also reaps orphans that were reparented to us."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.processes.pop(pid, None)
            if process is not None:
                self.finish(process, status)

    def finish(self, process: Process, status: int) -> None:
        # The child is gone, so whatever it wrote is already in the pipes: drain them, then report the exit.
        for fd in list(process.output_fds):
            while fd in process.output_fds:
                self.read_output(process, fd)
                if fd in process.output_fds and not _readable(fd):
                    self.close_output(process, fd)
        if process.stdin_fd is not None:
            if process.stdin_fd in self.selector.get_map():
                self.selector.unregister(process.stdin_fd)
            os.close(process.stdin_fd)
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + signum if signum is not None else os.WEXITSTATUS(status)
        self.port.send(
            {
                "id": process.request_id,
                "event": "exit",
                "exit_code": code,
                "signal": signum,
                "timed_out": process.timed_out,
                "duration": time.monotonic() - process.started,
            }
        )

    # ---- files -----------------------------------------------------------------------------------------

    def op_file_write(self, request: Header, payload: bytes) -> None:
        path = _absolute(request)
        if request.get("parents", True):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, payload, int(request.get("mode", 0o644)))
        self.result(request, size=len(payload))

    def op_file_read(self, request: Header, _: bytes) -> None:
        path = _absolute(request)
        size = os.stat(path).st_size
        if size > protocol.MAX_PAYLOAD:
            raise RequestError("too_large", f"{path} is {size} bytes; the limit is {protocol.MAX_PAYLOAD}")
        with open(path, "rb") as file:
            self.result(request, file.read())

    def op_file_list(self, request: Header, _: bytes) -> None:
        path = _absolute(request)
        entries = []
        with os.scandir(path) as listing:
            for entry in listing:
                entries.append({"name": entry.name, **_describe(entry.stat(follow_symlinks=False))})
        self.result(request, entries=sorted(entries, key=lambda e: e["name"]))

    def op_file_stat(self, request: Header, _: bytes) -> None:
        path = _absolute(request)
        self.result(request, path=path, **_describe(os.stat(path, follow_symlinks=False)))


# ---- helpers ---------------------------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]) -> int:
    """Start a command in its own session (so a timeout or signal reaches its children too).

    posix_spawn, not fork: it does not copy the agent's page tables, which is slow under TCG. Python 3.11 has
    no chdir action for it, so the agent (single-threaded) steps into `cwd` around the call.
    """
    program = _which(argv[0], env.get("PATH", BASE_ENV["PATH"]))
    try:
        previous = os.getcwd()
        os.chdir(cwd)
    except OSError as exc:
        raise RequestError("not_found", f"cannot run {argv[0]!r}: working directory {cwd!r}: {exc.strerror}") from None
    try:
        return os.posix_spawn(
            program,
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),  # Python ignores SIGPIPE; children must not
        )
    except OSError as exc:
        kind = "not_found" if exc.errno == errno.ENOENT else "exec"
        raise RequestError(kind, f"cannot run {argv[0]!r}: {exc.strerror}") from None
    finally:
        os.chdir(previous)


def _which(name: str, path: str) -> str:
    """The program to run, searched in the command's own PATH (posix_spawnp would use the agent's)."""
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise RequestError("not_found", f"cannot run {name!r}: not found in PATH {path!r}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "", busy_ok: bool = False) -> None:
    """mount(2) itself: under TCG a fork+exec of the `mount` binary costs 0.1-0.2 s."""
    result = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if result != 0:
        _raise_errno(f"mount {fstype} {source} on {target}", ok=(errno.EBUSY,) if busy_ok else ())


def unmount(target: str) -> None:
    if _libc().umount2(target.encode(), 0) != 0:
        _raise_errno(f"umount {target}")


def _raise_errno(what: str, ok: tuple[int, ...] = ()) -> None:
    import ctypes

    code = ctypes.get_errno()
    if code not in ok:  # EBUSY, when asked: already mounted (by the kernel or an initramfs)
        raise OSError(code, f"{what}: {os.strerror(code)}")


_LIBC: Any = None


def _libc() -> Any:
    """libc through ctypes, loaded on first use: only VMs mount anything, and a container's boot skips it."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _readable(fd: int) -> bool:
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    ready = bool(selector.select(0))
    selector.close()
    return ready


def _absolute(request: Header) -> str:
    path = request.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise RequestError("invalid", f"'path' must be an absolute path, got {path!r}")
    return os.path.normpath(path)


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    temporary = f"{path}.podbay-{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _describe(st: os.stat_result) -> dict[str, Any]:
    kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
    return {
        "type": kinds.get(stat.S_IFMT(st.st_mode), "other"),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def _find_virtio_port(name: str, wait_seconds: float = 10.0) -> str:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            for entry in os.listdir("/sys/class/virtio-ports"):
                with open(f"/sys/class/virtio-ports/{entry}/name") as file:
                    if file.read().strip() == name:
                        return f"/dev/{entry}"
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"podbay agent: no virtio-serial port named {name}")
        time.sleep(0.01)


def vsock_port_number(transport: str) -> int:
    """`vsock:PORT` -> PORT, a listening port (1 .. 2**32 - 2; the top value means "any port")."""
    number = transport.removeprefix("vsock:")
    if not number.isdigit() or not 0 < int(number) < 2**32 - 1:
        raise SystemExit(f"podbay agent: bad vsock port in {transport!r}; expected vsock:PORT, e.g. vsock:1024")
    return int(number)


def open_port(transport: str) -> Port:
    if transport == "virtio-serial":
        fd = os.open(_find_virtio_port(protocol.PORT_NAME), os.O_RDWR | os.O_CLOEXEC)
        return Port(fd, fd, reconnects=True)
    if transport == "stdio":
        return Port(os.dup(0), os.dup(1), reconnects=False)
    if transport.startswith("fd:"):
        fd = int(transport[3:])
        return Port(fd, fd, reconnects=False)
    if transport.startswith("vsock:"):
        import socket  # only Firecracker's vsock needs it: keep it off the other boots

        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        listener.bind((socket.VMADDR_CID_ANY, vsock_port_number(transport)))
        listener.listen(1)
        return ListeningPort(listener)
    raise SystemExit(f"podbay agent: unknown transport {transport!r}")


def main(argv: list[str]) -> None:
    options = {"transport": "virtio-serial", "state-dir": STATE_DIR, "workdir": DEFAULT_CWD}
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if name not in options:
            raise SystemExit(f"podbay agent: unknown option {arg!r}; known: {sorted(options)}")
        options[name] = value
    transport = options["transport"]
    port = open_port(transport)
    if transport == "stdio":  # keep stray prints of children off the channel
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
    Agent(port, options["state-dir"], options["workdir"]).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
