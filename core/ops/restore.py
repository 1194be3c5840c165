"""`backstop restore`: a snapshot into a new database, whole or some tables; `--force` over an existing one.

Every restore is measured and recorded in the catalog, successful or not,
as a 'restore' or a 'drill' (a test restore into a scratch database, what
the console's drill runs): its duration, its verdict, and the first target
it read from, which the planner uses to rotate drills across targets.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from core.context import EngineContext
from core.errors import PostgresError, RestoreRefused, UsageError
from core.jobs import Job, run_job
from core.postgres import logical
from core.postgres.copy_restore import copy_in
from core.postgres.database_entries import apply_database_entries
from core.postgres.names import Pattern, Relation, parse_pattern, parse_relation, show_relation
from core.postgres.parallel_restore import parallel_restore, restore_sections
from core.postgres.schema_archive import SchemaArchive, read_schema
from core.postgres.selection import Selection, select, tables_in
from core.postgres.swap import swap_in
from core.postgres.tools import find_bin_dir, server_major
from core.records import RESTORE_KINDS, SnapshotRecord
from core.repository import quarantine
from core.repository.manifest import SCHEMA_FILE, FileEntry
from core.repository.reader import StreamReader, check_complete
from core.repository.repo import Repository
from core.repository.sources import RECENT_S, ReadSources, TargetShare, summarise
from core.repository.tiers import FrozenCopies, packs_of, plan_reads
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard
from core.storage.health import HealthWindow


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    db: str
    into: str
    tables: list[str]
    bytes: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    # Foreign keys of restored tables to tables that were not restored (left out).
    left_out: list[str] = field(default_factory=list)
    # What each target served (stored bytes and objects read) and how it failed, in read order.
    sources: list[TargetShare] = field(default_factory=list)

    def read_summary(self) -> str:
        """``read 80% from offsite-eu, 20% from local1 after offsite-eu failed: <reason>``."""
        return summarise(self.sources)


@dataclass(frozen=True)
class OverwriteResult:
    """A restore over an existing database: what replaced what."""

    restore: RestoreResult
    replaced_by_restore: bool  # False: the database did not exist, it was simply created
    aside: str | None  # where the previous database now is


@dataclass(frozen=True)
class Scope:
    """What a restore brings back: everything, or tables named exactly, by pattern, or by schema."""

    tables: tuple[Relation, ...] = ()
    patterns: tuple[Pattern, ...] = ()
    schemas: tuple[str, ...] = ()

    @classmethod
    def parse(cls, tables: list[str] | None = None, patterns: list[str] | None = None,
              schemas: list[str] | None = None) -> Scope:
        """From the command line: `--table` (PostgreSQL quoting), `--pattern`, `--schema`."""
        return cls(tuple(parse_relation(t) for t in tables or ()), tuple(parse_pattern(p) for p in patterns or ()),
                   tuple(schemas or ()))

    @property
    def whole(self) -> bool:
        return not (self.tables or self.patterns or self.schemas)

    def resolve(self, known: list[Relation], snapshot: str) -> list[Relation]:
        """The snapshot's tables this scope names; refuses a name, pattern or schema that matches none."""
        out: list[Relation] = []
        missing = [show_relation(t) for t in self.tables if t not in known]
        out += [t for t in self.tables if t in known]
        for pat in self.patterns:
            hits = [r for r in known if pat.matches(r)]
            if not hits:
                missing.append(f"pattern {pat.text!r}")
            out += hits
        for schema in self.schemas:
            hits = [r for r in known if r[0] == schema]
            if not hits:
                missing.append(f"schema {schema!r}")
            out += hits
        if missing:
            shown = ", ".join(show_relation(r) for r in known[:10]) + (" …" if len(known) > 10 else "")
            raise RestoreRefused(f"{', '.join(missing)}: no such table in snapshot {snapshot}; it has: {shown} "
                                 "(quote names as PostgreSQL does: 'public.\"My Table\"')")
        return list(dict.fromkeys(out))


def recent_health(ctx: EngineContext) -> list[HealthWindow]:
    """The targets' call statistics of the last hour, from the catalog: what orders reads among equal priorities."""
    queries = ctx.catalog.open_queries()
    try:
        return queries.target_health_windows(time.time() - RECENT_S)
    finally:
        queries.close()


def _check_request(ctx: EngineContext, into: str, target: str | None, kind: str) -> None:
    """Refuse bad arguments before anything is opened or created."""
    if kind not in RESTORE_KINDS:
        raise UsageError(f"restore kind {kind!r}: expected one of {', '.join(RESTORE_KINDS)}")
    logical.ensure_new_database(into)
    if target is not None:
        ctx.config.target(target)  # a ConfigError naming the configured targets


