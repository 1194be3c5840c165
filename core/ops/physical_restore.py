"""`backstop restore --type physical`: a data directory from a physical snapshot, recovered to a point in time.

Steps, each refusing before the next changes anything:

1. choose the snapshot: the one asked for, else the newest restorable
   physical snapshot that finished before the target (for an LSN target:
   whose stop LSN is at or before it); a snapshot still waiting for its own
   WAL is never chosen;
2. check that the WAL archive reaches the target from it (every segment
   from the snapshot's start, on the timeline recovery reads it from, up to
   the target's segment or the end of the archive), naming the first
   missing segment otherwise;
3. write the data directory (core/physical/restore_dir.py: checked
   streams, pg_control last, fsynced), then ``pg_verifybackup`` against the
   backup's own manifest; any failure removes what was written;
4. recovery settings (``recovery.signal`` and ``postgresql.auto.conf``):
   ``restore_command`` through ``backstop wal-fetch``, the target, and
   ``archive_mode = off`` unless ``--archive-mode preserve``;
5. with ``--start``, start the server as an unprivileged account on
   127.0.0.1 and wait until recovery reaches the target (paused, promoted
   or shut down as asked), reporting the point reached (LSN, last commit
   time, timeline); without it, the command that starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from core.context import EngineContext
from core.errors import BackstopError, IntegrityError, PostgresError, RestoreRefused, UsageError
from core.jobs import Job, run_job
from core.ops.restore import recent_health
from core.physical.label import ManifestCheck
from core.physical.restore_dir import check_target_dir, clear_dir, write_data_dir
from core.postgres.cluster import LocalCluster, free_port
from core.postgres.recovery import (
    RecoveryLog,
    RecoveryTarget,
    TimelineSpan,
    last_archived_segno,
    parse_history,
    read_recovery_log,
    recovery_settings,
    required_segments,
    timeline_chain,
    write_recovery_files,
)
from core.postgres.tools import SERVER_TOOLS, find_bin_dir, tool_major
from core.postgres.wal import format_lsn, history_name, parse_lsn, parse_segment_name, segments_between
from core.records import SnapshotRecord
from core.repository import quarantine
from core.repository.manifest import PG_FILE, PHYSICAL, FileEntry, Manifest, PhysicalInfo
from core.repository.reader import StreamReader, check_complete
from core.repository.repo import Repository
from core.repository.sources import ReadSources, TargetShare, summarise
from core.repository.tiers import FrozenCopies, packs_of, plan_reads
from core.repository.wal import list_wal, read_wal

BACKUP_MANIFEST = "backup_manifest"
# Files written at once. Each has up to READ_AHEAD reads of at most 8 MiB of plaintext in flight
# (core/repository/reader.py): three keep the disk busy and peak RSS near 270 MB on the benchmark's
# 3.3 GiB cluster (four: 5-10% faster, but just over 300 MB).
RESTORE_WORKERS = 3
START_TIMEOUT_S = 600.0
WAIT_TIMEOUT_S = 6 * 3600.0
_POLL_S = 0.25
# finished_at has one-second resolution: a snapshot counts as finished before T only when it
# finished a whole second before, so a backup that ended just after T is never chosen.
_FINISHED_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class PhysicalRestoreRequest:
    """What `restore --type physical` was asked for (validated by :func:`core.postgres.recovery.make_target`)."""

    db: str
    pgdata: Path
    config_path: Path  # the config restore_command's `backstop wal-fetch` reads
    snapshot: str = "latest"  # 'latest': the newest one that fits the target
    target: RecoveryTarget = field(default_factory=RecoveryTarget)
    start: bool = False
    port: int | None = None
    archive_mode: str = "off"
    wait_timeout_s: float = WAIT_TIMEOUT_S
    kind: str = "restore"  # what the catalog records it as: 'restore', or 'drill' (a physical drill)
    # Read the base backup from this target only (a drill proving it); WAL still comes through restore_command,
    # which reads from any target holding it.
    only_target: str | None = None
    # pg_verifybackup reads every file's checksum back (a drill's proof), not only presence and size; done while
    # the files are as the backup wrote them, before the recovery settings are added.
    verify_checksums: bool = False


@dataclass(frozen=True)
class RecoveryPoint:
    """Where a started restore's recovery got to."""

    state: str  # "promoted", "paused" or "shut down"
    lsn: str | None  # the last WAL record replayed
    commit_time: str | None  # the commit time of the last transaction replayed
    timeline: int | None
    stop: str | None = None  # PostgreSQL's own "recovery stopping ..." line, when it stopped at a target

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "lsn": self.lsn, "commit_time": self.commit_time, "timeline": self.timeline,
                "stop": self.stop}


