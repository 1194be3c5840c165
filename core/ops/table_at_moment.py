"""`backstop restore --table T --target-time X --into NEW_DB`: tables as they were at a moment.

A logical snapshot holds a table only as it was when the backup ran; the
physical snapshot and the archived WAL reach any moment. So:

1. choose the physical snapshot and check the WAL path to the target
   (:func:`core.ops.physical_restore.choose_snapshot`), then check that the
   scratch directory has room for it (its size plus WAL: one line naming the
   bytes needed and free otherwise);
2. restore it into a private scratch cluster under ``restore.scratch_dir``
   (:func:`core.ops.physical_restore.restore_physical`), entered only through
   a Unix socket in a private directory with a ``trust`` pg_hba.conf of its
   own (no TCP listener: the restored copy's own pg_hba.conf would want the
   production passwords), and recover it to the target, promoted or paused;
3. read its schema with ``pg_dump -Fc --exclude-table-data`` (definitions and
   sequence values, no rows), choose the named tables and what they need
   with the table restore's own dependency-aware selection
   (core/postgres/selection.py), create NEW_DB on the live server and run
   the same restore steps a logical table restore runs
   (core/postgres/parallel_restore.py), each table's rows streamed from the
   scratch cluster's ``COPY ... TO STDOUT`` straight into ``COPY ... FROM
   STDIN`` on NEW_DB (nothing staged on disk);
4. always stop and remove the scratch cluster (on failure, Ctrl-C and SIGTERM
   too), and drop NEW_DB if anything failed after it was created.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from core.context import EngineContext
from core.errors import PostgresError, RestoreRefused, UsageError
from core.jobs import Job, run_job
from core.ops.physical_restore import (
    WAIT_TIMEOUT_S,
    PhysicalRestoreRequest,
    RecoveryPoint,
    _start_and_wait,  # the physical restore's own start-and-wait, on our scratch cluster
    _WalPaths,
    choose_snapshot,
    restore_physical,
)
from core.ops.restore import Scope
from core.ops.scratch import ScratchSpace, login_role
from core.postgres import logical
from core.postgres.copy_restore import copy_in
from core.postgres.names import Relation, show_relation
from core.postgres.parallel_restore import restore_sections
from core.postgres.recovery import RecoveryTarget
from core.postgres.schema_archive import SchemaArchive, read_schema
from core.postgres.selection import Selection, select, tables_in
from core.postgres.snapshot import column_list, copy_settings
from core.postgres.tools import find_bin_dir, server_major
from core.repository.wal import list_wal

# Rows travel in pieces of about this size: fewer awaits per row on both connections.
COPY_PIECE_BYTES = 256 << 10


@dataclass(frozen=True)
class TableAtMomentRequest:
    """What `restore --table ... --target-* ... --into NEW_DB` asks for."""

    db: str
    tables: tuple[str, ...]  # as typed: 'schema.table', quoted as PostgreSQL quotes names
    into: str
    target: RecoveryTarget
    config_path: Path  # the config the scratch cluster's `backstop wal-fetch` reads
    snapshot: str = "latest"  # 'latest': the newest physical snapshot before the target


@dataclass(frozen=True)
class CopiedTable:
    """A table whose rows were copied into the new database."""

    table: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class TableAtMomentResult:
    snapshot_id: str
    db: str
    into: str
    target: RecoveryTarget
    point: RecoveryPoint  # where the scratch cluster's recovery stopped
    tables: list[CopiedTable]
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # foreign keys to tables not restored

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.snapshot_id, "db": self.db, "into": self.into, "target": self.target.to_json(),
                "recovery": self.point.to_json(),
                "tables": [{"table": t.table, "rows": t.rows, "bytes": t.bytes} for t in self.tables],
                "duration_s": round(self.duration_s, 3), "warnings": self.warnings, "left_out": self.left_out}


async def restore_table_at_moment(ctx: EngineContext, req: TableAtMomentRequest) -> TableAtMomentResult:
    """Restore ``req.tables`` as they were at ``req.target`` into the new database ``req.into``."""
    dbc = ctx.config.database(req.db)  # a ConfigError naming the configured databases
    if not req.tables:
        raise UsageError("name the tables to bring back with --table SCHEMA.TABLE")
    if req.target.action not in ("promote", "pause"):
        raise UsageError("--target-action for tables at a moment is promote or pause: the scratch cluster must be "
                         "read at the target")
    scope = Scope.parse(list(req.tables))  # a bad name is refused before anything starts
    logical.ensure_new_database(req.into)
    if await logical.database_exists(dbc.dsn, req.into):
        raise RestoreRefused(f"database {req.into!r} already exists; restore the tables into a new name with --into")
    t0, started_at = time.monotonic(), time.time()
    what = f"{', '.join(req.tables)} of {req.db} as of {req.target.describe()} into {req.into}"
    async with run_job(ctx.bus, "restore", req.db, f"restore of {what}") as job:
        run = _Run(ctx, req, dbc.dsn, dbc.bin_dir, scope, job)
        try:
            result = await run.execute(what)
        except BaseException as exc:
            if run.created:
                await logical.drop_database(dbc.dsn, req.into)  # nothing half-restored stays visible
            if run.snapshot_id:
                ctx.catalog.add_restore(job_id=job.id, snapshot_id=run.snapshot_id, db=req.db, into=req.into,
                                        tables=run.shown, started_at=started_at, duration_s=time.monotonic() - t0,
                                        nbytes=run.fed, ok=False, error=str(exc), kind="restore")
            raise
        finally:
            run.remove_scratch()
        duration = time.monotonic() - t0
        ctx.catalog.add_restore(job_id=job.id, snapshot_id=run.snapshot_id, db=req.db, into=req.into,
                                tables=run.shown, started_at=started_at, duration_s=duration, nbytes=run.fed,
                                ok=True, error=None, kind="restore")
        job.result = {"snapshot": run.snapshot_id, "into": req.into, "lsn": result.point.lsn,
                      "commit_time": result.point.commit_time, "rows": sum(t.rows for t in result.tables),
                      "duration_s": round(duration, 3)}
        return TableAtMomentResult(run.snapshot_id, req.db, req.into, req.target, result.point, result.tables,
                                   duration, list(job.warnings), result.left_out)


@dataclass
class _Copied:
    point: RecoveryPoint
    tables: list[CopiedTable]
    left_out: list[str]


class _Run:
    """One table-at-a-moment restore: scratch cluster, schema, rows; and what to clean up."""

    def __init__(self, ctx: EngineContext, req: TableAtMomentRequest, dsn: str, bin_dir: Path | None, scope: Scope,
                 job: Job) -> None:
        self.ctx, self.req, self.dsn, self.configured_bin_dir, self.scope, self.job = (
            ctx, req, dsn, bin_dir, scope, job)
        self.snapshot_id = ""
        self.scratch = ScratchSpace(ctx)
        self.created = False  # NEW_DB exists because of us
        self.shown: list[str] = []
        self.fed = 0

    async def execute(self, what: str) -> _Copied:
        job, req = self.job, self.req
        job.phase("prepare")
        repo = await self.ctx.open_repository(require_all=False)
        choice = await choose_snapshot(self.ctx, repo, _WalPaths(repo, await list_wal(repo)), req.db, req.snapshot,
                                       req.target)
        self.snapshot_id = choice.record.id
        pgdata = self.scratch.create(sum(f.size for f in choice.manifest.files), choice.info.wal_segment_size, what)
        job.phase("scratch restore")
        await restore_physical(self.ctx, PhysicalRestoreRequest(
            db=req.db, pgdata=pgdata, config_path=req.config_path, snapshot=choice.record.id, target=req.target,
            start=False))
        cluster = self.scratch.cluster_for(pgdata)
        job.phase("recover")
        try:
            point = await _start_and_wait(cluster, req.target, WAIT_TIMEOUT_S)
        except PostgresError as exc:
            raise PostgresError(f"the scratch cluster did not reach {req.target.describe()}: "
                                f"{_without_keep_advice(str(exc))}; it was removed") from None
        dbname = str(conninfo_to_dict(self.dsn).get("dbname") or req.db)
        cluster.role = await login_role(cluster, self.dsn, dbname)
        tables, left_out = await self._copy(cluster.dsn(dbname))
        return _Copied(point, tables, left_out)

    async def _copy(self, scratch_dsn: str) -> tuple[list[CopiedTable], list[str]]:
        """Schema and rows of the chosen tables from the scratch cluster's database into NEW_DB."""
        job, req = self.job, self.req
        job.phase("read schema")
        bin_dir = find_bin_dir(await server_major(self.dsn), self.configured_bin_dir)
        schema = await _dump_schema(bin_dir, scratch_dsn)
        label = f"{self.snapshot_id[:8]} as of {req.target.describe()}"
        sel = select(schema.toc, self.scope.resolve(tables_in(schema.toc), label))
        self.shown = [show_relation(r) for r in sel.tables]
        for fk in sel.left_out:
            job.warn(f"foreign key {fk} is left out: the table it refers to is not restored")
        sources = await _table_sources(scratch_dsn, sel.tables)
        encoding = await _encoding(scratch_dsn)
        into_dsn = logical.with_dbname(self.dsn, req.into)
        copied: list[CopiedTable] = []

        def copy_job(rel: Relation, columns: list[str]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                rows, nbytes = await _copy_table(scratch_dsn, into_dsn, rel, columns, encoding)
                self.fed += nbytes
                copied.append(CopiedTable(show_relation(rel), rows, nbytes))
            return run

        await logical.create_database(self.dsn, req.into)
        self.created = True
        job.phase("restore")
        try:
            await restore_sections(bin_dir, into_dsn, schema, schema.toc_only, self.ctx.config.restore_jobs,
                                   [copy_job(rel, cols) for rel, cols in sources], entries=sel.entries,
                                   on_phase=job.phase)
        except PostgresError as exc:
            raise _named(exc, sel) from None
        order = {name: i for i, name in enumerate(self.shown)}
        return sorted(copied, key=lambda t: order.get(t.table, 0)), sel.left_out

    def remove_scratch(self) -> None:
        """Stop the scratch cluster and remove its directory, whatever happened (synchronous: runs when cancelled)."""
        self.scratch.remove(self.job.warn)


_KEEP_ADVICE = re.compile(r";[^;]*(?:kept for inspection|directory kept|remove it before)[^;]*")


def _without_keep_advice(message: str) -> str:
    """The physical restore's message without its advice about the kept directory: a scratch one is removed."""
    return _KEEP_ADVICE.sub("", message)


def _named(exc: PostgresError, sel: Selection) -> PostgresError:
    """A pg_restore failure naming the object and the table it was for (as a logical table restore does)."""
    why = sel.why(exc.toc_entry) if exc.toc_entry is not None else ""
    head = f"cannot create {why}: " if why else ""
    return PostgresError(f"{head}{exc}; the new database was dropped", toc_entry=exc.toc_entry)


_ROW_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
"""


async def _dump_schema(bin_dir: Path, dsn: str) -> SchemaArchive:
    """The scratch database's schema archive, as a backup takes it: every definition and sequence value, no rows.

    Each table's data is excluded by its exact name, as the backup does: a
    wildcard would drop the sequences' values too (they count as table data
    to pg_dump), and a restored serial column would start again at 1. Read
    whole (no table data and no large objects: it is small) and parsed with
    the table restore's own reader.
    """
    async with await logical.connect(dsn, "the scratch cluster") as conn:
        tables = await (await conn.execute(_ROW_TABLES)).fetchall()
    excludes = [f"--exclude-table-data={logical.exact_pattern(s, t)}" for s, t in tables]
    dump = await logical.start_dump(bin_dir, dsn, [*excludes, "--no-blobs"])
    try:
        data = await asyncio.to_thread(dump.reader.readall)
    except BaseException:
        dump.kill()
        raise
    finally:
        dump.reader.close()
    await dump.wait()

    async def once() -> AsyncIterator[bytes]:
        yield data

    return await read_schema(once())


_COLUMNS = """
SELECT n.nspname, c.relname, c.relkind,
       coalesce(array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
GROUP BY n.nspname, c.relname, c.relkind
"""


async def _table_sources(dsn: str, tables: list[Relation]) -> list[tuple[Relation, list[str]]]:
    """Each chosen table that holds rows of its own, with its columns in COPY order (generated ones skipped).

    A partitioned table holds none (its partitions, chosen too, do).
    """
    async with await logical.connect(dsn, "the scratch cluster") as conn:
        cur = await conn.execute(_COLUMNS, ([s for s, _ in tables], [t for _, t in tables]))
        found = {(r[0], r[1]): (r[2], list(r[3])) for r in await cur.fetchall()}
    return [(rel, found[rel][1]) for rel in tables if rel in found and found[rel][0] == "r"]


async def _encoding(dsn: str) -> str:
    async with await logical.connect(dsn, "the scratch cluster") as conn:
        row = await (await conn.execute("SELECT current_setting('server_encoding')")).fetchone()
    return str(row[0]) if row else ""


async def _copy_table(scratch_dsn: str, into_dsn: str, rel: Relation, columns: list[str],
                      encoding: str) -> tuple[int, int]:
    """Stream one table's rows from the scratch cluster into the new database; (rows, bytes)."""
    schema, name = rel
    source = await logical.connect(scratch_dsn, "the scratch cluster")
    cur = source.cursor()
    try:
        for setting in copy_settings(encoding):
            await source.execute(setting)
        stmt = sql.SQL("COPY {}{} TO STDOUT").format(sql.Identifier(schema, name), column_list(columns))

        async def rows() -> AsyncIterator[bytes]:
            piece = bytearray()
            async with cur.copy(stmt) as copy:
                async for data in copy:
                    piece += data
                    if len(piece) >= COPY_PIECE_BYTES:
                        yield bytes(piece)
                        piece.clear()
            if piece:
                yield bytes(piece)

        # copy_in names the table in any error of either side (the rows are read inside its loop).
        nbytes = await copy_in(into_dsn, [schema, name], columns, encoding, rows())
        return max(cur.rowcount, 0), nbytes
    finally:
        await source.close()
