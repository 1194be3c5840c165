"""Whether a physical snapshot can be restored: every WAL segment from its start to its stop LSN archived.

Until then it is "waiting", never "restorable" (a base backup without the
WAL written while it was taken is not a consistent cluster).
"""

from __future__ import annotations

from core.records import SnapshotRecord
from core.repository.repo import Repository
from core.repository.wal import missing_segments

WAITING, RESTORABLE = "waiting", "restorable"


async def missing_wal(repo: Repository, timeline: int, start_lsn: str, stop_lsn: str, seg_size: int) -> list[str]:
    """WAL segments from start to stop (both included) that are not archived on every target."""
    return list(await missing_segments(repo, timeline, start_lsn, stop_lsn, seg_size))


async def snapshot_status(repo: Repository, snap: SnapshotRecord) -> str:
    """"restorable" or "waiting" for a catalogued snapshot (logical ones are always restorable)."""
    if not snap.is_physical:
        return RESTORABLE
    if snap.timeline is None or snap.start_lsn is None or snap.stop_lsn is None or not snap.wal_segment_size:
        return WAITING
    missing = await missing_wal(repo, snap.timeline, snap.start_lsn, snap.stop_lsn, snap.wal_segment_size)
    return WAITING if missing else RESTORABLE
