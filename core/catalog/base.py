"""The catalog interface: what the engine, the security layer and the console may ask of a catalog.

The catalog is an index (the repository stays the source of truth): the
snapshots and where each is stored, jobs and their events, verification
results, measured restores and drills, and the security tables (operators,
the audit log, a few security settings). Everything outside ``core/catalog``
reaches it through these protocols only, and no SQL exists anywhere else,
so the embedded SQLite implementation (``core/catalog/sqlite.py``) and a
PostgreSQL one for a fleet (DESIGN.md 4) are interchangeable.

Two sides:

- :class:`Catalog` is the writer's connection: every write, the reads the
  CLI and the operations need, the schema checks, and the transactions that
  must be atomic across processes (appending to the audit chain; a code
  check updating an operator's attempt state). Those transactions are
  methods or context managers here, not BEGIN/COMMIT in the callers, so a
  PostgreSQL implementation can take ``SELECT ... FOR UPDATE`` (SQLite takes
  ``BEGIN IMMEDIATE``).
- :class:`CatalogQueries` is a read-only view with its own connections,
  safe to use from several threads at once: the console's lists and the
  insights' time-window queries. ``Catalog.open_queries()`` makes one.

Both offer :meth:`Catalog.changes`, a change feed: SQLite's
``PRAGMA data_version`` today, LISTEN/NOTIFY on PostgreSQL.

Large listings are addressed by *row keys*: stable integers naming rows
(SQLite's rowid; an identity column on PostgreSQL). A listing is first
resolved to its ordered keys, then pages are fetched by key, so rows do
not shift under a scrolling operator when new ones arrive.

Every method may block on I/O: front ends call them from worker threads.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from core.drills.model import DrillReport
from core.events import JobEvent
from core.records import (
    AuditEntry,
    AuditTable,
    DatabaseSummary,
    DurationHistogram,
    JobFailure,
    JobRecord,
    OperatorRow,
    RestoreRecord,
    ScheduleRun,
    ScheduleRunStats,
    SnapshotRecord,
    SnapshotRow,
    TargetCheck,
    VerificationRecord,
)
from core.storage.health import HealthWindow, TargetHealthState, TargetMarks

JobEventRow = tuple[int, float, str, dict[str, object]]  # (event id, time, type, payload)
SeriesRow = tuple[str, str, str, str, int, int]  # (db, kind, started_at, finished_at, size_bytes, stored_bytes)


@runtime_checkable
class ChangeFeed(Protocol):
    """A subscription to the catalog's commits, from any process."""

    def poll(self) -> bool:
        """True when anything was committed since the previous poll (by anyone; the first poll only starts
        watching and returns False). Cheap, but I/O: call it from a thread."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a commit (True when one came; False at once once closed).

        SQLite looks again after the timeout; PostgreSQL is woken by NOTIFY as the commit happens.
        Call it from a thread; :meth:`close` from another thread ends it."""
        ...

    def close(self) -> None:
        """Stop watching and release the feed's connection."""
        ...


@runtime_checkable
class OperatorSlot(Protocol):
    """One operator's row, locked for a read-modify-write (see :meth:`Catalog.operator_update`)."""

    @property
    def row(self) -> OperatorRow | None:
        """The row as it is now (None: no operator of that name)."""
        ...

    def put(self, row: OperatorRow) -> None:
        """Write the row (insert or replace) in the same transaction; ``row.name`` must be the locked name."""
        ...

    def delete(self) -> None:
        """Delete the row in the same transaction."""
        ...


