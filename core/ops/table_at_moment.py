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
import contextlib
import getpass
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.context import EngineContext
from core.errors import BackstopError, PostgresError, RestoreRefused, UsageError
from core.format import size
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
from core.postgres import logical
from core.postgres.cluster import SUPERUSER, LocalCluster, free_port
from core.postgres.copy_restore import copy_in
from core.postgres.names import Relation, show_relation
from core.postgres.parallel_restore import restore_sections
from core.postgres.recovery import RecoveryTarget
from core.postgres.schema_archive import SchemaArchive, read_schema
from core.postgres.selection import Selection, select, tables_in
from core.postgres.snapshot import copy_settings
from core.postgres.tools import find_bin_dir, server_major
from core.repository.wal import list_wal

# Recovery keeps restored WAL in pg_wal until a restartpoint recycles it: up to max_wal_size, by
# default 1 GB, i.e. 64 segments of 16 MiB. The scratch space must hold that beside the snapshot.
WAL_MARGIN_SEGMENTS = 64
# Rows travel in pieces of about this size: fewer awaits per row on both connections.
COPY_PIECE_BYTES = 256 << 10
SCRATCH_PREFIX = "backstop-scratch-"
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_STOP_TIMEOUT_S = 60.0
# Only the scratch cluster's own socket, in a directory only its account and root can enter.
_SCRATCH_HBA = ("# Written by Backstop for a scratch cluster: Unix socket only, in a private directory.\n"
                "local all all trust\n")


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


def scratch_root(ctx: EngineContext) -> Path:
    """Where scratch clusters go: ``restore.scratch_dir``, else the system's temp directory."""
    configured = ctx.config.restore.scratch_dir
    return Path(configured).absolute() if configured is not None else Path(tempfile.gettempdir())


def check_space(root: Path, snapshot_bytes: int, seg_size: int, what: str) -> int:
    """Refuse, in one line naming both figures, when ``root`` cannot hold the snapshot plus WAL; returns the need."""
    needed = snapshot_bytes + WAL_MARGIN_SEGMENTS * seg_size
    free = shutil.disk_usage(root).free
    if free < needed:
        raise RestoreRefused(f"not enough scratch space in {root} for {what}: it needs about {needed} bytes "
                             f"({size(needed)}: the snapshot plus WAL) and {free} bytes ({size(free)}) are free; "
                             "free some space or set restore.scratch_dir in the config to a larger disk")
    return needed


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


@dataclass
class ScratchCluster(LocalCluster):
    """The restored copy, entered as ``role`` through the Unix socket in ``socket_dir`` only."""

    socket_dir: Path = Path("/nonexistent")
    role: str = SUPERUSER

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo("", host=str(self.socket_dir), port=str(self.port), user=self.role, dbname=dbname)


