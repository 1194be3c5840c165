"""The SQLite catalog's schema: versioned migrations, and the checks that find it altered.

``PRAGMA user_version`` is the number of migrations applied. A catalog made
by an older version is migrated when it is opened; migrations never run
twice and never change what an older version wrote, except to fill in new
columns. :data:`TABLES` holds each table's current definition, which is
what a repair recreates a dropped table from (a test keeps the two in step).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

_INITIAL = """
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
"""

# Operators, the tamper-evident audit log (core/security). Secrets and
# keyed hashes are computed there; SQLite only stores them.
_SECURITY = """
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
"""

# The console's time-window queries (KPIs, trends) scan by time across databases.
_TIME_INDEXES = """
    CREATE INDEX snapshots_finished ON snapshots (finished_at);
    CREATE INDEX verifications_finished ON verifications (finished_at);
    CREATE INDEX restores_started ON restores (started_at);
"""


def _restore_kinds(db: sqlite3.Connection) -> None:
    """Restores and drills as first-class records: restores.kind ('restore' or 'drill') and restores.target.

    Drills recorded before were told apart by their database name only
    (the planner names them ``<db>_drill_<time>``); they become kind 'drill'.
    A catalog whose restores table was dropped gets it back, complete, from
    a repair.
    """
    if not has_table(db, "restores"):
        return
    columns = {r[1] for r in db.execute("PRAGMA table_info(restores)")}
    if "kind" not in columns:
        db.execute("ALTER TABLE restores ADD COLUMN kind TEXT NOT NULL DEFAULT 'restore'")
        db.execute("UPDATE restores SET kind='drill' WHERE instr(into_db, '_drill_') > 0")
    if "target" not in columns:
        db.execute("ALTER TABLE restores ADD COLUMN target TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS restores_kind ON restores (kind, started_at)")


# Physical snapshots (FORMAT.md 10.2): their WAL range and status, in the order the migration adds them.
_PHYSICAL_COLUMNS = (("status", "TEXT NOT NULL DEFAULT 'restorable'"), ("start_lsn", "TEXT"), ("stop_lsn", "TEXT"),
                     ("timeline", "INTEGER"), ("system_identifier", "TEXT"), ("pg_version", "TEXT"),
                     ("wal_segment_size", "INTEGER"))


def _physical_snapshots(db: sqlite3.Connection) -> None:
    """Physical snapshots' columns, and the system identifier learnt per database entry.

    Database entries on one cluster share its physical snapshots: a listing
    for an entry shows those whose system_identifier is the one learnt for it.
    """
    if has_table(db, "snapshots"):
        columns = {r[1] for r in db.execute("PRAGMA table_info(snapshots)")}
        for name, decl in _PHYSICAL_COLUMNS:
            if name not in columns:
                db.execute(f"ALTER TABLE snapshots ADD COLUMN {name} {decl}")
        db.execute("CREATE INDEX IF NOT EXISTS snapshots_system ON snapshots (system_identifier, finished_at)")
    db.execute("CREATE TABLE IF NOT EXISTS database_systems (db TEXT PRIMARY KEY, system_identifier TEXT NOT NULL,"
               " learnt_at REAL NOT NULL)")


_SCHEDULES = """
    CREATE TABLE schedule_runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        slot TEXT NOT NULL,
        due REAL NOT NULL,
        action TEXT NOT NULL,
        db TEXT,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL DEFAULT 'cron',
        holder TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        claimed_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        result TEXT,
        UNIQUE (name, slot)
    );
    CREATE INDEX schedule_runs_due ON schedule_runs (state, due);
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
"""

# Per-target health (core/storage/metered.py): call statistics per window, and each target's newest marks.
_TARGET_HEALTH = """
    CREATE TABLE target_calls (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        window_start REAL NOT NULL,
        window_end REAL NOT NULL,
        calls INTEGER NOT NULL,
        outcomes TEXT NOT NULL,
        bytes_written INTEGER NOT NULL,
        bytes_read INTEGER NOT NULL,
        latency_sum REAL NOT NULL,
        histogram TEXT NOT NULL
    );
    CREATE INDEX target_calls_end ON target_calls (window_end);
    CREATE TABLE target_state (
        target TEXT PRIMARY KEY,
        last_write_ok_at REAL,
        last_read_ok_at REAL,
        last_error_class TEXT,
        last_error TEXT,
        last_error_at REAL,
        stored_bytes INTEGER,
        stored_objects INTEGER,
        stored_measured_at REAL
    );