@dataclass(frozen=True)
class PhysicalRestoreResult:
    snapshot_id: str
    db: str
    pgdata: str
    target: RecoveryTarget
    files: int
    bytes: int
    duration_s: float
    verified: str  # what pg_verifybackup said, or why it did not run
    wal_from: str  # the first segment recovery reads
    started: bool
    port: int | None
    start_command: str
    recovery: RecoveryPoint | None = None
    verify_s: float = 0.0  # how long pg_verifybackup took
    warnings: list[str] = field(default_factory=list)
    # What each target served (stored bytes and objects read) and how it failed, in read order.
    sources: list[TargetShare] = field(default_factory=list)

    def read_summary(self) -> str:
        """``read 80% from offsite-eu, 20% from local1 after offsite-eu failed: <reason>``."""
        return summarise(self.sources)

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.snapshot_id, "db": self.db, "pgdata": self.pgdata, "target": self.target.to_json(),
                "sources": [s.to_json() for s in self.sources],
                "files": self.files, "bytes": self.bytes, "duration_s": round(self.duration_s, 3),
                "verified": self.verified, "wal_from": self.wal_from, "started": self.started, "port": self.port,
                "start_command": self.start_command,
                "recovery": self.recovery.to_json() if self.recovery else None, "warnings": self.warnings}


def backstop_command() -> list[str]:
    """This backstop as a command PostgreSQL can run: the venv's console script, else the one on PATH."""
    script = Path(sys.executable).with_name("backstop")  # not resolved: the venv's python is a link out of it
    if script.exists():
        return [str(script)]
    found = shutil.which("backstop")
    return [found] if found else [sys.executable, "-m", "core.cli"]


def restore_command(config_path: Path) -> str:
    """``restore_command`` for PostgreSQL: ``backstop --config ABS wal-fetch %f %p``."""
    return shlex.join([*backstop_command(), "--config", str(config_path.absolute()), "wal-fetch"]) + " %f %p"


# -- choosing the snapshot and checking the WAL path ------------------------------------------------------------


@dataclass(frozen=True)
class _Choice:
    record: SnapshotRecord
    manifest: Manifest
    info: PhysicalInfo
    chain: list[TimelineSpan]
    first_wal: str


def _finished(rec: SnapshotRecord, manifest: Manifest) -> datetime:
    t = datetime.fromisoformat(manifest.finished_at or rec.finished_at)
    return t.astimezone() if t.tzinfo is None else t


