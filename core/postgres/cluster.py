"""A private PostgreSQL cluster: the demo sandbox, test fixtures and restore drills.

PostgreSQL refuses to run as root, so when Backstop runs as root the server
runs as an unprivileged account: ``postgres`` if it exists, else a system
user ``backstop-pg`` created on first use. The cluster listens on 127.0.0.1
only. By default it trusts every connection (test fixtures: throwaway data);
given a password file it requires the superuser's password (SCRAM) from
everyone, since any local user can reach 127.0.0.1 and a trusting superuser
login runs programs as the server's account (``COPY ... TO PROGRAM``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from core.errors import PostgresError
from core.postgres.tools import SERVER_TOOLS, find_bin_dir, first_line, libpq_message, tool_major

FALLBACK_USER = "backstop-pg"
SUPERUSER = "postgres"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1

# pg_hba.conf of a cluster in password mode: nothing is trusted, not even local sockets.
SCRAM_HBA = """\
# Written by Backstop: every connection must give the password (SCRAM).
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 scram-sha-256
host    all          all   127.0.0.1/32  scram-sha-256
local   replication  all                 scram-sha-256
host    replication  all   127.0.0.1/32  scram-sha-256
"""


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


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """chown ``top`` and, when it is a directory, everything under it (links themselves, not their targets)."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


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

    ``pgpass`` turns on password mode: initdb gives the superuser a random
    password, kept only in that libpq password file (mode 0600, owned by the
    user running Backstop), every connection must authenticate with SCRAM, and
    :meth:`dsn` names the file (never the password). A cluster created in trust
    mode is switched over by the next :meth:`start`. Without ``pgpass`` every
    local connection is trusted.

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
    pgpass: Path | None = None
    _acct: _Account | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if self.pgpass is not None:
            self.pgpass = Path(self.pgpass).absolute()
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
        """libpq URI for ``dbname`` as the cluster superuser (naming the password file in password mode)."""
        uri = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"
        if self.pgpass is None:
            return uri
        return f"{uri}?passfile={quote(str(self.pgpass), safe='/')}"

    # -- password mode -----------------------------------------------------

    def _password(self) -> str:
        """The superuser's password from ``pgpass``, first generating and storing one."""
        assert self.pgpass is not None
        try:
            for line in self.pgpass.read_text().splitlines():
                fields = line.split(":", 4)  # host:port:database:user:password, unescaped: we wrote it
                if len(fields) == 5 and fields[3] == SUPERUSER and fields[4]:
                    return fields[4]
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PostgresError(f"cannot read {self.pgpass}: {exc.strerror}; "
                                "it must be readable by the user running backstop") from None
        # URL-safe characters only: nothing a password file or a shell would need escaped.
        password = secrets.token_urlsafe(32)
        self.pgpass.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.pgpass.parent, prefix=".pgpass-")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                # Any port: the sandbox's port is chosen anew if its state is lost.
                f.write(f"127.0.0.1:*:*:{SUPERUSER}:{password}\n")
            os.replace(tmp, self.pgpass)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return password

    @contextlib.contextmanager
    def _initdb_pwfile(self, password: str) -> Iterator[Path]:
        """The password in a file initdb can read (it runs as the server's account), removed afterwards."""
        fd, name = tempfile.mkstemp(dir=self.data_dir.parent, prefix=".initdb-pw-")  # created 0600
        path = Path(name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            if self._acct is not None:
                os.chown(path, self._acct.uid, self._acct.gid)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _hba_path(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _write_hba(self, text: str) -> None:
        hba = self._hba_path()
        st = hba.stat()
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".pg_hba-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)  # the server's account must still read it
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, hba)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _require_password(self, timeout: float = 10) -> None:
        """Switch a running cluster made in trust mode to password mode (no-op once it is)."""
        if self.pgpass is not None and self.pgpass.exists() and self._hba_path().read_text() == SCRAM_HBA:
            return
        password = self._password()
        try:
            # Still trusting (or already asking for this very password): either way this gets in.
            with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
                # Hashed here: the password itself never reaches the server or its log.
                verifier = conn.pgconn.encrypt_password(password.encode(), SUPERUSER.encode(), b"scram-sha-256")
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier.decode())))
                self._write_hba(SCRAM_HBA)
                conn.execute("SELECT pg_reload_conf()")
        except psycopg.Error as exc:
            raise PostgresError(
                f"cannot set the superuser password of the cluster in {self.data_dir}: {libpq_message(exc)}; "
                f"if {self.pgpass} was lost, recreate the cluster (the demo's: backstop demo --reset)"
            ) from None
        # The postmaster rereads pg_hba.conf on its own time; wait until a wrong password is refused.
        deadline = time.monotonic() + timeout
        probe = make_conninfo(self.dsn(), password="not-the-password")
        while True:
            try:
                psycopg.connect(probe, connect_timeout=5).close()
            except psycopg.OperationalError as exc:
                if "password" in str(exc):
                    return
                raise PostgresError(
                    f"the cluster in {self.data_dir} stopped answering after reloading pg_hba.conf: "
                    f"{libpq_message(exc)}; see {self.log_file}"
                ) from None
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"the cluster in {self.data_dir} still accepts a wrong password after reloading "
                    f"pg_hba.conf; stop and start it (the demo's: backstop demo --stop, then backstop demo)"
                )
            time.sleep(0.05)

    # -- process control -------------------------------------------------

    def _run(self, args: list[str], *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        acct = self._acct
        cwd = self.data_dir if self.data_dir.is_dir() else Path("/")
        try:
            # subprocess drops privileges in the child after fork (thread-safe,
            # unlike a preexec_fn), including supplementary groups.
            return subprocess.run(
                args, capture_output=True, text=True, env=_clean_env(), cwd=cwd, timeout=timeout,
                user=acct.uid if acct else None, group=acct.gid if acct else None,
                extra_groups=list(acct.groups) if acct else None,
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
        args = [self._tool("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8", "--locale=C"]
        if no_sync:
            args.append("--no-sync")
        with contextlib.ExitStack() as stack:
            if self.pgpass is None:
                args.append("--auth=trust")
            else:
                pwfile = stack.enter_context(self._initdb_pwfile(self._password()))
                args += ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", f"--pwfile={pwfile}"]
            proc = self._run(args)
        if proc.returncode != 0:
            raise PostgresError(
                f"initdb failed for {self.data_dir}: {_last_line(proc)}; "
                "check that the directory is empty and writable"
            )
        if self.pgpass is not None:
            self._write_hba(SCRAM_HBA)  # the exact text start() checks for

    def _socket_dir(self) -> str:
        # A socket path longer than sun_path makes the server refuse to start;
        # TCP is all Backstop uses, so go without a socket then.
        probe = f"{self.data_dir}/.s.PGSQL.{self.port}"
        return str(self.data_dir) if len(probe) <= _SOCKET_PATH_MAX else ""

    def start(self, *, timeout: float = 60) -> None:
        """Start the server (no-op when running) and wait until it accepts connections.

        In password mode a cluster still trusting connections is switched over.
        """
        if not self.is_running():
            self._start(timeout)
        if self.pgpass is not None:
            self._require_password()

    def _start_args(self, timeout: float) -> list[str]:
        opts = [
            "-p", str(self.port), "-k", self._socket_dir(), "-c", "listen_addresses=127.0.0.1",
        ]
        for name, value in self.settings.items():
            opts += ["-c", f"{name}={value}"]
        return [
            self._tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
            "-w", "-t", str(int(timeout)), "-o", shlex.join(opts), "start",
        ]

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) that must own the data directory's files when they are written by root, else None."""
        return (self._acct.uid, self._acct.gid) if self._acct is not None else None

    def grant(self, *paths: Path) -> None:
        """As root, hand ``paths`` (whole trees) to the server's account and let it reach them; else nothing.

        For what the server's own commands need (archive_command: the config, passphrase and repository).
        Root keeps every right; other users gain none (modes are left as they are).
        """
        acct = self._acct
        if acct is None:
            return
        for top in paths:
            _open_path_for(Path(top).absolute(), acct)
            chown_tree(top, acct.uid, acct.gid)

    def let_run(self, program: Path) -> None:
        """As root, let the server's account reach ``program`` and what it resolves to (search rights only)."""
        if self._acct is None:
            return
        for target in {Path(program).absolute(), Path(os.path.realpath(program))}:
            _open_path_for(target, self._acct)

    def can_read(self, path: Path) -> bool:
        """Whether the server's account can reach and read ``path`` (what its archive/restore commands need)."""
        if self._acct is None:
            return os.access(path, os.R_OK)
        acct = self._acct
        try:
            for parent in reversed(Path(path).absolute().parents):
                if not _can_traverse(parent.stat(), acct):
                    return False
            st = Path(path).stat()
        except OSError:
            return False
        if st.st_uid == acct.uid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in acct.groups:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)

    def start_command(self, timeout: float = 60) -> str:
        """The shell command that starts this cluster as :meth:`start` would (for an operator to run later)."""
        cmd = shlex.join(self._start_args(timeout))
        return f"runuser -u {shlex.quote(self._acct.name)} -- {cmd}" if self._acct is not None else cmd

    def _start(self, timeout: float) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            raise PostgresError(f"no cluster in {self.data_dir}; call init() first")
        if self._acct is not None:
            _open_path_for(self.data_dir, self._acct)
        proc = self._run(self._start_args(timeout), timeout=timeout + 30)
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

    def _execute(self, statement: sql.Composed, what: str) -> None:
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
