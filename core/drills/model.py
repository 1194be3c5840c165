"""What a drill did and found: the record the runner fills, the catalog keeps and the reports render."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASSED, FAILED = "passed", "failed"


@dataclass(frozen=True)
class DrillCheck:
    """One check of the restored data and its outcome.

    ``name`` says what was checked: ``table public.claims`` (row count and
    digest against the manifest), ``amcheck`` (btree indexes),
    ``pg_verifybackup`` (a physical drill's data directory), ``rto`` (the
    measured recovery time against the database's ``rto_minutes``).
    """

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DrillStep:
    """A step of the drill and how long it took (the share of the recovery time spent on it)."""

    name: str  # "choose", "restore", "recover", "integrity", "cleanup"
    seconds: float


@dataclass
class DrillReport:
    """One drill, start to verdict: what an auditor reads.

    ``id`` is ``<db>-<UTC start, %Y%m%dT%H%M%SZ>`` (unique per database and
    second). ``recovery_s`` is the measured recovery time: from the start of
    the restore until the restored data was usable (checks excluded).
    ``point_reached`` is the moment the restored data reflects: a logical
    snapshot's end, or a physical drill's recovery target as reached (LSN and
    commit time). ``scheduled_by`` is ``schedule:<name>`` or ``operator:<name>``.
    """

    id: str
    db: str
    kind: str  # "logical" or "physical"
    snapshot_id: str
    snapshot_finished_at: str  # ISO 8601, from the manifest
    target: str  # the target the drill was meant to prove (rotated, or --target)
    sources: list[dict[str, Any]]  # per-target shares actually read (RestoreResult.sources as JSON)
    point_reached: str
    started_at: float
    finished_at: float
    recovery_s: float
    rto_s: float
    scheduled_by: str
    verdict: str  # PASSED or FAILED
    error: str | None = None  # why it failed, when a step raised (a failed check says so in ``checks``)
    scratch: str = ""  # the scratch database or cluster directory
    scratch_removed: bool = False
    steps: list[DrillStep] = field(default_factory=list)
    checks: list[DrillCheck] = field(default_factory=list)
    host: str = ""
    backstop_version: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    @property
    def snapshot_age_s(self) -> float | None:
        """How old the snapshot was when the drill started; None when the drill failed before choosing one."""
        from datetime import datetime

        if not self.snapshot_finished_at:
            return None
        return self.started_at - datetime.fromisoformat(self.snapshot_finished_at).timestamp()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DrillReport:
        doc = dict(doc)
        doc["steps"] = [DrillStep(**s) for s in doc.get("steps", [])]
        doc["checks"] = [DrillCheck(**c) for c in doc.get("checks", [])]
        return cls(**doc)
