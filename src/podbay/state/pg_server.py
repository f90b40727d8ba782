"""The Postgres server that holds podbay's pod databases: podbay's own *managed* cluster, or an *external* one.

Managed: a cluster under `PodbayPaths.databases / "postgres"` (data/, run/, server.log), initdb'd on first use
and started by `start()`, then left running as a host service (`stop()` is for the CLI). It runs as the
`postgres` account when podbay is root (least privilege: Postgres refuses root anyway) and listens only on a
unix socket in its own 0700 directory (`listen_addresses = ''`), so it never collides with a system server.
The admin (podbay) logs in over that socket by peer auth mapped to the `postgres` role (pg_ident); pod roles
log in with scram-sha-256 to the database of their own name only (`sameuser`). A file lock keeps two podbay
processes from running initdb or starting the server at once.

External: `PODBAY_POSTGRES_URL=postgresql://admin:pw@host:port/db`, an admin with CREATEDB and CREATEROLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg

from podbay.errors import DatabaseUnavailable, HostError, InvalidSpec
from podbay.isolation.supervise import tail

PG_PORT = 5432
START_TIMEOUT_S = 60
SERVER_ACCOUNT = "postgres"  # the system account the managed server runs as when podbay is root
ADMIN_ROLE = "postgres"  # the managed cluster's superuser, reached by peer auth through the ident map
MAX_CONNECTIONS = 200
_SETUP_HINT = "run scripts/setup, or `apt install postgresql` (PostgreSQL 15 or newer)"


def find_bindir() -> Path:
    """The directory of the Postgres binaries: PODBAY_POSTGRES_BIN, else the newest /usr/lib/postgresql/*/bin."""
    configured = os.environ.get("PODBAY_POSTGRES_BIN")
    candidates = [Path(configured)] if configured else _installed_bindirs()
    for bindir in candidates:
        if (bindir / "pg_ctl").is_file() and (bindir / "psql").is_file():
            return bindir
    raise DatabaseUnavailable(f"the PostgreSQL binaries are not installed (no pg_ctl/psql found); {_SETUP_HINT}")


def _installed_bindirs() -> list[Path]:
    def version(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if version(p) >= 15]
    return sorted(found, key=version, reverse=True)


class PostgresServer:
    """How podbay reaches its Postgres server: admin connections, client tools, raw streams for the tunnel."""

    def __init__(
        self, *, host: str, port: int, admin: str, password: str | None, maintenance_db: str, managed_root: Path | None
    ) -> None:
        self.host = host  # a socket directory (managed) or a host name
        self.port = port
        self.admin = admin
        self._password = password
        self.maintenance_db = maintenance_db
        self.managed_root = managed_root
        self._started = False

    @classmethod
    def managed(cls, root: Path) -> PostgresServer:
        return cls(
            host=str(root / "run"),
            port=PG_PORT,
            admin=ADMIN_ROLE,
            password=None,
            maintenance_db="postgres",
            managed_root=root,
        )

    @classmethod
    def external(cls, url: str) -> PostgresServer:
        hint = "set it as postgresql://ADMIN:PASSWORD@HOST:PORT/DB (ADMIN needs CREATEDB and CREATEROLE)"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:  # its text is not quoted: it may hold part of the password
            raise InvalidSpec("PODBAY_POSTGRES_URL", "it does not parse (a bad host or port)", hint) from None
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.username:
            raise InvalidSpec("PODBAY_POSTGRES_URL", "it is not a postgresql:// URL with a user and a host", hint)
        return cls(
            host=parts.hostname,
            port=port or PG_PORT,
            admin=unquote(parts.username),
            password=unquote(parts.password) if parts.password else None,
            maintenance_db=unquote(parts.path.lstrip("/")) or "postgres",
            managed_root=None,
        )

    @property
    def where(self) -> str:
        """The server in words, for messages (never a password)."""
        if self.managed_root is not None:
            return f"podbay's managed postgres ({self.managed_root})"
        return f"postgres at {self.host}:{self.port}"

    # ---- running the managed cluster ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.managed_root is None or self._started:
            return
        await asyncio.to_thread(self._start_managed)
        self._started = True

    async def stop(self) -> None:
        """Stop the managed server (for the CLI); nothing for an external one. The next use starts it again."""
        if self.managed_root is None:
            return
        await asyncio.to_thread(self._stop_managed)
        self._started = False

    def _start_managed(self) -> None:
        root = self._root()
        bindir = find_bindir()
        _make_reachable(root.parent)
        lock_path = root.parent / "postgres.lock"
        with open(lock_path, "a") as lock:  # two podbay processes never initdb/start at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._prepare_dirs(root)
            if not (root / "data" / "PG_VERSION").is_file():
                self._initdb(bindir, root)
            self._write_runtime_conf(root)
            if self._pg_ctl(bindir, "status").returncode == 0:
                return
            started = self._pg_ctl(bindir, "start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(root / "server.log"))
            if started.returncode != 0:
                raise DatabaseUnavailable(
                    f"{self.where} did not start (pg_ctl exit {started.returncode}); its log ends:\n"
                    f"{tail(root / 'server.log') or '(no log)'}\nfix the cause above, or remove {root} to start afresh"
                )

    def _stop_managed(self) -> None:
        root = self._root()
        if not (root / "data" / "PG_VERSION").is_file():
            return
        bindir = find_bindir()
        with open(root.parent / "postgres.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._pg_ctl(bindir, "status").returncode == 0:
                stopped = self._pg_ctl(bindir, "stop", "-m", "fast", "-w")
                if stopped.returncode != 0:
                    raise HostError(f"cannot stop {self.where}: {stopped.stderr.strip()[-500:]}")

    def _root(self) -> Path:
        assert self.managed_root is not None
        return self.managed_root

    def _prepare_dirs(self, root: Path) -> None:
        uid, gid = _server_ids()
        for path in (root, root / "run"):
            path.mkdir(exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(0o700)

    def _initdb(self, bindir: Path, root: Path) -> None:
        data = root / "data"
        if data.exists():
            shutil.rmtree(data)  # a half-made cluster (no PG_VERSION) from an initdb that died
        made = _run_as_server(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                ADMIN_ROLE,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=peer",
                "--auth-host=reject",
            ],
            cwd=root,
        )
        if made.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise DatabaseUnavailable(f"initdb failed for {self.where}: {made.stderr.strip()[-800:]}")
        me = pwd.getpwuid(os.geteuid()).pw_name
        idents = {me, SERVER_ACCOUNT} if os.geteuid() == 0 else {me}
        # The admin: peer auth over the socket, only OS accounts in the map. Pod roles: a password, and only
        # the database of their own name (`sameuser`); the tunnel's guard checks the same thing first.
        _write_server_file(
            data / "pg_hba.conf", f"local all {ADMIN_ROLE} peer map=podbay\nlocal sameuser all scram-sha-256\n"
        )
        _write_server_file(data / "pg_ident.conf", "".join(f"podbay {u} {ADMIN_ROLE}\n" for u in sorted(idents)))
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'podbay.conf'\n")

    def _write_runtime_conf(self, root: Path) -> None:
        # Rewritten at every start: the socket directory follows the root if the directory was moved.
        run = str(root / "run").replace("'", "''")
        _write_server_file(
            root / "data" / "podbay.conf",
            (
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{run}'\n"
                f"port = {PG_PORT}\n"
                f"max_connections = {MAX_CONNECTIONS}\n"
                "password_encryption = 'scram-sha-256'\n"
            ),
        )

    def _pg_ctl(self, bindir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return _run_as_server([str(bindir / "pg_ctl"), *args, "-D", str(self._root() / "data")], cwd=self._root())

    # ---- connections ------------------------------------------------------------------------------------------

    def conninfo(self, dbname: str | None = None) -> dict[str, str | int]:
        info: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.admin,
            "dbname": dbname or self.maintenance_db,
            "connect_timeout": 10,
            # The admin also works inside pods' databases, whose schemas the pods fill: it resolves no name
            # (function, operator, type) but the system's.
            "options": "-c search_path=pg_catalog",
        }
        if self._password is not None:
            info["password"] = self._password
        return info

    @contextlib.asynccontextmanager
    async def admin_connection(self, dbname: str | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit admin connection to `dbname` (the maintenance database by default)."""
        conn = await self.connect_admin(dbname)
        try:
            yield conn
        finally:
            await conn.close()

    async def connect_admin(self, dbname: str | None = None) -> psycopg.AsyncConnection[Any]:
        """An autocommit admin connection; a managed server that stopped since is started again (once)."""
        await self.start()
        for attempt in (1, 2):
            try:
                return await psycopg.AsyncConnection.connect(autocommit=True, **self.conninfo(dbname))  # type: ignore[arg-type]
            except psycopg.OperationalError as exc:
                if attempt == 2 or self.managed_root is None or _out_of_slots(exc):
                    raise self.unavailable(exc) from None
                self._started = False  # stopped behind our back (a reboot, the CLI): start it again
                await self.start()
        raise AssertionError("unreachable")

    def unavailable(self, exc: psycopg.Error) -> DatabaseUnavailable:
        if _out_of_slots(exc):
            return DatabaseUnavailable(f"{self.where} is out of connection slots; end some sessions and retry")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        start_hint = f"; see its log, {self.managed_root / 'server.log'}" if self.managed_root is not None else ""
        return DatabaseUnavailable(f"cannot connect to {self.where}: {first}{start_hint}")

    async def open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw protocol connection to the server (the tunnel's far end, behind the startup guard)."""
        await self.start()
        if self.host.startswith("/"):
            return await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
        return await asyncio.open_connection(self.host, self.port)

    # ---- client tools -------------------------------------------------------------------------------------------

    def tool(self, name: str, *args: str, dbname: str) -> list[str]:
        """argv for psql/pg_dump/pg_restore against `dbname` as the admin. For the managed server the tool runs
        as the server's account (a dump's psql meta-commands then never run as root)."""
        argv = [str(find_bindir() / name), "-h", self.host, "-p", str(self.port), "-U", self.admin, *args]
        argv.append(f"--dbname={dbname}")
        return _as_server_argv(argv) if self.managed_root is not None else argv

    def tool_bare(self, name: str, *args: str) -> list[str]:
        """argv for a client tool that does not connect (pg_restore -l)."""
        argv = [str(find_bindir() / name), *args]
        return _as_server_argv(argv) if self.managed_root is not None else argv

    async def run_tool_output(self, argv: Sequence[str], *, stdin: int) -> tuple[int, str]:
        """Run a client tool; its exit status and its stdout (or, if it failed, its stderr)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.tool_env(), cwd="/"
            )
        except OSError as exc:
            raise HostError(f"cannot run {argv[0]}: {exc}; {_SETUP_HINT}") from None
        out, err = await proc.communicate()
        rc = proc.returncode or 0
        return rc, (out if rc == 0 else err).decode(errors="replace")

    def tool_env(self) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "prefer"}
        if self._password is not None:
            env["PGPASSWORD"] = self._password  # in the environment, never on a command line
        return env

    async def run_tool_rc(
        self, argv: Sequence[str], *, stdin: int | None = None, stdout: int | None = None
    ) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self.tool_env(),
                cwd="/",
            )
        except OSError as exc:
            raise HostError(f"cannot run {argv[0]}: {exc}; {_SETUP_HINT}") from None
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode(errors="replace")


def _out_of_slots(exc: psycopg.Error) -> bool:
    return exc.sqlstate == "53300" or "too many clients" in str(exc)


def scram_verifier(conn: psycopg.AsyncConnection[Any], role: str, secret: str) -> str:
    """What the server keeps of `role`'s password `secret`: it is sent this, never the password."""
    return conn.pgconn.encrypt_password(secret.encode(), role.encode(), b"scram-sha-256").decode()


def first_error_line(stderr: str) -> str:
    """The line of a client tool's output that says what went wrong (psql: `...: ERROR:  ...`)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "ERROR" in line or "FATAL" in line or "error:" in line:
            return line[:500]
    return (lines[0] if lines else "no output")[:500]


def _server_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise DatabaseUnavailable(f"there is no `{SERVER_ACCOUNT}` system account; {_SETUP_HINT}") from None
    return entry.pw_uid, entry.pw_gid


def _as_server_argv(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={SERVER_ACCOUNT}", f"--regid={SERVER_ACCOUNT}", "--init-groups", "--", *argv]


def _run_as_server(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    try:
        # A new session: the server outlives this process and its terminal's signals.
        return subprocess.run(
            _as_server_argv(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=START_TIMEOUT_S + 30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatabaseUnavailable(f"cannot run {Path(argv[0]).name}: {exc}; {_SETUP_HINT}") from None


def _make_reachable(directory: Path) -> None:
    """Make `directory` (0755 where podbay creates it) and check the server's account can pass every parent."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        path.chmod(0o755)
    if os.geteuid() != 0:
        return
    uid, _ = _server_ids()
    for path in (directory, *directory.parents):
        st = path.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            raise DatabaseUnavailable(
                f"the `{SERVER_ACCOUNT}` account cannot pass {path} (mode {st.st_mode & 0o777:o}); "
                f"allow it (chmod o+x {path}) or set PODBAY_DB_DIR to a directory it can reach"
            )


def _write_server_file(path: Path, text: str) -> None:
    uid, gid = _server_ids()
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(0o600)
