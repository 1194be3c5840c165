"""`backstop backup`: a logical full snapshot, streamed from pg_dump into every target (FORMAT.md 11)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import psycopg

from core import __version__
from core.context import EngineContext
from core.errors import PostgresError
from core.format import now_iso
from core.jobs import Job, run_job
from core.postgres import logical
from core.postgres.snapshot import ExportedSnapshot, PsqlCopyReader, SnapshotWorker, TableSource, find_psql
from core.postgres.tools import find_bin_dir, first_line, tool_major
from core.records import BackupRecord
from core.repository.dedup import backup_index, snapshot_packs
from core.repository.index import INDEX_PREFIX, Index
from core.repository.manifest import MANIFEST_FORMAT, SCHEMA_FILE, FileEntry, Manifest
from core.repository.repo import Repository
from core.repository.writer import StreamWriter

DUMP_FILE = "database.pgdump"  # format 1: the whole `pg_dump -Fc -Z0` archive
COPY_FORMAT = "copy-text"  # format 2: a table's `COPY ... TO STDOUT` text


async def backup(ctx: EngineContext, db_name: str) -> BackupRecord:
    """Take a logical full snapshot of one database onto every target: a schema archive and a stream per table."""
    dbc = ctx.config.database(db_name)
    async with run_job(ctx.bus, "backup", db_name, f"logical backup of {db_name}") as job:
        started = now_iso()
        job.phase("connect")
        info = await logical.source_info(dbc.dsn, db_name)
        bin_dir = find_bin_dir(info.server_major, dbc.bin_dir)
        repo = await ctx.open_repository(require_all=True)
        async with repo.lock("shared", f"backup of {db_name}"):
            job.phase("index")
            dedup = await backup_index(repo)
            for w in dedup.warnings:
                job.warn(w)
            async with ExportedSnapshot(dbc.dsn, db_name) as snap:
                files, writer = await _dump_tables(ctx, repo, dedup.index, bin_dir, dbc.dsn, snap,
                                                   info.estimated_bytes, job)
            job.phase("commit")
            await _commit_index(repo, writer)
            manifest = Manifest(
                db=db_name, kind="logical", started_at=started, finished_at=now_iso(), files=files,
                size_bytes=sum(f.size for f in files), stored_bytes=writer.stats.stored_bytes,
                new_chunks=writer.stats.new_chunks, targets=[s.name for s in repo.storages],
                server_version=info.server_version,
                tool_versions={"backstop": __version__, "pg_dump": str(tool_major(bin_dir))},
                tables=info.tables, table_bytes=info.table_bytes, host=socket.gethostname(),
                format=MANIFEST_FORMAT, encoding=snap.encoding,
            )
            sid, size = await _commit_manifest(repo, manifest)
        return _record(ctx, job, sid, size, manifest, dedup.index, writer)


async def _dump_tables(ctx: EngineContext, repo: Repository, index: Index, bin_dir: Path, dsn: str,
                       snap: ExportedSnapshot, estimate: int, job: Job) -> tuple[list[FileEntry], StreamWriter]:
    """The schema archive and every table's COPY stream, ``jobs`` at once, all inside ``snap``."""
    loop = asyncio.get_running_loop()
    job.phase("dump")

    def progress(done: int) -> None:  # called from the writers' threads
        loop.call_soon_threadsafe(job.progress, done, max(estimate, done))

    writer = StreamWriter(repo, index, loop, ctx.pool, ctx.config.workers, on_progress=progress)
    # Everything but table data: definitions, sequence values, large objects, materialized views.
    excludes = [f"--exclude-table-data={logical.exact_pattern(t.schema, t.name)}" for t in snap.tables]
    dump = await logical.start_dump(bin_dir, dsn, [f"--snapshot={snap.snapshot_id}", *excludes])
    queue = _TableQueue(snap.tables)
    psql = find_psql(bin_dir)
    workers: list[SnapshotWorker] = []
    entries: list[FileEntry] = []

    def copy_tables() -> None:
        worker = SnapshotWorker(dsn, snap.snapshot_id, snap.encoding, psql)
        workers.append(worker)
        try:
            while (table := queue.next()) is not None:
                entries.append(_copy_table(writer, worker, table))
        finally:
            worker.close()

    try:
        # The archive's header (its creation time) is cut off as a chunk of its own: the rest of an
        # unchanged database's schema archive then deduplicates completely.
        schema_task = asyncio.to_thread(writer.write, dump.reader, SCHEMA_FILE, logical.DUMP_FORMAT,
                                        logical.archive_head_length)
        copies = [asyncio.to_thread(copy_tables) for _ in range(min(ctx.config.jobs, max(1, len(snap.tables))))]
        results = await asyncio.gather(schema_task, *copies, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        await dump.wait()
        job.phase("upload")
        await asyncio.to_thread(writer.finish)
    except BaseException:
        writer.abort()
        dump.kill()
        for w in workers:
            w.cancel()
        raise
    finally:
        dump.reader.close()
    schema = results[0]
    assert isinstance(schema, FileEntry)
    return [schema, *sorted(entries, key=lambda e: e.name)], writer


def _copy_table(writer: StreamWriter, worker: SnapshotWorker, table: TableSource) -> FileEntry:
    """One table's rows as one stream (the worker's thread)."""
    reader = worker.open(table)
    try:
        try:
            entry = writer.write(reader, f"table/{table.schema}/{table.name}", COPY_FORMAT)
        except BaseException:
            if isinstance(reader, PsqlCopyReader):
                reader.kill()  # its exit status then does not hide what stopped the stream
            with contextlib.suppress(PostgresError, psycopg.Error):
                reader.close()
            raise
        reader.close()
    except psycopg.Error as exc:
        raise PostgresError(f"COPY of {table.qualified} failed: {first_line(exc)}") from None
    entry.relation = [table.schema, table.name]
    entry.columns = list(table.columns)
    return entry


class _TableQueue:
    """Tables handed to the copy workers, largest first (the longest streams start earliest)."""

    def __init__(self, tables: list[TableSource]) -> None:
        self._items = sorted(tables, key=lambda t: -t.bytes)
        self._lock = threading.Lock()

    def next(self) -> TableSource | None:
        with self._lock:
            return self._items.pop(0) if self._items else None


async def _commit_index(repo: Repository, writer: StreamWriter) -> None:
    """The backup's one index object, listing only packs read back from every target."""
    if writer.new_index.packs:
        name, data = writer.new_index.seal(repo.key)
        await repo.put_all(name, data)
        await repo.verify_all(name, name[len(INDEX_PREFIX):])


async def _commit_manifest(repo: Repository, manifest: Manifest) -> tuple[str, int]:
    """Write the manifest last; a manifest on some targets only is taken back everywhere."""
    sid, name, data = manifest.seal(repo.key)
    try:
        await repo.put_all(name, data)
        await repo.verify_all(name, sid)
    except BaseException:
        await repo.delete_all(name)
        raise
    return sid, len(data)


def _record(ctx: EngineContext, job: Job, sid: str, manifest_size: int, manifest: Manifest, index: Index,
            writer: StreamWriter) -> BackupRecord:
    """Catalog the snapshot and its verification: read-data only if it reused no earlier pack."""
    # What was read back is the new packs, the index and the manifest; packs
    # reused from earlier backups were only seen present with the right size.
    packs = snapshot_packs(manifest, index, writer.new_index)
    reused = len(packs - set(writer.new_index.packs))
    stats = writer.stats
    rec = BackupRecord(sid, manifest.db, manifest.kind, manifest.started_at, manifest.finished_at, manifest.size_bytes,
                       stats.stored_bytes, manifest.targets, job.id, packs_read_back=stats.packs, packs_reused=reused)
    ctx.catalog.add_snapshot(rec)
    for t in manifest.targets:
        ctx.catalog.add_verification(
            job_id=job.id, target=t, snapshot_id=sid, started_at=time.time(), read_data=reused == 0,
            objects_checked=stats.packs + reused + 1 + bool(writer.new_index.packs),
            bytes_read=stats.stored_bytes + manifest_size, problems=[])
    job.result = {"snapshot": sid, "size_bytes": manifest.size_bytes, "stored_bytes": stats.stored_bytes,
                  "packs_read_back": stats.packs, "packs_reused": reused}
    return rec
