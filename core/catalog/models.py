"""Records the catalog holds, as typed values for the front ends."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    @property
    def short_id(self) -> str:
        return self.id[:8]

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
    """A measured restore, for recovery-time history."""

    id: int
    job_id: str | None
    snapshot_id: str
    db: str
    into: str
    tables: list[str]
    started_at: float
    duration_s: float
    bytes: int
    ok: bool
    error: str | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)
