"""`backstop restore`: a snapshot into a new database, whole or some tables; `--force` over an existing one.

Every restore is measured and recorded in the catalog, successful or not,
as a 'restore' or a 'drill' (a test restore into a scratch database, what
the console's drill runs): its duration, its verdict, and the first target
it read from, which the planner uses to rotate drills across targets.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from core.context import EngineContext
from core.errors import RestoreRefused, UsageError
from core.jobs import Job, run_job
from core.postgres import logical
from core.postgres.parallel_restore import parallel_restore
from core.postgres.swap import swap_in
from core.postgres.tools import find_bin_dir, server_major
from core.records import RESTORE_KINDS, SnapshotRecord
from core.repository import quarantine
from core.repository.manifest import FileEntry, Manifest
from core.repository.reader import StreamReader, check_complete
from core.repository.repo import Repository
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    db: str
    into: str
    tables: list[str]
    bytes: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OverwriteResult:
    """A restore over an existing database: what replaced what."""

    restore: RestoreResult
    replaced_by_restore: bool  # False: the database did not exist, it was simply created
    aside: str | None  # where the previous database now is


def _check_request(ctx: EngineContext, into: str, tables: list[str], target: str | None, kind: str) -> None:
    """Refuse bad arguments before anything is opened or created."""
    if kind not in RESTORE_KINDS:
        raise UsageError(f"restore kind {kind!r}: expected one of {', '.join(RESTORE_KINDS)}")
    for t in tables:
        if t.count(".") != 1 or not all(t.split(".")):
            raise UsageError(f"--table {t!r}: expected SCHEMA.TABLE, e.g. public.claims")
    logical.ensure_new_database(into)
    if target is not None:
        ctx.config.target(target)  # a ConfigError naming the configured targets


async def restore(ctx: EngineContext, db_name: str, into: str, snapshot: str = "latest",
                  tables: list[str] | None = None, target: str | None = None,
                  only_target: bool = False, kind: str = "restore") -> RestoreResult:
    """Restore a snapshot into a new database on the same server (whole, or some tables).

    ``target`` (from a restore plan) is read first and the others remain
    fallbacks; with ``only_target`` (`restore --target`) nothing else is read.
    ``kind`` is what the catalog records it as: 'restore', or 'drill' for a
    test restore.
    """
    dbc = ctx.config.database(db_name)
    tables = list(tables or [])
    _check_request(ctx, into, tables, target, kind)
    snap = await ctx.find_snapshot(snapshot, db_name)
    what = f"restore of {db_name} snapshot {snap.short_id} into {into}" + (f" ({', '.join(tables)})" if tables else "")
    t0, started = time.monotonic(), time.time()
    fed = 0
    created = False
    repo: Repository | None = None
    reader: StreamReader | None = None
    async with run_job(ctx.bus, "restore", db_name, what) as job:
        try:
            if await logical.database_exists(dbc.dsn, into):
                raise RestoreRefused(
                    f"database {into!r} already exists; restore into a new name with --into, or replace it "
                    "with --force (needs an enrolled operator and a one-time code; the old one is kept aside)")
            repo = await _open_for_restore(ctx, job, target, only_target)
            job.phase("prepare")
            manifest = await repo.read_manifest(snap.id)
            _check_tables(manifest, snap, tables)
            index = await repo.load_index(common=False, avoid=await quarantine.load(repo))
            entry = manifest.files[0]
            check_complete(entry, index)  # names a damaged index object when it is the cause
            for name in index.damaged:
                job.warn(f"{name[:22]}… cannot be read from any target (this snapshot does not need it); "
                         "run `backstop repair index`")
            bin_dir = find_bin_dir(await server_major(dbc.dsn), dbc.bin_dir)
            reader = StreamReader(repo, index, ctx.pool, on_damage=job.warn)
            list_text = None
            if tables:
                list_text, missing = await logical.table_list_file(bin_dir, reader.stream(entry), tables)
                if missing:
                    raise RestoreRefused(f"table(s) {', '.join(missing)} are not in snapshot {snap.short_id}")
            await logical.create_database(dbc.dsn, into)
            created = True
            job.phase("restore")
            into_dsn = logical.with_dbname(dbc.dsn, into)
            streams = _ProgressStreams(reader, entry, job)
            if list_text is None and ctx.config.restore_jobs > 1:
                await parallel_restore(bin_dir, into_dsn, streams, ctx.config.restore_jobs, manifest.table_bytes,
                                       on_phase=job.phase)
                fed = entry.size
            else:
                fed = await logical.restore_stream(bin_dir, into_dsn, streams(), list_text)
        except BaseException as exc:
            if created:
                # Only ever drop what this restore created itself.
                await logical.drop_database(dbc.dsn, into)
            await _quarantine_findings(repo, reader, job)
            ctx.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=tables,
                                    started_at=started, duration_s=time.monotonic() - t0, nbytes=fed, ok=False,
                                    error=str(exc), kind=kind, target=_first_target(repo, reader))
            raise
        duration = time.monotonic() - t0
        await _quarantine_findings(repo, reader, job)
        ctx.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=tables,
                                started_at=started, duration_s=duration, nbytes=fed, ok=True, error=None,
                                kind=kind, target=_first_target(repo, reader))
        job.result = {"snapshot": snap.id, "into": into, "duration_s": round(duration, 3), "bytes": fed}
        return RestoreResult(snap.id, db_name, into, tables, fed, duration, list(job.warnings))


async def _open_for_restore(ctx: EngineContext, job: Job, target: str | None, only_target: bool) -> Repository:
    repo = await ctx.open_repository(require_all=False, target=target if only_target else None)
    for name, msg in {**repo.unreachable, **repo.damaged}.items():
        job.warn(f"target '{name}' skipped: {msg}")
    if target:
        repo.storages.sort(key=lambda st: st.name != target)
    return repo


def _first_target(repo: Repository | None, reader: StreamReader | None) -> str | None:
    """The first target the restore read its data from: the first in read order (the plan's target, then
    config order, unreachable and damaged targets left out). None when the restore never started reading."""
    if repo is None or reader is None or not repo.storages:
        return None
    return repo.storages[0].name


def _check_tables(manifest: Manifest, snap: SnapshotRecord, tables: list[str]) -> None:
    absent = [t for t in tables if manifest.tables and t not in manifest.tables]
    if absent:
        raise RestoreRefused(
            f"table(s) {', '.join(absent)} did not exist in snapshot {snap.short_id}; "
            f"it has: {', '.join(manifest.tables[:10])}{' …' if len(manifest.tables) > 10 else ''}")


async def _quarantine_findings(repo: Repository | None, reader: StreamReader | None, job: Job) -> None:
    """Copies found damaged while reading go into quarantine: the next backup stores fresh ones."""
    if repo is None or reader is None or not reader.findings:
        return
    held = await quarantine.add(repo, reader.findings, "restore")
    job.warn(f"{len(held)} damaged pack(s) quarantined: the next backup stores fresh copies of their chunks")


class _ProgressStreams:
    """Opens archive streams for restore jobs; reports the furthest one's progress."""

    def __init__(self, reader: StreamReader, entry: FileEntry, job: Job) -> None:
        self.reader, self.entry, self.job = reader, entry, job
        self._best = 0
        self._last = 0.0

    def __call__(self) -> AsyncIterator[bytes]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        done = 0
        async for piece in self.reader.stream(self.entry):
            done += len(piece)
            now = time.monotonic()
            if done > self._best and (now - self._last > 0.2 or done == self.entry.size):
                self._best, self._last = done, now
                self.job.progress(done, self.entry.size)
            yield piece


