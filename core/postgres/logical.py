"""Logical backups: stream `pg_dump -Fc -Z0` out and `pg_restore` back in.

pg_dump takes one repeatable-read snapshot with ACCESS SHARE locks only, so
the live workload is neither blocked nor sees a torn state (M1). Nothing is
staged on disk: the archive streams through a pipe into the chunker, and on
restore from the repository straight into pg_restore's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.errors import PostgresError, RestoreRefused
from core.postgres.tools import connect_error, connect_hint, tool_pipe

DUMP_FORMAT = "pg_dump-custom"
_ENV = {**os.environ, "PGAPPNAME": "backstop"}
# Connection parameters that are secrets: never on a command line, never in a message.
_SECRETS = ("password", "sslpassword")


def with_dbname(dsn: str, dbname: str) -> str:
    """The same connection string pointing at another database."""
    return make_conninfo(dsn, dbname=dbname)


def redact(dsn: str) -> str:
    """A connection string fit for messages: no password."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable dsn)"
    for key in _SECRETS:
        d.pop(key, None)
    return " ".join(f"{k}={v}" for k, v in d.items())


@contextlib.contextmanager
def tool_connection(dsn: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(dsn without its secrets, environment carrying them)`` for running a libpq tool.

    Every local user can read a process's arguments (``ps``); only its owner can
    read its environment. So the password travels as PGPASSWORD. libpq reads
    sslpassword from no variable: it goes into a private service file, which is
    removed when the block ends (keep the block open while the tool runs).
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PostgresError("the database DSN cannot be parsed; check its syntax in the config") from None
    env = dict(_ENV)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    sslpassword = params.pop("sslpassword", None)
    private_dir = None
    try:
        if sslpassword is not None:
            if "service" in params or "\n" in str(sslpassword):
                raise PostgresError(
                    "a DSN with sslpassword cannot also name a service (nor hold a line break in it); "
                    "put sslpassword into that service's entry in pg_service.conf instead"
                )
            private_dir = tempfile.mkdtemp(prefix="backstop-pg-")  # mode 0700
            service_file = os.path.join(private_dir, "pg_service.conf")
            fd = os.open(service_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"[backstop]\nsslpassword={sslpassword}\n")
            env["PGSERVICEFILE"] = service_file
            params["service"] = "backstop"
        yield make_conninfo("", **params), env
    finally:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)


