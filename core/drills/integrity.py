"""Per-table integrity: digests taken from the COPY streams at backup time, compared after a drill's restore.

A logical snapshot records, for each table stream, its row count and an
order-independent digest of its rows (``rows`` and ``digest`` in the
manifest, core/repository/table_digest.py, FORMAT.md 10). After a restore,
:func:`check_tables` reads every such table back from the restored database
the way the backup read it (same columns, encoding and session settings, the
same readers) and recomputes both. :func:`check_indexes` runs amcheck over
the btree indexes and :func:`verify_data_dir` pg_verifybackup over a
physical drill's data directory.

No evidence is not a pass: a snapshot taken before digests were recorded
gives one *failed* check saying so, and a physical data directory without a
``backup_manifest`` likewise. Only amcheck is optional (None when the server
does not offer it), since it checks the server's indexes rather than the
backup.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from core.drills.model import DrillCheck
from core.errors import BackstopError, PostgresError
from core.postgres.logical import connect
from core.postgres.names import show_relation
from core.postgres.snapshot import ExportedSnapshot, SnapshotWorker, TableSource, find_psql
from core.postgres.tools import find_bin_dir, first_line, server_major
from core.repository.manifest import FileEntry, Manifest
from core.repository.table_digest import CopyDigest, TableDigest

__all__ = ["TableDigest", "check_indexes", "check_tables", "verify_data_dir"]

CHECK_JOBS = 2  # tables read back at once
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class _Expected:
    entry: FileEntry
    relation: tuple[str, str]

    @property
    def name(self) -> str:
        return f"table {show_relation(self.relation)}"

    @property
    def recorded(self) -> TableDigest:
        assert self.entry.rows is not None and self.entry.digest is not None
        return TableDigest(self.entry.rows, self.entry.digest)


async def check_tables(dsn: str, manifest: Manifest, *, bin_dir: Path | None = None,
                       jobs: int = CHECK_JOBS) -> list[DrillCheck]:
    """One check per table whose digest the manifest recorded, comparing the restored table at ``dsn``.

    Each check is named ``table <schema>.<name>`` (quoted as PostgreSQL would)
    and fails when the restored table is missing, cannot be read, or its row
    count or digest differs from the manifest's. A logical snapshot taken
    before Backstop recorded digests gives a single *failed* check named
    ``tables`` saying so: such a drill proves the restore ran, not that the
    data came back whole. A physical snapshot gives no checks at all (it has
    no table streams: its drills run :func:`verify_data_dir` and
    :func:`check_indexes`).
    Large tables are read through ``psql`` beside ``bin_dir`` (found from the
    server's version when not given), as the backup reads them.
    """
    if manifest.is_physical:
        return []
    expected = [_Expected(f, (f.relation[0], f.relation[1])) for f in manifest.table_files()
                if f.relation is not None and f.rows is not None and f.digest is not None]
    if not expected:
        return [DrillCheck("tables", False, "this snapshot records no table digests (it was taken before Backstop "
                                            "recorded them); drill a snapshot taken since to have its tables checked")]
    db = str(conninfo_to_dict(dsn).get("dbname") or "the restored database")
    psql = await _psql(dsn, bin_dir)
    async with ExportedSnapshot(dsn, db) as snap:
        present = {(t.schema, t.name): t for t in snap.tables}
        results: dict[tuple[str, str], DrillCheck] = {}
        todo: list[tuple[_Expected, TableSource]] = []
        for e in expected:
            found = present.get(e.relation)
            if found is None:
                results[e.relation] = DrillCheck(e.name, False, f"expected {e.recorded.rows:,} rows; the table is "
                                                                "missing from the restored database")
            else:
                todo.append((e, TableSource(e.relation[0], e.relation[1], found.bytes,
                                            tuple(e.entry.columns or ()))))
        if todo:
            reader = _Reader(dsn, snap.snapshot_id, manifest.encoding, psql, todo)
            await asyncio.gather(*(asyncio.to_thread(reader.run) for _ in range(max(1, min(jobs, len(todo))))))
            results.update(reader.results)
    return [results[e.relation] for e in sorted(expected, key=lambda e: e.relation)]


def compare(name: str, recorded: TableDigest, found: TableDigest) -> DrillCheck:
    """A table's check from its recorded and its recomputed digest."""
    if found.rows != recorded.rows:
        return DrillCheck(name, False, f"expected {recorded.rows:,} rows, found {found.rows:,}")
    if found.digest != recorded.digest:
        return DrillCheck(name, False, f"expected {recorded.rows:,} rows, found {found.rows:,}; digest differs")
    return DrillCheck(name, True, f"{found.rows:,} rows, digest matches")


async def _psql(dsn: str, bin_dir: Path | None) -> Path | None:
    """The psql large tables are read through; None reads every table on a connection (slower, same bytes)."""
    try:
        if bin_dir is None:
            bin_dir = find_bin_dir(await server_major(dsn))
        return find_psql(bin_dir)
    except (PostgresError, psycopg.Error):
        return None


class _Reader:
    """Worker threads that take tables off a shared list and digest each one's COPY stream."""

    def __init__(self, dsn: str, snapshot_id: str, encoding: str, psql: Path | None,
                 todo: list[tuple[_Expected, TableSource]]) -> None:
        self.dsn, self.snapshot_id, self.encoding, self.psql = dsn, snapshot_id, encoding, psql
        self._todo = sorted(todo, key=lambda t: -t[1].bytes)  # the longest reads start first
        self._lock = threading.Lock()
        self.results: dict[tuple[str, str], DrillCheck] = {}

    def _next(self) -> tuple[_Expected, TableSource] | None:
        with self._lock:
            return self._todo.pop(0) if self._todo else None

    def run(self) -> None:
        worker: SnapshotWorker | None = None
        try:
            while (item := self._next()) is not None:
                expected, table = item
                try:
                    if worker is None:
                        worker = SnapshotWorker(self.dsn, self.snapshot_id, self.encoding, self.psql)
                    check = compare(expected.name, expected.recorded, _digest(worker, table))
                except (BackstopError, psycopg.Error) as exc:
                    check = DrillCheck(expected.name, False, f"cannot read it back: {first_line(exc)}")
                    if worker is not None:
                        worker.close()  # its transaction is aborted: the next table gets a fresh one
                        worker = None
                self.results[expected.relation] = check
        finally:
            if worker is not None:
                worker.close()


def _digest(worker: SnapshotWorker, table: TableSource) -> TableDigest:
    """Read one table's COPY stream to its end, digesting it in large blocks (memory stays flat)."""
    reader = worker.open(table)
    digest = CopyDigest()
    buf = bytearray(_READ_BLOCK)
    view = memoryview(buf)
    try:
        while True:
            got = 0
            # A connection's reader hands over one row per call: fill the block before digesting it.
            while got < len(buf) and (n := reader.readinto(view[got:])):
                got += n
            if got:
                digest.update(view[:got])
            if got < len(buf):
                break
    finally:
        reader.close()
    return digest.result()


# -- indexes ---------------------------------------------------------------------------------------------------

# Every btree index that has storage and is ready to be checked: the user's, the catalogs' and TOAST's.
_BTREE_INDEXES = """
SELECT n.nspname, c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE am.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence <> 't' AND i.indisvalid AND i.indisready
ORDER BY n.nspname = 'pg_catalog', n.nspname, c.relname
"""


async def check_indexes(dsn: str, *, heapallindexed: bool = True) -> DrillCheck | None:
    """amcheck's ``bt_index_check`` over every btree index of the database at ``dsn``.

    Creates the amcheck extension for the check when the server offers it
    (and drops it again if it was not there), so run it on a drill's scratch
    database. None when the server does not offer amcheck (PostgreSQL's
    contrib is not installed), or it is not installed in the database and
    cannot be created there (the role may not; a server paused in recovery
    is read only). With
    ``heapallindexed`` every table row must also be found in each of its
    indexes (a heap scan per index). The check names each index that fails.
    """
    conn = await connect(dsn, "the restored database")
    try:
        async with conn:
            row = await (await conn.execute(
                "SELECT installed_version IS NOT NULL FROM pg_available_extensions WHERE name = 'amcheck'")).fetchone()
            if row is None:
                return None
            created = not row[0]
            if created:
                try:
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
                    return None  # a role that may not, or a server still in recovery (read only)
            schema = await (await conn.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'amcheck'")).fetchone()
            assert schema is not None
            fn = sql.Identifier(schema[0], "bt_index_check")
            indexes = await (await conn.execute(_BTREE_INDEXES)).fetchall()
            failed: list[str] = []
            for nsp, name in indexes:
                try:
                    await conn.execute(sql.SQL("SELECT {}({}::regclass, {})").format(
                        fn, sql.Literal(sql.Identifier(nsp, name).as_string(conn)), sql.Literal(heapallindexed)))
                except psycopg.errors.QueryCanceled:
                    raise
                except psycopg.Error as exc:
                    failed.append(f"index {show_relation((nsp, name))}: {first_line(exc)}")
            if created:
                await conn.execute("DROP EXTENSION IF EXISTS amcheck")
    except psycopg.Error as exc:
        raise PostgresError(f"amcheck could not run on the restored database: {first_line(exc)}") from None
    how = " with heapallindexed" if heapallindexed else ""
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return DrillCheck("amcheck", False, f"{failed[0]}{more}; {len(failed)} of {len(indexes)} btree indexes failed")
    return DrillCheck("amcheck", True, f"{len(indexes)} btree indexes verified{how}")


# -- physical data directories ---------------------------------------------------------------------------------


def verified_check(verified: str) -> DrillCheck:
    """The check for what a physical restore's own pg_verifybackup said (``ok``, or why it was skipped)."""
    if verified == "ok":
        return DrillCheck("pg_verifybackup", True, "every file's checksum matches the backup's manifest (read back "
                                                   "as restored, before recovery)")
    return DrillCheck("pg_verifybackup", False, verified)


async def verify_data_dir(bin_dir: Path, pgdata: Path, *, checksums: bool = True) -> DrillCheck:
    """pg_verifybackup over a restored physical data directory (its backup_manifest).

    Run it between writing the directory and starting the server on it:
    recovery changes the files the manifest describes, so a directory that
    a server has run on (``postmaster.pid``) fails the check saying so. With
    ``checksums`` (the default) every file's checksum is read back, not only
    its presence and size. A directory without ``backup_manifest`` fails:
    there is nothing to verify it against.
    """
    from core.ops.physical_restore import run_verifybackup, verifybackup_tool

    name = "pg_verifybackup"
    if not (pgdata / "backup_manifest").is_file():
        return DrillCheck(name, False, f"{pgdata} has no backup_manifest to verify it against (a base backup of "
                                       "PostgreSQL 12 or older)")
    if (pgdata / "postmaster.pid").exists():
        return DrillCheck(name, False, f"a server has run on {pgdata}, so its files no longer match the backup's "
                                       "manifest; verify a data directory before starting it")
    version = pgdata / "PG_VERSION"
    major = int(version.read_text().strip() or 0) if version.is_file() else 0
    tool = verifybackup_tool(bin_dir, major)
    if tool is None:
        return DrillCheck(name, False, "pg_verifybackup is not installed; install the PostgreSQL client package")
    problem = await run_verifybackup(tool, pgdata, checksums=checksums)
    if problem is not None:
        return DrillCheck(name, False, problem)
    what = "every file's checksum" if checksums else "every file present with its size"
    return DrillCheck(name, True, f"{what} matches the backup's manifest")
