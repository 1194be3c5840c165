"""Drill history for the console: drill reports (and older test restores) as rows, and the target rotation.

Pure functions. A drill is a :class:`core.drills.model.DrillReport`; test
restores recorded before drill reports existed (the restore wizard's
"Restore drill", restores of kind 'drill') are listed beside them, unless a
report covers the same restore.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.drills.model import PASSED, DrillReport
from core.records import RestoreRecord


@dataclass(frozen=True)
class DrillEntry:
    """One drill as the Drills screen lists it."""

    key: str  # the report id, or "restore:<row id>"
    label: str  # the report id, or the scratch database of an older test restore
    db: str
    kind: str  # logical or physical
    target: str | None  # the target it proved (read from)
    started_at: float
    recovery_s: float
    rto_s: float
    passed: bool
    scheduled_by: str  # schedule:<name>, operator:<name>, or "-" when not recorded
    note: str  # the error, or the failed checks, or the snapshot

    @property
    def within_rto(self) -> bool:
        return self.recovery_s <= self.rto_s


@dataclass(frozen=True)
class TargetProof:
    """When a database's copy on one target was last proven by a passed drill (None: never)."""

    db: str
    target: str
    last_passed_at: float | None


def _covered(r: RestoreRecord, reports: Sequence[DrillReport]) -> bool:
    return any(d.db == r.db and d.snapshot_id == r.snapshot_id and d.started_at - 1 <= r.started_at <= d.finished_at + 1
               for d in reports)


def drill_entries(reports: Sequence[DrillReport], restores: Sequence[RestoreRecord], rto_s: Mapping[str, float],
                  default_rto_s: float) -> list[DrillEntry]:
    """Reports and the drill restores no report covers, newest first."""
    out = []
    for d in reports:
        failed = [c.name for c in d.checks if not c.ok]
        note = d.error or (f"failed: {', '.join(failed)}" if failed else f"snapshot {d.snapshot_id[:8]}")
        out.append(DrillEntry(d.id, d.id, d.db, d.kind, d.target, d.started_at, d.recovery_s, d.rto_s,
                              d.verdict == PASSED, d.scheduled_by, note))
    for r in restores:
        if not r.is_drill or _covered(r, reports):
            continue
        note = r.error or f"test restore of snapshot {r.snapshot_id[:8]} (no drill report)"
        out.append(DrillEntry(f"restore:{r.id}", r.into, r.db, "logical", r.target, r.started_at, r.duration_s,
                              rto_s.get(r.db, default_rto_s), r.ok, "-", note))
    return sorted(out, key=lambda e: e.started_at, reverse=True)


def rotation(entries: Sequence[DrillEntry], dbs: Sequence[str], targets: Sequence[str]) -> list[TargetProof]:
    """For each database and configured target, the newest passed drill that read from it."""
    newest: dict[tuple[str, str], float] = {}
    for e in entries:
        if e.passed and e.target is not None:
            key = (e.db, e.target)
            newest[key] = max(newest.get(key, 0.0), e.started_at)
    return [TargetProof(db, t, newest.get((db, t))) for db in dbs for t in targets]