"""

Migration = str | Callable[[sqlite3.Connection], None]

# Append only: position i is schema version i + 1.
# Drill reports (core/drills): the whole report as JSON, its keyed MAC and the repository object it is sealed in.
_DRILLS = """
    CREATE TABLE drills (
        id TEXT PRIMARY KEY,
        db TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        verdict TEXT NOT NULL,
        target TEXT NOT NULL,
        report TEXT NOT NULL,
        mac TEXT,
        sealed TEXT
    );
    CREATE INDEX drills_started ON drills (started_at);
"""

# The metrics endpoint's aggregates (core/metrics/): job durations by kind, failures by state, from indexes alone.
_METRICS_INDEXES = """
    CREATE INDEX IF NOT EXISTS jobs_kind_duration ON jobs (kind, finished_at - started_at);
    CREATE INDEX IF NOT EXISTS jobs_state_kind ON jobs (state, kind);
"""

MIGRATIONS: list[Migration] = [_INITIAL, _SECURITY, _TIME_INDEXES, _restore_kinds, _physical_snapshots,
                               _SCHEDULES, _TARGET_HEALTH, _DRILLS, _METRICS_INDEXES]

# Each table as the migrations leave it today, with its indexes: what `catalog rebuild` recreates a dropped
# table from.
TABLES: dict[str, str] = {
    "snapshots": """
        CREATE TABLE snapshots (id TEXT PRIMARY KEY, db TEXT NOT NULL, kind TEXT NOT NULL,
            started_at TEXT NOT NULL, finished_at TEXT NOT NULL, size_bytes INTEGER NOT NULL,
            stored_bytes INTEGER NOT NULL, targets TEXT NOT NULL, job_id TEXT,
            status TEXT NOT NULL DEFAULT 'restorable', start_lsn TEXT, stop_lsn TEXT, timeline INTEGER,
            system_identifier TEXT, pg_version TEXT, wal_segment_size INTEGER);
        CREATE INDEX IF NOT EXISTS snapshots_db_time ON snapshots (db, finished_at);
        CREATE INDEX IF NOT EXISTS snapshots_finished ON snapshots (finished_at);
        CREATE INDEX IF NOT EXISTS snapshots_system ON snapshots (system_identifier, finished_at);
    """,
    "database_systems": """
        CREATE TABLE database_systems (db TEXT PRIMARY KEY, system_identifier TEXT NOT NULL,
            learnt_at REAL NOT NULL);
    """,
    "jobs": """
        CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, db TEXT, state TEXT NOT NULL,
            started_at REAL NOT NULL, finished_at REAL, phase TEXT, bytes_done INTEGER NOT NULL DEFAULT 0,
            bytes_total INTEGER, rate REAL NOT NULL DEFAULT 0, error TEXT, description TEXT NOT NULL DEFAULT '',
            host TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0, result TEXT);
        CREATE INDEX IF NOT EXISTS jobs_started ON jobs (started_at);
        CREATE INDEX IF NOT EXISTS jobs_kind_duration ON jobs (kind, finished_at - started_at);
        CREATE INDEX IF NOT EXISTS jobs_state_kind ON jobs (state, kind);
    """,
    "job_events": """
        CREATE TABLE job_events (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, ts REAL NOT NULL,
            type TEXT NOT NULL, payload TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
    """,
    "verifications": """
        CREATE TABLE verifications (id INTEGER PRIMARY KEY, job_id TEXT, target TEXT NOT NULL, snapshot_id TEXT,
            started_at REAL NOT NULL, finished_at REAL NOT NULL, read_data INTEGER NOT NULL,
            objects_checked INTEGER NOT NULL, bytes_read INTEGER NOT NULL, ok INTEGER NOT NULL,
            problems TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS verifications_snapshot ON verifications (snapshot_id, target);
        CREATE INDEX IF NOT EXISTS verifications_finished ON verifications (finished_at);
    """,
    "restores": """
        CREATE TABLE restores (id INTEGER PRIMARY KEY, job_id TEXT, snapshot_id TEXT NOT NULL, db TEXT NOT NULL,
            into_db TEXT NOT NULL, tables TEXT NOT NULL, started_at REAL NOT NULL, duration_s REAL NOT NULL,
            bytes INTEGER NOT NULL, ok INTEGER NOT NULL, error TEXT, kind TEXT NOT NULL DEFAULT 'restore',
            target TEXT);
        CREATE INDEX IF NOT EXISTS restores_started ON restores (started_at);
        CREATE INDEX IF NOT EXISTS restores_kind ON restores (kind, started_at);
    """,
    "operators": """
        CREATE TABLE operators (name TEXT PRIMARY KEY, role TEXT NOT NULL, secret_sealed BLOB NOT NULL,
            created_at REAL NOT NULL, created_by TEXT NOT NULL, last_step INTEGER NOT NULL,
            failures INTEGER NOT NULL, locked_until REAL NOT NULL, mac TEXT NOT NULL);
    """,
    "audit_log": """
        CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, operator TEXT NOT NULL,
            host TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, outcome TEXT NOT NULL,
            detail TEXT NOT NULL, prev TEXT NOT NULL, mac TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts);
    """,
    "security_state": """
        CREATE TABLE security_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    "schedule_runs": """
        CREATE TABLE schedule_runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, slot TEXT NOT NULL, due REAL NOT NULL,
            action TEXT NOT NULL, db TEXT, state TEXT NOT NULL, trigger TEXT NOT NULL DEFAULT 'cron',
            holder TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, claimed_at REAL NOT NULL,
            started_at REAL, finished_at REAL, error TEXT, result TEXT, UNIQUE (name, slot));
        CREATE INDEX IF NOT EXISTS schedule_runs_due ON schedule_runs (state, due);
    """,
    "leases": """
        CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
            acquired_at REAL NOT NULL, expires_at REAL NOT NULL);
    """,
    "target_calls": """
        CREATE TABLE target_calls (id INTEGER PRIMARY KEY, target TEXT NOT NULL, kind TEXT NOT NULL,
            window_start REAL NOT NULL, window_end REAL NOT NULL, calls INTEGER NOT NULL, outcomes TEXT NOT NULL,
            bytes_written INTEGER NOT NULL, bytes_read INTEGER NOT NULL, latency_sum REAL NOT NULL,
            histogram TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS target_calls_end ON target_calls (window_end);
    """,
    "drills": """
        CREATE TABLE drills (id TEXT PRIMARY KEY, db TEXT NOT NULL, kind TEXT NOT NULL, started_at REAL NOT NULL,
            verdict TEXT NOT NULL, target TEXT NOT NULL, report TEXT NOT NULL, mac TEXT, sealed TEXT);
        CREATE INDEX IF NOT EXISTS drills_started ON drills (started_at);
    """,
    "target_state": """
        CREATE TABLE target_state (target TEXT PRIMARY KEY, last_write_ok_at REAL, last_read_ok_at REAL,
            last_error_class TEXT, last_error TEXT, last_error_at REAL, stored_bytes INTEGER, stored_objects INTEGER,
            stored_measured_at REAL);
    """,
}


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this catalog has not had yet, each in its own transaction."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    for i, step in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            if isinstance(step, str):
                db.executescript(f"BEGIN; {step}; PRAGMA user_version={i}; COMMIT;")
                continue
            db.execute("BEGIN IMMEDIATE")
            step(db)
            db.execute(f"PRAGMA user_version={i}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def schema_problems(db: sqlite3.Connection) -> list[str]:
    """Dropped tables, and triggers or views backstop never creates (a trigger can silently swallow or
    rewrite what backstop writes)."""
    rows = db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger', 'view')")
    have: dict[str, set[str]] = {"table": set(), "trigger": set(), "view": set()}
    for kind, name in rows:
        have[kind].add(name)
    problems = [f"table {t} is missing from the catalog" for t in TABLES if t not in have["table"]]
    problems += [f"the catalog has a {kind} {name!r} that backstop did not create"
                 for kind in ("trigger", "view") for name in sorted(have[kind])]
    return problems


def repair_schema(db: sqlite3.Connection) -> list[str]:
    """Drop foreign triggers and views, recreate missing tables (empty); returns what was done."""
    done = []
    for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')").fetchall():
        db.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
        done.append(f"dropped {kind} {name!r}")
    missing = [t for t in TABLES if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (t,)).fetchone()]
    if missing:
        db.executescript("BEGIN; " + "".join(TABLES[t] for t in missing) + "; COMMIT;")
        done += [f"recreated table {t}" for t in missing]
    return done


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None