class _WalPaths:
    """The archive's listing and timeline histories, read once per restore."""

    def __init__(self, repo: Repository, stored: dict[int, set[str]]) -> None:
        self.repo, self.stored = repo, stored
        self._histories: dict[int, list[tuple[int, int]]] = {}

    def has(self, name: str) -> bool:
        tli = int(name[:8], 16)
        return name in self.stored.get(tli, set())

    def _has_history(self, tli: int) -> bool:
        return history_name(tli) in self.stored.get(tli, set())

    async def history(self, tli: int) -> list[tuple[int, int]]:
        if tli not in self._histories:
            name = history_name(tli)
            try:
                self._histories[tli] = parse_history((await read_wal(self.repo, name)).decode())
            except (UnicodeDecodeError, ValueError):
                raise IntegrityError(f"timeline history {name} in the WAL archive is malformed; "
                                     "run `backstop wal status`") from None
        return self._histories[tli]

    async def chain(self, info: PhysicalInfo, wanted: str) -> list[TimelineSpan]:
        """The timelines recovery from this snapshot passes through, for ``recovery_target_timeline``."""
        tli = info.timeline
        if wanted == "latest":
            # PostgreSQL's own rule: the newest timeline whose history file follows on without a hole.
            while self._has_history(tli + 1):
                tli += 1
        elif wanted != "current":
            tli = int(wanted)
        if tli == info.timeline:
            return [TimelineSpan(tli, 0)]
        if not self._has_history(tli):
            raise RestoreRefused(f"timeline {tli} has no history file ({history_name(tli)}) in the WAL archive; "
                                 "give --target-timeline latest or current")
        return timeline_chain(tli, await self.history(tli))

    def missing(self, names: list[str]) -> list[str]:
        return [n for n in names if not self.has(n)]

    def last_segno(self, chain: list[TimelineSpan], seg_size: int) -> int | None:
        return last_archived_segno(chain, self.stored, seg_size)


def _on_path(info: PhysicalInfo, chain: list[TimelineSpan]) -> bool:
    """Whether the snapshot lies on the recovery's path (taken on a chain timeline before it branched off)."""
    start = parse_lsn(info.start_lsn)
    for i, span in enumerate(chain):
        if span.timeline == info.timeline:
            end = chain[i + 1].begin_lsn if i + 1 < len(chain) else None
            return end is None or start < end
    return False


def _own_missing(paths: _WalPaths, info: PhysicalInfo) -> list[str]:
    """The snapshot's own WAL (start to stop) not yet archived: non-empty means it is still waiting."""
    return paths.missing(segments_between(info.timeline, parse_lsn(info.start_lsn), parse_lsn(info.stop_lsn),
                                          info.wal_segment_size))


def _fits(target: RecoveryTarget, rec: SnapshotRecord, manifest: Manifest, info: PhysicalInfo) -> bool:
    if target.kind == "time":
        assert target.time is not None
        return _finished(rec, manifest) + _FINISHED_SLACK <= target.time
    if target.kind == "lsn":
        assert target.lsn is not None
        return parse_lsn(info.stop_lsn) <= target.lsn
    return True


async def _read_physical(repo: Repository, rec: SnapshotRecord) -> tuple[Manifest, PhysicalInfo]:
    manifest = await repo.read_manifest(rec.id)
    if manifest.kind != PHYSICAL or manifest.physical is None:
        raise RestoreRefused(f"snapshot {rec.short_id} is a {manifest.kind} snapshot: restore it into a new "
                             f"database with `backstop restore --db {rec.db} --snapshot {rec.short_id} --into NEW_DB`")
    if manifest.physical.tablespaces:
        raise RestoreRefused(f"snapshot {rec.short_id} has tablespaces outside the data directory, which this "
                             "backstop cannot restore yet")
    return manifest, manifest.physical


