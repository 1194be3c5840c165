"""One consistent snapshot of a database, shared by pg_dump and parallel COPY streams.

What `pg_dump -j` does inside, without its directory format's staging on
disk: a leader connection opens a repeatable-read, read-only transaction,
exports its snapshot (``pg_export_snapshot()``) and takes ACCESS SHARE locks
on every table it will copy (the locks pg_dump takes: DDL waits, reads and
writes do not). Then `pg_dump --snapshot` writes the schema archive and
worker connections that ``SET TRANSACTION SNAPSHOT`` to the same snapshot
stream each table's rows with ``COPY ... TO STDOUT``. Every stream sees the
database as of one instant; the leader keeps the snapshot and the locks
alive until the last stream has ended.

A table's rows arrive as one protocol message per row. Read in Python, a
large table costs microseconds of interpreter time per row on one GIL (a
3 GB database took 3x as long as pg_dump's single stream, by measurement:
bench/logical_bench.py), so a table of ``PSQL_MIN_BYTES`` or more is read
through `psql`, which writes the COPY rows to a pipe the chunker reads in
large blocks; a small table is read on the worker's own connection, saving
a process start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from core.errors import PostgresError
from core.postgres.logical import connect, redact, tool_connection, tool_failure
from core.postgres.tools import first_line

# Tables at least this large on disk are copied through psql (see above).
PSQL_MIN_BYTES = 8 << 20

# Tables whose data is copied: ordinary tables and partitions, permanent or
# unlogged, outside the system schemas and not owned by an extension (pg_dump's
# default set). Columns in COPY order: not dropped, not generated (COPY skips those).
_TABLES = """
SELECT n.nspname, c.relname, pg_table_size(c.oid),
       coalesce(array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
GROUP BY n.nspname, c.relname, c.oid
ORDER BY pg_table_size(c.oid) DESC, n.nspname, c.relname
"""


def copy_settings(encoding: str) -> list[sql.Composed]:
    """Session settings both ends of a COPY stream use, as pg_dump and pg_restore set them.

    Rows travel as text: dates, intervals and floats must be written and read
    in the same, lossless styles, in the source database's encoding, and
    row-level security must neither hide rows from the backup nor block the
    restore (a role that cannot bypass it gets an error instead, as with pg_dump).
    """
    out = [sql.SQL("SET {} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in (
        ("DateStyle", "ISO"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3"), ("row_security", "off"),
        ("statement_timeout", "0"), ("lock_timeout", "0"), ("idle_in_transaction_session_timeout", "0"))]
    if encoding:
        out.append(sql.SQL("SET client_encoding = {}").format(sql.Literal(encoding)))
    return out


def copy_out_settings(encoding: str) -> list[sql.Composed]:
    """:func:`copy_settings` for reading rows out (a backup's streams, a drill's digests of the restored copy).

    Also pins the settings that change the text of a row but not its value
    (a timestamptz's offset, bytea's notation), so that the bytes, and a
    table's digest (FORMAT.md 10.3), depend on the data alone: a drill reads
    the restored copy months later, maybe where the server's or role's
    defaults differ. Loading keeps the database's own, as pg_restore does.
    """
    return [*copy_settings(encoding), *(sql.SQL("SET {} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in (
        ("TimeZone", "UTC"), ("bytea_output", "hex")))]


@dataclass(frozen=True)
class TableSource:
    """A table whose rows a backup copies."""

    schema: str
    name: str
    bytes: int  # on-disk size at the snapshot: weights for balancing streams
    columns: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def copy_to(self) -> sql.Composed:
        """``COPY schema.table (columns) TO STDOUT``, identifiers quoted (no list for a table without columns)."""
        return sql.SQL("COPY {}{} TO STDOUT").format(sql.Identifier(self.schema, self.name), column_list(self.columns))


def column_list(columns: list[str] | tuple[str, ...]) -> sql.Composable:
    """`` (a, b)`` for COPY; nothing for a table without columns (``COPY t ()`` is a syntax error, and a
    zero-column table still has rows: one empty line each)."""
    if not columns:
        return sql.SQL("")
    return sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


class ExportedSnapshot:
    """The leader: an open transaction whose snapshot the schema dump and the COPY workers share."""

    def __init__(self, dsn: str, db_name: str) -> None:
        self.dsn = dsn
        self.db_name = db_name
        self.snapshot_id = ""
        self.encoding = ""
        self.tables: list[TableSource] = []
        self._conn: psycopg.AsyncConnection | None = None

    async def __aenter__(self) -> ExportedSnapshot:
        conn = await connect(self.dsn, f"database {self.db_name!r}")
        self._conn = conn
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = await (await conn.execute("SELECT pg_export_snapshot()")).fetchone()
            assert row is not None
            self.snapshot_id = str(row[0])
            enc = await (await conn.execute("SELECT current_setting('server_encoding')")).fetchone()
            self.encoding = str(enc[0]) if enc else ""
            rows = await (await conn.execute(_TABLES)).fetchall()
            self.tables = [TableSource(r[0], r[1], int(r[2]), tuple(r[3])) for r in rows]
            for t in self.tables:
                # What pg_dump's leader holds: DDL on a table being copied waits for the backup.
                await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
                    sql.Identifier(t.schema, t.name)))
        except psycopg.Error as exc:
            await conn.close()
            raise PostgresError(f"cannot take a consistent snapshot of {self.db_name} ({redact(self.dsn)}): "
                                f"{first_line(exc)}; check the role's privileges (it needs SELECT on every "
                                "table, as pg_dump does)") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._conn is not None:
            await self._conn.close()  # ends the read-only transaction: nothing to commit


class CopyReader:
    """A file-like reader over one table's ``COPY ... TO STDOUT``, for the chunker's thread.

    Runs a synchronous psycopg connection in the calling thread (libpq
    releases the GIL while it waits), joined to the exported snapshot.
    """

    def __init__(self, conn: psycopg.Connection, table: TableSource) -> None:
        self._copy_cm = conn.cursor().copy(table.copy_to())
        self._copy = self._copy_cm.__enter__()
        self._rows = iter(self._copy)
        self._buf = memoryview(b"")

    def readinto(self, dest: memoryview) -> int:
        """Fill ``dest`` from the COPY stream; 0 at its end."""
        while not self._buf:
            try:
                self._buf = memoryview(next(self._rows))
            except StopIteration:
                return 0
        n = min(len(dest), len(self._buf))
        dest[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._copy_cm.__exit__(None, None, None)


class PsqlCopyReader:
    """A file-like reader over one table's ``COPY ... TO STDOUT`` run by `psql` inside the snapshot."""

    def __init__(self, psql: Path, dsn: str, snapshot_id: str, encoding: str, table: TableSource,
                 settings: list[str]) -> None:
        self.table = table
        self._resources = contextlib.ExitStack()
        tool_dsn, env = self._resources.enter_context(tool_connection(dsn))
        if encoding:
            env["PGCLIENTENCODING"] = encoding
        commands = [*settings, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    f"SET TRANSACTION SNAPSHOT '{snapshot_id}'", table.copy_to().as_string(None), "COMMIT"]
        args = [str(psql), "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
                f"--dbname={tool_dsn}"]
        for c in commands:
            args += ["--command", c]
        # stderr to a file, not a pipe: nobody reads it until the COPY ends, and a full pipe would stall psql.
        self._err = self._resources.enter_context(tempfile.TemporaryFile())
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._err, env=env, bufsize=0)
        except OSError as exc:
            self._resources.close()
            raise PostgresError(f"cannot run {psql}: {exc.strerror}; check bin_dir") from None
        assert self.proc.stdout is not None
        self._out = self.proc.stdout

    def readinto(self, dest: memoryview) -> int:
        """Fill ``dest`` from psql's output (the COPY rows); 0 at its end."""
        return self._out.readinto(dest) or 0  # type: ignore[attr-defined]  # a raw pipe

    def close(self) -> None:
        """Wait for psql; PostgresError if the COPY failed (a stream cut short must not count as whole)."""
        try:
            self._out.close()
            rc = self.proc.wait()
            self._err.seek(0)
            err = self._err.read()
        finally:
            self._resources.close()
        if rc != 0:
            cause = tool_failure("psql", err.decode(errors="replace"), rc)
            raise PostgresError(f"COPY of {self.table.qualified} failed: {cause}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


class SnapshotWorker:
    """One worker connection inside the exported snapshot; copies tables one after another.

    With ``psql`` given, tables of ``PSQL_MIN_BYTES`` or more go through it instead (module docstring).
    """

    def __init__(self, dsn: str, snapshot_id: str, encoding: str, psql: Path | None = None) -> None:
        self.dsn, self.snapshot_id, self.encoding, self.psql = dsn, snapshot_id, encoding, psql
        self._current: PsqlCopyReader | None = None
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                                        application_name="backstop")
            for setting in copy_out_settings(encoding):
                self.conn.execute(setting)
            # SET TRANSACTION SNAPSHOT must be the transaction's first statement.
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            self._settings = [s.as_string(self.conn) for s in copy_out_settings("")]
        except psycopg.Error as exc:
            raise PostgresError(f"a backup worker cannot join the snapshot ({redact(dsn)}): {first_line(exc)}; "
                                "check max_connections (the backup opens `jobs` + 2 connections)") from None

    def open(self, table: TableSource) -> CopyReader | PsqlCopyReader:
        if self.psql is not None and table.bytes >= PSQL_MIN_BYTES:
            self._current = PsqlCopyReader(self.psql, self.dsn, self.snapshot_id, self.encoding, table,
                                           self._settings)
            return self._current
        try:
            return CopyReader(self.conn, table)
        except psycopg.Error as exc:
            raise PostgresError(f"COPY of {table.qualified} failed: {first_line(exc)}") from None

    def cancel(self) -> None:
        """Stop a COPY in progress (another stream failed, or the backup was interrupted)."""
        if self._current is not None:
            self._current.kill()
        try:
            self.conn.cancel_safe()
        except psycopg.Error:
            pass  # already gone: nothing to stop

    def close(self) -> None:
        self.conn.close()


def find_psql(bin_dir: Path) -> Path | None:
    """The psql beside pg_dump, if installed (else every table is read in Python)."""
    psql = bin_dir / "psql"
    return psql if os.access(psql, os.X_OK) else None
