"""The scheduler's tables in an SQLite catalog: one row per claimed slot, and leases (mixed into SqliteCatalog).

A slot is claimed by inserting its row: UNIQUE(name, slot) makes the
insert the one place where two schedulers (threads, processes or hosts on
one catalog) decide who runs it. A lease is a row naming its holder and an
expiry; the holder renews it while it works, and a holder that died on this
host (its pid is gone) loses it at once, one on another host when it expires.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time

from core.catalog.sqlite_security import transaction
from core.processes import pid_alive
from core.records import ScheduleRun

_RUN_COLS = ("name, slot, due, action, db, state, trigger, holder, claimed_at, started_at, finished_at, error, "
             "result")
_FINAL_STATES = ("succeeded", "failed", "missed", "abandoned")


def _run(r: tuple[object, ...]) -> ScheduleRun:
    result = json.loads(str(r[12])) if r[12] else None
    return ScheduleRun(str(r[0]), str(r[1]), float(r[2]), str(r[3]),  # type: ignore[arg-type]
                       None if r[4] is None else str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                       float(r[8]), r[9], r[10], r[11], result)  # type: ignore[arg-type]


def _holder_pid(holder: str) -> tuple[str, int]:
    """(host, pid) of a holder named ``host:pid:token``."""
    host, _, rest = holder.rpartition(":")[0].rpartition(":")
    return host, int(rest) if rest.isdigit() else 0


class ScheduleTables:
    """Scheduled runs and leases of an SQLite catalog."""

    _db: sqlite3.Connection

    # -- scheduled runs -----------------------------------------------------------------------

    def claim_schedule_run(self, *, name: str, slot: str, due: float, action: str, db: str | None, holder: str,
                           state: str = "waiting", trigger: str = "cron", error: str | None = None) -> bool:
        """Claim one slot of a schedule for ``holder`` (or record it as missed); False when already claimed."""
        host, pid = _holder_pid(holder)
        now = time.time()
        finished = now if state in _FINAL_STATES else None
        cur = self._db.execute(
            "INSERT OR IGNORE INTO schedule_runs (name, slot, due, action, db, state, trigger, holder, host, pid,"
            " claimed_at, finished_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (name, slot, due, action, db, state, trigger, holder, host, pid, now, finished, error))
        return cur.rowcount == 1

    def update_schedule_run(self, name: str, slot: str, state: str, *, error: str | None = None,
                            result: dict[str, object] | None = None) -> None:
        """Move a claimed run on: running (sets started_at) or a final state (sets finished_at)."""
        now = time.time()
        if state == "running":
            self._db.execute("UPDATE schedule_runs SET state=?, started_at=? WHERE name=? AND slot=?",
                             (state, now, name, slot))
            return
        self._db.execute(
            "UPDATE schedule_runs SET state=?, finished_at=?, error=?, result=? WHERE name=? AND slot=?",
            (state, now, error, None if result is None else json.dumps(result, default=str), name, slot))

    def schedule_runs(self, name: str | None = None, limit: int = 100) -> list[ScheduleRun]:
        """Scheduled runs (of one schedule), newest slot first."""
        sql = f"SELECT {_RUN_COLS} FROM schedule_runs"
        args: list[object] = []
        if name is not None:
            sql += " WHERE name=?"
            args.append(name)
        sql += " ORDER BY due DESC, id DESC LIMIT ?"
        return [_run(r) for r in self._db.execute(sql, (*args, limit))]

    def last_schedule_slot(self, name: str) -> float | None:
        """The newest cron slot of a schedule anyone claimed or recorded (epoch seconds), None if none."""
        row = self._db.execute("SELECT max(due) FROM schedule_runs WHERE name=? AND trigger='cron'",
                               (name,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def abandon_dead_schedule_runs(self) -> int:
        """Runs left waiting or running on this host by a process that is gone: abandoned (running) or missed
        (never started). They are never run again for the same slot."""
        rows = self._db.execute("SELECT name, slot, state, pid FROM schedule_runs WHERE state IN ('waiting',"
                                " 'running') AND host=?", (socket.gethostname(),)).fetchall()
        n = 0
        for name, slot, state, pid in rows:
            if pid_alive(int(pid)):
                continue
            new = "abandoned" if state == "running" else "missed"
            why = f"the scheduler running it (pid {pid}) ended before it finished"
            self._db.execute("UPDATE schedule_runs SET state=?, finished_at=?, error=? WHERE name=? AND slot=?"
                             " AND state=?", (new, time.time(), why, name, slot, state))
            n += 1
        return n

    def snapshot_last_verified(self) -> dict[str, float]:
        """Each snapshot's newest verification time (epoch seconds); unverified snapshots are absent."""
        rows = self._db.execute("SELECT snapshot_id, max(finished_at) FROM verifications WHERE snapshot_id IS NOT"
                                " NULL GROUP BY snapshot_id")
        return {str(s): float(t) for s, t in rows}

    # -- leases -------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        """Take (or renew) lease ``name`` for ``ttl_s`` seconds; False while another live holder has it."""
        now = time.time() if now is None else now
        host, pid = _holder_pid(holder)
        with transaction(self._db):
            row = self._db.execute("SELECT holder, host, pid, expires_at FROM leases WHERE name=?",
                                   (name,)).fetchone()
            if row is not None and row[0] != holder and float(row[3]) > now:
                # A holder on this host whose process is gone cannot renew: do not wait for its expiry.
                if row[1] != socket.gethostname() or pid_alive(int(row[2])):
                    return False
            self._db.execute("INSERT OR REPLACE INTO leases (name, holder, host, pid, acquired_at, expires_at)"
                             " VALUES (?,?,?,?,?,?)", (name, holder, host, pid, now, now + ttl_s))
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up (only if ``holder`` still has it)."""
        self._db.execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))

    def lease_holder(self, name: str, now: float | None = None) -> str | None:
        """Who holds lease ``name`` right now (None: nobody, or it expired)."""
        now = time.time() if now is None else now
        row = self._db.execute("SELECT holder FROM leases WHERE name=? AND expires_at>?", (name, now)).fetchone()
        return None if row is None else str(row[0])
