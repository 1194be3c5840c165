"""Activity thresholds (issue 14): an agent samples each database's activity and starts a snapshot once the WAL
written, the rows changed or the time since the last success crosses a configured limit.

Config (``fleet.thresholds`` in the agent's config)::

    thresholds: {wal_bytes: 4GB, changed_rows: 5%, max_age: 26h}

The agent's loop: ``now = await sample(dsn)``; ``fired = crossed(cfg, store.get(db), now, last_success_at)``;
the first sample of a database becomes its baseline (``store.set(db, now)``), and so does the sample taken
when a snapshot starts, so the counts run "since the last snapshot". ``fired.threshold`` is recorded with the job.

Counters go backwards: pg_stat_user_tables' counters restart at zero on a stats reset (pg_stat_reset()), on a
server crash or immediate shutdown, and after a restore from a physical backup; dropping a table takes its
counters out of the sum; and the WAL position goes back when the database is replaced by a restore (another
cluster, an earlier point in time). A baseline larger than now therefore means "reset": the current value is
taken as the delta, i.e. the count since the reset. That can fire early, never late, which is the safe side for
a backup: the alternative (a negative delta, clamped to zero) would hold the threshold off until the counters
climb back past the stale baseline, which can be weeks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psycopg
from pydantic import ValidationError

from core.config import RowLimit, ThresholdsConfig, parse_row_limit
from core.errors import ConfigError, PostgresError
from core.postgres.logical import connect
from core.postgres.tools import libpq_message

log = logging.getLogger(__name__)

# The config model lives with the rest of the config (core/config.py); it is part of this module's interface.
__all__ = ["Activity", "BaselineStore", "Fired", "RowLimit", "ThresholdsConfig", "crossed", "parse_row_limit",
           "parse_thresholds", "sample"]

ThresholdName = Literal["max_age", "wal_bytes", "changed_rows"]


def parse_thresholds(data: object, where: str = "thresholds") -> ThresholdsConfig:
    """Validate a ``thresholds`` mapping; a ConfigError names the key path under ``where`` and what was expected."""
    try:
        return ThresholdsConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join([where, *(str(p) for p in first["loc"])])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key (expected wal_bytes, changed_rows or max_age)"
        elif first["type"] == "model_type":
            msg = "expected a mapping like {wal_bytes: 4GB, changed_rows: 5%, max_age: 26h}"
        raise ConfigError(f"{loc}: {msg}") from None


@dataclass(frozen=True)
class Activity:
    """One sample of a database's activity counters."""

    wal_lsn: int  # WAL position in bytes (pg_current_wal_lsn(); pg_last_wal_replay_lsn() on a standby)
    changed_rows: int  # sum of n_tup_ins + n_tup_upd + n_tup_del over pg_stat_user_tables
    live_rows: int  # sum of n_live_tup
    at: float  # epoch seconds
    standby: bool = False  # sampled on a standby: changed_rows stays 0 there (row stats are not replicated)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Activity:
        def num(key: str) -> int:
            v = d[key]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{key} is not an integer")
            return v
        at = d["at"]
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            raise ValueError("at is not a number")
        return cls(num("wal_lsn"), num("changed_rows"), num("live_rows"), float(at), bool(d.get("standby", False)))


_LSN_PRIMARY = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# A standby cannot call pg_current_wal_lsn(); what it has replayed is the WAL its primary wrote, which is the
# activity that matters. NULL only on a server never in recovery, which a standby is not.
_LSN_STANDBY = "SELECT coalesce(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(), '0/0'::pg_lsn) - '0/0'::pg_lsn"
_ROWS = ("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0), coalesce(sum(n_live_tup), 0)"
         " FROM pg_stat_user_tables")


