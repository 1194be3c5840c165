"""`backstop backup`: a logical full snapshot streamed from pg_dump, or a physical one streamed from
pg_basebackup (`--type physical`), into every target (FORMAT.md 10.2, 11)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from core import __version__
from core.context import EngineContext
from core.errors import BackstopError, IntegrityError, PostgresError, UsageError
from core.format import now_iso
from core.jobs import Job, run_job
from core.physical.status import RESTORABLE, WAITING, missing_wal, snapshot_status
from core.physical.stream import StoredBackup, store_stream
from core.physical.tar import StreamCutShort
from core.postgres import basebackup, logical
from core.postgres.snapshot import ExportedSnapshot, PsqlCopyReader, SnapshotWorker, TableSource, find_psql
from core.postgres.tools import find_bin_dir, first_line, tool_major
from core.records import BackupRecord, SnapshotRecord
from core.repository.dedup import backup_index, snapshot_packs
from core.repository.index import INDEX_PREFIX, Index
from core.repository.manifest import LOGICAL, MANIFEST_FORMAT, PHYSICAL, SCHEMA_FILE, FileEntry, Manifest, PhysicalInfo
from core.repository.policy import hold_to_policy, quorum_policy
from core.repository.repo import Repository
from core.repository.table_digest import CopyDigest
from core.repository.wal import WalArchive
from core.repository.writer import StreamWriter

DUMP_FILE = "database.pgdump"  # format 1: the whole `pg_dump -Fc -Z0` archive
COPY_FORMAT = "copy-text"  # format 2: a table's `COPY ... TO STDOUT` text


KINDS = (LOGICAL, PHYSICAL)


async def backup(ctx: EngineContext, db_name: str, kind: str = LOGICAL) -> BackupRecord:
    """Take a full snapshot of one database onto every target: logical (a schema archive and a stream per
    table) or physical (a base backup of the whole cluster behind its DSN)."""
    if kind not in KINDS:
        raise UsageError(f"backup type {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == PHYSICAL:
        return await backup_physical(ctx, db_name)
    dbc = ctx.config.database(db_name)
    async with run_job(ctx.bus, "backup", db_name, f"logical backup of {db_name}") as job:
        started = now_iso()
        job.phase("connect")
        info = await logical.source_info(dbc.dsn, db_name)
        bin_dir = find_bin_dir(info.server_major, dbc.bin_dir)
        repo = await open_for_write(ctx, job)
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
            _note_missing_copies(ctx, job, repo, sid)
        return _record(ctx, job, sid, size, manifest, dedup.index, writer, holders=[s.name for s in repo.storages])


async def open_for_write(ctx: EngineContext, job: Job) -> Repository:
    """The repository as a writer sees it under targets_policy (FORMAT.md 12.4).

    ``all``: every target must open, as ever. A quorum: the targets that open
    must meet it, and a target failing a write later is dropped while the
    rest still do; what they lack `backstop sync` copies later.
    """
    if not quorum_policy(ctx.config):
        return await ctx.open_repository(require_all=True)
    repo = await ctx.open_repository(require_all=False)
    for w in hold_to_policy(repo, ctx.config):
        job.warn(w)
    return repo


def _note_missing_copies(ctx: EngineContext, job: Job, repo: Repository, sid: str) -> None:
    """Warn about configured targets that do not hold the new snapshot (a quorum write)."""
    held = {s.name for s in repo.storages}
    missing = [t.name for t in ctx.config.targets if t.name not in held]
    for name, why in repo.dropped.items():
        job.warn(f"target {name} failed during the backup and was left out: {why}")
    if missing:
        job.warn(f"snapshot {sid[:8]} is stored on {', '.join(sorted(held))} but not on {', '.join(missing)} "
                 "(targets_policy quorum); run `backstop sync` once they are back")


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
    """One table's rows as one stream (the worker's thread), with its row count and digest (FORMAT.md 10.3)."""
    reader = worker.open(table)
    digest = CopyDigest()  # what a drill compares the restored table with
    try:
        try:
            entry = writer.write(reader, f"table/{table.schema}/{table.name}", COPY_FORMAT, observe=digest.update)
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
    counted = digest.result()
    entry.rows, entry.digest = counted.rows, counted.digest
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
            writer: StreamWriter, physical: dict[str, Any] | None = None,
            holders: list[str] | None = None) -> BackupRecord:
    """Catalog the snapshot and its verification: read-data only if it reused no earlier pack.

    ``physical``: a physical snapshot's catalog fields (status, WAL range, system identifier).
    ``holders``: the targets that hold it at commit (fewer than the manifest names when one failed meanwhile).
    """
    targets = holders if holders is not None else manifest.targets
    # What was read back is the new packs, the index and the manifest; packs
    # reused from earlier backups were only seen present with the right size.
    packs = snapshot_packs(manifest, index, writer.new_index)
    reused = len(packs - set(writer.new_index.packs))
    stats = writer.stats
    rec = BackupRecord(sid, manifest.db, manifest.kind, manifest.started_at, manifest.finished_at, manifest.size_bytes,
                       stats.stored_bytes, targets, job.id, packs_read_back=stats.packs, packs_reused=reused,
                       **(physical or {}))
    ctx.catalog.add_snapshot(rec)
    for t in targets:
        ctx.catalog.add_verification(
            job_id=job.id, target=t, snapshot_id=sid, started_at=time.time(), read_data=reused == 0,
            objects_checked=stats.packs + reused + 1 + bool(writer.new_index.packs),
            bytes_read=stats.stored_bytes + manifest_size, problems=[])
    job.result = {"snapshot": sid, "size_bytes": manifest.size_bytes, "stored_bytes": stats.stored_bytes,
                  "packs_read_back": stats.packs, "packs_reused": reused}
    return rec


# -- physical snapshots (FORMAT.md 10.2) ----------------------------------------------------------------------


async def backup_physical(ctx: EngineContext, db_name: str, *, require_backstop_archiving: bool = True) -> BackupRecord:
    """A base backup of the cluster behind ``db_name``'s DSN, streamed from pg_basebackup into every target.

    Refused first, with one line saying what to change, when the server
    could never make it restorable (core.postgres.basebackup.refusal).
    ``require_backstop_archiving=False`` accepts an archive_command that
    archives elsewhere (tests of the backup alone).
    """
    dbc = ctx.config.database(db_name)
    async with run_job(ctx.bus, "backup", db_name, f"physical backup of {db_name}") as job:
        started = now_iso()
        job.phase("preflight")
        facts = await basebackup.server_facts(dbc.dsn, f"database {db_name!r}")
        reason = basebackup.refusal(facts, require_backstop_archiving)
        if reason is not None:
            raise basebackup.BackupRefused(reason)
        if facts.archive_command is None and require_backstop_archiving:
            job.warn(f"user {facts.user!r} may not read archive_command, so whether WAL goes to Backstop was not "
                     "checked; GRANT pg_read_all_settings TO that user to have it checked")
        await basebackup.check_replication(dbc.dsn, facts.user)
        bin_dir = find_bin_dir(facts.major, dbc.bin_dir, tools=("pg_basebackup",))
        repo = await open_for_write(ctx, job)
        await _check_archive_cluster(repo, facts.system_identifier)
        async with repo.lock("shared", f"physical backup of {db_name}"):
            job.phase("index")
            dedup = await backup_index(repo)
            for w in dedup.warnings:
                job.warn(w)
            stored, writer = await _stream_basebackup(ctx, repo, dedup.index, bin_dir, dbc.dsn, facts, job)
            info = _physical_info(stored, facts)
            await _check_archive_cluster(repo, info.system_identifier)
            job.phase("commit")
            await _commit_index(repo, writer)
            files = stored.files
            manifest = Manifest(
                db=db_name, kind=PHYSICAL, started_at=started, finished_at=now_iso(), files=files,
                size_bytes=sum(f.size for f in files), stored_bytes=writer.stats.stored_bytes,
                new_chunks=writer.stats.new_chunks, targets=[s.name for s in repo.storages],
                server_version=facts.server_version,
                tool_versions={"backstop": __version__, "pg_basebackup": str(tool_major(bin_dir, "pg_basebackup"))},
                host=socket.gethostname(), format=MANIFEST_FORMAT, physical=info,
            )
            sid, size = await _commit_manifest(repo, manifest)
            _note_missing_copies(ctx, job, repo, sid)
        missing: list[str] | None
        try:
            missing = await missing_wal(repo, info.timeline, info.start_lsn, info.stop_lsn, info.wal_segment_size)
        except BackstopError as exc:  # the snapshot is committed: only its status is unknown, and stays waiting
            job.warn(f"snapshot {sid[:8]} is stored, but whether its WAL is archived was not checked ({exc}); "
                     "`backstop snapshots` checks again")
            missing = None
        status = RESTORABLE if missing == [] else WAITING
        if missing:
            job.warn(f"snapshot {sid[:8]} waits for {len(missing)} WAL segment(s) to be archived (first "
                     f"{missing[0]}); it becomes restorable once archive_command has pushed them to Backstop")
        ctx.catalog.learn_system(db_name, info.system_identifier)
        await _learn_neighbours(ctx, db_name, dbc.dsn, info.system_identifier)
        return _record(ctx, job, sid, size, manifest, dedup.index, writer, physical_fields(info, status),
                       holders=[s.name for s in repo.storages])


async def _check_archive_cluster(repo: Repository, sysid: str | None) -> None:
    """A repository archives the WAL of one cluster: a base backup of another could never become restorable."""
    if sysid is None:
        return
    archived = await WalArchive(repo).identity()
    if archived is not None and str(archived.system_identifier) != sysid:
        raise basebackup.BackupRefused(
            f"this repository archives the WAL of database system {archived.system_identifier}, but the server is "
            f"system {sysid}, so its base backup could never become restorable; give each cluster its own "
            "repository (its own targets)")


def physical_fields(info: PhysicalInfo, status: str) -> dict[str, Any]:
    """A physical snapshot's catalog fields (SnapshotRecord's), from its manifest."""
    return {"status": status, "start_lsn": info.start_lsn, "stop_lsn": info.stop_lsn, "timeline": info.timeline,
            "system_identifier": info.system_identifier, "pg_version": info.pg_version,
            "wal_segment_size": info.wal_segment_size}


async def _stream_basebackup(ctx: EngineContext, repo: Repository, index: Index, bin_dir: Path, dsn: str,
                             facts: basebackup.ServerFacts, job: Job) -> tuple[StoredBackup, StreamWriter]:
    """Run pg_basebackup and store its tar stream as it arrives; every check of the stream passes or it fails."""
    loop = asyncio.get_running_loop()
    estimate = facts.estimated_bytes or 0
    job.phase("basebackup")

    def progress(done: int) -> None:  # called from the writer's thread
        loop.call_soon_threadsafe(job.progress, done, max(estimate, done))

    writer = StreamWriter(repo, index, loop, ctx.pool, ctx.config.workers, on_progress=progress)
    proc = await basebackup.start_basebackup(bin_dir, dsn, f"backstop {now_iso()}", on_warning=job.warn)
    try:
        try:
            stored = await asyncio.to_thread(store_stream, writer, proc.reader)
        except StreamCutShort:
            writer.abort()
            # The stream stopped short because pg_basebackup failed: its own reason is the one to report.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.proc.wait(), 10)
            if proc.proc.returncode not in (None, 0):
                await proc.wait()
            raise
        await proc.wait()
        stored.manifest.compare(stored.files, stored.crc32c)
        job.phase("upload")
        await asyncio.to_thread(writer.finish)
    except BaseException:
        writer.abort()
        proc.kill()
        raise
    finally:
        proc.reader.close()
    return stored, writer


def _physical_info(stored: StoredBackup, facts: basebackup.ServerFacts) -> PhysicalInfo:
    """The manifest's physical fields; the stream's own pg_control decides the system identifier."""
    label, wal = stored.label, stored.manifest
    sysid = stored.control_system_identifier
    known = {str(v) for v in (facts.system_identifier, wal.system_identifier) if v is not None}
    if sysid is None:
        if not known:
            raise IntegrityError("the base backup's global/pg_control is too short to hold a system identifier; "
                                 "run the backup again")
        sysid = int(next(iter(known)))
    if known - {str(sysid)}:
        raise IntegrityError(f"the base backup comes from cluster {sysid} but the server reports "
                             f"{', '.join(sorted(known))}; the DSN and the replication connection reached different "
                             "servers: check the DSN")
    timelines = {tli for tli, _, _ in wal.wal_ranges}
    if timelines != {label.timeline}:
        raise IntegrityError(f"the base backup's WAL spans timelines {sorted(timelines)} (it started on "
                             f"{label.timeline}): the server was promoted during the backup; run the backup again")
    return PhysicalInfo(start_lsn=label.start_lsn, stop_lsn=wal.stop_lsn, timeline=label.timeline,
                        system_identifier=str(sysid), pg_version=str(facts.version_num),
                        wal_segment_size=facts.wal_segment_size, start_wal=label.start_wal, tablespaces=[])


async def _learn_neighbours(ctx: EngineContext, db_name: str, dsn: str, sysid: str) -> None:
    """Other database entries on the same host and port share this cluster's physical snapshots once their
    own connection confirms the system identifier (best effort: an entry that does not answer is left alone)."""
    here = _host_port(dsn)
    for other in ctx.config.databases:
        if other.name == db_name or _host_port(other.dsn) != here:
            continue
        with contextlib.suppress(BackstopError, psycopg.Error, OSError, TimeoutError):
            theirs = await asyncio.wait_for(basebackup.system_identifier(other.dsn, f"database {other.name!r}"), 10)
            if theirs is not None:
                ctx.catalog.learn_system(other.name, theirs)


def _host_port(dsn: str) -> tuple[str, str] | None:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None
    return str(params.get("host") or params.get("hostaddr") or "localhost"), str(params.get("port") or "5432")


async def refresh_status(ctx: EngineContext, rows: list[SnapshotRecord]) -> tuple[list[SnapshotRecord], list[str]]:
    """Re-check the physical snapshots listed as waiting; those whose WAL is now archived become restorable.

    Returns the rows as they are now and warnings (a repository that could
    not be read leaves the rows as they were).
    """
    waiting = [r for r in rows if r.is_physical and r.status == WAITING]
    if not waiting:
        return rows, []
    try:
        repo = await ctx.open_repository(require_all=False)
    except BackstopError as exc:
        return rows, [f"whether {len(waiting)} waiting physical snapshot(s) are restorable by now was not checked: "
                      f"{exc}"]
    changed: dict[str, SnapshotRecord] = {}
    for r in waiting:
        status = await snapshot_status(repo, r)
        if status != r.status:
            ctx.catalog.set_snapshot_status(r.id, status)
            changed[r.id] = dataclasses.replace(r, status=status)
    return [changed.get(r.id, r) for r in rows], []
