"""What each scheduled action does, through the Engine: the scheduler's production :class:`Runner`.

- ``backup``: a full snapshot of ``db`` (``type`` logical or physical).
- ``verify``: reads back ``sample`` of the snapshots from every target holding each, least recently verified
  first, so with ``sample: p%`` every copy is read at least once every ceil(100 / p) runs (5% hourly: 20 h).
- ``retention``: the retention rules of every database that has a ``retention:`` section
  (core/ops/retention.py), then a prune of what no snapshot needs.
- ``key-rotation``: `backstop key rotate --if-due` (the ``encryption.rotate_every`` policy).
- ``drill``: a restore drill of ``db`` (core/drills/runner.py): ``snapshot`` latest or random, from ``target`` or
  the target drilled longest ago, into scratch space that is removed afterwards (a scratch database; for ``type``
  physical a scratch cluster); recorded with its report. A failed drill fails the run.
- ``sync``: `backstop sync`: every target gets what it lacks (left out of a quorum write, or new); a target
  still down or an object with no intact copy fails the run, so it shows on the dashboard.
- ``archive``: `backstop archive`: packs only old snapshots use go to each target's ``storage_class``
  (``archive_after_days``); a target left incomplete fails the run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from core.errors import DrillFailed, IntegrityError, StorageError, UsageError
from core.records import SnapshotRecord
from core.schedule.config import ScheduleConfig

if TYPE_CHECKING:
    from core.engine import Engine
    from core.ops.archive import ArchiveReport
    from core.ops.sync import SyncReport

log = logging.getLogger("backstop.daemon")


def verify_sample(snapshots: Sequence[SnapshotRecord], last_verified: Mapping[str, float],
                  share: float) -> list[SnapshotRecord]:
    """The snapshots a verify run reads: ceil(share x all), never-verified first, then the longest unverified.

    Each run moves on to the copies read longest ago, so with share p every snapshot is read (on every
    target holding it) at least once every ceil(1 / p) runs.
    """
    order = sorted(snapshots, key=lambda x: (last_verified.get(x.id, -1.0), x.finished_at, x.id))
    return order[:max(1, math.ceil(share * len(snapshots)))] if snapshots else []


class EngineRunner:
    """Runs scheduled actions with one Engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def run(self, schedule: ScheduleConfig, slot: datetime) -> dict[str, object]:
        """Run the schedule's action; returns what the catalog records as the run's result."""
        action = schedule.action
        if action == "backup":
            return await self._backup(schedule)
        if action == "verify":
            return await self._verify(schedule)
        if action == "retention":
            return await self._retention(schedule)
        if action == "key-rotation":
            res = await self.engine.rotate_keys(if_due=True)
            return {"rotated": res.rotated, "reason": res.reason, "dek_version": res.dek_version}
        if action == "drill":
            return await self._drill(schedule)
        if action == "sync":
            return await self._sync()
        if action == "archive":
            return await self._archive()
        raise UsageError(f"schedule {schedule.name}: unknown action {action!r}")

    async def _backup(self, s: ScheduleConfig) -> dict[str, object]:
        assert s.db is not None
        rec = await self.engine.backup(s.db, s.type)
        return {"snapshot": rec.id, "kind": rec.kind, "size_bytes": rec.size_bytes, "stored_bytes": rec.stored_bytes}

    async def _verify(self, s: ScheduleConfig) -> dict[str, object]:
        snaps = self.engine.snapshots()
        if not snaps:
            return {"verified": [], "note": "no snapshots yet"}
        pick = verify_sample(snaps, self.engine.catalog.snapshot_last_verified(), s.sample_share)
        bad: list[str] = []
        for snap in pick:
            for report in await self.engine.verify_snapshot(snap.id):
                bad += [f"{snap.short_id} on {report.target}: {p}" for p in report.problems]
        if bad:
            raise IntegrityError(f"verification found {len(bad)} problem(s), first: {bad[0]}; "
                                 "run `backstop check --read-data`")
        return {"verified": [x.id for x in pick], "of": len(snaps)}

    async def _retention(self, s: ScheduleConfig) -> dict[str, object]:
        from core.ops import prune, retention

        # The rules in force were approved (core/settings); that approval stands in for a code, as for
        # `key rotate --if-due`, and the audit log names the schedule as the reason.
        approval = f"schedule {s.name}: the approved retention rules"
        applied: dict[str, object] = {}
        for db in self.engine.config.databases:
            if db.retention is None:
                continue
            report = await retention.apply_retention(self.engine.ctx, db.name, approved_by=approval)
            applied[db.name] = report.to_json()
        pruned = await prune.prune_repository(self.engine.ctx, approved_by=approval)
        return {"retention": applied, "prune": pruned.to_json()}

    async def _sync(self) -> dict[str, object]:
        rep = await self.engine.sync()
        _complete_or_raise(rep, "sync", "run `backstop sync` once it is back")
        return rep.to_json()

    async def _archive(self) -> dict[str, object]:
        rep = await self.engine.archive()
        _complete_or_raise(rep, "archive", "run `backstop archive` again")
        return rep.to_json()

    async def _drill(self, s: ScheduleConfig) -> dict[str, object]:
        from core.drills.runner import DrillRequest

        assert s.db is not None
        report = await self.engine.drill(DrillRequest(db=s.db, target=s.target, snapshot=s.snapshot or "latest",
                                                      kind=s.type, scheduled_by=f"schedule:{s.name}"))
        if not report.passed:
            bad = next((c for c in report.checks if not c.ok), None)
            why = report.error or (f"{bad.name}: {bad.detail}" if bad else "no check ran")
            raise DrillFailed(f"drill {report.id} failed ({why}); see `backstop drill report {report.id}`")
        return {"drill": report.id, "verdict": report.verdict, "target": report.target,
                "snapshot": report.snapshot_id, "recovery_s": round(report.recovery_s, 3),
                "rto_s": report.rto_s, "scratch_removed": report.scratch_removed}


def _complete_or_raise(rep: SyncReport | ArchiveReport, what: str, advice: str) -> None:
    """A sync or archive report with a target skipped or left with problems fails the run, naming the first."""
    if rep.ok:
        return
    bad = next(t for t in rep.targets if t.skipped is not None or t.problems)
    why = bad.skipped if bad.skipped is not None else bad.problems[0]
    raise StorageError(bad.target, f"{what} left it incomplete: {why}; {advice}")