async def sample(dsn: str) -> Activity:
    """The database's activity counters now; a PostgresError (one line) when it cannot be read."""
    conn = await connect(dsn, "the database")
    try:
        async with conn:
            row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
            standby = bool(row and row[0])
            row = await (await conn.execute(_LSN_STANDBY if standby else _LSN_PRIMARY)).fetchone()
            lsn = int(row[0]) if row and row[0] is not None else 0
            row = await (await conn.execute(_ROWS)).fetchone()
            changed, live = (int(row[0]), int(row[1])) if row else (0, 0)
    except psycopg.Error as exc:
        raise PostgresError(f"cannot read the activity counters: {libpq_message(exc)}") from None
    return Activity(wal_lsn=lsn, changed_rows=changed, live_rows=live, at=time.time(), standby=standby)


@dataclass(frozen=True)
class Fired:
    """The threshold that fired, and why in one line (recorded with the snapshot job)."""

    threshold: ThresholdName
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"threshold": self.threshold, "reason": self.reason}


def _delta(base: int, now: int) -> int:
    # A baseline above now: the counters were reset (module docstring); count from zero.
    return now - base if now >= base else now


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m {s % 60}s"


def crossed(cfg: ThresholdsConfig, baseline: Activity | None, now: Activity,
            last_success_at: float | None) -> Fired | None:
    """The first threshold crossed (max_age, then wal_bytes, then changed_rows), or None.

    Without a baseline only max_age can fire; the caller keeps ``now`` as the baseline.
    """
    if cfg.max_age is not None:
        limit = cfg.max_age.total_seconds()
        if last_success_at is None:
            return Fired("max_age", "max_age: no successful snapshot yet")
        age = now.at - last_success_at
        if age >= limit:
            return Fired("max_age", f"max_age: {_age(age)} since the last successful snapshot (limit {_age(limit)})")
    if baseline is None:
        return None
    reset = " (counters reset since the baseline: counted from zero)"
    if cfg.wal_bytes is not None:
        wal = _delta(baseline.wal_lsn, now.wal_lsn)
        if wal >= cfg.wal_bytes:
            note = reset if now.wal_lsn < baseline.wal_lsn else ""
            return Fired("wal_bytes", f"wal_bytes: {_bytes(wal)} of WAL written since the last snapshot "
                                      f"(limit {_bytes(cfg.wal_bytes)}){note}")
    if cfg.changed_rows is not None:
        rows = _delta(baseline.changed_rows, now.changed_rows)
        # The larger live count: n_live_tup reads 0 after a stats reset until the next ANALYZE or VACUUM,
        # and a database that grew from empty is measured by what it holds now.
        live = max(baseline.live_rows, now.live_rows)
        limit_rows = cfg.changed_rows.rows(live)
        if rows >= limit_rows:
            note = reset if now.changed_rows < baseline.changed_rows else ""
            of = (f"{cfg.changed_rows} of {live:,} = {limit_rows:,}" if cfg.changed_rows.percent
                  else f"{limit_rows:,}")
            return Fired("changed_rows", f"changed_rows: {rows:,} rows changed since the last snapshot "
                                         f"(limit {of}){note}")
    return None


class BaselineStore:
    """Per-database baselines in one JSON file (mode 0600, replaced atomically); a corrupt file starts fresh."""

    VERSION = 1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data: dict[str, Activity] = self._load()

    def _load(self) -> dict[str, Activity]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("threshold baselines %s unreadable (%s): starting fresh", self.path, exc)
            return {}
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("databases"), dict):
                raise ValueError("not a baselines document")
            return {str(name): Activity.from_json(entry) for name, entry in doc["databases"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Baselines only pace snapshots: losing them costs one sampling round, not a backup.
            log.warning("threshold baselines %s corrupt (%s): starting fresh", self.path, exc)
            return {}

    def get(self, db: str) -> Activity | None:
        return self._data.get(db)

    def all(self) -> dict[str, Activity]:
        return dict(self._data)

    def set(self, db: str, activity: Activity) -> None:
        """Keep ``activity`` as ``db``'s baseline and write the file."""
        self._data[db] = activity
        self._save()

    def drop(self, db: str) -> None:
        """Forget ``db``'s baseline (a database no longer configured)."""
        if self._data.pop(db, None) is not None:
            self._save()

    def _save(self) -> None:
        doc = {"version": self.VERSION, "databases": {n: a.to_json() for n, a in sorted(self._data.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600; written whole and renamed over, a crash leaves the old file or the new.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
