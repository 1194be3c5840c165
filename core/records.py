"""The records the catalog holds, as typed values for the engine, the insights and the front ends.

They live outside ``core/catalog`` on purpose: the console and the CLI read
them without depending on how (or in which database) the catalog stores
them. Every catalog implementation returns these types.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.format import iso_at

RESTORE_KINDS = ("restore", "drill")


@dataclass(frozen=True)
class SnapshotRecord:
    """A committed snapshot as the catalog knows it."""

    id: str
    db: str
    kind: str
    started_at: str
    finished_at: str
    size_bytes: int
    stored_bytes: int
    targets: list[str] = field(default_factory=list)
    job_id: str | None = None
    # "restorable", or for a physical snapshot "waiting" until the archive holds every WAL segment
    # from its start to its stop LSN. The rest is None for logical snapshots (FORMAT.md 10.2).
    status: str = "restorable"
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    system_identifier: str | None = None
    pg_version: str | None = None
    wal_segment_size: int | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def is_physical(self) -> bool:
        return self.kind == "physical"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BackupRecord(SnapshotRecord):
    """A snapshot just taken, with what its verification covered."""

    packs_read_back: int = 0  # packs this backup uploaded and read back from every target
    packs_reused: int = 0  # packs of earlier backups it references: seen present, not re-read

    @property
    def verified_summary(self) -> str:
        """What "verified" means for this backup, in one clause."""
        read = f"{self.packs_read_back} new pack(s) read back from {', '.join(self.targets)}"
        if not self.packs_reused:
            return read
        return (f"{read}; {self.packs_reused} pack(s) reused from earlier backups were seen present, not re-read "
                "(`backstop check --read-data` reads them)")


@dataclass(frozen=True)
class JobRecord:
    """A job (backup, restore, check) with its latest progress."""

    id: str
    kind: str
    db: str | None
    state: str  # running, succeeded, failed
    started_at: float
    finished_at: float | None
    phase: str | None
    bytes_done: int
    bytes_total: int | None
    rate: float
    error: str | None
    description: str
    host: str
    pid: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class JobFailure:
    """A failed or abandoned job with what the failure insights group it by.

    ``error_class`` and ``target`` come from the job's result (core/jobs.py
    records them since issue 13); older rows have None there.
    """

    job_id: str
    kind: str
    db: str | None
    state: str  # failed or abandoned
    started_at: float
    error: str | None
    error_class: str | None = None  # a class of core/errors.py (or another exception's name)
    target: str | None = None  # the storage target the error blames


@dataclass(frozen=True)
class VerificationRecord:
    """One verification of a target (after a backup or on demand)."""

    id: int
    job_id: str | None
    target: str
    snapshot_id: str | None
    started_at: float
    finished_at: float
    read_data: bool
    objects_checked: int
    bytes_read: int
    ok: bool
    problems: list[str]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreRecord:
    """A measured restore or drill, for recovery-time history and drill rotation."""

    id: int
    job_id: str | None
    snapshot_id: str
    db: str
    into: str
    tables: list[str]
    started_at: float
    duration_s: float
    bytes: int
    ok: bool  # the verdict: the database was restored (True) or the restore failed (False, see error)
    error: str | None
    kind: str = "restore"  # 'restore' or 'drill' (a test restore into a scratch database)
    target: str | None = None  # the first target the restore read from; None when unknown (before this was kept)

    @property
    def is_drill(self) -> bool:
        return self.kind == "drill"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# -- the console's views ---------------------------------------------------------------


@dataclass(frozen=True)
class TargetCheck:
    """The latest verification of one snapshot's copy on one target."""

    target: str
    ok: bool
    read_data: bool
    at: float
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotRow:
    """A snapshot with what the console shows beside it.

    ``rowid`` is the catalog's stable integer key of the row (what large
    listings are addressed by), not part of the snapshot itself.
    """

    rowid: int
    id: str
    db: str
    kind: str
    started_at: str
    finished_at: str
    size_bytes: int
    stored_bytes: int
    targets: tuple[str, ...]
    job_id: str | None
    checks: tuple[TargetCheck, ...] = ()
    # Physical snapshots only (as in SnapshotRecord): waiting/restorable, the LSN range and timeline.
    status: str = "restorable"
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None

    def check(self, target: str) -> TargetCheck | None:
        """The latest verification of the copy on ``target``, if any."""
        for c in self.checks:
            if c.target == target:
                return c
        return None


