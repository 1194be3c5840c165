"""The embedded catalog: an SQLite file indexing snapshots, jobs and results.

The repository stays the source of truth; the catalog is what makes lists,
job history and trends fast, and what lets a console in another process see
running jobs. SQLite in WAL mode lets one writer and many readers share it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from core.catalog.models import JobRecord, RestoreRecord, SnapshotRecord, VerificationRecord
from core.errors import ConfigError, NotFound
from core.processes import pid_alive
from core.events import JobEvent, JobFinished, JobStarted, JobWarning, PhaseChanged, Progress

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        db TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL,
        targets TEXT NOT NULL,
        job_id TEXT
    );
    CREATE INDEX snapshots_db_time ON snapshots (db, finished_at);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        db TEXT,
        state TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        phase TEXT,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER,
        rate REAL NOT NULL DEFAULT 0,
        error TEXT,
        description TEXT NOT NULL DEFAULT '',
        host TEXT NOT NULL DEFAULT '',
        pid INTEGER NOT NULL DEFAULT 0,
        result TEXT
    );
    CREATE INDEX jobs_started ON jobs (started_at);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        ts REAL NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX job_events_job ON job_events (job_id, id);
    CREATE TABLE verifications (
        id INTEGER PRIMARY KEY,
        job_id TEXT,
        target TEXT NOT NULL,
        snapshot_id TEXT,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        read_data INTEGER NOT NULL,
        objects_checked INTEGER NOT NULL,
        bytes_read INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        problems TEXT NOT NULL
    );
    CREATE INDEX verifications_snapshot ON verifications (snapshot_id, target);
    CREATE TABLE restores (
        id INTEGER PRIMARY KEY,
        job_id TEXT,
        snapshot_id TEXT NOT NULL,
        db TEXT NOT NULL,
        into_db TEXT NOT NULL,
        tables TEXT NOT NULL,
        started_at REAL NOT NULL,
        duration_s REAL NOT NULL,
        bytes INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT
    );
    """,
    # Operators, the tamper-evident audit log (core/security). Secrets and
    # keyed hashes are computed there; SQLite only stores them.
    """
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        secret_sealed BLOB NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        last_step INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        locked_until REAL NOT NULL,
        mac TEXT NOT NULL
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        operator TEXT NOT NULL,
        host TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        mac TEXT NOT NULL
    );
    CREATE INDEX audit_log_ts ON audit_log (ts);
    CREATE TABLE security_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # The console's time-window queries (KPIs, trends) scan by time across databases.
    """
    CREATE INDEX snapshots_finished ON snapshots (finished_at);
    CREATE INDEX verifications_finished ON verifications (finished_at);
    CREATE INDEX restores_started ON restores (started_at);
    """,
]

_HEX_RE = re.compile(r"[0-9a-f]{4,64}")
_TABLES = ("snapshots", "jobs", "job_events", "verifications", "restores", "operators", "audit_log", "security_state")

# Progress rows are kept in job_events at most this often per job; the jobs
# row itself always holds the newest figures.
_PROGRESS_EVENT_INTERVAL = 1.0


class Catalog:
    """Typed access to the catalog database."""

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
        self._migrate()
        self._last_progress_row: dict[str, float] = {}

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for i, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")

    def schema_problems(self) -> list[str]:
        """Ways the catalog's schema differs from what backstop made: dropped tables, added triggers or views.

        Backstop creates no triggers or views, so any is someone else's work
        (a trigger can silently swallow or rewrite what backstop writes).
        """
        rows = self._db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger', 'view')")
        have: dict[str, set[str]] = {"table": set(), "trigger": set(), "view": set()}
        for kind, name in rows:
            have[kind].add(name)
        problems = [f"table {t} is missing from the catalog" for t in _TABLES if t not in have["table"]]
        problems += [f"the catalog has a {kind} {name!r} that backstop did not create"
                     for kind in ("trigger", "view") for name in sorted(have[kind])]
        return problems

    def repair_schema(self) -> list[str]:
        """Drop foreign triggers and views and recreate missing tables (empty); returns what was done."""
        done = []
        for kind, name in self._db.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchall():
            self._db.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
            done.append(f"dropped {kind} {name!r}")
        missing = [t for t in _TABLES if not self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (t,)).fetchone()]
        if missing:
            script = "".join(_MIGRATIONS)
            script = re.sub(r"CREATE (TABLE|INDEX) ", r"CREATE \1 IF NOT EXISTS ", script)
            self._db.executescript(f"BEGIN; {script}; COMMIT;")
            done += [f"recreated table {t}" for t in missing]
        return done

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for modules that own their tables' queries (core/security)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    # -- events -------------------------------------------------------------

    def record_event(self, ev: JobEvent) -> None:
        """Apply one job event: update the job row and append to its log."""
        db = self._db
        if isinstance(ev, JobStarted):
            db.execute(
                "INSERT INTO jobs (id, kind, db, state, started_at, description, host, pid) VALUES (?,?,?,?,?,?,?,?)",
                (ev.job_id, ev.kind, ev.db, "running", ev.ts, ev.description, socket.gethostname(), os.getpid()),
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

    def jobs(self, limit: int = 100, state: str | None = None) -> list[JobRecord]:
        """Recent jobs, newest first."""
        sql = "SELECT id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total, rate, error, description, host, pid FROM jobs"
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
            "INSERT OR REPLACE INTO snapshots (id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets, job_id)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (s.id, s.db, s.kind, s.started_at, s.finished_at, s.size_bytes, s.stored_bytes, json.dumps(s.targets), s.job_id),
        )

    def snapshots(self, db: str | None = None, limit: int | None = None, offset: int = 0) -> list[SnapshotRecord]:
        """Snapshots, oldest first (optionally of one database, paged)."""
        sql = "SELECT id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets, job_id FROM snapshots"
        args: list[object] = []
        if db:
            sql += " WHERE db=?"
            args.append(db)
        # rowid breaks ties: finished_at has one-second resolution.
        sql += " ORDER BY finished_at, rowid"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [SnapshotRecord(*r[:7], targets=json.loads(r[7]), job_id=r[8]) for r in self._db.execute(sql, args)]

    def snapshot(self, ref: str, db: str | None = None) -> SnapshotRecord:
        """Find a snapshot by id, unique id prefix, or 'latest' (of ``db``)."""
        if ref == "latest":
            rows = self.snapshots(db)
            if not rows:
                raise NotFound(f"no snapshots of {db!r} in the catalog; run `backstop backup --db {db}` first")
            return rows[-1]
        ref = ref.strip().lower()
        if not _HEX_RE.fullmatch(ref):
            raise NotFound(f"snapshot id {ref!r} is not a snapshot id: give 'latest' or at least 4 hex digits "
                           "of an id from `backstop snapshots`")
        # A prefix compare, not LIKE: '_' and '%' must not match anything.
        cur = self._db.execute(
            "SELECT id FROM snapshots WHERE substr(id, 1, ?) = ?" + (" AND db=?" if db else ""),
            (len(ref), ref, db) if db else (len(ref), ref),
        ).fetchall()
        if not cur:
            raise NotFound(f"no snapshot {ref!r}" + (f" of {db!r}" if db else "") + "; list them with `backstop snapshots`")
        if len(cur) > 1:
            raise NotFound(f"snapshot id {ref!r} is ambiguous ({len(cur)} match); give more characters")
        return next(s for s in self.snapshots(db) if s.id == cur[0][0])

    def rename_snapshot(self, old: str, new: str) -> None:
        """A snapshot got a new id (its manifest was re-sealed): move its row and history."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE snapshots SET id=? WHERE id=?", (new, old))
            db.execute("UPDATE verifications SET snapshot_id=? WHERE snapshot_id=?", (new, old))
            db.execute("UPDATE restores SET snapshot_id=? WHERE snapshot_id=?", (new, old))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def delete_snapshot(self, sid: str) -> None:
        """Forget a snapshot's row (the repository object is handled by the caller)."""
        self._db.execute("DELETE FROM snapshots WHERE id=?", (sid,))

    # -- verification and restores ------------------------------------------------

    def add_verification(self, *, job_id: str | None, target: str, snapshot_id: str | None, started_at: float,
                         read_data: bool, objects_checked: int, bytes_read: int, problems: list[str]) -> None:
        """Record a verification result for one target (and snapshot, if specific)."""
        self._db.execute(
            "INSERT INTO verifications (job_id, target, snapshot_id, started_at, finished_at, read_data, objects_checked,"
            " bytes_read, ok, problems) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_id, target, snapshot_id, started_at, time.time(), int(read_data), objects_checked, bytes_read,
             int(not problems), json.dumps(problems)),
        )

    def verifications(self, snapshot_id: str | None = None, limit: int = 200) -> list[VerificationRecord]:
        """Verification results, newest first."""
        sql = ("SELECT id, job_id, target, snapshot_id, started_at, finished_at, read_data, objects_checked, bytes_read,"
               " ok, problems FROM verifications")
        args: list[object] = []
        if snapshot_id:
            sql += " WHERE snapshot_id=?"
            args.append(snapshot_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [
            VerificationRecord(*r[:6], bool(r[6]), r[7], r[8], bool(r[9]), json.loads(r[10]))
            for r in self._db.execute(sql, args)
        ]

    def add_restore(self, *, job_id: str | None, snapshot_id: str, db: str, into: str, tables: list[str],
                    started_at: float, duration_s: float, nbytes: int, ok: bool, error: str | None) -> None:
        """Record a measured restore (successful or not)."""
        self._db.execute(
            "INSERT INTO restores (job_id, snapshot_id, db, into_db, tables, started_at, duration_s, bytes, ok, error)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_id, snapshot_id, db, into, json.dumps(tables), started_at, duration_s, nbytes, int(ok), error),
        )

    def restores(self, db: str | None = None, limit: int = 500) -> list[RestoreRecord]:
        """Measured restores, newest first."""
        sql = "SELECT id, job_id, snapshot_id, db, into_db, tables, started_at, duration_s, bytes, ok, error FROM restores"
        args: list[object] = []
        if db:
            sql += " WHERE db=?"
            args.append(db)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [RestoreRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], bool(r[9]), r[10])
                for r in self._db.execute(sql, args)]
