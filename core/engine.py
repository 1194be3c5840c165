"""The engine: the one async API the CLI and the TUI call, a facade over core/ops/.

It builds one :class:`~core.context.EngineContext` (config, catalog, event
bus, thread pool, targets) and hands it to the operation each method names;
the operations hold the logic, the guard (core/security/guard.py) every
gated action's authorisation and audit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.catalog.base import Catalog
from core.catalog.open import open_catalog
from core.config import BackstopConfig
from core.context import EngineContext
from core.drills.model import DrillReport
from core.drills.runner import DrillRequest, run_drill
from core.drills.seal import DrillVerification
from core.errors import CatalogError, UsageError

if TYPE_CHECKING:
    from core.fleet.queue import AgentRow, ControlPlane, FleetJob
    from core.fleet.restore_dispatch import RestoreOrder
from core.events import EventBus
from core.insights.digest import Insights, build_insights
from core.insights.overview import Dashboard, build_dashboard, build_trend_series
from core.insights.targets import TargetHealth, summarise
from core.insights.trends import Trends
from core.ops import (
    archive,
    audit,
    backup,
    check,
    coverage,
    drill_reports,
    export,
    forget,
    init,
    keys,
    locks,
    operators,
    physical_restore,
    planning,
    prune,
    rebuild,
    repair,
    restore,
    retention,
    settings,
    sync,
    table_at_moment,
    verify,
    wal,
)
from core.ops.archive import ArchiveReport, ThawReport
from core.ops.audit import AuditVerification
from core.ops.check import CheckResult
from core.ops.coverage import RecoveryPointAge, WalCoverage
from core.ops.export import ExportResult
from core.ops.init import InitResult
from core.ops.keys import KeyRow, RotationResult
from core.ops.operators import Enrolment
from core.ops.physical_restore import PhysicalRestoreRequest, PhysicalRestoreResult
from core.ops.rebuild import RebuildResult
from core.ops.repair import RepairReport
from core.ops.restore import OverwriteResult, RestoreResult
from core.ops.retention import RetentionReport
from core.ops.sync import SyncReport
from core.ops.wal import WalStatus
from core.planner import RestorePlan, RestoreRequest, TargetState
from core.postgres.recovery import RecoveryTarget, make_target
from core.queries import Queries
from core.records import BackupRecord, SnapshotRecord
from core.repository.gc import PruneReport
from core.repository.reencrypt import ReencryptReport
from core.repository.repair_index import IndexRepairReport
from core.repository.repo import Repository
from core.repository.verify import CopyReport
from core.schedule.overview import ScheduleStatus, schedule_overview
from core.security.audit import AuditEntry
from core.security.gate import Action, Identity
from core.security.operators import Operator
from core.settings import overview as settings_overview
from core.settings.effective import EffectiveSettings
from core.settings.overview import SettingsOverview
from core.settings.sections import SectionChange
from core.storage.base import Storage
from core.wal.spool import Spool

# Results the front ends import from here (the console's restore screen among them).
__all__ = ["AuditVerification", "CheckResult", "Engine", "Enrolment", "ExportResult", "InitResult", "KeyRow",
           "OverwriteResult", "PhysicalRestoreRequest", "PhysicalRestoreResult", "RebuildResult",
           "RecoveryPointAge", "RecoveryTarget", "RestoreResult", "RotationResult", "WalCoverage", "make_target"]


class Engine:
    """Backup, restore, verification and administration for the databases in one config."""

    def __init__(self, config: BackstopConfig, catalog: Catalog | None = None, bus: EventBus | None = None,
                 storages: list[Storage] | None = None, config_path: Path | None = None,
                 config_source: tuple[object, Path] | None = None) -> None:
        """``storages`` replaces the targets built from the config (tests wrap them in fault doubles);
        ``config_path`` is the file the config came from (a physical restore's restore_command reads it);
        ``config_source`` the file's parsed YAML and path, from which :meth:`apply_settings` takes the
        guarded sections as approved."""
        self.config_path = config_path
        self.config_source = config_source
        self.settings: EffectiveSettings | None = None
        catalog = catalog or open_catalog(config.catalog)
        # A job whose process died (SIGKILL, power loss) must not show as running forever.
        catalog.mark_abandoned_jobs()
        self.ctx = EngineContext(config, catalog, bus or EventBus(),
                                 ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="backstop-seal"),
                                 storages)
        # Undone first on close: a writer thread may still report progress after an interruption.
        self._unsubscribe = self.bus.subscribe(catalog.record_event)
        self._tables = planning.TableLists(self.ctx)
        self._queries: Queries | None = None
        self._queries_lock = threading.Lock()

    @property
    def config(self) -> BackstopConfig:
        return self.ctx.config

    @property
    def catalog(self) -> Catalog:
        return self.ctx.catalog

    @property
    def bus(self) -> EventBus:
        return self.ctx.bus

    async def close(self) -> None:
        """Release threads, connections and the catalog."""
        self._unsubscribe()
        await self.ctx.close()
        if self._queries is not None:  # opened only by the console
            self._queries.close()
        self.catalog.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def apply_settings(self, verify: bool = False, own_storages: bool = False) -> EffectiveSettings | None:
        """Use the schedules, retention and encryption settings as approved (core/settings); None without a source.

        ``own_storages`` reads the targets through storages opened and closed
        here (a front end whose event loop is not this one's).
        """
        if self.config_source is None:
            return None
        from core.settings.effective import resolve
        from core.storage.factory import make_storages

        data, path = self.config_source
        stores = make_storages(self.config.targets) if own_storages else self.ctx.storages()
        try:
            eff = await resolve(self.catalog, stores, data, path, verify=verify)
        finally:
            if own_storages:
                await asyncio.gather(*(s.close() for s in stores), return_exceptions=True)
        self.ctx.config = eff.config
        self.settings = eff
        return eff

    def storages(self, target: str | None = None) -> list[Storage]:
        """Storage objects for the configured targets (or one of them)."""
        return self.ctx.storages(target)

    async def open_repository(self, require_all: bool = True, target: str | None = None) -> Repository:
        """Open the repository with the configured passphrase."""
        return await self.ctx.open_repository(require_all, target)

    # -- repository, backups, restores -----------------------------------------------

    async def init(self) -> InitResult:
        """Create the repository on every target (idempotent; repairs a target's identity objects)."""
        return await init.init(self.ctx)

    async def backup(self, db_name: str, kind: str = "logical") -> BackupRecord:
        """Take a full snapshot of one database onto every target: logical, or physical (its whole cluster)."""
        return await backup.backup(self.ctx, db_name, kind)

    def snapshots(self, db: str | None = None) -> list[SnapshotRecord]:
        """Committed snapshots from the catalog, oldest first (a database's include its cluster's physical ones)."""
        if db is not None:
            self.config.database(db)
        return self.catalog.snapshots(db)

    async def refresh_snapshot_status(self, rows: list[SnapshotRecord]) -> tuple[list[SnapshotRecord], list[str]]:
        """Physical snapshots listed as waiting whose WAL is archived by now become restorable; (rows, warnings)."""
        return await backup.refresh_status(self.ctx, rows)

    async def find_snapshot(self, ref: str, db: str | None = None) -> SnapshotRecord:
        """A snapshot by id, unique prefix or 'latest'; a lost catalog is named as such."""
        return await self.ctx.find_snapshot(ref, db)

    async def restore(self, db_name: str, into: str, snapshot: str = "latest", tables: list[str] | None = None,
                      target: str | None = None, only_target: bool = False, kind: str = "restore",
                      patterns: list[str] | None = None, schemas: list[str] | None = None) -> RestoreResult:
        """Restore a snapshot into a new database on the same server (whole, or tables named, matched or by schema).

        ``kind`` 'drill' records it as a drill (a test restore) rather than a restore.
        """
        return await restore.restore(self.ctx, db_name, into, snapshot, tables, target, only_target, kind,
                                     patterns, schemas)

    async def restore_over(self, db_name: str, into: str, snapshot: str = "latest", who: Identity | None = None,
                           target: str | None = None, approved_by: str | None = None,
                           audited_elsewhere: bool = False) -> OverwriteResult:
        """Restore a snapshot in place of database ``into`` (gated, or approved by a fleet's control plane),
        keeping the old one aside."""
        return await restore.restore_over(self.ctx, db_name, into, snapshot, who, target, approved_by,
                                          audited_elsewhere)

    async def dispatch_restore(self, order: RestoreOrder, who: Identity | None = None) -> FleetJob:
        """Queue a restore for the agent beside ``order.db`` (the code checked here when it overwrites)."""
        from core.fleet.restore_dispatch import dispatch_restore

        return await dispatch_restore(self.ctx, order, who)

    async def wait_for_fleet_job(self, job_id: int, on_progress: Callable[[FleetJob], None] | None = None) -> FleetJob:
        """Wait for a fleet job to end, reporting its progress; a failed one raises."""
        from core.fleet.restore_dispatch import wait_for_job

        return await wait_for_job(self.ctx, job_id, on_progress=on_progress)

    async def restore_physical(self, request: PhysicalRestoreRequest) -> PhysicalRestoreResult:
        """Write a physical snapshot into a new data directory set up to recover to a point in time (and start it)."""
        return await physical_restore.restore_physical(self.ctx, request)

    async def restore_table_at_moment(
            self, request: table_at_moment.TableAtMomentRequest) -> table_at_moment.TableAtMomentResult:
        """Tables as they were at a moment (physical snapshot + WAL in a scratch cluster) into a new database."""
        return await table_at_moment.restore_table_at_moment(self.ctx, request)

    async def drill(self, request: DrillRequest) -> DrillReport:
        """Run a restore drill (a job of kind 'drill'): restore into scratch space, check, measure, clean up, record."""
        if request.config_path is None:
            path = self.config_path or (self.config_source[1] if self.config_source else None)
            request = replace(request, config_path=path)
        return await run_drill(self.ctx, request)

    async def export(self, db_name: str, path: str, fmt: str, snapshot: str = "latest") -> ExportResult:
        """Write a snapshot as a pg_dump archive (custom, directory) or SQL script (plain) to a new path."""
        return await export.export(self.ctx, db_name, path, fmt, snapshot)

    async def check(self, read_data: bool = False, target: str | None = None) -> CheckResult:
        """Verify the repository on every target (or one), and the catalog against it."""
        return await check.check(self.ctx, read_data, target)

    async def verify_snapshot(self, snapshot: str) -> list[CopyReport]:
        """Read one snapshot back from every target holding it."""
        return await verify.verify_snapshot(self.ctx, snapshot)

    async def rebuild_catalog(self) -> RebuildResult:
        """Make the catalog equal to the repository: snapshots, where each is stored, audit log, operators."""
        return await rebuild.rebuild_catalog(self.ctx)

    async def repair_index(self, dry_run: bool = False) -> IndexRepairReport:
        """Rebuild what damaged or missing index objects listed from the pack headers."""
        return await repair.repair_index(self.ctx, dry_run)

    async def repair(self, target: str | None = None, dry_run: bool = False) -> RepairReport:
        """Rewrite every damaged or missing copy on every target (or ``target``) from a copy that verifies."""
        return await repair.repair(self.ctx, target, dry_run)

    async def archive(self, dry_run: bool = False, now: float | None = None) -> ArchiveReport:
        """Move packs only old snapshots use to each target's archive class, making sure they are there."""
        return await archive.archive(self.ctx, dry_run, now)

    async def thaw(self, snapshot: str, tier: str = "Standard", target: str | None = None,
                   days: int = 7) -> ThawReport:
        """Ask S3 to thaw the archived packs a restore of ``snapshot`` needs (restore_object)."""
        return await archive.thaw(self.ctx, snapshot, tier, target, days)

    async def sync(self, target: str | None = None, dry_run: bool = False) -> SyncReport:
        """Copy to every target (or ``target``) each repository object it lacks, from a copy that verifies."""
        return await sync.sync(self.ctx, target, dry_run)

    async def wal_status(self, spool: Spool | None = None, pgdata: Path | None = None) -> WalStatus:
        """The WAL archive per timeline, its gaps and freshness, the push backlog and push latencies."""
        return await wal.status(self.ctx, spool, pgdata)

    # -- drill reports ----------------------------------------------------------------------

    async def drill_report(self, ref: str | None = None, quarter: str | None = None, db: str | None = None,
                           fmt: str = "md") -> str:
        """One drill's report (id or unique prefix) or a quarter's drills (``2026Q4``), as md, html or json text."""
        return await drill_reports.report_document(self.ctx, ref, quarter, db, fmt)

    async def drill_verify(self, ref: str) -> DrillVerification:
        """Check a drill report's MAC and its sealed copy on every target (from the sealed copy alone without a row)."""
        return await drill_reports.verify(self.ctx, ref)

    async def drill_publish(self, report: DrillReport) -> tuple[str, str]:
        """Record a finished drill's report, key it with a MAC and seal it into the repository; (mac, object)."""
        return await drill_reports.publish(self.ctx, report)

    # -- gated administration -------------------------------------------------------------

    async def forget_snapshots(self, refs: list[str], who: Identity | None = None) -> list[str]:
        """Delete snapshots from every target and the catalog (gated); returns their ids."""
        return await forget.forget_snapshots(self.ctx, refs, who)

    async def apply_retention(self, db: str, who: Identity | None = None, dry_run: bool = False,
                              now: datetime | None = None) -> RetentionReport:
        """Forget what ``db``'s retention rules remove and trim the WAL no retained snapshot needs (gated)."""
        return await retention.apply_retention(self.ctx, db, who, dry_run, now)

    async def prune_repository(self, who: Identity | None = None, grace_s: float | None = None,
                               dry_run: bool = False, append_only_override: str | None = None) -> PruneReport:
        """Delete packs no snapshot needs and leftovers, older than the grace period (gated unless a dry run)."""
        return await prune.prune_repository(self.ctx, who, grace_s, dry_run,
                                            append_only_override=append_only_override)

    async def list_locks(self) -> list[dict[str, object]]:
        return await locks.list_locks(self.ctx)

    async def unlock(self, names: list[str], who: Identity | None = None) -> list[str]:
        """Remove repository locks left by crashed processes (gated)."""
        return await locks.unlock(self.ctx, names, who)

    def list_operators(self) -> list[Operator]:
        return operators.list_operators(self.ctx)

    async def add_operator(self, name: str, role: str, who: Identity | None = None) -> Enrolment:
        return await operators.add_operator(self.ctx, name, role, who)

    async def set_operator_role(self, name: str, role: str, who: Identity | None = None) -> Operator:
        return await operators.set_operator_role(self.ctx, name, role, who)

    async def remove_operator(self, name: str, who: Identity | None = None) -> None:
        await operators.remove_operator(self.ctx, name, who)

    async def recover_operator(self, name: str, passphrase: bytes, who: Identity | None = None) -> Enrolment:
        return await operators.recover_operator(self.ctx, name, passphrase, who)

    def audit_entries(self, since: float | None = None, limit: int | None = None) -> list[AuditEntry]:
        return audit.audit_entries(self.ctx, since, limit)

    async def check_audit(self, who: Identity | None = None) -> AuditVerification:
        return await audit.check_audit(self.ctx, who)

    async def key_list(self, usage: bool = True) -> list[KeyRow]:
        return await keys.key_list(self.ctx, usage)

    async def rotate_keys(self, who: Identity | None = None, kek: bool = True, dek: bool = True,
                          if_due: bool = False) -> RotationResult:
        return await keys.rotate_keys(self.ctx, who, kek, dek, if_due)

    async def reencrypt_keys(self, who: Identity | None = None, versions: set[int] | None = None) -> ReencryptReport:
        return await keys.reencrypt_keys(self.ctx, who, versions)

    async def retire_key(self, version: int, who: Identity | None = None,
                         reencrypt: bool = False) -> ReencryptReport | None:
        return await keys.retire_key(self.ctx, version, who, reencrypt)

    async def change_settings(self, action: Action, subject: str, apply: Callable[[], Awaitable[None] | None],
                              who: Identity | None = None) -> None:
        """Gate and audit a change to schedules, retention or encryption settings made through backstop."""
        await settings.change_settings(self.ctx, action, subject, apply, who)

    async def approve_settings(self, who: Identity | None = None) -> settings.Approval:
        """Put the config file's schedules/retention/encryption sections in force (gated: role and a fresh code)."""
        if self.config_source is None:
            raise UsageError("approving settings needs the config file's text; build the Engine with config_source")
        approval = await settings.approve_settings(self.ctx, *self.config_source, who)
        if approval.changes:
            await self.apply_settings()
        return approval

    def settings_removals(self, changes: list[SectionChange]) -> dict[str, list[str]]:
        """The snapshots each pending retention change's rules would remove now (database -> ids)."""
        return settings.retention_removals(self.ctx, changes)

    def schedule_overview(self, now: datetime | None = None) -> list[ScheduleStatus]:
        """Each schedule's next run and newest recorded slot (blocking catalog reads: call it from a thread)."""
        return schedule_overview(self.config.schedules, self.catalog, now or datetime.now(UTC))

    def metrics_text(self) -> bytes:
        """One scrape of the Prometheus metrics as exposition text (blocking catalog reads: call it from a thread)."""
        from core.metrics.collector import BackstopCollector, exposition, spool_newest_push

        collector = BackstopCollector(lambda: (self.catalog, self.config),
                                      wal_pushed_at=spool_newest_push(self.config_path or (
                                          self.config_source[1] if self.config_source else None)))
        return exposition(collector)

    def settings_overview(self, now: datetime | None = None) -> SettingsOverview:
        """Schedules, retention and its effect now, targets and pending changes (blocking: call it from a thread)."""
        return settings_overview.settings_overview(self.ctx, self.settings, now or datetime.now(UTC))

    # -- the console's read side ------------------------------------------------------------

    def _control_plane(self) -> ControlPlane:
        from core.fleet.routing import control_plane

        return control_plane(self.ctx)

    def agents(self) -> list[AgentRow]:
        """The fleet's agents with their last heartbeat (PostgreSQL catalog only; blocking)."""
        return self._control_plane().agents()

    def fleet_privilege_problems(self) -> list[str]:
        """What agents' roles may still do beyond their functions (advisory locks), each with its fix (blocking)."""
        return self._control_plane().privilege_problems()

    async def register_agent(self, name: str, role: str, databases: list[str], *, create_role: bool = False,
                             who: Identity | None = None) -> None:
        """Let a login role act as fleet agent ``name`` for ``databases`` (admin, with a code)."""
        from core.ops.fleet_admin import register_agent

        await register_agent(self.ctx, name, role, databases, create_role=create_role, who=who)

    def agent_for(self, db: str) -> AgentRow | None:
        """The live agent registered for ``db`` (PostgreSQL catalog; None on SQLite or when none is alive).

        Blocking; a control plane that cannot be read raises CatalogError.
        """
        if not self.config.catalog.is_postgres:
            return None
        import psycopg

        from core.fleet.routing import pick_agent
        from core.postgres.tools import first_line

        try:
            agents = self.agents()
        except psycopg.Error as exc:
            raise CatalogError(f"the control plane's agents cannot be read: {first_line(exc)}") from None
        return pick_agent(agents, db, time.time())

    def fleet_jobs(self, limit: int = 200) -> list[FleetJob]:
        """The fleet's newest jobs with their agent, state, attempt and last reported progress (blocking)."""
        return self._control_plane().jobs(limit)

    @property
    def queries(self) -> Queries:
        """Read-only catalog queries with their own connections (blocking: call them from worker threads)."""
        with self._queries_lock:  # the dashboard's prefetch thread and the console may ask at once
            if self._queries is None:
                self._queries = Queries(self.catalog.open_queries())
            return self._queries

    @property
    def reader(self) -> Queries:
        """The former name of :attr:`queries`."""
        return self.queries

    def dashboard(self, now: float | None = None) -> Dashboard:
        """KPIs, alerts and running jobs (blocking catalog reads: call it from a thread)."""
        pending = [c.section for c in self.settings.pending] if self.settings else []
        return build_dashboard(self.queries, self.config, time.time() if now is None else now,
                               pending_settings=pending)

    def prefetch_dashboard(self) -> Future[Dashboard]:
        """Start computing the dashboard in a thread (a front end's start-up overlaps it)."""
        fut: Future[Dashboard] = Future()

        def run() -> None:
            try:
                fut.set_result(self.dashboard())
            except BaseException as exc:  # noqa: BLE001  (handed to whoever waits for the result)
                fut.set_exception(exc)

        threading.Thread(target=run, name="backstop-dashboard", daemon=True).start()
        return fut

    def trends(self, now: float | None = None, days: int = 30) -> Trends:
        """Restore times, backup durations, stored sizes and failures (blocking: call it from a thread)."""
        return build_trend_series(self.queries, self.config, time.time() if now is None else now, days=days)

    def insights(self, now: float | None = None, days: int = 30, db: str | None = None) -> Insights:
        """Failure patterns, retention cost in bytes and recovery-time forecasts (blocking: call it from a thread)."""
        return build_insights(self.queries, self.config, time.time() if now is None else now, days=days, db=db)

    def target_health(self, now: float | None = None, window_s: float = 86_400.0) -> list[TargetHealth]:
        """Each configured target's latency, errors, bytes and newest successes, as recorded by every command
        (blocking catalog reads: call it from a thread)."""
        now = time.time() if now is None else now
        q = self.queries
        return summarise(self.config, q.target_health_windows(now - window_s), q.target_health_states(), now,
                         window_s)

    async def target_states(self, timeout_s: float = 5.0) -> list[TargetState]:
        """Each configured target and whether it answers right now."""
        return await planning.target_states(self.ctx, timeout_s)

    async def snapshot_tables(self, snapshot_id: str) -> list[str]:
        """The tables a snapshot holds (from its manifest; cached, manifests never change)."""
        return await self._tables.get(snapshot_id)

    async def plan_restore(self, request: RestoreRequest, *, now: datetime | None = None,
                           targets: list[TargetState] | None = None) -> RestorePlan:
        """Gather the facts and ask the planner for a recovery plan."""
        return await planning.plan_restore(self.ctx, self.queries, self._tables, request, now=now, targets=targets)

    async def wal_coverage(self) -> WalCoverage:
        """The archived WAL per timeline (range, archive times, gaps) for the console's catalog."""
        return await coverage.coverage(self.ctx)

    async def recovery_point(self, now: float | None = None) -> RecoveryPointAge:
        """How old the newest recoverable moment is: the newest archived WAL segment, else the newest snapshot."""
        latest = await asyncio.to_thread(self.queries.latest_snapshot_per_db)
        newest = max(latest.values(), key=lambda iso: datetime.fromisoformat(iso).timestamp(), default=None)
        return await coverage.recovery_point(self.ctx, newest, now)

    def destructive_restore_available(self) -> tuple[bool, str]:
        """Whether restoring over a live database may be offered, and if not, why."""
        return True, "needs an enrolled operator (role operator or admin) and a fresh one-time code"

    def live_database(self, db_name: str) -> str:
        """The PostgreSQL database a configured database's DSN points at (what a restore over it replaces)."""
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(self.config.database(db_name).dsn).get("dbname") or db_name)