@runtime_checkable
class CatalogQueries(Protocol):
    """Read-only queries for the console and the insights; safe from several threads at once."""

    def close(self) -> None:
        """Release every connection this view opened (in any thread)."""
        ...

    def changes(self) -> ChangeFeed:
        """A new change feed (see :class:`ChangeFeed`)."""
        ...

    # -- databases and snapshots --

    def databases(self) -> list[DatabaseSummary]:
        """Each database with its snapshot count and newest snapshot time, by name."""
        ...

    def snapshot_rowids(self, db: str | None = None, words: Sequence[str] = ()) -> array:
        """Row keys of the snapshots (of ``db``; each word a case-insensitive substring of id, db, kind,
        finished_at or targets), newest first."""
        ...

    def snapshot_total(self, db: str | None = None, words: Sequence[str] = ()) -> int:
        """How many snapshots match (as :meth:`snapshot_rowids`)."""
        ...

    def snapshot_page(self, start: int, stop: int, total: int, db: str | None = None,
                      words: Sequence[str] = ()) -> list[int]:
        """Row keys of positions [start, stop) of the newest-first listing of ``total`` matches, without
        listing everything (the last page costs what the first one does)."""
        ...

    def snapshot_rows(self, rowids: Sequence[int]) -> list[SnapshotRow]:
        """Snapshots by row key, in the order given, with their latest check per target (rows deleted since
        are left out)."""
        ...

    def latest_snapshots(self, db: str, limit: int = 200) -> list[SnapshotRow]:
        """The newest snapshots of one database, newest first."""
        ...

    def snapshot_by_id(self, sid: str) -> SnapshotRow | None:
        """One snapshot by full id or unique prefix (at least 4 characters); None when none or ambiguous."""
        ...

    def latest_checks(self, snapshot_ids: Iterable[str]) -> dict[str, tuple[TargetCheck, ...]]:
        """The newest verification per (snapshot, target) of the given snapshots, targets sorted."""
        ...

    def snapshot_count(self) -> int:
        """How many snapshots the catalog holds."""
        ...

    def snapshots_lacking(self, targets: Sequence[str]) -> dict[str, int]:
        """Per target, how many snapshots it lacks (a quorum write left it out); targets lacking none are omitted."""
        ...

    def snapshots_verified_since(self, since: float) -> int:
        """Snapshots still in the catalog with a passed verification finished at or after ``since``."""
        ...

    def never_verified(self, since_iso: str, older_than_iso: str,
                       limit: int = 5) -> tuple[int, list[tuple[str, str, str]]]:
        """Snapshots finished in [since, older_than) with no verification at all: (count, newest
        ``limit`` as (id, db, finished_at))."""
        ...

    def snapshot_series(self, since_iso: str) -> list[SeriesRow]:
        """(db, kind, started_at, finished_at, size_bytes, stored_bytes) of snapshots finished since a time,
        oldest first."""
        ...

    def latest_snapshot_per_db(self) -> dict[str, str]:
        """Each database's newest snapshot time (ISO 8601)."""
        ...

    # -- jobs --

    def jobs(self, limit: int = 200, words: Sequence[str] = ()) -> list[JobRecord]:
        """Running jobs first, then the most recent ones, newest first (each word a case-insensitive
        substring of id, kind, db, state or description)."""
        ...

    def running_jobs(self) -> list[JobRecord]:
        """Jobs in state 'running' (from any process), oldest first."""
        ...

    def job(self, job_id: str) -> JobRecord | None:
        """One job by id."""
        ...

    def job_events(self, job_id: str, after_id: int = 0, limit: int = 1000) -> list[JobEventRow]:
        """A job's event log (id, time, type, payload) after an event id, oldest first."""
        ...

    def finished_jobs_since(self, since: float, kind: str | None = None) -> list[JobRecord]:
        """Jobs started since ``since`` (epoch seconds), oldest first, optionally of one kind."""
        ...

    def failed_jobs_since(self, since: float) -> list[JobRecord]:
        """Failed or abandoned jobs started since ``since``, oldest first."""
        ...

    def backup_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        """Finished backup jobs started in the last ``days`` days: whole days ago -> (succeeded, failed)."""
        ...

    def job_failures_since(self, since: float) -> list[JobFailure]:
        """Failed or abandoned jobs started since ``since`` with their error class and target, oldest first."""
        ...

    def drill_reports(self, db: str | None = None, since: float = 0.0, limit: int = 1000) -> list[DrillReport]:
        """Drill reports started since ``since`` (of one database), newest first (as :meth:`Catalog.drills`)."""
        ...

    # -- verifications and restores --

    def verification_rowids(self, words: Sequence[str] = ()) -> array:
        """Row keys of the matching verifications, newest first."""
        ...

    def verification_rows(self, ids: Sequence[int]) -> list[VerificationRecord]:
        """Verifications by row key, in the order given."""
        ...

    def verification_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        """Verifications of the last ``days`` days: whole days ago -> (passed, failed), counted by the
        database (a handful of rows cross, whatever the catalog's size)."""
        ...

    def verifications_since(self, since: float) -> list[VerificationRecord]:
        """Verifications finished since ``since``, oldest first."""
        ...

    def latest_target_checks(self) -> dict[str, VerificationRecord]:
        """Each target's newest repository-wide verification (no snapshot)."""
        ...

    def damaged_copies(self, limit: int = 20) -> list[VerificationRecord]:
        """Snapshot copies whose newest verification on their target failed, newest first."""
        ...

    def target_health_windows(self, since: float) -> list[HealthWindow]:
        """Per-target call statistics (core/storage/metered.py) of the windows ended at or after ``since``."""
        ...

    def target_health_states(self) -> dict[str, TargetHealthState]:
        """Each target's newest successful write and read, newest error and bytes stored, by target."""
        ...

    def restores(self, since: float = 0.0, db: str | None = None, limit: int = 1000,
                 kind: str | None = None) -> list[RestoreRecord]:
        """Measured restores and drills started since ``since`` (of ``db``; of ``kind`` 'restore' or
        'drill'), the newest ``limit``, oldest first."""
        ...

    # -- the audit log, for display (checking it is core/security's job) --

    def audit_table(self) -> AuditTable | None:
        """The audit log's name and columns as stored; None when the catalog has none."""
        ...

    def audit_rowids(self, words: Sequence[str] = ()) -> array:
        """Row keys of audit entries with every word in some column, newest first."""
        ...

    def audit_rows(self, rowids: Sequence[int]) -> list[tuple[object, ...]]:
        """Audit entries by row key, in the order given, values in ``audit_table().columns`` order."""
        ...

    # -- the scheduler --

    def missed_runs_since(self, since: float, action: str = "backup") -> list[tuple[str, float]]:
        """Scheduled runs of ``action`` recorded as missed whose slot is after ``since``: (database, or the
        schedule's name when it has none; due time), oldest first."""
        ...

    # -- aggregates for the metrics endpoint (core/metrics/): computed by the database, never row by row --

    def job_duration_histograms(self, bounds: Sequence[float]) -> list[DurationHistogram]:
        """Per job kind, the finished jobs counted into the (ascending) ``bounds`` in seconds, by kind."""
        ...

    def job_failure_counts(self) -> dict[tuple[str, str], int]:
        """Failed and abandoned jobs: (kind, class) -> count. The class is the error's class name as the job
        recorded it, ``interrupted`` for an abandoned job, ``unknown`` for a failure recorded without one."""
        ...

    def schedule_run_stats(self) -> list[ScheduleRunStats]:
        """Per schedule and state, how many runs and when the newest of them finished, by name and state."""
        ...

    def newest_restorable(self) -> dict[str, tuple[str, str | None]]:
        """Per database: (its newest restorable snapshot's finished_at, the newest restorable physical snapshot
        of its cluster's finished_at or None), ISO 8601."""
        ...

    def latest_drills(self) -> list[DrillReport]:
        """Each database's newest drill report, by database."""
        ...

    def drill_counts(self) -> dict[tuple[str, str], int]:
        """Recorded drills: (database, verdict) -> count."""
        ...