async def restore(ctx: EngineContext, db_name: str, into: str, snapshot: str = "latest",
                  tables: list[str] | None = None, target: str | None = None,
                  only_target: bool = False, kind: str = "restore", patterns: list[str] | None = None,
                  schemas: list[str] | None = None) -> RestoreResult:
    """Restore a snapshot into a new database on the same server (whole, or some tables).

    ``target`` (from a restore plan) is read first and the others remain
    fallbacks; with ``only_target`` (`restore --target`) nothing else is read.
    ``kind`` is what the catalog records it as: 'restore', or 'drill' for a
    test restore.
    """
    dbc = ctx.config.database(db_name)
    scope = Scope.parse(tables, patterns, schemas)
    _check_request(ctx, into, target, kind)
    snap = _logical(await ctx.find_snapshot(snapshot, db_name, kind="logical"), db_name)
    asked = [*(tables or ()), *(patterns or ()), *(f"schema {s}" for s in schemas or ())]
    what = f"restore of {db_name} snapshot {snap.short_id} into {into}" + (f" ({', '.join(asked)})" if asked else "")
    run = _Run(ctx, dbc.dsn, dbc.bin_dir, into, snap, scope)
    async with run_job(ctx.bus, "restore", db_name, what) as job:
        run.job = job
        try:
            if await logical.database_exists(dbc.dsn, into):
                raise RestoreRefused(
                    f"database {into!r} already exists; restore into a new name with --into, or replace it "
                    "with --force (needs an enrolled operator and a one-time code; the old one is kept aside)")
            await run.prepare(target, only_target)
            await run.execute()
        except BaseException as exc:
            await run.abandon()
            ctx.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=run.shown,
                                    started_at=run.started, duration_s=time.monotonic() - run.t0, nbytes=run.fed,
                                    ok=False, error=str(exc), kind=kind, target=run.first_target)
            raise
        duration = time.monotonic() - run.t0
        await run.quarantine_findings()
        ctx.catalog.add_restore(job_id=job.id, snapshot_id=snap.id, db=db_name, into=into, tables=run.shown,
                                started_at=run.started, duration_s=duration, nbytes=run.fed, ok=True, error=None,
                                kind=kind, target=run.first_target)
        shares = run.reader.sources.report() if run.reader else []
        job.result = {"snapshot": snap.id, "into": into, "duration_s": round(duration, 3), "bytes": run.fed,
                      "sources": [s.to_json() for s in shares]}
        return RestoreResult(snap.id, db_name, into, run.shown, run.fed, duration, list(job.warnings), run.left_out,
                             shares)


def _logical(snap: SnapshotRecord, db_name: str) -> SnapshotRecord:
    """Refuse a physical snapshot: it is a whole cluster, restored as a data directory."""
    if snap.kind == "physical":
        raise RestoreRefused(f"snapshot {snap.short_id} is a physical snapshot (a base backup of the whole cluster); "
                             f"restore it with `backstop restore --db {db_name} --type physical --pgdata DIR "
                             f"--snapshot {snap.short_id}`")
    return snap


