"""Locate PostgreSQL client and server binaries and learn their major versions.

pg_dump must be at least as new as the server it dumps, so callers ask for a
minimum major and get the closest installed match: the equal major when there
is one, else the smallest newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from core.errors import PostgresError

CLIENT_TOOLS: tuple[str, ...] = ("pg_dump",)
SERVER_TOOLS: tuple[str, ...] = ("initdb", "pg_ctl", "postgres")

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")


# Linux's F_SETPIPE_SZ (fcntl has no name for it before Python 3.10 on some builds).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20


def tool_pipe() -> tuple[int, int]:
    """A pipe for a tool's output stream, widened to 1 MiB where the system allows.

    A 64 KiB pipe makes pg_basebackup and the reader switch places every 64 KiB: at gigabytes per
    backup that showed as seconds of system time.
    """
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size for this user, or not Linux
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _has_tools(bin_dir: Path, tools: Sequence[str]) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) and (bin_dir / tool).is_file() for tool in tools)


def _major_from_dirname(path: str) -> int:
    match = re.search(r"(\d+)", Path(path).parent.name)
    return int(match.group(1)) if match else 0


def _system_dirs() -> list[Path]:
    """Candidate system bin dirs, most authoritative first."""
    dirs: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            dirs.append(Path(out))
    # Debian/Ubuntu and RHEL install each major side by side; newest first.
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        found = sorted(glob.glob(pattern), key=_major_from_dirname, reverse=True)
        dirs.extend(Path(p) for p in found)
    dirs.append(Path("/usr/local/pgsql/bin"))
    return dirs


def _pgserver_bin_dir() -> Path | None:
    """The bin dir bundled with the pgserver wheel, found without importing it."""
    # Importing pgserver is slow and prints; find_spec only reads the path.
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _candidates(tools: Sequence[str]) -> list[Path]:
    seen: set[Path] = set()
    result: list[Path] = []
    bundled = _pgserver_bin_dir()
    for d in [*_system_dirs(), *([bundled] if bundled else [])]:
        try:
            key = d.resolve()
        except OSError:
            continue
        if key in seen or not d.is_dir() or not _has_tools(d, tools):
            continue
        seen.add(key)
        result.append(d)
    return result


@functools.cache
def _cached_major(resolved_tool: str) -> int:
    try:
        proc = subprocess.run(
            [resolved_tool, "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresError(f"cannot run {resolved_tool} --version: {exc}; check the installation") from None
    match = _VERSION_RE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PostgresError(
            f"{resolved_tool} --version failed ({detail[-1] if detail else f'exit {proc.returncode}'}); "
            "check the PostgreSQL installation or set bin_dir in the config"
        )
    return int(match.group(1))


def tool_major(bin_dir: Path, tool: str = "pg_dump") -> int:
    """Major version of ``tool`` (default pg_dump) in ``bin_dir``; cached per path."""
    path = Path(bin_dir) / tool
    if not path.is_file():
        raise PostgresError(f"{path} does not exist; set bin_dir to a PostgreSQL bin directory")
    return _cached_major(str(path.resolve()))


def _is_client(tools: Sequence[str]) -> bool:
    return set(tools) <= {"pg_dump", "pg_dumpall", "pg_restore", "psql"}


def _describe(tools: Sequence[str]) -> str:
    return "client tools" if _is_client(tools) else "server binaries (" + ", ".join(tools) + ")"


def _install_hint(tools: Sequence[str], major: int | None) -> str:
    suffix = f"-{major}" if major is not None else ""
    if _is_client(tools):
        return f"install postgresql-client{suffix} or set bin_dir in the config"
    return f"install postgresql{suffix} (or pip install pgserver) or set bin_dir in the config"


def find_bin_dir(
    required_major: int | None = None,
    configured: Path | None = None,
    *,
    tools: Sequence[str] = CLIENT_TOOLS,
) -> Path:
    """Pick the PostgreSQL bin dir to use.

    ``configured`` wins when given. Otherwise system installations are
    searched, then pgserver's bundled binaries. With ``required_major`` the
    equal major is preferred, then the smallest newer one. ``tools`` names
    the executables the dir must hold (pg_dump by default).
    """
    what = _describe(tools)
    if configured is not None:
        configured = Path(configured)
        if not _has_tools(configured, tools):
            raise PostgresError(
                f"bin_dir {configured} has no {', '.join(tools)}; "
                "set bin_dir to the directory holding the PostgreSQL binaries"
            )
        if required_major is not None:
            major = tool_major(configured, tools[0])
            if major < required_major:
                raise PostgresError(
                    f"bin_dir {configured} holds PostgreSQL {major} {what} but the server is "
                    f"{required_major}; set bin_dir to PostgreSQL >= {required_major} binaries"
                )
        return configured

    candidates = _candidates(tools)
    if required_major is None:
        if not candidates:
            raise PostgresError(f"no PostgreSQL {what} found; {_install_hint(tools, None)}")
        return candidates[0]

    majors: list[tuple[Path, int]] = []
    for d in candidates:
        try:
            majors.append((d, tool_major(d, tools[0])))
        except PostgresError:
            continue  # a broken install should not hide a working one
    for d, major in majors:
        if major == required_major:
            return d
    newer = [(major, i, d) for i, (d, major) in enumerate(majors) if major > required_major]
    if newer:
        return min(newer)[2]
    found = ", ".join(sorted({str(m) for _, m in majors}))
    seen = f" (found {found})" if found else ""
    raise PostgresError(
        f"no PostgreSQL {what} >= {required_major} found{seen}; {_install_hint(tools, required_major)}"
    )


def dsn_label(dsn: str) -> str:
    """``host:port/dbname`` for messages; never includes the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (libpq adds detail lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# psycopg wraps libpq's message in these; the message itself says it all.
_PSYCOPG_PREFIXES = ("connection failed: ", "connection is bad: ")
# psycopg's report of one attempt among several (a host name with many addresses).
_ATTEMPT_PREFIX = re.compile(r"^- host: '[^']*', port: '[^']*'(, hostaddr: '[^']*')?: ")


def libpq_message(exc: BaseException) -> str:
    """libpq's error text as one line: its own lines, once each, without the hints it indents under them."""
    parts: list[str] = []
    for raw in str(exc).splitlines():
        if not raw.strip() or raw[0] == "\t":
            continue  # libpq's "\tIs the server running ...?": callers say what to do themselves
        line = _ATTEMPT_PREFIX.sub("", raw.strip())
        while line.startswith(_PSYCOPG_PREFIXES):
            line = line.split(": ", 1)[1]
        if line.startswith("Multiple connection attempts failed"):
            continue
        line = " ".join(line.split())  # the server's "FATAL:  ..." has a double space
        if line and line not in parts:
            parts.append(line)
    return " / ".join(parts) or type(exc).__name__


def connect_hint(message: str) -> str:
    """What to do about a failed connection, from libpq's message."""
    m = message.lower()
    if "connection refused" in m or "no such file or directory" in m:
        return "start the server, or correct the host and port in the DSN"
    if "password" in m:
        return "check the user and password (or passfile) of the DSN"
    if "no pg_hba.conf entry" in m:
        return "allow this client and user in the server's pg_hba.conf"
    if "does not exist" in m:
        return "check the database and user names in the DSN"
    if "resolve host" in m or "translate host name" in m or "timeout" in m or "timed out" in m:
        return "check the host name in the DSN and that the network reaches it"
    return "check that the server is up and the DSN is right"


def connect_error(exc: BaseException) -> str:
    """Why a connection failed and what to do, as one line (``cause; advice``)."""
    message = libpq_message(exc)
    return f"{message}; {connect_hint(message)}"


async def server_major(dsn: str) -> int:
    """Major version of the server at ``dsn`` (e.g. 15)."""
    try:
        # A DSN without its own timeout gets one: a dead host must not hang a backup.
        timeout = None if "connect_timeout" in conninfo_to_dict(dsn) else 10
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=timeout) as conn:
            cur = await conn.execute("SHOW server_version_num")
            row = await cur.fetchone()
    except psycopg.Error as exc:
        raise PostgresError(f"cannot connect to PostgreSQL at {dsn_label(dsn)}: {connect_error(exc)}") from None
    assert row is not None
    return int(row[0]) // 10000