async def choose_snapshot(ctx: EngineContext, repo: Repository, paths: _WalPaths, db: str, ref: str,
                          target: RecoveryTarget) -> _Choice:
    """The snapshot to restore for ``target`` (``ref`` 'latest': the newest one that fits), WAL path checked."""
    if ref != "latest":
        rec = await ctx.find_snapshot(ref, db)
        manifest, info = await _read_physical(repo, rec)
        if not _fits(target, rec, manifest, info):
            when = (f"finished at {manifest.finished_at}" if target.kind == "time"
                    else f"ends at LSN {info.stop_lsn}")
            raise RestoreRefused(f"snapshot {rec.short_id} {when}, after {target.describe()}: recovery cannot go "
                                 "back in time; choose an older snapshot, or leave out --snapshot")
        waiting = _own_missing(paths, info)
        if waiting:
            raise RestoreRefused(f"snapshot {rec.short_id} is still waiting for WAL segment {waiting[0]} (its own "
                                 f"start to stop range, {len(waiting)} segment(s)); it becomes restorable once "
                                 "they are archived (`backstop wal status`)")
        chain = await paths.chain(info, target.timeline)
        if not _on_path(info, chain):
            raise RestoreRefused(f"snapshot {rec.short_id} (timeline {info.timeline}, {info.start_lsn}) is not on "
                                 f"the history of timeline {chain[-1].timeline}; give --target-timeline current or "
                                 "choose a snapshot taken before the branch")
        return _checked(paths, rec, manifest, info, chain, target)
    records = [r for r in ctx.catalog.snapshots(db) if r.kind == PHYSICAL]
    if not records:
        await ctx.find_snapshot("latest", db, kind=PHYSICAL)  # says what to run, or that the catalog was lost
        raise RestoreRefused(f"no physical snapshot of {db}; take one with `backstop backup --db {db} --type "
                             "physical` (it becomes restorable once its WAL is archived)")
    waiting_note = ""
    for rec in reversed(records):  # newest first
        manifest, info = await _read_physical(repo, rec)
        if not _fits(target, rec, manifest, info):
            continue
        waiting = _own_missing(paths, info)
        if waiting:
            waiting_note = waiting_note or f"; snapshot {rec.short_id} is still waiting for WAL segment {waiting[0]}"
            continue
        chain = await paths.chain(info, target.timeline)
        if not _on_path(info, chain):
            waiting_note += (f"; snapshot {rec.short_id} is not on the history of timeline {chain[-1].timeline} "
                             "(--target-timeline current follows its own)")
            continue
        return _checked(paths, rec, manifest, info, chain, target)
    raise RestoreRefused(f"no restorable physical snapshot of {db} before {target.describe()} (the oldest "
                         f"finished at {records[0].finished_at}){waiting_note}; choose a later target or see "
                         "`backstop snapshots --db " + db + "`")