class _Run:
    """One restore's steps: open and plan (nothing created yet), then create and load, or clean up."""

    def __init__(self, ctx: EngineContext, dsn: str, bin_dir: Path | None, into: str, snap: SnapshotRecord,
                 scope: Scope) -> None:
        self.ctx, self.dsn, self.configured_bin_dir, self.into, self.snap, self.scope = (
            ctx, dsn, bin_dir, into, snap, scope)
        self.t0, self.started = time.monotonic(), time.time()
        self.job: Job | None = None
        self.repo: Repository | None = None
        self.reader: StreamReader | None = None
        self.created = False
        self.fed = 0
        self.shown: list[str] = []  # the tables restored, as typed (empty: the whole database)
        self.left_out: list[str] = []
        self.files: list[FileEntry] = []
        self.schema: SchemaArchive | None = None
        self.selection: Selection | None = None
        self.list_text: str | None = None  # format 1 table restores: pg_restore's -L list

    @property
    def first_target(self) -> str | None:
        """The first target the restore read from (the plan's target, then by priority, bad targets left out)."""
        if self.repo is None or self.reader is None or not self.repo.storages:
            return None
        return self.repo.storages[0].name

    async def prepare(self, target: str | None, only_target: bool) -> None:
        """Open the repository, read the manifest and the schema's TOC, choose what to restore."""
        job = self.job
        assert job is not None
        repo = self.repo = await self.ctx.open_repository(require_all=False, target=target if only_target else None)
        for name, msg in {**repo.unreachable, **repo.damaged}.items():
            job.warn(f"target '{name}' skipped: {msg}")
        # Best target first (the plan's, then by priority and health): manifest and index are read in this order too.
        sources = ReadSources.for_targets(repo.storages, self.ctx.config.targets, first=target,
                                          health=recent_health(self.ctx))
        repo.storages[:] = sources.storages
        job.phase("prepare")
        self.manifest = manifest = await repo.read_manifest(self.snap.id)
        # Packs in a class that must be thawed (FORMAT.md 12.6): a readable duplicate of a chunk wins, a
        # frozen-only one is refused below in one line, before anything is read.
        frozen = await FrozenCopies.scan(repo.storages)
        self.index = index = await repo.load_index(common=False,
                                                   avoid=await quarantine.load(repo) | frozen.packs())
        first = manifest.file(SCHEMA_FILE) if manifest.per_table else manifest.files[0]
        check_complete(first, index)  # names a damaged index object when it is the cause
        # Before the first read: everything a whole restore needs; a table restore's choice is checked again below.
        sources.frozen, _ = await plan_reads(repo.storages, frozen,
                                             packs_of(manifest.files if self.scope.whole else [first], index),
                                             self.snap.id)
        self.bin_dir = find_bin_dir(await server_major(self.dsn), self.configured_bin_dir)
        self.reader = reader = StreamReader(repo, index, self.ctx.pool, on_damage=job.warn, sources=sources)
        if manifest.per_table:
            await self._plan_per_table(first)
        else:
            await self._plan_single_stream(first)
        for f in self.files:
            check_complete(f, index)
        sources.frozen, notes = await plan_reads(repo.storages, frozen, packs_of(self.files, index), self.snap.id)
        for note in notes:
            job.warn(note)
        for name in index.damaged:
            job.warn(f"{name[:22]}… cannot be read from any target (this snapshot does not need it); "
                     "run `backstop repair index`")
        self.progress = _ProgressStreams(reader, sum(f.size for f in self.files), job)

    async def _plan_per_table(self, schema_file: FileEntry) -> None:
        assert self.reader is not None
        self.schema = schema = await read_schema(self.reader.stream(schema_file))
        tables: list[FileEntry] = self.manifest.table_files()
        self.files = [schema_file]
        if self.scope.whole:
            self.files += tables
            return
        wanted = self.scope.resolve(tables_in(schema.toc), self.snap.short_id)
        self.selection = sel = select(schema.toc, wanted)
        loaded = set(sel.tables)
        self.files += [f for f in tables if f.relation is not None and (f.relation[0], f.relation[1]) in loaded]
        self.shown = [show_relation(r) for r in sel.tables]
        self.left_out = sel.left_out
        for fk in sel.left_out:
            assert self.job is not None
            self.job.warn(f"foreign key {fk} is left out: the table it refers to is not restored")

    async def _plan_single_stream(self, dump: FileEntry) -> None:
        """Format 1 (one pg_dump stream): tables are chosen from pg_restore's list, as before."""
        assert self.reader is not None
        self.files = [dump]
        if self.scope.whole:
            return
        known = [(t.split(".", 1)[0], t.split(".", 1)[1]) for t in self.manifest.tables if "." in t]
        if known:
            wanted = self.scope.resolve(known, self.snap.short_id)
        elif self.scope.patterns or self.scope.schemas:
            raise RestoreRefused(f"snapshot {self.snap.short_id} records no table list: name tables exactly "
                                 "with --table")
        else:
            wanted = list(self.scope.tables)  # pg_restore's list below says which exist
        self.shown = [f"{s}.{t}" for s, t in wanted]
        self.list_text, missing = await logical.table_list_file(self.bin_dir, self.reader.stream(dump), self.shown)
        if missing:
            raise RestoreRefused(f"table(s) {', '.join(missing)} are not in snapshot {self.snap.short_id}")

    async def execute(self) -> None:
        """Create the database and load it."""
        job = self.job
        assert job is not None
        await logical.create_database(self.dsn, self.into)
        self.created = True
        job.phase("restore")
        into_dsn = logical.with_dbname(self.dsn, self.into)
        if self.schema is not None:
            await self._load_per_table(into_dsn)
            if self.scope.whole:
                await self._database_settings()
        elif self.list_text is None and self.ctx.config.restore_jobs > 1:
            dump = self.files[0]
            await parallel_restore(self.bin_dir, into_dsn, lambda: self.progress.stream(dump),
                                   self.ctx.config.restore_jobs, self.manifest.table_bytes, on_phase=job.phase)
        else:
            await logical.restore_stream(self.bin_dir, into_dsn, self.progress.stream(self.files[0]), self.list_text)
        self.fed = sum(f.size for f in self.files)

    async def _load_per_table(self, into_dsn: str) -> None:
        """Format 2: the schema archive's sections around the tables' own COPY streams, each read once."""
        schema = self.schema
        assert schema is not None and self.job is not None
        schema_file = self.files[0]

        def copy_job(f: FileEntry) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                assert f.relation is not None and f.columns is not None
                await copy_in(into_dsn, f.relation, f.columns, self.manifest.encoding, self.progress.stream(f))
            return run

        try:
            await restore_sections(self.bin_dir, into_dsn, schema, lambda: self.progress.stream(schema_file),
                                   self.ctx.config.restore_jobs, [copy_job(f) for f in self.files[1:]],
                                   entries=self.selection.entries if self.selection else None,
                                   on_phase=self.job.phase)
        except PostgresError as exc:
            if self.selection is None or exc.toc_entry is None:
                raise
            raise PostgresError(f"cannot create {self.selection.why(exc.toc_entry)}: {exc}; the new database "
                                "was dropped", toc_entry=exc.toc_entry) from None

    async def _database_settings(self) -> None:
        """The source database's own settings, comment and grants, re-applied to the new one."""
        assert self.schema is not None and self.job is not None
        for warning in await apply_database_entries(self.dsn, self.schema, self.into):
            self.job.warn(warning)

    async def abandon(self) -> None:
        """After a failure: drop what this restore created (only that), quarantine damage it met."""
        if self.created:
            await logical.drop_database(self.dsn, self.into)
        await self.quarantine_findings()

    async def quarantine_findings(self) -> None:
        """Copies found damaged while reading go into quarantine: the next backup stores fresh ones."""
        if self.repo is None or self.reader is None or not self.reader.findings:
            return
        held = await quarantine.add(self.repo, self.reader.findings, "restore")
        assert self.job is not None
        self.job.warn(f"{len(held)} damaged pack(s) quarantined: the next backup stores fresh copies of their chunks")