@runtime_checkable
class Catalog(Protocol):
    """The catalog's writer: writes, the reads the CLI and the operations need, schema checks, transactions."""

    def close(self) -> None:
        """Release the connection."""
        ...

    def open_queries(self) -> CatalogQueries:
        """A read-only view of this catalog with its own connections (for the console's threads)."""
        ...

    def changes(self) -> ChangeFeed:
        """A new change feed (see :class:`ChangeFeed`)."""
        ...

    # -- schema --

    def schema_problems(self) -> list[str]:
        """Ways the schema differs from what backstop made (a dropped table, a trigger or view someone
        added); empty when it is intact. Queries on an altered schema cannot be trusted."""
        ...

    def repair_schema(self) -> list[str]:
        """Drop foreign triggers and views, recreate missing tables (empty); returns what was done."""
        ...

    # -- jobs and their events --

    def record_event(self, ev: JobEvent) -> None:
        """Apply one job event: create or update the job's row and append to its event log (progress rows
        are thinned out; the job row always holds the newest figures)."""
        ...

    def record_events(self, events: Sequence[JobEvent]) -> None:
        """Apply several events in one transaction, all or none (an agent's report filed at the control
        plane); a job already recorded raises sqlite3.IntegrityError and nothing is written."""
        ...

    def jobs(self, limit: int = 100, state: str | None = None) -> list[JobRecord]:
        """Recent jobs (in one state), newest first."""
        ...

    def job_events(self, job_id: str, after_id: int = 0) -> list[JobEventRow]:
        """A job's event log after a given event id, oldest first."""
        ...

    def mark_abandoned_jobs(self) -> int:
        """Jobs left 'running' on this host by a process that no longer exists become 'abandoned'; returns
        how many (0 when the schema was altered: `check` names that)."""
        ...

    # -- snapshots --

    def add_snapshot(self, s: SnapshotRecord) -> None:
        """Record a committed snapshot (replacing a row with the same id)."""
        ...

    def snapshots(self, db: str | None = None, limit: int | None = None, offset: int = 0,
                  kind: str | None = None) -> list[SnapshotRecord]:
        """Snapshots (of one database, of one kind), oldest first, optionally paged. A database's snapshots
        include the physical snapshots of its cluster taken for another entry (same system identifier)."""
        ...

    def snapshot(self, ref: str, db: str | None = None, kind: str | None = None) -> SnapshotRecord:
        """A snapshot by id, unique id prefix (4+ hex digits) or 'latest' (of ``db``, of ``kind``); NotFound
        names what to do otherwise."""
        ...

    def set_snapshot_status(self, sid: str, status: str) -> None:
        """A physical snapshot's status changed ("waiting" until its WAL is archived, then "restorable")."""
        ...

    def set_snapshot_targets(self, sid: str, targets: list[str]) -> None:
        """The targets holding a snapshot changed (a quorum write left one out, `backstop sync` filled it)."""
        ...

    def learn_system(self, db: str, system_identifier: str) -> None:
        """Record the system identifier of the cluster a database entry points at (it shares that cluster's
        physical snapshots)."""
        ...

    def system_of(self, db: str) -> str | None:
        """The system identifier learnt for a database entry; None when none was learnt yet."""
        ...

    def has_snapshot(self, sid: str) -> bool:
        """Whether a snapshot of that exact id is recorded."""
        ...

    def rename_snapshot(self, old: str, new: str) -> None:
        """A snapshot got a new id (its manifest was re-sealed): move its row and its history, atomically."""
        ...

    def delete_snapshot(self, sid: str) -> None:
        """Forget a snapshot's row (the repository object is the caller's business)."""
        ...

    # -- verifications and restores --

    def add_verification(self, *, job_id: str | None, target: str, snapshot_id: str | None, started_at: float,
                         read_data: bool, objects_checked: int, bytes_read: int, problems: list[str]) -> None:
        """Record one target's verification result (of one snapshot, or repository-wide); finished now."""
        ...

    def verifications(self, snapshot_id: str | None = None, limit: int = 200) -> list[VerificationRecord]:
        """Verification results (of one snapshot), newest first."""
        ...

    def add_restore(self, *, job_id: str | None, snapshot_id: str, db: str, into: str, tables: list[str],
                    started_at: float, duration_s: float, nbytes: int, ok: bool, error: str | None,
                    kind: str = "restore", target: str | None = None) -> None:
        """Record a measured restore or drill (``kind``), successful or not, and the first target it read
        from (None when it never got that far)."""
        ...

    def restores(self, db: str | None = None, limit: int = 500) -> list[RestoreRecord]:
        """Measured restores and drills (of one database), newest first."""
        ...

    # -- drill reports (core/drills) --

    def add_drill(self, report: DrillReport) -> None:
        """Record a drill's report (replacing one of the same id); its MAC and sealed copy come after."""
        ...

    def set_drill_seal(self, drill_id: str, mac: str, sealed: str) -> None:
        """Record a drill report's keyed MAC and the repository object holding its sealed copy."""
        ...

    def drill(self, drill_id: str) -> tuple[DrillReport, str | None, str | None] | None:
        """A drill's report, MAC and sealed object name; None when no drill has that id."""
        ...

    def drills(self, db: str | None = None, since: float = 0.0, until: float | None = None,
               limit: int = 1000) -> list[DrillReport]:
        """Drill reports started in [since, until) (of one database), newest first."""
        ...

    # -- security settings --

    def security_value(self, key: str) -> str | None:
        """A recorded security setting (e.g. the approved settings of a config section)."""
        ...

    def set_security_value(self, key: str, value: str) -> None:
        """Record a security setting."""
        ...

    # -- the audit log (chain and MAC logic: core/security/audit.py) --

    def audit_log_id(self) -> str | None:
        """The id of the catalog's audit chain; None before the first entry (or when it was deleted)."""
        ...

    def audit_is_empty(self) -> bool:
        """No chain id and no entries."""
        ...

    def audit_append(self, build: Callable[[str, tuple[int, str] | None], AuditEntry], *,
                     start_log_id: str) -> AuditEntry:
        """Append one entry atomically against every other writer (any process).

        In one exclusive transaction: take the chain id (recording
        ``start_log_id`` as the chain id when the catalog has none yet), call
        ``build(log_id, (seq, mac) of the last entry, or None)`` for the new
        entry, store it. Returns the stored entry.
        """
        ...

    def audit_insert(self, entries: Sequence[AuditEntry]) -> None:
        """Store already chained entries (another copy of this chain holds them), all or none."""
        ...

    def audit_adopt(self, log_id: str, entries: Sequence[AuditEntry]) -> bool:
        """Make an empty audit log the chain ``log_id`` with ``entries``, atomically; False (and nothing
        written) when the catalog already has an audit log."""
        ...

    def audit_discard(self) -> int:
        """Delete every entry and the chain id, atomically; returns how many entries there were."""
        ...

    def audit_entries(self, since: float | None = None, limit: int | None = None,
                      after_seq: int = 0) -> list[AuditEntry]:
        """Entries in sequence order after ``after_seq`` (from a time on; only the newest ``limit``)."""
        ...

    def audit_first(self, action: str, outcome: str) -> AuditEntry | None:
        """The earliest entry with this action and outcome."""
        ...

    def audit_last(self) -> AuditEntry | None:
        """The newest entry."""
        ...

    def audit_entry(self, seq: int) -> AuditEntry | None:
        """The entry at a sequence number."""
        ...

    # -- operators (MACs and seals: core/security/operators.py) --

    def operator_rows(self) -> list[OperatorRow]:
        """Every operator's row, by name."""
        ...

    def operator_row(self, name: str) -> OperatorRow | None:
        """One operator's row."""
        ...

    def operator_count(self) -> int:
        """How many operators are enrolled."""
        ...

    def operator_update(self, name: str) -> AbstractContextManager[OperatorSlot]:
        """Lock one operator's row for a read-modify-write, atomically against other processes.

        ``with catalog.operator_update(name) as slot:`` reads ``slot.row``
        and writes with ``slot.put(row)`` or ``slot.delete()``; the writes
        commit when the block ends and roll back if it raises. (SQLite:
        ``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``.)
        """
        ...

    def insert_operators_if_empty(self, rows: Sequence[OperatorRow]) -> bool:
        """Insert rows into an empty operator table, atomically; False (nothing written) when it has any."""
        ...

    def delete_operators(self) -> None:
        """Delete every operator row."""
        ...

    # -- the scheduler (core/schedule/): claimed slots and leases --

    def claim_schedule_run(self, *, name: str, slot: str, due: float, action: str, db: str | None, holder: str,
                           state: str = "waiting", trigger: str = "cron", error: str | None = None) -> bool:
        """Claim one slot of a schedule (a unique row per (name, slot)), or record it as ``missed``; False when
        anyone claimed or recorded it before."""
        ...

    def update_schedule_run(self, name: str, slot: str, state: str, *, error: str | None = None,
                            result: dict[str, object] | None = None) -> None:
        """Move a claimed run on: 'running', then 'succeeded', 'failed', 'missed' or 'abandoned'."""
        ...

    def schedule_runs(self, name: str | None = None, limit: int = 100) -> list[ScheduleRun]:
        """Scheduled runs (of one schedule), newest slot first."""
        ...

    def last_schedule_slot(self, name: str) -> float | None:
        """The newest cron slot of a schedule anyone claimed or recorded (epoch seconds)."""
        ...

    def abandon_dead_schedule_runs(self) -> int:
        """Runs left waiting or running by a scheduler process on this host that is gone become missed or
        abandoned (never re-run); returns how many."""
        ...

    def snapshot_last_verified(self) -> dict[str, float]:
        """Each verified snapshot's newest verification time (epoch seconds)."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        """Take or renew lease ``name`` for ``ttl_s`` seconds, atomically; False while another live holder
        has it (a holder on this host whose process is gone loses it at once)."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease up (only if ``holder`` still has it)."""
        ...

    def lease_holder(self, name: str, now: float | None = None) -> str | None:
        """Who holds lease ``name`` now (None: nobody, or it expired)."""
        ...

    # -- per-target health (core/storage/metered.py) --

    def record_target_health(self, windows: Sequence[HealthWindow], marks: Mapping[str, TargetMarks]) -> None:
        """Store one flush of the health meter: its call rows, and each target's marks where newer than stored."""
        ...
