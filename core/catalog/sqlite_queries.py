"""Read-only queries over the SQLite catalog for the console and the insights, and its change feed.

The writer (:class:`core.catalog.sqlite.SqliteCatalog`) owns the schema;
this module only reads. Each thread gets its own SQLite connection: the
console reads from several worker threads at once, and SQLite in WAL mode
lets every reader see a consistent snapshot without blocking the writer
(which may be the CLI in another process).

Large lists are addressed by rowid: a listing is first resolved to the
ordered rowids of its rows (a few MiB for 100,000 rows), and pages are then
fetched by rowid. Pages are cheap whatever their position, and rows do not
shift under a scrolling operator when new snapshots arrive.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.catalog.sqlite_health import health_states, health_windows
from core.catalog.sqlite_schema import has_table
from core.drills.model import DrillReport
from core.records import (
    AuditTable,
    DatabaseSummary,
    DurationHistogram,
    JobFailure,
    JobRecord,
    RestoreRecord,
    ScheduleRunStats,
    SnapshotRow,
    TargetCheck,
    VerificationRecord,
)
from core.storage.health import HealthWindow, TargetHealthState

_JOB_COLS = ("id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total, rate, error, "
             "description, host, pid")
VERIFICATION_COLS = ("id, job_id, target, snapshot_id, started_at, finished_at, read_data, objects_checked, "
                     "bytes_read, ok, problems")
RESTORE_COLS = "id, job_id, snapshot_id, db, into_db, tables, started_at, duration_s, bytes, ok, error, kind, target"
AUDIT_TABLE = "audit_log"


def drill_rows(conn: sqlite3.Connection, db: str | None, since: float, until: float | None,
               limit: int) -> list[DrillReport]:
    """Drill reports started in [since, until) (of one database), newest first."""
    sql = "SELECT report FROM drills WHERE started_at >= ?"
    args: list[object] = [since]
    if until is not None:
        sql += " AND started_at < ?"
        args.append(until)
    if db:
        sql += " AND db=?"
        args.append(db)
    sql += " ORDER BY started_at DESC LIMIT ?"
    args.append(limit)
    return [DrillReport.from_json(json.loads(r[0])) for r in conn.execute(sql, args)]


def restore_record(r: Sequence[Any]) -> RestoreRecord:
    """A restores row (columns as :data:`RESTORE_COLS`) as a record."""
    return RestoreRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], bool(r[9]), r[10], r[11],
                         r[12])


def verification_record(r: Sequence[Any]) -> VerificationRecord:
    """A verifications row (columns as ``VERIFICATION_COLS``) as a record."""
    return VerificationRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], bool(r[9]), json.loads(r[10]))


def _read_only(path: Path) -> sqlite3.Connection:
    # Not mode=ro: a read-only open of a WAL database fails when its
    # -shm file does not exist yet. Nothing here ever writes.
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


class SqliteChangeFeed:
    """Commits to the catalog by anyone, seen through ``PRAGMA data_version`` on a connection of its own.

    SQLite changes a connection's data_version whenever *another*
    connection (in any process) commits, so one cheap query per poll is all
    an idle console costs.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends a wait() when close() is called from another thread

    def poll(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._conn is None:
                self._conn = _read_only(self.path)
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            changed = self._version is not None and version != self._version
            self._version = version
            return changed

    def wait(self, timeout: float) -> bool:
        """SQLite has no notification: look again once ``timeout`` has passed (sooner when closed)."""
        if self._closing.wait(timeout):
            return False
        return self.poll()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _Local(threading.local):
    """Per-thread connection slot."""

    conn: sqlite3.Connection | None = None


def _word_clause(column_expr: str, words: Sequence[str]) -> tuple[str, list[object]]:
    """AND of case-insensitive substring matches, one per word."""
    if not words:
        return "", []
    return " AND ".join(f"instr({column_expr}, ?) > 0" for _ in words), [w.lower() for w in words]


class SqliteQueries:
    """Read-only access to a catalog file, safe to use from several threads (``core.catalog.base.CatalogQueries``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = _Local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- connections ----------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        conn = self._local.conn
        if conn is None:
            conn = _read_only(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.ProgrammingError:
                pass  # closed from its own thread already
        self._local = _Local()

    def changes(self) -> SqliteChangeFeed:
        return SqliteChangeFeed(self.path)

    def data_version(self) -> int:
        """Changes whenever another connection (any process) commits (this thread's connection; SQLite only)."""
        return int(self._db().execute("PRAGMA data_version").fetchone()[0])

    def has_table(self, name: str) -> bool:
        """True when the catalog holds a table of that name."""
        return has_table(self._db(), name)

    # -- databases and snapshots ----------------------------------------------------

    def databases(self) -> list[DatabaseSummary]:
        """Each database with its snapshot count and newest snapshot.

        One query per database, each answered from the (db, finished_at) index
        alone: a GROUP BY over the table reads every row (10x slower at 100,000).
        """
        db = self._db()
        names = [r[0] for r in db.execute("SELECT DISTINCT db FROM snapshots ORDER BY db")]
        return [DatabaseSummary(n, *db.execute("SELECT count(*), max(finished_at) FROM snapshots WHERE db=?",
                                                (n,)).fetchone()) for n in names]

    @staticmethod
    def _snapshot_where(db: str | None, words: Sequence[str]) -> tuple[str, list[object]]:
        where: list[str] = []
        args: list[object] = []
        if db:
            where.append("db=?")
            args.append(db)
        clause, wargs = _word_clause("lower(id || ' ' || db || ' ' || kind || ' ' || finished_at || ' ' || targets)",
                                     words)
        if clause:
            where.append(clause)
            args += wargs
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def snapshot_rowids(self, db: str | None = None, words: Sequence[str] = ()) -> array:
        """Rowids of the matching snapshots, newest first."""
        where, args = self._snapshot_where(db, words)
        out = array("q")
        cur = self._db().execute(f"SELECT rowid FROM snapshots{where} ORDER BY finished_at DESC, rowid DESC", args)
        while True:
            batch = cur.fetchmany(20_000)
            if not batch:
                return out
            out.extend(r[0] for r in batch)

    def snapshot_total(self, db: str | None = None, words: Sequence[str] = ()) -> int:
        """How many snapshots match."""
        where, args = self._snapshot_where(db, words)
        return int(self._db().execute(f"SELECT count(*) FROM snapshots{where}", args).fetchone()[0])

    def snapshot_page(self, start: int, stop: int, total: int, db: str | None = None,
                      words: Sequence[str] = ()) -> list[int]:
        """Rowids of positions [start, stop) of the newest-first listing, without listing everything.

        Pages near the end are read in ascending order with a small offset, so
        the last page of 100,000 costs what the first one does.
        """
        where, args = self._snapshot_where(db, words)
        n = max(0, stop - start)
        if start <= total - stop:
            sql = f"SELECT rowid FROM snapshots{where} ORDER BY finished_at DESC, rowid DESC LIMIT ? OFFSET ?"
            return [r[0] for r in self._db().execute(sql, [*args, n, start])]
        sql = f"SELECT rowid FROM snapshots{where} ORDER BY finished_at ASC, rowid ASC LIMIT ? OFFSET ?"
        rows = [r[0] for r in self._db().execute(sql, [*args, n, max(0, total - stop)])]
        rows.reverse()
        return rows

    def snapshot_rows(self, rowids: Sequence[int]) -> list[SnapshotRow]:
        """Snapshots by rowid (in the order given) with their latest check per target."""
        if not rowids:
            return []
        ids = list(rowids)
        marks = ",".join("?" * len(ids))
        db = self._db()
        found = {
            r[0]: r
            for r in db.execute(
                "SELECT rowid, id, db, kind, started_at, finished_at, size_bytes, stored_bytes, targets, job_id,"
                f" status, start_lsn, stop_lsn, timeline FROM snapshots WHERE rowid IN ({marks})", ids)
        }
        checks = self.latest_checks([found[i][1] for i in ids if i in found])
        out = []
        for i in ids:
            r = found.get(i)
            if r is None:
                continue  # deleted since the listing was made
            out.append(SnapshotRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])), r[9],
                                   checks.get(r[1], ()), r[10] or "restorable", r[11], r[12], r[13]))
        return out

    def latest_snapshots(self, db: str, limit: int = 200) -> list[SnapshotRow]:
        """The newest snapshots of one database, newest first."""
        rowids = [r[0] for r in self._db().execute(
            "SELECT rowid FROM snapshots WHERE db=? ORDER BY finished_at DESC, rowid DESC LIMIT ?", (db, limit))]
        return self.snapshot_rows(rowids)

    def snapshot_by_id(self, sid: str) -> SnapshotRow | None:
        """One snapshot by full id or unique prefix (at least 4 characters)."""
        if len(sid) < 4:
            return None
        # A prefix compare, not LIKE: '_' and '%' in what was typed must not match anything.
        rows = self._db().execute("SELECT rowid FROM snapshots WHERE substr(id, 1, ?) = ? LIMIT 2",
                                  (len(sid), sid.lower())).fetchall()
        if len(rows) != 1:
            return None
        got = self.snapshot_rows([rows[0][0]])
        return got[0] if got else None

    def latest_checks(self, snapshot_ids: Iterable[str]) -> dict[str, tuple[TargetCheck, ...]]:
        """The newest verification per (snapshot, target) for the given snapshots."""
        ids = list(snapshot_ids)
        out: dict[str, list[TargetCheck]] = {}
        db = self._db()
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            rows = db.execute(
                "SELECT snapshot_id, target, ok, read_data, finished_at, problems FROM verifications WHERE id IN ("
                f" SELECT max(id) FROM verifications WHERE snapshot_id IN ({marks}) GROUP BY snapshot_id, target)",
                part)
            for sid, target, ok, read_data, at, problems in rows:
                out.setdefault(sid, []).append(TargetCheck(target, bool(ok), bool(read_data), at,
                                                           tuple(json.loads(problems))))
        return {k: tuple(sorted(v, key=lambda c: c.target)) for k, v in out.items()}

    def snapshot_count(self) -> int:
        """How many snapshots the catalog holds."""
        return int(self._db().execute("SELECT count(*) FROM snapshots").fetchone()[0])

    def snapshots_lacking(self, targets: Sequence[str]) -> dict[str, int]:
        """Per target, how many snapshots it lacks (a quorum write left it out); targets lacking none are omitted."""
        out: dict[str, int] = {}
        for t in targets:
            # Target names are [A-Za-z0-9_.-]: the JSON-quoted name occurs in the list exactly when it is a member.
            n = int(self._db().execute("SELECT count(*) FROM snapshots WHERE instr(targets, ?) = 0",
                                       (json.dumps(t),)).fetchone()[0])
            if n:
                out[t] = n
        return out

    def snapshots_verified_since(self, since: float) -> int:
        """Snapshots (still in the catalog) with a passed verification finished at or after ``since``."""
        return int(self._db().execute(
            "SELECT count(DISTINCT v.snapshot_id) FROM verifications v JOIN snapshots s ON s.id = v.snapshot_id"
            " WHERE v.ok=1 AND v.finished_at >= ?", (since,)).fetchone()[0])

    def never_verified(self, since_iso: str, older_than_iso: str,
                       limit: int = 5) -> tuple[int, list[tuple[str, str, str]]]:
        """Snapshots finished in [since, older_than) with no verification at all: (count, examples)."""
        rows = self._db().execute(
            "SELECT s.id, s.db, s.finished_at FROM snapshots s WHERE s.finished_at >= ? AND s.finished_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM verifications v WHERE v.snapshot_id = s.id)",
            (since_iso, older_than_iso)).fetchall()
        rows.sort(key=lambda r: r[2], reverse=True)
        return len(rows), [(a, b, c) for a, b, c in rows[:limit]]

    def snapshot_series(self, since_iso: str) -> list[tuple[str, str, str, str, int, int]]:
        """(db, kind, started_at, finished_at, size_bytes, stored_bytes) finished since a time, oldest first."""
        return [tuple(r) for r in self._db().execute(
            "SELECT db, kind, started_at, finished_at, size_bytes, stored_bytes FROM snapshots"
            " WHERE finished_at >= ? ORDER BY finished_at", (since_iso,))]

    def latest_snapshot_per_db(self) -> dict[str, str]:
        """Each database's newest snapshot time (ISO), from the (db, finished_at) index."""
        return {d.db: d.latest for d in self.databases() if d.latest}

    # -- jobs -----------------------------------------------------------------------

    def jobs(self, limit: int = 200, words: Sequence[str] = ()) -> list[JobRecord]:
        """Running jobs first, then the most recent ones, newest first."""
        clause, args = _word_clause("lower(id || ' ' || kind || ' ' || coalesce(db,'') || ' ' || state || ' ' || "
                                    "description)",
                                    words)
        sql = f"SELECT {_JOB_COLS} FROM jobs" + (f" WHERE {clause}" if clause else "")
        sql += " ORDER BY started_at DESC LIMIT ?"
        rows = [JobRecord(*r) for r in self._db().execute(sql, (*args, limit))]
        running = [j for j in rows if j.state == "running"]
        return running + [j for j in rows if j.state != "running"]

    def running_jobs(self) -> list[JobRecord]:
        """Jobs in state 'running' (from any process), oldest first."""
        return [JobRecord(*r) for r in self._db().execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state='running' ORDER BY started_at")]

    def job(self, job_id: str) -> JobRecord | None:
        """One job by id."""
        r = self._db().execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return JobRecord(*r) if r else None

    def job_events(self, job_id: str, after_id: int = 0,
                   limit: int = 1000) -> list[tuple[int, float, str, dict[str, object]]]:
        """A job's event log (id, time, type, payload) after an event id, oldest first."""
        rows = self._db().execute(
            "SELECT id, ts, type, payload FROM job_events WHERE job_id=? AND id>? ORDER BY id LIMIT ?",
            (job_id, after_id, limit))
        return [(i, ts, t, json.loads(p)) for i, ts, t, p in rows]

    def finished_jobs_since(self, since: float, kind: str | None = None) -> list[JobRecord]:
        """Jobs started since ``since`` (epoch seconds), oldest first, optionally of one kind."""
        sql = f"SELECT {_JOB_COLS} FROM jobs WHERE started_at >= ?"
        args: list[object] = [since]
        if kind:
            sql += " AND +kind=?"  # unary plus: the time window's index, not the (kind, duration) one
            args.append(kind)
        return [JobRecord(*r) for r in self._db().execute(sql + " ORDER BY started_at", args)]

    def failed_jobs_since(self, since: float) -> list[JobRecord]:
        """Failed jobs started since ``since``, oldest first."""
        return [JobRecord(*r) for r in self._db().execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE started_at >= ? AND +state IN ('failed', 'abandoned')"
            " ORDER BY started_at", (since,))]  # +state: the time window's index, as before the (state, kind) one

    def job_failures_since(self, since: float) -> list[JobFailure]:
        """Failed or abandoned jobs started since ``since``, with the class and target their result names."""
        return [JobFailure(*r) for r in self._db().execute(
            "SELECT id, kind, db, state, started_at, error,"
            " CASE WHEN json_valid(result) THEN json_extract(result, '$.error_class') END,"
            " CASE WHEN json_valid(result) THEN json_extract(result, '$.target') END"
            " FROM jobs WHERE started_at >= ? AND +state IN ('failed', 'abandoned') ORDER BY started_at", (since,))]

    def drill_reports(self, db: str | None = None, since: float = 0.0, limit: int = 1000) -> list[DrillReport]:
        """Drill reports started since ``since`` (of one database), newest first."""
        if not self.has_table("drills"):
            return []  # a catalog from before drill reports, opened read-only
        return drill_rows(self._db(), db, since, None, limit)

    def missed_runs_since(self, since: float, action: str = "backup") -> list[tuple[str, float]]:
        """Scheduled runs of ``action`` recorded as missed with a slot after ``since``: (db or name, due)."""
        if not self.has_table("schedule_runs"):
            return []  # a catalog from before the scheduler, opened read-only
        return [(str(w), float(d)) for w, d in self._db().execute(
            "SELECT coalesce(db, name), due FROM schedule_runs WHERE state='missed' AND action=? AND due>?"
            " ORDER BY due", (action, since))]

    def backup_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        """Finished backup jobs started in the last ``days`` days: days ago -> (succeeded, failed)."""
        rows = self._db().execute(
            "SELECT CAST((?1 - started_at) / 86400 AS INTEGER) AS age, sum(state = 'succeeded'),"
            " sum(state IN ('failed', 'abandoned')) FROM jobs WHERE started_at > ?1 - ?2 * 86400 AND started_at <= ?1"
            " AND +kind = 'backup' AND state != 'running' GROUP BY age", (now, days))  # +kind: the time index
        return {int(a): (int(p), int(f)) for a, p, f in rows}

    # -- aggregates for the metrics endpoint ------------------------------------------------
    # One scan each, grouped by SQLite: a scrape with 100,000 jobs must take well under 100 ms, so no
    # row of the large tables crosses into Python.

    def job_duration_histograms(self, bounds: Sequence[float]) -> list[DurationHistogram]:
        """Per job kind, the finished jobs counted into the ascending ``bounds`` (seconds), by kind.

        One range count per (kind, bucket) on the (kind, duration) index: every index entry is read once and
        no row is computed on (a CASE over 100,000 rows costs 10x more). Running jobs have no duration.
        """
        db = self._db()
        edges = sorted(float(b) for b in bounds)
        d = "finished_at - started_at"  # exactly the indexed expression (sqlite_schema: jobs_kind_duration)
        out = []
        kind = db.execute("SELECT min(kind) FROM jobs").fetchone()[0]
        while kind is not None:
            counts: list[int] = []
            total = 0.0
            for i in range(len(edges) + 1):
                where = [f"{d} > ?" if i else f"{d} IS NOT NULL"] + ([f"{d} <= ?"] if i < len(edges) else [])
                args = [kind] + ([edges[i - 1]] if i else []) + ([edges[i]] if i < len(edges) else [])
                n, s = db.execute(f"SELECT count(*), total({d}) FROM jobs WHERE kind = ? AND {' AND '.join(where)}",
                                  args).fetchone()
                counts.append(int(n))
                total += float(s)
            cumulative = [sum(counts[:i + 1]) for i in range(len(edges))]
            out.append(DurationHistogram(kind, tuple(edges), tuple(cumulative), sum(counts), total))
            kind = db.execute("SELECT min(kind) FROM jobs WHERE kind > ?", (kind,)).fetchone()[0]
        return out

    def job_failure_counts(self) -> dict[tuple[str, str], int]:
        """Failed and abandoned jobs: (kind, class) -> count (class as core/jobs.py records it)."""
        rows = self._db().execute(
            "SELECT kind, CASE WHEN state = 'abandoned' THEN 'interrupted' ELSE coalesce(CASE WHEN json_valid(result)"
            " THEN json_extract(result, '$.error_class') END, 'unknown') END AS class, count(*) FROM jobs"
            " WHERE state IN ('failed', 'abandoned') GROUP BY kind, class")
        return {(str(k), str(c)): int(n) for k, c, n in rows}

    def schedule_run_stats(self) -> list[ScheduleRunStats]:
        """Per schedule and state, how many runs and when the newest of them finished."""
        if not self.has_table("schedule_runs"):
            return []
        return [ScheduleRunStats(str(name), str(action), str(state), int(n), None if at is None else float(at))
                for name, action, state, n, at in self._db().execute(
                    "SELECT name, action, state, count(*), max(finished_at) FROM schedule_runs"
                    " GROUP BY name, action, state ORDER BY name, state")]

    def newest_restorable(self) -> dict[str, tuple[str, str | None]]:
        """Per database: newest restorable snapshot's finished_at, newest restorable physical one of its cluster."""
        db = self._db()
        out: dict[str, tuple[str, str | None]] = {}
        # One index seek per database (a DISTINCT walks the whole (db, finished_at) index).
        name = db.execute("SELECT min(db) FROM snapshots").fetchone()[0]
        while name is not None:
            # Walks the (db, finished_at) index from the newest end: a waiting physical snapshot is skipped.
            own = db.execute("SELECT finished_at FROM snapshots WHERE db=? AND status='restorable'"
                             " ORDER BY finished_at DESC LIMIT 1", (name,)).fetchone()
            phys = db.execute(
                "SELECT max(finished_at) FROM snapshots WHERE system_identifier = (SELECT system_identifier FROM"
                " database_systems WHERE db=?) AND kind='physical' AND status='restorable'", (name,)).fetchone()
            newest = max((v for v in (own[0] if own else None, phys[0]) if v is not None), default=None)
            if newest is not None:
                out[name] = (newest, phys[0])
            name = db.execute("SELECT min(db) FROM snapshots WHERE db > ?", (name,)).fetchone()[0]
        return out

    def latest_drills(self) -> list[DrillReport]:
        """Each database's newest drill report, by database."""
        if not self.has_table("drills"):
            return []
        return [DrillReport.from_json(json.loads(r[0])) for r in self._db().execute(
            "SELECT report FROM drills d WHERE id = (SELECT id FROM drills WHERE db = d.db"
            " ORDER BY started_at DESC, id DESC LIMIT 1) ORDER BY db")]

    def drill_counts(self) -> dict[tuple[str, str], int]:
        """Recorded drills: (database, verdict) -> count."""
        if not self.has_table("drills"):
            return {}
        return {(str(d), str(v)): int(n) for d, v, n in self._db().execute(
            "SELECT db, verdict, count(*) FROM drills GROUP BY db, verdict")}

    # -- verifications and restores ---------------------------------------------------

    def verification_rowids(self, words: Sequence[str] = ()) -> array:
        """Rowids of matching verifications, newest first."""
        clause, args = _word_clause(
            "lower(target || ' ' || coalesce(snapshot_id,'repository') || ' ' || "
            "CASE ok WHEN 1 THEN 'ok' ELSE 'failed' END"
            " || ' ' || problems)", words)
        sql = "SELECT id FROM verifications" + (f" WHERE {clause}" if clause else "") + " ORDER BY id DESC"
        out = array("q")
        out.extend(r[0] for r in self._db().execute(sql, args))
        return out

    def verification_rows(self, ids: Sequence[int]) -> list[VerificationRecord]:
        """Verifications by id, in the order given."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        query = f"SELECT {VERIFICATION_COLS} FROM verifications WHERE id IN ({marks})"
        found = {r[0]: r for r in self._db().execute(query,
                                                      list(ids))}
        return [verification_record(r) for i in ids if (r := found.get(i)) is not None]

    def verification_counts_by_age(self, now: float, days: int) -> dict[int, tuple[int, int]]:
        """Verifications of the last ``days`` days: whole days ago -> (passed, failed), counted in SQL.

        A handful of rows cross into Python whatever the catalog's size (the
        dashboard's start-up time depends on it).
        """
        rows = self._db().execute(
            "SELECT CAST((?1 - finished_at) / 86400 AS INTEGER) AS age, sum(ok = 1), sum(ok = 0) FROM verifications"
            " WHERE finished_at > ?1 - ?2 * 86400 AND finished_at <= ?1 GROUP BY age", (now, days))
        return {int(a): (int(p), int(f)) for a, p, f in rows}

    def verifications_since(self, since: float) -> list[VerificationRecord]:
        """Verifications finished since ``since`` (epoch seconds), oldest first."""
        return [verification_record(r) for r in self._db().execute(
            f"SELECT {VERIFICATION_COLS} FROM verifications WHERE finished_at >= ? ORDER BY finished_at", (since,))]

    def latest_target_checks(self) -> dict[str, VerificationRecord]:
        """Each target's newest repository-wide verification (snapshot_id NULL)."""
        rows = self._db().execute(
            f"SELECT {VERIFICATION_COLS} FROM verifications WHERE id IN"
            " (SELECT max(id) FROM verifications WHERE snapshot_id IS NULL GROUP BY target)")
        return {r[2]: verification_record(r) for r in rows}

    def target_health_windows(self, since: float) -> list[HealthWindow]:
        """Per-target call statistics of the windows that ended at or after ``since``, oldest first."""
        return health_windows(self._db(), since) if self.has_table("target_calls") else []

    def target_health_states(self) -> dict[str, TargetHealthState]:
        """Each target's newest successful write and read, newest error and bytes stored."""
        return health_states(self._db()) if self.has_table("target_state") else {}

    def damaged_copies(self, limit: int = 20) -> list[VerificationRecord]:
        """Snapshot copies whose newest verification on their target failed, newest first."""
        db = self._db()
        # Failed rows are rare: find them with one plain scan (grouping in SQL walks the whole
        # (snapshot_id, target) index instead, 6x slower at 200,000 rows), then drop those a
        # later check of the same copy cleared.
        newest: dict[tuple[str, str], int] = {}
        for i, sid, target in db.execute(
                "SELECT id, snapshot_id, target FROM verifications WHERE ok=0 AND snapshot_id IS NOT NULL"):
            newest[(sid, target)] = max(i, newest.get((sid, target), 0))
        ids = [i for (sid, target), i in newest.items() if db.execute(
            "SELECT 1 FROM verifications WHERE snapshot_id=? AND target=? AND id>? AND ok=1 LIMIT 1",
            (sid, target, i)).fetchone() is None]
        ids.sort(reverse=True)
        return self.verification_rows(ids[:limit])

    def restores(self, since: float = 0.0, db: str | None = None, limit: int = 1000,
                 kind: str | None = None) -> list[RestoreRecord]:
        """Measured restores (and drills) started since ``since``, oldest first."""
        sql = f"SELECT {RESTORE_COLS} FROM restores WHERE started_at >= ?"
        args: list[object] = [since]
        if db:
            sql += " AND db=?"
            args.append(db)
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        sql += " ORDER BY started_at DESC, id DESC LIMIT ?"
        args.append(limit)
        rows = [restore_record(r) for r in self._db().execute(sql, args)]
        rows.reverse()
        return rows

    # -- the audit log, for display ---------------------------------------------------------

    def audit_table(self) -> AuditTable | None:
        """The audit log's table and its columns, in storage order (None when the table is missing)."""
        if not self.has_table(AUDIT_TABLE):
            return None
        cols = tuple(r[1] for r in self._db().execute(f'PRAGMA table_info("{AUDIT_TABLE}")'))
        return AuditTable(AUDIT_TABLE, cols)

    def audit_rowids(self, words: Sequence[str] = ()) -> array:
        """Rowids of the audit entries matching ``words`` in any column, newest first."""
        table = self.audit_table()
        out = array("q")
        if table is None:
            return out
        concat = " || ' ' || ".join(f'coalesce(CAST("{c}" AS TEXT), \'\')' for c in table.columns) or "''"
        clause, args = _word_clause(f"lower({concat})", words)
        sql = f'SELECT rowid FROM "{table.name}"' + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid DESC"
        out.extend(r[0] for r in self._db().execute(sql, args))
        return out

    def audit_rows(self, rowids: Sequence[int]) -> list[tuple[object, ...]]:
        """Audit entries by rowid, in the order given (values in ``audit_table().columns`` order)."""
        table = self.audit_table()
        if table is None or not rowids:
            return []
        marks = ",".join("?" * len(rowids))
        cols = ", ".join(f'"{c}"' for c in table.columns)
        found = {r[0]: r[1:] for r in self._db().execute(
            f'SELECT rowid, {cols} FROM "{table.name}" WHERE rowid IN ({marks})', list(rowids))}
        return [found[i] for i in rowids if i in found]