def _checked(paths: _WalPaths, rec: SnapshotRecord, manifest: Manifest, info: PhysicalInfo,
             chain: list[TimelineSpan], target: RecoveryTarget) -> _Choice:
    """Refuse, naming the first missing segment, unless the archive reaches the target from this snapshot."""
    seg = info.wal_segment_size
    start, stop = parse_lsn(info.start_lsn), parse_lsn(info.stop_lsn)
    if target.kind == "lsn":
        assert target.lsn is not None
        end = target.lsn // seg
    elif target.kind == "immediate":
        end = stop // seg
    else:
        # Time, xid, name and the end of the archive: where the target lies is only known by
        # replaying, so the whole archived range after the snapshot must be without gaps.
        last = paths.last_segno(chain, seg)
        end = max(stop // seg, last if last is not None else 0)
    needed = required_segments(chain, start, end, seg)
    missing = paths.missing(needed)
    if missing:
        first = missing[0]
        tli, segno = parse_segment_name(first, seg)
        before = format_lsn(segno * seg - 1) if segno * seg > stop else None
        hint = (f"restore to a point before it (e.g. --target-lsn {before}) or " if before else "")
        raise RestoreRefused(
            f"the WAL archive cannot reach {target.describe()} from snapshot {rec.short_id}: segment {first} "
            f"(timeline {tli}) is missing ({len(missing)} missing between {needed[0]} and {needed[-1]}); "
            f"{hint}put the segment back (`backstop wal status` lists the gaps)")
    return _Choice(rec, manifest, info, chain, needed[0])


# -- the restore --------------------------------------------------------------------------------------------------


def _server_bin_dir(ctx: EngineContext, db: str, pg_version: str) -> Path:
    major = int(pg_version) // 10000 if pg_version.isdigit() and int(pg_version) >= 100000 else 0
    configured = ctx.config.database(db).bin_dir
    if configured is not None and all((Path(configured) / t).exists() for t in SERVER_TOOLS):
        found = Path(configured)
    else:
        found = find_bin_dir(major or None, tools=SERVER_TOOLS)
    if major and tool_major(found, SERVER_TOOLS[0]) != major:
        raise PostgresError(f"the snapshot is of PostgreSQL {major} but the server binaries found are "
                            f"PostgreSQL {tool_major(found, SERVER_TOOLS[0])}; install postgresql-{major} (server) "
                            "or set bin_dir in the config")
    return found


async def _verify_backup(bin_dir: Path, pgdata: Path, major: int, checksums: bool = False) -> str:
    """``pg_verifybackup --no-parse-wal --skip-checksums`` of the freshly written files; raises on a mismatch.

    ``checksums``: read every file back against the manifest's checksums too (a drill proves it that way).

    Each file was compared with the CRC-32C the server put in this backup_manifest while it was written
    (or with the snapshot's SHA-256): reading every byte back a second time (as much as the restore
    itself) would add nothing. pg_verifybackup still checks the manifest's own checksum, that every
    file it lists is there with its size and that nothing else is.
    """
    tool = verifybackup_tool(bin_dir, major)
    if tool is None:
        return "skipped: pg_verifybackup is not installed"
    problem = await run_verifybackup(tool, pgdata, checksums=checksums)
    if problem is not None:
        raise IntegrityError(f"pg_verifybackup found the restored files differ from the backup's manifest: "
                             f"{problem}; the data directory was removed; run `backstop check --read-data`")
    return "ok"


def verifybackup_tool(bin_dir: Path, major: int) -> Path | None:
    """The pg_verifybackup beside the server binaries, else one of ``major`` installed elsewhere; None if none."""
    tool = bin_dir / "pg_verifybackup"
    if tool.exists():
        return tool
    try:
        return find_bin_dir(major or None, tools=("pg_verifybackup",)) / "pg_verifybackup"
    except PostgresError:
        return None


async def run_verifybackup(tool: Path, pgdata: Path, *, checksums: bool) -> str | None:
    """Run pg_verifybackup over ``pgdata``; None when it passes, else the first line of its complaint.

    Always ``--no-parse-wal``: a restored data directory has no WAL of its own (recovery fetches it through
    backstop's restore_command from the archive, which `backstop check` verifies).
    """
    args = [str(tool), "--no-parse-wal", *([] if checksums else ["--skip-checksums"]), str(pgdata)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    out, errs = await proc.communicate()
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in (errs + out).decode(errors="replace").splitlines() if ln.strip()]
    return lines[0] if lines else f"exit status {proc.returncode}"


class _Progress:
    def __init__(self, job: Job, total: int) -> None:
        self.job, self.total, self.done, self._last = job, total, 0, 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last > 0.2 or self.done == self.total:
            self._last = now
            self.job.progress(self.done, self.total)


async def restore_physical(ctx: EngineContext, req: PhysicalRestoreRequest) -> PhysicalRestoreResult:
    """Restore a physical snapshot into a new data directory and set it up to recover to ``req.target``."""
    ctx.config.database(req.db)  # a ConfigError naming the configured databases
    if req.port is not None and not req.start:
        raise UsageError("--port is the port of the server --start starts; give --start too")
    pgdata = req.pgdata.absolute()
    check_target_dir(pgdata)
    t0, started_at = time.monotonic(), time.time()
    what = f"physical restore of {req.db} into {pgdata} to {req.target.describe()}"
    async with run_job(ctx.bus, "restore", req.db, what) as job:
        repo: Repository | None = None
        restore: _Restore | None = None
        snapshot_id = ""
        try:
            job.phase("prepare")
            repo = await ctx.open_repository(require_all=False, target=req.only_target)
            for name, msg in {**repo.unreachable, **repo.damaged}.items():
                job.warn(f"target '{name}' skipped: {msg}")
            repo.storages[:] = ReadSources.for_targets(  # best first
                repo.storages, ctx.config.targets, health=recent_health(ctx)).storages
            paths = _WalPaths(repo, await list_wal(repo))
            choice = await choose_snapshot(ctx, repo, paths, req.db, req.snapshot, req.target)
            snapshot_id = choice.record.id
            restore = _Restore(ctx, req, pgdata, choice, repo, job)
            result = await restore.run()
        except BaseException as exc:
            if restore is not None:
                with contextlib.suppress(BackstopError):  # the restore's own error is the one to report
                    await restore.quarantine_findings()
            if snapshot_id:
                ctx.catalog.add_restore(job_id=job.id, snapshot_id=snapshot_id, db=req.db, into=str(pgdata),
                                        tables=[], started_at=started_at, duration_s=time.monotonic() - t0,
                                        nbytes=0, ok=False, error=str(exc), kind=req.kind,
                                        target=repo.storages[0].name if repo and repo.storages else None)
            raise
        await restore.quarantine_findings()
        duration = time.monotonic() - t0
        ctx.catalog.add_restore(job_id=job.id, snapshot_id=snapshot_id, db=req.db, into=str(pgdata), tables=[],
                                started_at=started_at, duration_s=duration, nbytes=result.bytes, ok=True, error=None,
                                kind=req.kind, target=repo.storages[0].name if repo.storages else None)
        point = result.recovery
        job.result = {"snapshot": snapshot_id, "pgdata": str(pgdata), "bytes": result.bytes,
                      "duration_s": round(duration, 3), **({"lsn": point.lsn, "commit_time": point.commit_time}
                                                           if point else {})}
        return replace(result, duration_s=duration, warnings=list(job.warnings))


async def server_crcs(reader: StreamReader, manifest: Manifest, short_id: str) -> dict[str, str]:
    """File -> the CRC-32C the server computed as it sent the file (from the snapshot's backup_manifest).

    Each restored file is checked against these: computed by PostgreSQL from its own files, they catch
    a mistake anywhere on Backstop's way from the server to the restored file, at a tenth of SHA-256's
    cost. (Every chunk is also checked against its keyed BLAKE3 id, so tampering is caught before.)
    Files without one (a snapshot without backup_manifest) are checked against the snapshot's SHA-256.
    """
    entry = next((f for f in manifest.files if f.name.removeprefix("./") == BACKUP_MANIFEST and f.format == PG_FILE),
                 None)
    if entry is None:
        return {}
    check = ManifestCheck()
    async for piece in reader.stream(entry):
        check.feed(memoryview(piece))
    try:
        check.finish()
    except IntegrityError:
        raise IntegrityError(f"snapshot {short_id}: its backup_manifest fails its own checksum; nothing was "
                             "written; run `backstop check --read-data`") from None
    return {path: checksum.lower() for path, (_, algo, checksum) in check.files.items()
            if algo == "CRC32C" and checksum}


class _Restore:
    """One physical restore after the snapshot was chosen: write, verify, configure, start and wait."""

    def __init__(self, ctx: EngineContext, req: PhysicalRestoreRequest, pgdata: Path, choice: _Choice,
                 repo: Repository, job: Job) -> None:
        self.ctx, self.req, self.pgdata, self.choice, self.repo, self.job = ctx, req, pgdata, choice, repo, job
        self.reader: StreamReader | None = None

    async def run(self) -> PhysicalRestoreResult:
        req, info, job = self.req, self.choice.info, self.job
        manifest = self.choice.manifest
        bin_dir = _server_bin_dir(self.ctx, req.db, info.pg_version)
        cluster = LocalCluster(self.pgdata, port=req.port or free_port(), bin_dir=bin_dir)
        self._check_readable(cluster)
        frozen = await FrozenCopies.scan(self.repo.storages)  # archived packs (FORMAT.md 12.6)
        index = await self.repo.load_index(common=False, avoid=await quarantine.load(self.repo) | frozen.packs())
        for f in manifest.files:
            check_complete(f, index)
        sources = ReadSources.for_targets(self.repo.storages, self.ctx.config.targets,
                                          health=recent_health(self.ctx))
        sources.frozen, notes = await plan_reads(sources.storages, frozen, packs_of(manifest.files, index),
                                                 self.choice.record.id)
        for note in notes:
            job.warn(note)
        reader = self.reader = StreamReader(self.repo, index, self.ctx.pool, on_damage=job.warn, sources=sources)
        total = sum(f.size for f in manifest.files)
        crcs = await server_crcs(reader, manifest, self.choice.record.short_id)

        def write(entry: FileEntry, fd: int) -> AsyncGenerator[int, None]:
            return reader.write_into(entry, fd, crcs.get(entry.name.removeprefix("./")))

        job.phase("write")
        written = await write_data_dir(manifest.files, self.pgdata, write,
                                       workers=RESTORE_WORKERS, owner=cluster.owner,
                                       on_bytes=_Progress(job, total))
        try:
            job.phase("verify")
            major = int(info.pg_version) // 10000 if info.pg_version.isdigit() else 0
            v0 = time.monotonic()
            if any(f.name.removeprefix("./") == BACKUP_MANIFEST for f in manifest.files):
                verified = await _verify_backup(bin_dir, self.pgdata, major, req.verify_checksums)
            else:
                verified = "skipped: the snapshot has no backup_manifest"
                job.warn(f"pg_verifybackup skipped: snapshot {self.choice.record.short_id} has no backup_manifest")
            note = (f"Backstop: recovery of snapshot {self.choice.record.short_id} to "
                    f"{req.target.describe()} (restored {datetime.now().astimezone().isoformat(timespec='seconds')})")
            verify_s = time.monotonic() - v0
            write_recovery_files(self.pgdata, recovery_settings(restore_command(req.config_path), req.target,
                                                                req.archive_mode), note, cluster.owner)
        except BaseException:
            clear_dir(self.pgdata, created=written.created)
            raise
        result = PhysicalRestoreResult(
            snapshot_id=self.choice.record.id, db=req.db, pgdata=str(self.pgdata), target=req.target,
            files=written.files, bytes=written.bytes, duration_s=0.0, verified=verified, verify_s=verify_s,
            wal_from=self.choice.first_wal, started=req.start, port=cluster.port if req.start else None,
            start_command=cluster.start_command(), sources=sources.report())
        if not req.start:
            return result
        job.phase("recover")
        point = await _start_and_wait(cluster, req.target, req.wait_timeout_s)
        return replace(result, recovery=point)

    def _check_readable(self, cluster: LocalCluster) -> None:
        """restore_command runs as the server's account: warn when it cannot read what wal-fetch needs."""
        needed = [self.req.config_path]
        if self.ctx.config.encryption.passphrase_file is not None:
            needed.append(self.ctx.config.encryption.passphrase_file)
        for path in needed:
            if not cluster.can_read(path):
                self.job.warn(f"the server runs as {cluster.os_user}, which cannot read {path}: its restore_command "
                              f"(backstop wal-fetch) will fail; let {cluster.os_user} read it (chown or chmod, and "
                              "search permission on its directories)")

    async def quarantine_findings(self) -> None:
        """Copies found damaged while reading go into quarantine: the next backup stores fresh ones."""
        if self.reader is None or not self.reader.findings:
            return
        held = await quarantine.add(self.repo, self.reader.findings, "restore")
        self.job.warn(f"{len(held)} damaged pack(s) quarantined: the next backup stores fresh copies of their chunks")


# -- starting the restored cluster and waiting for its recovery ---------------------------------------------------


def _log_since(cluster: LocalCluster, offset: int) -> RecoveryLog:
    try:
        with open(cluster.log_file, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    return read_recovery_log(text)


_STATUS = ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
           "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, "
           "(SELECT timeline_id FROM pg_control_checkpoint())")


async def _status(cluster: LocalCluster) -> tuple[Any, ...] | None:
    """(in recovery, replay LSN, last commit time, paused, checkpoint timeline), or None when it does not answer."""
    try:
        async with await psycopg.AsyncConnection.connect(cluster.dsn(), connect_timeout=5, autocommit=True) as conn:
            cur = await conn.execute(_STATUS)
            return await cur.fetchone()
    except psycopg.Error:
        return None


def _point(state: str, log: RecoveryLog, row: tuple[Any, ...] | None) -> RecoveryPoint:
    lsn = row[1] if row and row[1] else (log.redo_done_lsn or None)
    commit = row[2].isoformat() if row and row[2] is not None else (log.stop_time or log.last_commit_time)
    timeline = log.new_timeline or (int(row[4]) if row and row[4] is not None else None)
    return RecoveryPoint(state, lsn, commit, timeline, log.stopping)


async def _start_and_wait(cluster: LocalCluster, target: RecoveryTarget, timeout_s: float) -> RecoveryPoint:
    """Start the restored cluster and wait until recovery reached the target (or failed, named from the log)."""
    try:
        offset = cluster.log_file.stat().st_size  # the restored server.log holds the source's old lines
    except OSError:
        offset = 0
    try:
        await asyncio.to_thread(cluster.start, timeout=START_TIMEOUT_S)
    except PostgresError as exc:
        log = _log_since(cluster, offset)
        if target.action == "shutdown" and log.stopping and not log.failure:
            return _point("shut down", log, None)
        raise PostgresError(f"the restored cluster in {cluster.data_dir} did not start: {log.failure or exc}; "
                            f"the directory is kept for inspection (log: {cluster.log_file}); remove it before "
                            "restoring there again") from None
    try:
        return await _wait(cluster, target, offset, timeout_s)
    except BaseException:
        with contextlib.suppress(BackstopError):
            await asyncio.to_thread(cluster.stop)
        raise


async def _wait(cluster: LocalCluster, target: RecoveryTarget, offset: int, timeout_s: float) -> RecoveryPoint:
    deadline = time.monotonic() + timeout_s
    while True:
        log = _log_since(cluster, offset)
        row = await _status(cluster)
        if row is not None:
            in_recovery, paused = bool(row[0]), bool(row[3])
            if not in_recovery:
                return _point("promoted", log, row)
            if paused and target.kind is not None and target.action == "pause" and (log.paused or log.stopping):
                return _point("paused", log, row)
        elif log.complete and not log.failure:
            return _point("promoted", log, None)  # it does not let us in (its pg_hba.conf), but the log says it
        elif log.paused and target.action == "pause":
            return _point("paused", log, None)
        elif not await asyncio.to_thread(cluster.is_running):
            if target.action == "shutdown" and log.stopping and not log.failure:
                return _point("shut down", log, None)
            why = log.failure or "the server stopped"
            hint = ("the archive ends before the target: check `backstop wal status`, or restore an older snapshot "
                    "with --snapshot" if "before configured recovery target" in why else f"see {cluster.log_file}")
            raise PostgresError(f"recovery of {cluster.data_dir} failed: {why}; {hint}; the directory is kept for "
                                "inspection, remove it before restoring there again")
        if time.monotonic() > deadline:
            raise PostgresError(f"recovery of {cluster.data_dir} did not reach {target.describe()} within "
                                f"{timeout_s:.0f} s (last replayed: {row[1] if row else 'unknown'}); it was stopped "
                                f"and the directory kept (log: {cluster.log_file})")
        await asyncio.sleep(_POLL_S)