async def connect(dsn: str, what: str) -> psycopg.AsyncConnection:
    """Open an autocommit connection with a clear error on failure."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise PostgresError(f"cannot connect to {what} ({redact(dsn)}): {connect_error(exc)}") from None


@dataclass(frozen=True)
class SourceInfo:
    """What we learn about a database before dumping it."""

    server_version: str
    server_major: int
    estimated_bytes: int
    tables: list[str]
    table_bytes: dict[str, int]  # on-disk size per table: weights for parallel restore


async def source_info(dsn: str, db_name: str) -> SourceInfo:
    """Server version, a size estimate for progress, and the user tables."""
    async with await connect(dsn, f"database {db_name!r}") as conn:
        cur = await conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int")
        version, num = await cur.fetchone()  # type: ignore[misc]
        cur = await conn.execute(
            "SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r','m') AND n.nspname NOT IN ('pg_catalog','information_schema')"
        )
        (size,) = await cur.fetchone()  # type: ignore[misc]
        cur = await conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
        )
        rows = await cur.fetchall()
    return SourceInfo(str(version), int(num) // 10000, int(size), [r[0] for r in rows],
                      {r[0]: int(r[1]) for r in rows})


async def database_exists(dsn: str, name: str) -> bool:
    """True when a database called ``name`` exists on the server of ``dsn``."""
    async with await connect(with_dbname(dsn, "postgres"), "the server") as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return await cur.fetchone() is not None


async def create_database(dsn: str, name: str) -> None:
    """CREATE DATABASE from template0 (what pg_restore expects)."""
    async with await connect(with_dbname(dsn, "postgres"), "the server") as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


async def drop_database(dsn: str, name: str) -> None:
    """DROP DATABASE IF EXISTS, disconnecting its sessions."""
    async with await connect(with_dbname(dsn, "postgres"), "the server") as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# Lines that only echo the statement that failed, not why.
_STATEMENT_ECHO = re.compile(r"^((detail|error): )?(the )?(query|command) was:", re.IGNORECASE)
_SERVER_SAYS = "Error message from server: "


def tool_failure(tool: str, stderr: str, rc: int) -> str:
    """Why pg_dump/pg_restore failed, as one line: its first error plus the server's reason.

    Their last line is usually a "detail: Query was: ..." echo that hides the
    cause (permission denied, a lost connection, a failed allocation).
    """
    messages: list[str] = []
    for raw in stderr.splitlines():
        if not raw.strip() or raw[0].isspace():
            continue  # libpq's indented continuation lines
        line = " ".join(raw.split())  # the server's "ERROR:  ..." has a double space
        if line.startswith(f"{tool}: "):
            line = line[len(tool) + 2:]
        if not _STATEMENT_ECHO.match(line):
            messages.append(line)
    errors = [m[len("error: "):] for m in messages if m.startswith("error: ")]
    cause = errors[0] if errors else (messages[-1] if messages else f"exit code {rc}")
    server = next((m.split(_SERVER_SAYS, 1)[1] for m in messages if _SERVER_SAYS in m), None)
    if server and server not in cause:
        cause = f"{cause.rstrip('.')}: {server}"
    return cause


def _dump_advice(cause: str) -> str:
    c = cause.lower()
    if c.startswith("connection to server"):
        return connect_hint(cause)
    if "permission denied" in c:
        return "grant the backup role SELECT on every table and sequence (or the pg_read_all_data role)"
    if "memory alloc" in c or "out of memory" in c:
        return "see the server log: a row may be damaged or too large to read"
    if "closed the connection" in c or "terminat" in c or "connection lost" in c:
        return "see the server log for why the session ended, then run the backup again"
    return "see the PostgreSQL server log, fix the cause and run the backup again"


def _restore_advice(cause: str) -> str:
    if "permission denied" in cause.lower() or "must be owner" in cause.lower():
        return "restore as a superuser or as the owner of the objects in the snapshot"
    return "see the PostgreSQL server log, fix the cause and run the restore again"


ReaderT = TypeVar("ReaderT")


class ToolProcess(Generic[ReaderT]):
    """A running client tool (pg_dump, pg_basebackup) whose output is read from ``reader``."""

    def __init__(self, tool: str, proc: asyncio.subprocess.Process, reader: ReaderT,
                 stderr_task: asyncio.Task[str], resources: contextlib.ExitStack,
                 advice: Callable[[str], str]) -> None:
        self.tool = tool
        self.proc = proc
        self.reader = reader
        self._stderr = stderr_task
        self._resources = resources  # what hands the tool its secrets; kept until it exits
        self._advice = advice

    async def wait(self) -> None:
        """Wait for exit; PostgresError with the tool's own reason on failure."""
        try:
            rc = await self.proc.wait()
        finally:
            self._resources.close()
        err = await self._stderr
        if rc != 0:
            cause = tool_failure(self.tool, err, rc)
            raise PostgresError(f"{self.tool} failed: {cause}; {self._advice(cause)}")

    def kill(self) -> None:
        """Stop the tool (the backup is being abandoned); the server ends its side."""
        if self.proc.returncode is None:
            self.proc.kill()
        self._resources.close()


DumpProcess = ToolProcess[io.FileIO]


async def _read_all(stream: asyncio.StreamReader) -> str:
    return (await stream.read()).decode(errors="replace")


def archive_head_length(data: bytes) -> int:
    """Bytes of a custom-format archive's header (magic to pg_dump version): it holds the archive's creation time.

    The header changes with every dump; what follows does not unless the
    database did. 0 when ``data`` does not start like an archive (then nothing is split off).
    """
    if data[:5] != b"PGDMP" or len(data) < 11:
        return 0
    vmaj, vmin, _rev, int_size, _off_size, _fmt = data[5:11]
    pos = 11

    def read_int() -> int:
        nonlocal pos
        value = int.from_bytes(data[pos + 1: pos + 1 + int_size], "little")
        negative = data[pos] if pos < len(data) else 0
        pos += 1 + int_size
        return -value if negative else value

    if (vmaj, vmin) >= (1, 15):
        pos += 1  # compression algorithm (one byte since archive 1.15)
    else:
        read_int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        read_int()
    for _ in range(3):  # database name, server version, pg_dump version
        length = read_int()
        pos += max(0, length)
    return pos if pos <= len(data) else 0


