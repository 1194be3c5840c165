"""The embedded catalog: an SQLite file indexing snapshots, jobs and results (the default implementation).

The repository stays the source of truth; the catalog is what makes lists,
job history and trends fast, and what lets a console in another process see
running jobs. SQLite in WAL mode lets one writer and many readers share it.
This class is :class:`core.catalog.base.Catalog` for SQLite; its read-only
side for the console is :class:`core.catalog.sqlite_queries.SqliteQueries`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from core.catalog import sqlite_schema
from core.catalog.sqlite_health import HealthTables
from core.catalog.sqlite_queries import (
    RESTORE_COLS,
    VERIFICATION_COLS,
    SqliteChangeFeed,
    SqliteQueries,
    drill_rows,
    restore_record,
    verification_record,
)
from core.catalog.sqlite_schedule import ScheduleTables
from core.catalog.sqlite_security import SecurityTables, transaction
from core.drills.model import DrillReport
from core.errors import ConfigError, NotFound
from core.events import (
    JobEvent,
    JobFinished,
    JobStarted,
    JobWarning,
    PhaseChanged,
    Progress,
)
from core.processes import pid_alive
from core.records import (
    RESTORE_KINDS,
    JobRecord,
    RestoreRecord,
    SnapshotRecord,
    VerificationRecord,
)

_HEX_RE = re.compile(r"[0-9a-f]{4,64}")
_JOB_COLS = ("id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total, rate, error, description, "
             "host, pid")

_SNAPSHOT_COLS = ("id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets, job_id, status, start_lsn,"
                  " stop_lsn, timeline, system_identifier, pg_version, wal_segment_size")


def _snapshot_filter(db: str | None, kind: str | None) -> tuple[str, list[object]]:
    """WHERE clause for one database's snapshots (its own and its cluster's physical ones) of one kind."""
    clauses: list[str] = []
    args: list[object] = []
    if db:
        clauses.append("(db=? OR (kind='physical' AND system_identifier ="
                       " (SELECT system_identifier FROM database_systems WHERE db=?)))")
        args += [db, db]
    if kind:
        clauses.append("kind=?")
        args.append(kind)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _snapshot_record(r: tuple[object, ...]) -> SnapshotRecord:
    return SnapshotRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8],  # type: ignore[arg-type]
                          *r[9:])  # type: ignore[arg-type]


# Progress rows are kept in job_events at most this often per job; the jobs
# row itself always holds the newest figures.
_PROGRESS_EVENT_INTERVAL = 1.0


class SqliteCatalog(SecurityTables, ScheduleTables, HealthTables):
    """The catalog in one SQLite file (``catalog.url: sqlite:///path``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, mode=0o700)
            # The catalog holds the audit log and sealed operator secrets: owner only.
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            st = path.stat()
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                path.chmod(0o600)  # made before catalogs were private
            self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"catalog.url: cannot open the catalog at {path}: {exc}") from None
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        sqlite_schema.migrate(self._db)
        self._last_progress_row: dict[str, float] = {}

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection itself (for tests that edit the file as an intruder would)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def open_queries(self) -> SqliteQueries:
        return SqliteQueries(self.path)

    def changes(self) -> SqliteChangeFeed:
        return SqliteChangeFeed(self.path)

    # -- schema -------------------------------------------------------------

    def schema_problems(self) -> list[str]:
        """Ways the catalog's schema differs from what backstop made: dropped tables, added triggers or views.

        Backstop creates no triggers or views, so any is someone else's work
        (a trigger can silently swallow or rewrite what backstop writes).
        """
        return sqlite_schema.schema_problems(self._db)

    def repair_schema(self) -> list[str]:
        """Drop foreign triggers and views and recreate missing tables (empty); returns what was done."""
        return sqlite_schema.repair_schema(self._db)

    # -- events -------------------------------------------------------------

    def record_event(self, ev: JobEvent) -> None:
        """Apply one job event: update the job row and append to its log."""
        db = self._db
        if isinstance(ev, JobStarted):
            db.execute(
                "INSERT INTO jobs (id, kind, db, state, started_at, description, host, pid) VALUES (?,?,?,?,?,?,?,?)",
                (ev.job_id, ev.kind, ev.db, "running", ev.ts, ev.description, ev.host or socket.gethostname(),
                 0 if ev.host else os.getpid()),
            )
        elif isinstance(ev, PhaseChanged):
            db.execute("UPDATE jobs SET phase=? WHERE id=?", (ev.phase, ev.job_id))
        elif isinstance(ev, Progress):
            db.execute(
                "UPDATE jobs SET phase=?, bytes_done=?, bytes_total=?, rate=? WHERE id=?",
                (ev.phase, ev.bytes_done, ev.bytes_total, ev.rate, ev.job_id),
            )
            last = self._last_progress_row.get(ev.job_id, 0.0)
            if ev.ts - last < _PROGRESS_EVENT_INTERVAL:
                return
            self._last_progress_row[ev.job_id] = ev.ts
        elif isinstance(ev, JobFinished):
            db.execute(
                "UPDATE jobs SET state=?, finished_at=?, error=?, result=? WHERE id=?",
                (ev.outcome, ev.ts, ev.error, json.dumps(ev.result), ev.job_id),
            )
            self._last_progress_row.pop(ev.job_id, None)
        elif not isinstance(ev, JobWarning):
            return
        db.execute(
            "INSERT INTO job_events (job_id, ts, type, payload) VALUES (?,?,?,?)",
            (ev.job_id, ev.ts, ev.type, json.dumps(ev.payload())),
        )

    def record_events(self, events: Sequence[JobEvent]) -> None:
        """Several events in one transaction, all or none."""
        with transaction(self._db):
            for ev in events:
                self.record_event(ev)

    def jobs(self, limit: int = 100, state: str | None = None) -> list[JobRecord]:
        """Recent jobs, newest first."""
        sql = f"SELECT {_JOB_COLS} FROM jobs"
        args: tuple[object, ...] = ()
        if state:
            sql += " WHERE state=?"
            args = (state,)
        sql += " ORDER BY started_at DESC LIMIT ?"
        return [JobRecord(*row) for row in self._db.execute(sql, (*args, limit))]

    def job_events(self, job_id: str, after_id: int = 0) -> list[tuple[int, float, str, dict[str, object]]]:
        """A job's event log (id, time, type, payload) after a given event id."""
        rows = self._db.execute(
            "SELECT id, ts, type, payload FROM job_events WHERE job_id=? AND id>? ORDER BY id", (job_id, after_id)
        )
        return [(i, ts, t, json.loads(p)) for i, ts, t, p in rows]

    def mark_abandoned_jobs(self) -> int:
        """Jobs left 'running' on this host by a process that no longer exists become 'abandoned'."""
        n = 0
        try:
            running = self._db.execute(
                "SELECT id, pid FROM jobs WHERE state='running' AND host=?", (socket.gethostname(),)).fetchall()
        except sqlite3.OperationalError:
            return 0  # an altered schema: `check` and the gate name it; this bookkeeping waits
        for job_id, pid in running:
            if not pid_alive(pid):
                self._db.execute(
                    "UPDATE jobs SET state='abandoned', finished_at=?, error=? WHERE id=? AND state='running'",
                    (time.time(), f"the process running this job (pid {pid}) ended without finishing it", job_id),
                )
                n += 1
        return n

    # -- snapshots ------------------------------------------------------------

    def add_snapshot(self, s: SnapshotRecord) -> None:
        """Record a committed snapshot (replacing a previous row with the same id)."""
        self._db.execute(
            f"INSERT OR REPLACE INTO snapshots ({_SNAPSHOT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (s.id, s.db, s.kind, s.started_at, s.finished_at, s.size_bytes, s.stored_bytes, json.dumps(s.targets),
             s.job_id, s.status, s.start_lsn, s.stop_lsn, s.timeline, s.system_identifier, s.pg_version,
             s.wal_segment_size),
        )

    def snapshots(self, db: str | None = None, limit: int | None = None, offset: int = 0,
                  kind: str | None = None) -> list[SnapshotRecord]:
        """Snapshots, oldest first (optionally of one database, of one kind, paged).

        A database's snapshots include the physical snapshots of its cluster
        taken for another database entry (same system identifier, as learnt).
        """
        sql = f"SELECT {_SNAPSHOT_COLS} FROM snapshots"
        where, args = _snapshot_filter(db, kind)
        sql += where
        # rowid breaks ties: finished_at has one-second resolution.
        sql += " ORDER BY finished_at, rowid"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [_snapshot_record(r) for r in self._db.execute(sql, args)]

    def snapshot(self, ref: str, db: str | None = None, kind: str | None = None) -> SnapshotRecord:
        """Find a snapshot by id, unique id prefix, or 'latest' (of ``db``, of ``kind``)."""
        what = f"{kind} snapshots" if kind else "snapshots"
        if ref == "latest":
            rows = self.snapshots(db, kind=kind)
            if not rows:
                flag = " --type physical" if kind == "physical" else ""
                raise NotFound(f"no {what} of {db!r} in the catalog; run `backstop backup --db {db}{flag}` first")
            return rows[-1]
        ref = ref.strip().lower()
        if not _HEX_RE.fullmatch(ref):
            raise NotFound(f"snapshot id {ref!r} is not a snapshot id: give 'latest' or at least 4 hex digits "
                           "of an id from `backstop snapshots`")
        where, args = _snapshot_filter(db, None)
        # A prefix compare, not LIKE: '_' and '%' must not match anything.
        cur = self._db.execute(
            f"SELECT id FROM snapshots{where}{' AND' if where else ' WHERE'} substr(id, 1, ?) = ?",
            (*args, len(ref), ref),
        ).fetchall()
        if not cur:
            raise NotFound(f"no snapshot {ref!r}" + (f" of {db!r}" if db else "")
                           + "; list them with `backstop snapshots`")
        if len(cur) > 1:
            raise NotFound(f"snapshot id {ref!r} is ambiguous ({len(cur)} match); give more characters")
        return next(s for s in self.snapshots(db) if s.id == cur[0][0])

    def set_snapshot_status(self, sid: str, status: str) -> None:
        """A physical snapshot's status changed ("waiting" until its WAL is archived, then "restorable")."""
        self._db.execute("UPDATE snapshots SET status=? WHERE id=?", (status, sid))

    def set_snapshot_targets(self, sid: str, targets: list[str]) -> None:
        """The targets holding a snapshot changed (a quorum write left one out, `backstop sync` filled it)."""
        self._db.execute("UPDATE snapshots SET targets=? WHERE id=?", (json.dumps(sorted(targets)), sid))

    def learn_system(self, db: str, system_identifier: str) -> None:
        """Record the system identifier of the cluster a database entry points at (it shares that cluster's
        physical snapshots)."""
        self._db.execute("INSERT OR REPLACE INTO database_systems (db, system_identifier, learnt_at) VALUES (?,?,?)",
                         (db, system_identifier, time.time()))

    def system_of(self, db: str) -> str | None:
        """The system identifier learnt for a database entry; None before its first physical backup."""
        row = self._db.execute("SELECT system_identifier FROM database_systems WHERE db=?", (db,)).fetchone()
        return None if row is None else str(row[0])

    def rename_snapshot(self, old: str, new: str) -> None:
        """A snapshot got a new id (its manifest was re-sealed): move its row and history."""
        with transaction(self._db):
            self._db.execute("UPDATE snapshots SET id=? WHERE id=?", (new, old))
            self._db.execute("UPDATE verifications SET snapshot_id=? WHERE snapshot_id=?", (new, old))
            self._db.execute("UPDATE restores SET snapshot_id=? WHERE snapshot_id=?", (new, old))

    def has_snapshot(self, sid: str) -> bool:
        return self._db.execute("SELECT 1 FROM snapshots WHERE id=?", (sid,)).fetchone() is not None

    def delete_snapshot(self, sid: str) -> None:
        """Forget a snapshot's row (the repository object is handled by the caller)."""
        self._db.execute("DELETE FROM snapshots WHERE id=?", (sid,))

    # -- verification and restores ------------------------------------------------

    def add_verification(self, *, job_id: str | None, target: str, snapshot_id: str | None, started_at: float,
                         read_data: bool, objects_checked: int, bytes_read: int, problems: list[str]) -> None:
        """Record a verification result for one target (and snapshot, if specific)."""
        self._db.execute(
            "INSERT INTO verifications (job_id, target, snapshot_id, started_at, finished_at, read_data,"
            " objects_checked,"
            " bytes_read, ok, problems) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_id, target, snapshot_id, started_at, time.time(), int(read_data), objects_checked, bytes_read,
             int(not problems), json.dumps(problems)),
        )

    def verifications(self, snapshot_id: str | None = None, limit: int = 200) -> list[VerificationRecord]:
        """Verification results, newest first."""
        sql = f"SELECT {VERIFICATION_COLS} FROM verifications"
        args: list[object] = []
        if snapshot_id:
            sql += " WHERE snapshot_id=?"
            args.append(snapshot_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [verification_record(r) for r in self._db.execute(sql, args)]

    def add_restore(self, *, job_id: str | None, snapshot_id: str, db: str, into: str, tables: list[str],
                    started_at: float, duration_s: float, nbytes: int, ok: bool, error: str | None,
                    kind: str = "restore", target: str | None = None) -> None:
        """Record a measured restore or drill (successful or not)."""
        if kind not in RESTORE_KINDS:
            raise ValueError(f"restore kind {kind!r}: expected one of {', '.join(RESTORE_KINDS)}")
        self._db.execute(
            "INSERT INTO restores (job_id, snapshot_id, db, into_db, tables, started_at, duration_s, bytes, ok, error,"
            " kind, target) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_id, snapshot_id, db, into, json.dumps(tables), started_at, duration_s, nbytes, int(ok), error,
             kind, target),
        )

    # -- drill reports ------------------------------------------------------------

    def add_drill(self, report: DrillReport) -> None:
        """Record a drill's report (replacing one of the same id, MAC and seal cleared)."""
        self._db.execute(
            "INSERT OR REPLACE INTO drills (id, db, kind, started_at, verdict, target, report, mac, sealed)"
            " VALUES (?,?,?,?,?,?,?,NULL,NULL)",
            (report.id, report.db, report.kind, report.started_at, report.verdict, report.target,
             json.dumps(report.to_json(), sort_keys=True)))

    def set_drill_seal(self, drill_id: str, mac: str, sealed: str) -> None:
        """Record a drill report's keyed MAC and sealed repository object."""
        self._db.execute("UPDATE drills SET mac=?, sealed=? WHERE id=?", (mac, sealed, drill_id))

    def drill(self, drill_id: str) -> tuple[DrillReport, str | None, str | None] | None:
        """A drill's report, MAC and sealed object name."""
        row = self._db.execute("SELECT report, mac, sealed FROM drills WHERE id=?", (drill_id,)).fetchone()
        if row is None:
            return None
        return DrillReport.from_json(json.loads(row[0])), row[1], row[2]

    def drills(self, db: str | None = None, since: float = 0.0, until: float | None = None,
               limit: int = 1000) -> list[DrillReport]:
        """Drill reports started in [since, until), newest first."""
        return drill_rows(self._db, db, since, until, limit)

    def restores(self, db: str | None = None, limit: int = 500) -> list[RestoreRecord]:
        """Measured restores and drills, newest first."""
        sql = f"SELECT {RESTORE_COLS} FROM restores"
        args: list[object] = []
        if db:
            sql += " WHERE db=?"
            args.append(db)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [restore_record(r) for r in self._db.execute(sql, args)]