class _ProgressStreams:
    """Opens stored streams for restore jobs; reports progress over all of them (the furthest read of each)."""

    def __init__(self, reader: StreamReader, total: int, job: Job) -> None:
        self.reader, self.total, self.job = reader, total, job
        self._best: dict[str, int] = {}
        self._last = 0.0

    def stream(self, entry: FileEntry) -> AsyncIterator[bytes]:
        return self._stream(entry)

    async def _stream(self, entry: FileEntry) -> AsyncIterator[bytes]:
        done = 0
        async for piece in self.reader.stream(entry):
            done += len(piece)
            # Parallel jobs may read a stream several times: count each stream's furthest point once.
            if done > self._best.get(entry.name, 0):
                self._best[entry.name] = done
                now = time.monotonic()
                if now - self._last > 0.2:
                    self._last = now
                    self.job.progress(sum(self._best.values()), self.total)
            yield piece


def _side_name(base: str, suffix: str) -> str:
    """``base + suffix`` within PostgreSQL's 63-byte name limit (the base is shortened)."""
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode(errors="ignore")
    return cut + suffix


async def restore_over(ctx: EngineContext, db_name: str, into: str, snapshot: str = "latest",
                       who: Identity | None = None, target: str | None = None,
                       approved_by: str | None = None, audited_elsewhere: bool = False) -> OverwriteResult:
    """Restore a snapshot in place of database ``into``, keeping the old one aside.

    ``approved_by``: the code was checked elsewhere (a fleet's control plane, which audited it); recorded
    as the reason this host allowed it. ``audited_elsewhere`` (an agent running the control plane's job):
    the control plane's audit log is the only one, so this host opens no gate or audit log of its own.

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
    snap = _logical(await ctx.find_snapshot(snapshot, db_name, kind="logical"), db_name)
    if audited_elsewhere:
        if not approved_by:
            raise RestoreRefused(f"a restore over database {into} needs the control plane's approval")
        return await _swap_restore(ctx, dbc.dsn, db_name, into, snap.id, target, {})
    subject = f"{db_name} snapshot {snap.short_id} over database {into}"
    async with Guard(ctx).action(who, Action.RESTORE_OVERWRITE, subject, require_all=False,
                                 approved_by=approved_by) as acting:
        acting.failure_detail["note"] = f"database {into} was left as it was"
        return await _swap_restore(ctx, dbc.dsn, db_name, into, snap.id, target, acting.detail)


async def _swap_restore(ctx: EngineContext, dsn: str, db_name: str, into: str, sid: str, target: str | None,
                        detail: dict[str, object]) -> OverwriteResult:
    """Restore into a temporary database, then swap it in for ``into`` (kept aside); ``detail`` gets the figures."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    temp, aside = _side_name(into, f"__restoring_{stamp}"), _side_name(into, f"__replaced_{stamp}")
    res = await restore(ctx, db_name, temp, sid, target=target)
    try:
        await swap_in(dsn, live=into, new=temp, aside=aside)
    except BaseException:
        await logical.drop_database(dsn, temp)
        raise
    detail.update(previous_kept_as=aside, bytes=res.bytes, duration_s=round(res.duration_s, 3))
    return OverwriteResult(replace(res, into=into), True, aside)
