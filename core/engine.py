"""The engine: the one async API the CLI and the TUI call.

It composes configuration, repository, storage targets, PostgreSQL tools
and the catalog, runs every operation as a job that emits events on the bus,
and records results in the catalog.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator
from datetime import datetime, timezone

from core import __version__
from core.admin import AdminMixin
from core.catalog.models import BackupRecord, SnapshotRecord
from core.catalog.reader import CatalogReader
from core.catalog.store import Catalog
from core.config import BackstopConfig
from core.errors import BackstopError, NotFound, RestoreRefused, UsageError
from core.events import EventBus
from core.insights.overview import Dashboard, build_dashboard, build_trend_series
from core.insights.trends import Trends
from core.jobs import Job, run_job
from core.planner import (CopyCheck, LogicalSnapshot, PastRestore, PlanningFacts, RestorePlan, RestoreRequest,
                          TargetState, plan, with_tables)
from core.postgres import logical
from core.postgres.parallel_restore import parallel_restore
from core.postgres.tools import find_bin_dir, server_major, tool_major
from core.repository.checker import TargetReport, check_target
from core.repository.manifest import FileEntry, Manifest
from core.repository.reader import StreamReader, check_complete
from core.repository.repo import CONFIG_NAME, Repository
from core.repository.verify import CopyReport, verify_copy
from core.repository.writer import StreamWriter
from core.storage.base import Storage
from core.storage.factory import make_storages

if TYPE_CHECKING:
    from core.repository.repair_index import IndexRepairReport

DUMP_FILE = "database.pgdump"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class InitResult:
    repo_id: str
    created_on: list[str]
    existing_on: list[str]
    repaired_on: dict[str, str] = field(default_factory=dict)  # target -> what init rewrote there


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    db: str
    into: str
    tables: list[str]
    bytes: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class RebuildResult:
    """What `catalog rebuild` changed."""

    snapshots: int = 0  # snapshots the repository holds, now in the catalog
    removed: list[str] = field(default_factory=list)  # catalog rows of snapshots no target holds
    security: list[str] = field(default_factory=list)  # audit log, operators, schema repairs
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckResult:
    reports: list[TargetReport]
    read_data: bool
    # The catalog compared with the repository: rows for snapshots no target holds.
    catalog_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports) and not self.catalog_problems


class Engine(AdminMixin):
    """Backup, restore and verification for the databases in one config."""

    def __init__(self, config: BackstopConfig, catalog: Catalog | None = None, bus: EventBus | None = None,
                 storages: list[Storage] | None = None) -> None:
        """``storages`` replaces the targets built from the config (tests wrap them in fault doubles)."""
        self.config = config
        self.bus = bus or EventBus()
        self.catalog = catalog or Catalog(config.catalog.sqlite_path)
        # A job whose process died (SIGKILL, power loss) must not show as running forever.
        self.catalog.mark_abandoned_jobs()
        self.bus.subscribe(self.catalog.record_event)
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="backstop-seal")
        self._storages: list[Storage] | None = storages

    async def close(self) -> None:
        """Release threads, connections and the catalog."""
        if self._storages:
            await asyncio.gather(*(s.close() for s in self._storages), return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if "reader" in self.__dict__:  # opened only by the console
            self.reader.close()
        self.catalog.close()

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------

    def storages(self, target: str | None = None) -> list[Storage]:
        """Storage objects for the configured targets (or one of them)."""
        if self._storages is None:
            self._storages = make_storages(self.config.targets)
        if target is None:
            return self._storages
        self.config.target(target)  # raises a ConfigError naming the known targets
        return [s for s in self._storages if s.name == target]

    async def open_repository(self, require_all: bool = True, target: str | None = None) -> Repository:
        """Open the repository with the configured passphrase."""
        return await Repository.open(self.storages(target), self.config.encryption.passphrase(), require_all)

    # -- init ------------------------------------------------------------------

    async def init(self) -> InitResult:
        """Create the repository on every target (idempotent)."""
        passphrase = self.config.encryption.passphrase()
        stores = self.storages()
        for st in stores:
            await st.prepare()
        repo, created = await Repository.init(stores, passphrase, self.config.repository)
        repaired = repo.repaired
        await self._after_init(repo, created, repaired)  # new or rewritten keys are key events: audited
        return InitResult(repo.params.repo_id, created, [s.name for s in stores if s.name not in created], repaired)

    # -- backup ----------------------------------------------------------------

    async def backup(self, db_name: str) -> BackupRecord:
        """Take a logical full snapshot of one database onto every target."""
        from core.repository.dedup import backup_index, snapshot_packs

        dbc = self.config.database(db_name)
        async with run_job(self.bus, "backup", db_name, f"logical backup of {db_name}") as job:
            started = _now_iso()
            job.phase("connect")
            info = await logical.source_info(dbc.dsn, db_name)
            bin_dir = find_bin_dir(info.server_major, dbc.bin_dir)
            repo = await self.open_repository(require_all=True)
            async with repo.lock("shared", f"backup of {db_name}"):
                job.phase("index")
                dedup = await backup_index(repo)
                for w in dedup.warnings:
                    job.warn(w)
                index = dedup.index
                entry, writer = await self._dump_into(repo, index, bin_dir, dbc.dsn, info.estimated_bytes, job)
                job.phase("commit")
                if writer.new_index.packs:
                    name, data = writer.new_index.seal(repo.key)
                    await repo.put_all(name, data)
                    await repo.verify_all(name, name.rsplit("/", 1)[1])
                targets = [s.name for s in repo.storages]
                manifest = Manifest(
                    db=db_name, kind="logical", started_at=started, finished_at=_now_iso(), files=[entry],
                    size_bytes=entry.size, stored_bytes=writer.stats.stored_bytes, new_chunks=writer.stats.new_chunks,
                    targets=targets, server_version=info.server_version,
                    tool_versions={"backstop": __version__, "pg_dump": str(tool_major(bin_dir))},
                    tables=info.tables, table_bytes=info.table_bytes, host=socket.gethostname(),
                )
                sid, mname, mdata = manifest.seal(repo.key)
                try:
                    await repo.put_all(mname, mdata)
                    await repo.verify_all(mname, sid)
                except BaseException:
                    # Half-committed on some targets: take it back everywhere.
                    await repo.delete_all(mname)
                    raise
            # What was read back is the new packs, the index and the manifest; packs
            # reused from earlier backups were only seen present with the right size.
            packs = snapshot_packs(manifest, index, writer.new_index)  # type: ignore[arg-type]
            reused = len(packs - set(writer.new_index.packs))
            rec = BackupRecord(sid, db_name, "logical", started, manifest.finished_at, entry.size,
                               writer.stats.stored_bytes, targets, job.id, packs_read_back=writer.stats.packs,
                               packs_reused=reused)
            self.catalog.add_snapshot(rec)
            for t in targets:
                self.catalog.add_verification(
                    job_id=job.id, target=t, snapshot_id=sid, started_at=time.time(), read_data=reused == 0,
                    objects_checked=writer.stats.packs + reused + 1 + bool(writer.new_index.packs),
                    bytes_read=writer.stats.stored_bytes + len(mdata), problems=[],
                )
            job.result = {"snapshot": sid, "size_bytes": entry.size, "stored_bytes": writer.stats.stored_bytes,
                          "packs_read_back": writer.stats.packs, "packs_reused": reused}
            return rec

    async def _dump_into(self, repo: Repository, index, bin_dir, dsn: str, estimate: int,  # type: ignore[no-untyped-def]
                         job: Job) -> tuple:
        loop = asyncio.get_running_loop()
        job.phase("dump")
        writer = StreamWriter(repo, index, loop, self.pool, self.config.workers,
                              on_progress=lambda b: loop.call_soon_threadsafe(job.progress, b, max(estimate, b)))
        dump = await logical.start_dump(bin_dir, dsn)
        try:
            entry = await asyncio.to_thread(writer.write, dump.reader, DUMP_FILE, logical.DUMP_FORMAT)
            await dump.wait()
            job.phase("upload")
            await asyncio.to_thread(writer.finish)
        except BaseException:
            writer.abort()
            dump.kill()
            raise
        finally:
            dump.reader.close()
        return entry, writer

    # -- listing ----------------------------------------------------------------

    async def find_snapshot(self, ref: str, db: str | None = None) -> SnapshotRecord:
        """A snapshot by id, unique prefix or 'latest'; a lost catalog is named as such."""
        try:
            return self.catalog.snapshot(ref, db)
        except NotFound as exc:
            # The catalog is only an index: if the repository holds snapshots it does
            # not list, the catalog was lost or is new, and a rebuild is the answer.
            try:
                repo = await self.open_repository(require_all=False)
                names: set[str] = set()
                for st in repo.storages:
                    names |= await repo.snapshot_names(st)
            except BackstopError:
                raise exc from None
            unknown = names - {s.id for s in self.catalog.snapshots()}
            if not unknown:
                raise
            raise NotFound(f"{str(exc).split(';')[0]}; the repository holds {len(unknown)} snapshot(s) the catalog "
                           "does not list: run `backstop catalog rebuild` (the catalog was lost, is new or is "
                           "out of date)") from None

    def snapshots(self, db: str | None = None) -> list[SnapshotRecord]:
        """Committed snapshots from the catalog, oldest first."""
        if db is not None:
            self.config.database(db)
        return self.catalog.snapshots(db)

    async def rebuild_catalog(self) -> RebuildResult:
        """Make the catalog equal to the repository: snapshots, where each is stored, the audit log, operators."""
        repo = await self.open_repository(require_all=False)
        where: dict[str, list[str]] = {}
        for st in repo.storages:
            for sid in await repo.snapshot_names(st):
                where.setdefault(sid, []).append(st.name)
        manifests: dict[str, Manifest] = {}
        result = RebuildResult()
        for sid in sorted(where):
            try:
                manifests[sid] = await repo.read_manifest(sid)
            except BackstopError as exc:
                result.warnings.append(f"snapshot {sid[:8]} cannot be read from any target ({exc}); it is left out")
        # A re-sealed manifest replaces the one it names (an interrupted re-encryption left both).
        replaced = {m.supersedes for m in manifests.values() if m.supersedes}
        existing = {r.id: r for r in self.catalog.snapshots()}
        # Oldest first, so that rowid order (the tie-breaker for equal times) follows time.
        for sid, m in sorted(manifests.items(), key=lambda kv: (kv[1].finished_at, kv[1].started_at, kv[0])):
            if sid in replaced:
                continue
            old = existing.get(sid)
            self.catalog.add_snapshot(SnapshotRecord(sid, m.db, m.kind, m.started_at, m.finished_at, m.size_bytes,
                                                     m.stored_bytes, where[sid], old.job_id if old else None))
            result.snapshots += 1
        gone = [r for sid, r in existing.items() if sid not in where or sid in replaced]
        partial = {**repo.unreachable, **repo.damaged}
        for r in gone:
            if partial and r.id not in replaced:
                # A target that did not answer may hold it: keep the row rather than guess.
                result.warnings.append(f"snapshot {r.short_id} is on no reachable target; kept in the catalog "
                                       f"because target(s) {', '.join(partial)} could not be read")
                continue
            self.catalog.delete_snapshot(r.id)
            result.removed.append(r.id)
        result.security = await self.rebuild_security_state(repo)
        return result

    # -- restore ----------------------------------------------------------------

    async def restore(self, db_name: str, into: str, snapshot: str = "latest", tables: list[str] | None = None,
                      target: str | None = None, only_target: bool = False) -> RestoreResult:
        """Restore a snapshot into a new database on the same server (whole, or some tables).

        ``target`` (from a restore plan) is read first and the others remain
        fallbacks; with ``only_target`` (`restore --target`) nothing else is read.
        """
        from core.repository import quarantine

        dbc = self.config.database(db_name)
        tables = list(tables or [])
        for t in tables:
            if t.count(".") != 1 or not all(t.split(".")):
                raise UsageError(f"--table {t!r}: expected SCHEMA.TABLE, e.g. public.claims")
        logical.ensure_new_database(into)
        if target is not None:
            self.config.target(target)  # a ConfigError naming the configured targets
        snap = await self.find_snapshot(snapshot, db_name)
        what = f"restore of {db_name} snapshot {snap.short_id} into {into}" + (f" ({', '.join(tables)})" if tables else "")
        t0 = time.monotonic()
        started = time.time()
        fed = 0
        created = False
        reader: StreamReader | None = None
        async with run_job(self.bus, "restore", db_name, what) as job:
            try:
                if await logical.database_exists(dbc.dsn, into):
                    raise RestoreRefused(
                        f"database {into!r} already exists; restore into a new name with --into, or replace it "
                        "with --force (needs an enrolled operator and a one-time code; the old one is kept aside)"
                    )
                repo = await self.open_repository(require_all=False, target=target if only_target else None)
                for name, msg in {**repo.unreachable, **repo.damaged}.items():
                    job.warn(f"target '{name}' skipped: {msg}")
                if target:
                    repo.storages.sort(key=lambda st: st.name != target)
                job.phase("prepare")
                manifest = await repo.read_manifest(snap.id)
                if tables:
                    absent = [t for t in tables if manifest.tables and t not in manifest.tables]
                    if absent:
                        raise RestoreRefused(
                            f"table(s) {', '.join(absent)} did not exist in snapshot {snap.short_id}; "
                            f"it has: {', '.join(manifest.tables[:10])}{' …' if len(manifest.tables) > 10 else ''}"
                        )
                index = await repo.load_index(common=False, avoid=await quarantine.load(repo))
                entry = manifest.files[0]
                check_complete(entry, index)  # names a damaged index object when it is the cause
                for name in index.damaged:
                    job.warn(f"{name[:22]}… cannot be read from any target (this snapshot does not need it); "
                             "run `backstop repair index`")
                major = await server_major(dbc.dsn)
                bin_dir = find_bin_dir(major, dbc.bin_dir)
                reader = StreamReader(repo, index, self.pool, on_damage=job.warn)
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
                if list_text is None and self.config.restore_jobs > 1:
                    await parallel_restore(bin_dir, into_dsn, streams, self.config.restore_jobs,
                                           manifest.table_bytes, on_phase=job.phase)
                    fed = entry.size
                else:
                    fed = await logical.restore_stream(bin_dir, into_dsn, streams(), list_text)
            except BaseException as exc:
                if created:
                    # Only ever drop what this restore created itself.
                    await logical.drop_database(dbc.dsn, into)
                if reader is not None and reader.findings:
                    await quarantine.add(repo, reader.findings, "restore")
                self.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=tables,
                                         started_at=started, duration_s=time.monotonic() - t0, nbytes=fed, ok=False,
                                         error=str(exc))
                raise
            duration = time.monotonic() - t0
            if reader.findings:
                held = await quarantine.add(repo, reader.findings, "restore")
                job.warn(f"{len(held)} damaged pack(s) quarantined: the next backup stores fresh copies of their chunks")
            self.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=tables,
                                     started_at=started, duration_s=duration, nbytes=fed, ok=True, error=None)
            job.result = {"snapshot": snap.id, "into": into, "duration_s": round(duration, 3), "bytes": fed}
            return RestoreResult(snap.id, db_name, into, tables, fed, duration, list(job.warnings))

    # -- check ---------------------------------------------------------------------

    async def check(self, read_data: bool = False, target: str | None = None) -> CheckResult:
        """Verify the repository on every target (or one), and the catalog against it; results go to the catalog."""
        from core.repository import quarantine

        desc = f"check{' --read-data' if read_data else ''}" + (f" of target {target}" if target else "")
        async with run_job(self.bus, "check", None, desc) as job:
            repo = await self.open_repository(require_all=False, target=target)
            reports = [TargetReport(name, problems=[msg], unreachable=msg) for name, msg in repo.unreachable.items()]
            held = await quarantine.load(repo)
            started = time.time()
            # A target whose own config or keys are damaged is still checked, with the healthy targets' keys.
            for st in [*repo.storages, *repo.damaged_storages]:
                job.phase(f"check {st.name}")
                rep = await check_target(repo, st, read_data, self.pool, on_progress=lambda d, t: job.progress(d, t),
                                         quarantined=held)
                reports.append(rep)
            catalog_problems, catalog_notes = self._compare_catalog(reports, all_targets=target is None)
            # Damage found goes into quarantine (in the repository): backups stop deduplicating against it.
            findings = [quarantine.Finding(pid, r.target, why) for r in reports for pid, why in r.bad_packs.items()]
            if findings:
                await quarantine.add(repo, findings, "check")
            healed: set[str] = set()
            if read_data and target is None and not repo.unreachable and not repo.damaged:
                fine = set.intersection(*(r.intact_packs for r in reports)) if reports else set()
                bad = {pid for r in reports for pid in r.bad_packs}
                healed = (held & fine) - bad
                if healed:
                    await quarantine.release(repo, healed)
                    catalog_notes.append(f"{len(healed)} pack(s) read intact on every target: out of quarantine")
            still = (held | {f.pack_id for f in findings}) - healed
            if still:
                catalog_notes.append(f"{len(still)} pack(s) in quarantine: backups store fresh copies of their chunks "
                                     "instead of referencing them")
            for rep in reports:
                self.catalog.add_verification(job_id=job.id, target=rep.target, snapshot_id=None, started_at=started,
                                              read_data=read_data, objects_checked=rep.objects_checked,
                                              bytes_read=rep.bytes_read, problems=rep.problems)
                for sid in sorted(set(rep.snapshots) | set(rep.affected)):
                    self.catalog.add_verification(job_id=job.id, target=rep.target, snapshot_id=sid,
                                                  started_at=started, read_data=read_data, objects_checked=0,
                                                  bytes_read=0, problems=rep.affected.get(sid, []))
            result = CheckResult(reports, read_data, catalog_problems, catalog_notes)
            job.result = {"ok": result.ok, "problems": sum(len(r.problems) for r in reports) + len(catalog_problems)}
            return result

    def _compare_catalog(self, reports: list[TargetReport], all_targets: bool) -> tuple[list[str], list[str]]:
        """Catalog against repository, both ways, and each target against the others.

        Adds to the target reports a problem for each snapshot another target
        holds and this one lacks; returns repository-level problems (catalog
        rows naming snapshots that are not there) and notes.
        """
        checked = [r for r in reports if r.unreachable is None]
        held = {r.target: set(r.snapshots) | set(r.affected) for r in checked}
        described: dict[str, str] = {}
        for r in checked:
            described.update(r.described)
        everywhere = set().union(*held.values()) if held else set()
        if len(checked) > 1:
            for r in checked:
                for sid in sorted(everywhere - held[r.target]):
                    others = ", ".join(t for t, have in held.items() if sid in have)
                    what = described.get(sid, "")
                    r.affect(sid, f"target '{r.target}': snapshot {sid[:8]}{f' ({what})' if what else ''} is missing "
                                  f"here (target {others} holds it)")
        problems: list[str] = []
        notes: list[str] = []
        rows = self.catalog.snapshots()
        for row in rows:
            if row.id in everywhere:
                continue
            if all_targets and len(checked) == len(reports):
                problems.append(f"snapshot {row.short_id} ({row.db} {row.finished_at}) is in the catalog but on no "
                                "target: it was deleted from the repository; `backstop catalog rebuild` drops it")
            else:
                for r in checked:
                    if r.target in row.targets:
                        r.affect(row.id, f"target '{r.target}': snapshot {row.short_id} ({row.db} {row.finished_at}) "
                                         "is in the catalog but not on this target")
        unknown = everywhere - {row.id for row in rows}
        if unknown:
            notes.append(f"{len(unknown)} snapshot(s) in the repository are not in the catalog: "
                         "`backstop catalog rebuild` adds them")
        return problems, notes

    async def repair_index(self, dry_run: bool = False) -> "IndexRepairReport":
        """Rebuild what damaged or missing index objects listed from the pack headers (`backstop repair index`)."""
        from core.repository.repair_index import repair_index

        async with run_job(self.bus, "repair", None, "repair index" + (" (dry run)" if dry_run else "")) as job:
            repo = await self.open_repository(require_all=True)
            async with repo.lock("exclusive", "repair index"):
                job.phase("read pack headers")
                report = await repair_index(repo, dry_run=dry_run)
            job.result = report.to_json()
            return report

    # -- console (TUI) read side and actions -------------------------------------------
    # The operator console's needs in one place; the computations live in
    # core.insights and core.planner, the catalog queries in core.catalog.reader.

    @functools.cached_property
    def reader(self) -> CatalogReader:
        """Read-only catalog access with its own connections (safe from worker threads)."""
        return CatalogReader(self.config.catalog.sqlite_path)

    def dashboard(self, now: float | None = None) -> Dashboard:
        """KPIs, alerts and running jobs (blocking catalog reads: call it from a thread)."""
        return build_dashboard(self.reader, self.config, time.time() if now is None else now)

    def prefetch_dashboard(self) -> "Future[Dashboard]":
        """Start computing the dashboard in a thread (a front end's start-up overlaps it)."""
        fut: Future[Dashboard] = Future()

        def run() -> None:
            try:
                fut.set_result(self.dashboard())
            except BaseException as exc:  # handed to whoever waits for the result
                fut.set_exception(exc)

        threading.Thread(target=run, name="backstop-dashboard", daemon=True).start()
        return fut

    def trends(self, now: float | None = None, days: int = 30) -> Trends:
        """Restore times, backup durations, stored sizes and failures (blocking: call it from a thread)."""
        return build_trend_series(self.reader, self.config, time.time() if now is None else now, days=days)

    async def target_states(self, timeout_s: float = 5.0) -> list[TargetState]:
        """Each configured target and whether it answers right now."""
        async def probe(st: Storage) -> str:
            try:
                await asyncio.wait_for(st.exists(CONFIG_NAME), timeout_s)
                return ""
            except asyncio.TimeoutError:
                return f"no answer within {timeout_s:.0f}s"
            except (BackstopError, OSError) as exc:
                return str(exc)
        stores = {s.name: s for s in self.storages()}
        details = await asyncio.gather(*(probe(stores[t.name]) for t in self.config.targets))
        return [TargetState(t.name, t.type, getattr(t, "region", None), not d, d)
                for t, d in zip(self.config.targets, details)]

    @functools.cached_property
    def _manifest_tables(self) -> dict[str, list[str]]:
        return {}

    async def snapshot_tables(self, snapshot_id: str) -> list[str]:
        """The tables a snapshot holds (from its manifest; cached, manifests never change)."""
        if snapshot_id not in self._manifest_tables:
            repo = await self.open_repository(require_all=False)
            self._manifest_tables[snapshot_id] = list((await repo.read_manifest(snapshot_id)).tables)
        return self._manifest_tables[snapshot_id]

    async def plan_restore(self, request: RestoreRequest, *, now: datetime | None = None,
                           targets: list[TargetState] | None = None) -> RestorePlan:
        """Gather the facts (catalog, target reachability, table lists, history) and ask the planner."""
        dbc = self.config.database(request.db)
        # Catalog reads go to a thread: this runs on the console's event loop.
        rows = await asyncio.to_thread(self.reader.latest_snapshots, request.db, 200)
        if request.point.kind == "snapshot" and request.point.snapshot_id:
            chosen = await asyncio.to_thread(self.reader.snapshot_by_id, request.point.snapshot_id)
            if chosen is not None and chosen.db == request.db and all(r.id != chosen.id for r in rows):
                rows.append(chosen)
        sources: list[LogicalSnapshot] = [
            LogicalSnapshot(r.id, r.db, datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.finished_at),
                            r.size_bytes, r.targets,
                            tuple(CopyCheck(c.target, c.ok, c.read_data, c.at) for c in r.checks))
            for r in rows]
        if request.tables:
            # Read table lists newest first until one has every table (a dropped table
            # sends the planner to an older snapshot); unreadable manifests stay unknown.
            for i, s in enumerate(sources[:20]):
                try:
                    sources[i] = with_tables(s, await self.snapshot_tables(s.id))
                except BackstopError:
                    continue
                if all(t in (sources[i].tables or ()) for t in request.tables):
                    break
        history = [PastRestore(r.db, r.bytes, r.duration_s, r.ok, r.started_at)
                   for r in await asyncio.to_thread(lambda: self.reader.restores(limit=200))]
        states = targets if targets is not None else await self.target_states()
        facts = PlanningFacts(sources, states, history, dbc.rto_minutes * 60,
                              now or datetime.now(timezone.utc))
        return plan(request, facts)

    async def verify_snapshot(self, snapshot: str) -> list[CopyReport]:
        """Read one snapshot back from every target holding it; results go to the catalog."""
        from core.repository import quarantine

        snap = await self.find_snapshot(snapshot)
        async with run_job(self.bus, "verify", snap.db, f"verification of snapshot {snap.short_id} of {snap.db}") as job:
            repo = await self.open_repository(require_all=False)
            reports = [CopyReport(name, snap.id, time.time(), problems=[f"target '{name}' is unreachable: {msg}"])
                       for name, msg in repo.unreachable.items() if name in snap.targets]
            for st in repo.storages:
                if st.name in snap.targets:
                    job.phase(f"read {st.name}")
                    reports.append(await verify_copy(repo, st, snap.id, self.pool, on_progress=job.progress))
            findings = [f for r in reports for f in r.findings]
            if findings:
                await quarantine.add(repo, findings, "verify")
            for r in reports:
                self.catalog.add_verification(job_id=job.id, target=r.target, snapshot_id=snap.id,
                                              started_at=r.started_at, read_data=True,
                                              objects_checked=r.objects_checked, bytes_read=r.bytes_read,
                                              problems=r.problems)
                for p in r.problems:
                    job.warn(p)
            job.result = {"snapshot": snap.id, "ok": all(r.ok for r in reports),
                          "targets": {r.target: r.ok for r in reports}}
            return reports

    # -- destructive restores (the gate and the swap live in core.admin) ------------------

    def destructive_restore_available(self) -> tuple[bool, str]:
        """Whether restoring over a live database may be offered, and if not, why."""
        if not hasattr(self, "restore_over"):
            return False, ("disabled: it needs the MFA gate (core.security), which this build does not have; "
                           "restore into a new database and switch applications to it")
        return True, "needs an enrolled operator (role operator or admin) and a fresh one-time code"

    def live_database(self, db_name: str) -> str:
        """The PostgreSQL database a configured database's DSN points at (what a restore over it replaces)."""
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(self.config.database(db_name).dsn).get("dbname") or db_name)


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