def _side_name(base: str, suffix: str) -> str:
    """``base + suffix`` within PostgreSQL's 63-byte name limit (the base is shortened)."""
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode(errors="ignore")
    return cut + suffix


async def restore_over(ctx: EngineContext, db_name: str, into: str, snapshot: str = "latest",
                       who: Identity | None = None, target: str | None = None) -> OverwriteResult:
    """Restore a snapshot in place of database ``into``, keeping the old one aside.

    The snapshot is restored into a new temporary database first; only when
    that succeeded is the existing database renamed aside (to
    ``<into>__replaced_<UTC time>``, kept for the operator to inspect or drop)
    and the new one renamed into place. A failed restore leaves the existing
    database untouched.
    """
    dbc = ctx.config.database(db_name)
    logical.ensure_new_database(into)
    if not await logical.database_exists(dbc.dsn, into):
        return OverwriteResult(await restore(ctx, db_name, into, snapshot, target=target), False, None)
    who = who or default_identity()
    snap = await ctx.find_snapshot(snapshot, db_name)
    subject = f"{db_name} snapshot {snap.short_id} over database {into}"
    async with Guard(ctx).action(who, Action.RESTORE_OVERWRITE, subject, require_all=False) as acting:
        acting.failure_detail["note"] = f"database {into} was left as it was"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        temp, aside = _side_name(into, f"__restoring_{stamp}"), _side_name(into, f"__replaced_{stamp}")
        res = await restore(ctx, db_name, temp, snap.id, target=target)
        try:
            await swap_in(dbc.dsn, live=into, new=temp, aside=aside)
        except BaseException:
            await logical.drop_database(dbc.dsn, temp)
            raise
        acting.detail.update(previous_kept_as=aside, bytes=res.bytes, duration_s=round(res.duration_s, 3))
    return OverwriteResult(replace(res, into=into), True, aside)