def exact_pattern(schema: str, name: str) -> str:
    """A pg_dump table pattern matching exactly ``schema.name`` (quoted: no wildcard, no case folding)."""
    def quote(part: str) -> str:
        return '"' + part.replace('"', '""') + '"'
    return f"{quote(schema)}.{quote(name)}"


async def spawn_into_pipe(bin_dir: Path, tool: str, dsn: str, args: Sequence[str]
                          ) -> tuple[asyncio.subprocess.Process, int, contextlib.ExitStack]:
    """Start ``tool args --dbname=DSN`` writing its stdout into a pipe: (process, read end, resources to close).

    The connection's secrets live in ``resources`` (closed here when the tool cannot start).
    """
    resources = contextlib.ExitStack()
    tool_dsn, env = resources.enter_context(tool_connection(dsn))
    r, w = tool_pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(bin_dir / tool), *args, f"--dbname={tool_dsn}",
            stdout=w, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env,
        )
    except BaseException as exc:
        os.close(r)
        resources.close()
        if isinstance(exc, OSError):
            raise PostgresError(f"cannot run {tool} from {bin_dir}: {exc.strerror}; check bin_dir") from None
        raise
    finally:
        os.close(w)
    assert proc.stderr is not None
    return proc, r, resources


async def start_dump(bin_dir: Path, dsn: str, extra: Sequence[str] = ()) -> DumpProcess:
    """Start `pg_dump -Fc -Z0` (plus ``extra`` options) writing into a pipe we read from a thread."""
    # --no-password: a wrong password fails rather than prompting on the terminal.
    proc, r, resources = await spawn_into_pipe(
        bin_dir, "pg_dump", dsn, ["--format=custom", "--compress=0", "--no-sync", "--no-password", *extra])
    assert proc.stderr is not None
    return ToolProcess("pg_dump", proc, os.fdopen(r, "rb", buffering=0), asyncio.ensure_future(_read_all(proc.stderr)),
                       resources, _dump_advice)


_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.+)$")
# Objects a restored table may depend on, restored whatever tables are chosen
# (pg_restore runs with check_function_bodies off, so functions referring to
# absent tables still load).
_DEPENDENCY_KINDS = ("SCHEMA ", "EXTENSION ", "TYPE ", "DOMAIN ", "FUNCTION ", "COLLATION ")


def _table_entry(desc: str) -> tuple[str, tuple[str, str]] | None:
    """(kind, (schema, table)) for TOC entries that belong to one table."""
    for kind in ("TABLE DATA", "TABLE", "CONSTRAINT", "ACL", "COMMENT"):
        if desc.startswith(kind + " "):
            parts = desc[len(kind) + 1:].split(" ")
            break
    else:
        return None
    if len(parts) < 3:
        return None
    if kind in ("ACL", "COMMENT"):
        # "ACL schema TABLE name owner": only whole-table entries qualify.
        if parts[1] != "TABLE" or len(parts) < 4:
            return None
        return kind, (parts[0], parts[2])
    # TABLE / TABLE DATA: "schema name owner"; CONSTRAINT: "schema table conname owner".
    return kind, (parts[0], parts[1])


async def _feed(proc: asyncio.subprocess.Process, stream: AsyncIterator[bytes],
                until: asyncio.Future[bytes] | None = None) -> int:
    """Write ``stream`` into the process's stdin until it ends, the process stops reading,
    or ``until`` is done; returns the bytes written. The stream is always closed, which
    stops its read-ahead from the repository."""
    assert proc.stdin is not None
    fed = 0
    try:
        async for piece in stream:
            proc.stdin.write(piece)
            await proc.stdin.drain()
            fed += len(piece)
            if until is not None and until.done():
                break
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the process closed its input; its exit status tells why
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return fed


