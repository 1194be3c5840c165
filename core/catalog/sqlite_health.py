"""Per-target health in an SQLite catalog: call statistics per window and each target's newest marks.

``target_calls`` holds one row per (target, call kind, window) the meter
flushed (core/storage/metered.py); rows older than ``KEEP_S`` are dropped
as new ones arrive. ``target_state`` holds one row per target: the newest
successful write and read, the newest error and the bytes stored as of the
newest listing of the data packs. Only newer facts replace older ones, so
two processes flushing in either order leave the newest.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence

from core.catalog.sqlite_security import transaction
from core.storage.health import HealthWindow, TargetHealthState, TargetMarks

KEEP_S = 30 * 86_400

_STATE_COLS = ("target, last_write_ok_at, last_read_ok_at, last_error_class, last_error, last_error_at, stored_bytes,"
               " stored_objects, stored_measured_at")


class HealthTables:
    """Writes of per-target health (mixed into SqliteCatalog)."""

    _db: sqlite3.Connection

    def record_target_health(self, windows: Sequence[HealthWindow], marks: Mapping[str, TargetMarks]) -> None:
        """Store a flush of the meter: its call rows and each target's newer marks."""
        with transaction(self._db):
            self._db.executemany(
                "INSERT INTO target_calls (target, kind, window_start, window_end, calls, outcomes, bytes_written,"
                " bytes_read, latency_sum, histogram) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(w.target, w.kind, w.start, w.end, w.calls, json.dumps(w.outcomes), w.bytes_written, w.bytes_read,
                  w.latency_sum, json.dumps({str(k): v for k, v in w.hist.items()})) for w in windows])
            for target, m in marks.items():
                self._db.execute("INSERT OR IGNORE INTO target_state (target) VALUES (?)", (target,))
                self._db.execute(
                    "UPDATE target_state SET last_write_ok_at = max(coalesce(last_write_ok_at, 0), coalesce(?, 0)),"
                    " last_read_ok_at = max(coalesce(last_read_ok_at, 0), coalesce(?, 0)) WHERE target=?",
                    (m.last_write_ok_at, m.last_read_ok_at, target))
                if m.last_error is not None:
                    cls, msg, at = m.last_error
                    self._db.execute("UPDATE target_state SET last_error_class=?, last_error=?, last_error_at=?"
                                     " WHERE target=? AND coalesce(last_error_at, 0) <= ?", (cls, msg, at, target, at))
                stored = m.stored()
                if stored is not None:
                    size, count, at, _ = stored
                    self._db.execute("UPDATE target_state SET stored_bytes=?, stored_objects=?, stored_measured_at=?"
                                     " WHERE target=? AND coalesce(stored_measured_at, 0) <= ?",
                                     (size, count, at, target, at))
            self._db.execute("DELETE FROM target_calls WHERE window_end < ?", (time.time() - KEEP_S,))


def _zero_none(v: object) -> float | None:
    return None if v is None or v == 0 else float(v)  # type: ignore[arg-type]


def health_windows(db: sqlite3.Connection, since: float) -> list[HealthWindow]:
    """Call rows whose window ended at or after ``since``, oldest first."""
    rows = db.execute("SELECT target, kind, window_start, window_end, calls, outcomes, bytes_written, bytes_read,"
                      " latency_sum, histogram FROM target_calls WHERE window_end >= ? ORDER BY window_end", (since,))
    return [HealthWindow(str(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4]), json.loads(r[5]), int(r[6]),
                         int(r[7]), float(r[8]), {int(k): int(v) for k, v in json.loads(r[9]).items()})
            for r in rows]


def health_states(db: sqlite3.Connection) -> dict[str, TargetHealthState]:
    """Each target's newest marks, by target name."""
    out: dict[str, TargetHealthState] = {}
    for r in db.execute(f"SELECT {_STATE_COLS} FROM target_state"):
        out[str(r[0])] = TargetHealthState(
            str(r[0]), _zero_none(r[1]), _zero_none(r[2]), r[3], r[4], None if r[5] is None else float(r[5]),
            None if r[6] is None else int(r[6]), None if r[7] is None else int(r[7]),
            None if r[8] is None else float(r[8]))
    return out