@dataclass(frozen=True)
class DatabaseSummary:
    """One database as the catalog knows it."""

    db: str
    snapshots: int
    latest: str | None


@dataclass(frozen=True)
class AuditTable:
    """The audit log as the console lists it: where it is stored and its columns, in order."""

    name: str
    columns: tuple[str, ...]


# -- security records (their keyed hashes and seals are computed in core/security) -----------------


@dataclass(frozen=True)
class AuditEntry:
    """One audit log entry, as stored."""

    seq: int
    ts: float
    operator: str
    host: str
    action: str
    subject: str
    outcome: str
    detail: str  # compact JSON object, exactly as hashed
    prev: str
    mac: str

    @property
    def details(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def time(self) -> str:
        return iso_at(self.ts)

    def to_json(self) -> dict[str, Any]:
        """For `audit list --json` and the repository copy: every stored field, detail as an object."""
        return {"seq": self.seq, "time": self.time, "ts": self.ts, "operator": self.operator, "host": self.host,
                "action": self.action, "subject": self.subject, "outcome": self.outcome, "detail": self.details,
                "detail_json": self.detail, "prev": self.prev, "mac": self.mac}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> AuditEntry:
        return cls(int(doc["seq"]), float(doc["ts"]), str(doc["operator"]), str(doc["host"]), str(doc["action"]),
                   str(doc["subject"]), str(doc["outcome"]), str(doc["detail_json"]), str(doc["prev"]),
                   str(doc["mac"]))


@dataclass(frozen=True)
class OperatorRow:
    """An operator's stored row: every column, exactly as the catalog returns it.

    The values are not converted: the row's keyed MAC (checked in
    core/security/operators.py) covers them as stored.
    """

    name: Any
    role: Any
    secret_sealed: Any  # nonce + AES-GCM ciphertext of the TOTP secret
    created_at: Any
    created_by: Any
    last_step: Any
    failures: Any
    locked_until: Any
    mac: Any

    def values(self) -> tuple[Any, ...]:
        """The columns in storage order."""
        return (self.name, self.role, self.secret_sealed, self.created_at, self.created_by, self.last_step,
                self.failures, self.locked_until, self.mac)


# States of a scheduled run (core/schedule/): claimed and waiting for its database, running, or finished.
SCHEDULE_RUN_STATES = ("waiting", "running", "succeeded", "failed", "missed", "abandoned")


@dataclass(frozen=True)
class ScheduleRun:
    """One slot of one schedule as the catalog holds it (a claimed, finished or missed run)."""

    name: str
    slot: str  # the cron time, ISO 8601 UTC (with 'trigger' manual: when `schedule run` asked)
    due: float  # the same moment, epoch seconds
    action: str
    db: str | None
    state: str  # one of SCHEDULE_RUN_STATES
    trigger: str  # 'cron' or 'manual'
    holder: str  # the scheduler that claimed it (host:pid:token)
    claimed_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None


# -- aggregates for the metrics endpoint (core/metrics/): computed by the catalog, a handful of rows each ----------


@dataclass(frozen=True)
class DurationHistogram:
    """How long the finished jobs of one kind took, counted into fixed buckets by the catalog."""

    kind: str
    bounds: tuple[float, ...]  # upper bounds in seconds, ascending (+Inf implied)
    cumulative: tuple[int, ...]  # jobs that took at most each bound (one count per bound)
    count: int  # every finished job of the kind (the +Inf bucket)
    sum_s: float  # their durations added up


@dataclass(frozen=True)
class ScheduleRunStats:
    """The runs of one schedule in one state: how many, and when the newest of them finished."""

    name: str
    action: str
    state: str  # one of SCHEDULE_RUN_STATES
    runs: int
    last_finished_at: float | None  # None when none of them finished (waiting, missed)
