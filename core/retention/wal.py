"""Which archived WAL files no retained physical snapshot needs: a pure function of names and LSNs.

Point-in-time recovery from a physical snapshot replays WAL from the segment
holding its start LSN (the backup's redo point) onwards, on its timeline and
on any timeline branching off later. So a segment numbered below the oldest
retained physical snapshot's start segment is needed by none of them, on any
timeline; everything from that segment on is kept. Timeline history files
are always kept (small, and recovery reads them to follow a timeline switch).
A ``.partial`` segment and a backup history file (``SEG.OFFSET.backup``)
go with their segment number. Names that cannot be parsed are kept.

With no retained physical snapshot nothing is removed: then the WAL serves
no restore Backstop can make, but deleting a whole archive is not a
retention rule's call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.postgres.wal import DEFAULT_SEG_SIZE, WalNameError, parse_lsn, parse_segment_name, segment_name, wal_file_kind


@dataclass(frozen=True)
class PhysicalStart:
    """Where a retained physical snapshot's recovery starts reading WAL."""

    snapshot_id: str
    start_lsn: str
    timeline: int
    wal_segment_size: int = DEFAULT_SEG_SIZE


@dataclass
class WalTrimPlan:
    """The WAL files to delete (oldest first), the first segment kept, and why when nothing goes."""

    remove: list[str] = field(default_factory=list)
    keep_from: str | None = None  # the oldest retained physical snapshot's start segment
    oldest_snapshot: str | None = None
    kept: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"remove": list(self.remove), "keep_from": self.keep_from, "oldest_snapshot": self.oldest_snapshot,
                "kept": self.kept, "note": self.note}


def _segno(name: str, seg_size: int) -> int | None:
    """The segment number a WAL file belongs to; None for history files and names that do not parse."""
    try:
        kind = wal_file_kind(name)
        if kind == "history":
            return None
        return parse_segment_name(name[:24], seg_size)[1]
    except WalNameError:
        return None


def plan_wal_trim(retained: Sequence[PhysicalStart], archived: Iterable[str]) -> WalTrimPlan:
    """The archived WAL files (file names) that no snapshot in ``retained`` needs for point-in-time recovery."""
    names = sorted(set(archived))
    if not retained:
        return WalTrimPlan(kept=len(names), note="no physical snapshot is retained: all WAL is kept")
    oldest = min(retained, key=lambda p: (parse_lsn(p.start_lsn), p.timeline))
    seg_size = oldest.wal_segment_size
    cutoff = parse_lsn(oldest.start_lsn) // seg_size
    plan = WalTrimPlan(keep_from=segment_name(oldest.timeline, oldest.start_lsn, seg_size),
                       oldest_snapshot=oldest.snapshot_id)
    doomed = []
    for n in names:
        segno = _segno(n, seg_size)
        if segno is not None and segno < cutoff:
            doomed.append((segno, n))
    plan.remove = [n for _, n in sorted(doomed)]
    plan.kept = len(names) - len(plan.remove)
    return plan