class _Run:
    """One table-at-a-moment restore: scratch cluster, schema, rows; and what to clean up."""

    def __init__(self, ctx: EngineContext, req: TableAtMomentRequest, dsn: str, bin_dir: Path | None, scope: Scope,
                 job: Job) -> None:
        self.ctx, self.req, self.dsn, self.configured_bin_dir, self.scope, self.job = (
            ctx, req, dsn, bin_dir, scope, job)
        self.snapshot_id = ""
        self.work: Path | None = None  # the scratch directory: data directory and socket
        self.socket_dir: Path | None = None  # when the work directory's path is too long for a socket
        self.cluster: ScratchCluster | None = None
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
        root = scratch_root(self.ctx)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RestoreRefused(f"cannot use scratch directory {root}: {exc.strerror}; set restore.scratch_dir "
                                 "in the config to a writable directory") from None
        check_space(root, sum(f.size for f in choice.manifest.files), choice.info.wal_segment_size, what)
        self.work = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))  # 0700
        pgdata = self.work / "pgdata"
        job.phase("scratch restore")
        await restore_physical(self.ctx, PhysicalRestoreRequest(
            db=req.db, pgdata=pgdata, config_path=req.config_path, snapshot=choice.record.id, target=req.target,
            start=False))
        cluster = self.cluster = self._scratch_cluster(pgdata)
        job.phase("recover")
        try:
            point = await _start_and_wait(cluster, req.target, WAIT_TIMEOUT_S)
        except PostgresError as exc:
            raise PostgresError(f"the scratch cluster did not reach {req.target.describe()}: "
                                f"{_without_keep_advice(str(exc))}; it was removed") from None
        dbname = str(conninfo_to_dict(self.dsn).get("dbname") or req.db)
        cluster.role = await _login_role(cluster, self.dsn, dbname)
        tables, left_out = await self._copy(cluster.dsn(dbname))
        return _Copied(point, tables, left_out)

    def _scratch_cluster(self, pgdata: Path) -> ScratchCluster:
        """The restored data directory as a cluster only we can enter (see the module docstring)."""
        assert self.work is not None
        port = free_port()
        sock = self.work
        if len(f"{sock}/.s.PGSQL.{port}") > _SOCKET_PATH_MAX:
            sock = self.socket_dir = Path(tempfile.mkdtemp(prefix="backstop-sock-", dir="/tmp"))
        hba = pgdata / "pg_hba.conf"
        hba.unlink(missing_ok=True)
        hba.write_text(_SCRATCH_HBA)
        hba.chmod(0o600)
        settings = {
            "hba_file": str(hba),  # the copy's postgresql.conf may name the production one
            "listen_addresses": "",  # no TCP at all
            "unix_socket_directories": str(sock),
            "logging_collector": "off",  # recovery is followed in server.log (core/postgres/recovery.py)
            "log_destination": "stderr",
            "ssl": "off",  # production certificates may live outside the data directory
            "shared_buffers": "128MB",  # production's may not fit beside it on this host
            "huge_pages": "try",
            "hot_standby": "on",  # a paused recovery must be readable
            "synchronous_standby_names": "",
            "archive_mode": "off",  # also in the recovery settings: never into the source's archive
        }
        cluster = ScratchCluster(pgdata, port=port, settings=settings, socket_dir=sock)
        if cluster.owner is not None:
            for p in (hba, sock):
                os.chown(p, *cluster.owner)
        return cluster

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
        if self.cluster is not None:
            _stop(self.cluster)
        for d in (self.work, self.socket_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
                if d.exists():
                    self.job.warn(f"scratch directory {d} could not be removed completely; remove it by hand")


def _stop(cluster: LocalCluster) -> None:
    """Stop fast; if pg_ctl cannot, end the postmaster itself (immediate shutdown), so nothing outlives us."""
    try:
        cluster.stop(timeout=_STOP_TIMEOUT_S)
        return
    except BackstopError:
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown: children end with it
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # ProcessLookupError (an OSError) once it is gone
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


_KEEP_ADVICE = re.compile(r";[^;]*(?:kept for inspection|directory kept|remove it before)[^;]*")


def _without_keep_advice(message: str) -> str:
    """The physical restore's message without its advice about the kept directory: a scratch one is removed."""
    return _KEEP_ADVICE.sub("", message)


def _named(exc: PostgresError, sel: Selection) -> PostgresError:
    """A pg_restore failure naming the object and the table it was for (as a logical table restore does)."""
    why = sel.why(exc.toc_entry) if exc.toc_entry is not None else ""
    head = f"cannot create {why}: " if why else ""
    return PostgresError(f"{head}{exc}; the new database was dropped", toc_entry=exc.toc_entry)


async def _login_role(cluster: ScratchCluster, live_dsn: str, dbname: str) -> str:
    """A role that exists in the restored copy: the usual superuser, the dsn's role, or this OS user's."""
    candidates = [SUPERUSER, str(conninfo_to_dict(live_dsn).get("user") or ""), getpass.getuser(), cluster.os_user]
    tried: list[str] = []
    for role in dict.fromkeys(c for c in candidates if c):
        tried.append(role)
        try:
            conn = await psycopg.AsyncConnection.connect(
                make_conninfo(cluster.dsn(dbname), user=role), connect_timeout=10, autocommit=True)
        except psycopg.OperationalError:
            continue
        await conn.close()
        return role
    raise PostgresError(f"cannot log in to the scratch cluster as any of {', '.join(tried)}; put the role backups "
                        "use into the database's dsn (user=...)")


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
        stmt = sql.SQL("COPY {} ({}) TO STDOUT").format(
            sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, columns)))

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