async def read_toc(bin_dir: Path, stream: AsyncIterator[bytes], *args: str) -> list[str]:
    """The archive's table of contents as `pg_restore -l` lines (``args`` e.g. --section=data).

    Reads only the start of the archive: pg_restore -l stops after the TOC.
    """
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "pg_restore"), "-l", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=_ENV,
    )
    out_task = asyncio.ensure_future(proc.stdout.read())  # type: ignore[union-attr]
    err_task = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
    # pg_restore -l closes its input once it has the TOC.
    await _feed(proc, stream, until=out_task)
    rc = await proc.wait()
    out, err = (await out_task).decode(), (await err_task).decode()
    if rc != 0:
        raise PostgresError(f"pg_restore -l failed: {tool_failure('pg_restore', err, rc)}; "
                            "the archive may be damaged: run backstop check --read-data")
    return [line for line in out.splitlines() if _TOC_LINE.match(line)]


def toc_desc(line: str) -> str:
    """The description part of a TOC line: "TABLE DATA schema name owner"."""
    m = _TOC_LINE.match(line)
    return m.group(4) if m else ""


async def table_list_file(bin_dir: Path, stream: AsyncIterator[bytes], tables: list[str]) -> tuple[str, list[str]]:
    """Build a pg_restore -L list selecting ``tables`` (schema.table) with their data.

    Returns (list file text, tables not found in the archive).
    """
    toc = await read_toc(bin_dir, stream)
    wanted = {tuple(t.split(".", 1)) for t in tables}
    found: set[tuple[str, ...]] = set()
    keep = []
    for line in toc:
        desc = toc_desc(line)
        if desc.startswith(_DEPENDENCY_KINDS):
            keep.append(line)  # types, domains, functions the tables may need
            continue
        sel = _table_entry(desc)
        if sel and sel[1] in wanted:
            keep.append(line)
            if sel[0] in ("TABLE", "TABLE DATA"):
                found.add(sel[1])
    missing = [".".join(t) for t in sorted(wanted - found)]
    return "\n".join(keep) + "\n", missing


async def restore_stream(bin_dir: Path, dsn: str, stream: AsyncIterator[bytes], list_text: str | None = None) -> int:
    """Feed an archive stream into `pg_restore`; returns the bytes fed."""
    list_path = None
    with tool_connection(dsn) as (tool_dsn, env):
        args = [str(bin_dir / "pg_restore"), f"--dbname={tool_dsn}", "--exit-on-error", "--no-password"]
        if list_text is not None:
            fd, list_path = tempfile.mkstemp(prefix="backstop-toc-", suffix=".list")
            with os.fdopen(fd, "w") as f:
                f.write(list_text)
            args.append(f"--use-list={list_path}")
        try:
            return await _run_restore(args, env, stream)
        finally:
            if list_path:
                os.unlink(list_path)


async def _run_restore(args: list[str], env: dict[str, str], stream: AsyncIterator[bytes]) -> int:
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise PostgresError(f"cannot run {args[0]}: {exc.strerror}; check bin_dir") from None
    assert proc.stderr is not None
    err_task = asyncio.ensure_future(proc.stderr.read())
    try:
        # pg_restore may quit early (done, or failed: its exit status says which).
        fed = await _feed(proc, stream)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    rc = await proc.wait()
    err = (await err_task).decode(errors="replace")
    if rc != 0:
        cause = tool_failure("pg_restore", err, rc)
        entry = _TOC_ENTRY.search(err)
        raise PostgresError(f"pg_restore failed: {cause}; {_restore_advice(cause)}",
                            toc_entry=int(entry.group(1)) if entry else None)
    return fed


_TOC_ENTRY = re.compile(r"from TOC entry (\d+);")


def ensure_new_database(name: str) -> None:
    """Reject names pg would mangle, before anything is created."""
    if not name or len(name.encode()) > 63:
        raise RestoreRefused(f"--into {name!r}: a database name must be 1 to 63 bytes long")
