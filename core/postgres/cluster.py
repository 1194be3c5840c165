"""A private PostgreSQL cluster: the demo sandbox, test fixtures and restore drills.

PostgreSQL refuses to run as root, so when Backstop runs as root the server
runs as an unprivileged account: ``postgres`` if it exists, else a system
user ``backstop-pg`` created on first use. The cluster listens on 127.0.0.1
only with trust authentication; it is a scratch cluster, not a service.
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from core.errors import PostgresError
from core.postgres.tools import SERVER_TOOLS, find_bin_dir, first_line, tool_major

FALLBACK_USER = "backstop-pg"
SUPERUSER = "postgres"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def _account(name: str) -> _Account:
    pw = pwd.getpwnam(name)
    return _Account(name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(name, pw.pw_gid)))


def _ensure_system_user() -> str:
    """The account a root-run cluster uses, creating ``backstop-pg`` if needed."""
    for name in (SUPERUSER, FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    cmd = [
        "useradd", "--system", "--no-create-home", "--user-group",
        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", FALLBACK_USER,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise PostgresError(
            f"cannot create system user {FALLBACK_USER} ({exc.strerror}); "
            "create an unprivileged user and pass it as run_as"
        ) from None
    try:
        pwd.getpwnam(FALLBACK_USER)  # a concurrent useradd may have won the race
    except KeyError:
        raise PostgresError(
            f"cannot create system user {FALLBACK_USER}: {proc.stderr.strip() or proc.returncode}; "
            "create an unprivileged user and pass it as run_as"
        ) from None
    return FALLBACK_USER


def _can_traverse(st: os.stat_result, acct: _Account) -> bool:
    if st.st_uid == acct.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in acct.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _open_path_for(path: Path, acct: _Account) -> None:
    """Let ``acct`` traverse every ancestor of ``path`` (chmod o+x where it cannot)."""
    # Only search permission is added: the account can reach the cluster
    # directory but still cannot list or read the parents.
    for parent in reversed(path.parents):
        st = parent.stat()
        if not _can_traverse(st, acct):
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _clean_env() -> dict[str, str]:
    # PG* variables from the caller's shell would redirect initdb/pg_ctl.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``.

    ``run_as`` is the OS user running the server; ``None`` means the current
    user, or an unprivileged account when running as root. ``settings`` are
    extra ``-c name=value`` server settings applied at every start (e.g.
    ``{"fsync": "off"}`` for tests; nothing unsafe is on by default).

    As root, parents of ``data_dir`` get o+x so the server account can reach
    it; avoid parents whose permissions something else resets (pytest strips
    group/other bits from /tmp/pytest-of-root at every session start).
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    # None: the binaries matching an existing cluster, else the best found.
    bin_dir: Path = None  # type: ignore[assignment]
    run_as: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    _acct: _Account | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self.bin_dir = Path(self.bin_dir) if self.bin_dir is not None else self._default_bin_dir()
        if os.geteuid() == 0:
            name = self.run_as or _ensure_system_user()
            try:
                self._acct = _account(name)
            except KeyError:
                raise PostgresError(
                    f"run_as user {name} does not exist; create it or leave run_as unset"
                ) from None
            if self._acct.uid == 0:
                raise PostgresError("PostgreSQL cannot run as root; set run_as to an unprivileged user")
        elif self.run_as is not None and self.run_as != pwd.getpwuid(os.geteuid()).pw_name:
            raise PostgresError(
                f"cannot run the cluster as {self.run_as} without root; leave run_as unset"
            )

    def _default_bin_dir(self) -> Path:
        try:
            major = int((self.data_dir / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            return find_bin_dir(tools=SERVER_TOOLS)
        # A server only opens data directories of its own major version.
        found = find_bin_dir(required_major=major, tools=SERVER_TOOLS)
        if tool_major(found, SERVER_TOOLS[0]) != major:
            raise PostgresError(
                f"the cluster in {self.data_dir} is PostgreSQL {major} but no PostgreSQL {major} "
                f"server binaries were found; install postgresql-{major} or remove the directory"
            )
        return found

    @property
    def os_user(self) -> str:
        """The OS account the server runs as."""
        return self._acct.name if self._acct else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def log_file(self) -> Path:
        """The server log (stdout/stderr of the postmaster)."""
        return self.data_dir / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq URI for ``dbname`` as the cluster superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # -- process control -------------------------------------------------

    def _run(self, args: list[str], *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        extra: dict[str, object] = {}
        if self._acct is not None:
            # subprocess drops privileges in the child after fork (thread-safe,
            # unlike a preexec_fn), including supplementary groups.
            extra = {"user": self._acct.uid, "group": self._acct.gid, "extra_groups": list(self._acct.groups)}
        cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        try:
            return subprocess.run(
                args, capture_output=True, text=True, env=_clean_env(), cwd=cwd,
                timeout=timeout, **extra,  # type: ignore[arg-type]
            )
        except subprocess.TimeoutExpired:
            raise PostgresError(
                f"{Path(args[0]).name} timed out after {timeout:.0f}s for cluster {self.data_dir}; "
                f"see {self.log_file}: {self._log_tail()}"
            ) from None
        except OSError as exc:
            raise PostgresError(
                f"cannot run {args[0]}: {exc.strerror}; check bin_dir ({self.bin_dir})"
            ) from None

    def _tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(server log is empty)"

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._acct is None:
            return
        st = self.data_dir.stat()
        if st.st_uid != self._acct.uid:
            if any(self.data_dir.iterdir()):
                owner = pwd.getpwuid(st.st_uid).pw_name
                raise PostgresError(
                    f"{self.data_dir} is owned by {owner} but the cluster runs as {self._acct.name}; "
                    "use an empty directory or set run_as to its owner"
                )
            os.chown(self.data_dir, self._acct.uid, self._acct.gid)
        os.chmod(self.data_dir, 0o700)
        _open_path_for(self.data_dir, self._acct)

    def init(self, *, no_sync: bool = False) -> None:
        """Create the cluster unless ``data_dir`` already holds one.

        ``no_sync`` skips initdb's fsync: fine for throwaway clusters.
        """
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._prepare_data_dir()
        args = [
            self._tool("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--locale=C",
        ]
        if no_sync:
            args.append("--no-sync")
        proc = self._run(args)
        if proc.returncode != 0:
            raise PostgresError(
                f"initdb failed for {self.data_dir}: {_last_line(proc)}; "
                "check that the directory is empty and writable"
            )

    def _socket_dir(self) -> str:
        # A socket path longer than sun_path makes the server refuse to start;
        # TCP is all Backstop uses, so go without a socket then.
        probe = f"{self.data_dir}/.s.PGSQL.{self.port}"
        return str(self.data_dir) if len(probe) <= _SOCKET_PATH_MAX else ""

    def start(self, *, timeout: float = 60) -> None:
        """Start the server (no-op when running) and wait until it accepts connections."""
        if self.is_running():
            return
        if not (self.data_dir / "PG_VERSION").exists():
            raise PostgresError(f"no cluster in {self.data_dir}; call init() first")
        if self._acct is not None:
            _open_path_for(self.data_dir, self._acct)
        opts = [
            "-p", str(self.port), "-k", self._socket_dir(), "-c", "listen_addresses=127.0.0.1",
        ]
        for name, value in self.settings.items():
            opts += ["-c", f"{name}={value}"]
        args = [
            self._tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", str(int(timeout)), "-o", shlex.join(opts), "start",
        ]
        proc = self._run(args, timeout=timeout + 30)
        if proc.returncode != 0:
            raise PostgresError(
                f"PostgreSQL in {self.data_dir} failed to start on port {self.port}: "
                f"{self._log_tail()} (see {self.log_file})"
            )

    def stop(self, *, timeout: float = 60) -> None:
        """Stop the server in fast mode (rolls back open transactions); no-op when stopped."""
        if not self.is_running():
            return
        args = [self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"]
        proc = self._run(args, timeout=timeout + 30)
        if proc.returncode != 0:
            raise PostgresError(
                f"PostgreSQL in {self.data_dir} did not stop: {_last_line(proc)}; "
                f"log: {self._log_tail()}"
            )

    def is_running(self) -> bool:
        """True when a postmaster is running on ``data_dir``."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        proc = self._run([self._tool("pg_ctl"), "-D", str(self.data_dir), "status"], timeout=30)
        return proc.returncode == 0

    def __enter__(self) -> LocalCluster:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------

    def _execute(self, statement: sql.Composable, what: str) -> None:
        try:
            with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
                conn.execute(statement)
        except psycopg.Error as exc:
            raise PostgresError(
                f"cannot {what} in the cluster on port {self.port}: {first_line(exc)}"
            ) from None

    def create_database(self, name: str, *, template: str | None = None) -> None:
        """CREATE DATABASE ``name`` (optionally as a copy of ``template``)."""
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        self._execute(stmt, f"create database {name}")

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its sessions."""
        stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        self._execute(stmt, f"drop database {name}")


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"
