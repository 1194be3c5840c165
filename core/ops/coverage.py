"""What the WAL archive covers, for the restore planner and the console.

``wal_facts`` lists the archive on every reachable target (when each segment
was archived, by the targets' own modification times) and reads the
timeline history files, for :func:`core.planner.physical_source`.
``coverage`` summarises it per timeline (range, times, gaps) for the catalog
screen, and ``recovery_point`` says how old the newest recoverable moment
is: the newest archived segment, or the newest snapshot when no WAL is
archived (what the dashboard alerts on).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from core.context import EngineContext
from core.errors import BackstopError
from core.planner import WalArchiveFacts
from core.postgres.recovery import parse_history
from core.postgres.wal import history_name, parse_segment_name, segment_file, wal_file_kind
from core.repository.repo import Repository
from core.repository.wal import WalArchive, read_wal, wal_objects


@dataclass(frozen=True)
class TimelineCoverage:
    """The archived WAL of one timeline as the console shows it."""

    timeline: int
    first: str  # first and last archived segment
    last: str
    segments: int
    first_at: datetime  # when those were archived
    last_at: datetime
    gaps: tuple[tuple[str, str], ...]  # runs of missing segments: (first missing, last missing)


@dataclass(frozen=True)
class WalCoverage:
    """The archive per timeline, and the targets that could not be listed."""

    timelines: tuple[TimelineCoverage, ...]
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecoveryPointAge:
    """How much would be lost right now: the age of the newest recoverable moment, and what it is."""

    age_s: float | None  # None: nothing is recoverable (no WAL, no snapshot)
    source: str  # "wal", "snapshot" or "none"
    detail: str  # the newest segment or snapshot, short: the dashboard shows it on one line at 80 columns


async def wal_facts(ctx: EngineContext, repo: Repository | None = None) -> tuple[WalArchiveFacts | None, list[str]]:
    """(the archive for the planner, targets whose listing failed); None when nothing is archived.

    A segment counts once every reachable target holds it, as the physical
    restore's check counts it; its time is the latest of its copies' times.
    """
    repo = repo or await ctx.open_repository(require_all=False)
    ident = await WalArchive(repo).identity()
    listings = await asyncio.gather(*(wal_objects(st) for st in repo.storages), return_exceptions=True)
    failed = list(repo.unreachable)
    per_target: list[dict[str, float | None]] = []
    for st, lst in zip(repo.storages, listings, strict=True):
        if isinstance(lst, BaseException):
            if not isinstance(lst, BackstopError):
                raise lst
            failed.append(st.name)
            continue
        per_target.append({n: info.mtime for n, info in lst})
    if ident is None or not per_target:
        return None, failed
    seg = ident.wal_segment_size
    common = set.intersection(*(set(t) for t in per_target))
    archived: dict[int, dict[int, datetime]] = {}
    histories: dict[int, list[tuple[int, int]]] = {}
    for name in common:
        kind = wal_file_kind(name)  # listed names are valid WAL file names (wal_objects checked them)
        if kind == "history":
            tli = int(name[:8], 16)
            try:
                histories[tli] = parse_history((await read_wal(repo, history_name(tli))).decode())
            except (BackstopError, UnicodeDecodeError, ValueError):
                continue  # an unreadable history file: recovery stays on the timelines before it
        elif kind == "segment":
            tli, segno = parse_segment_name(name, seg)
            stamps = [m for t in per_target if (m := t.get(name)) is not None]
            archived.setdefault(tli, {})[segno] = datetime.fromtimestamp(max(stamps) if stamps else 0.0, UTC)
    return WalArchiveFacts(seg, archived, histories), failed


def summarise(facts: WalArchiveFacts | None, unreachable: list[str] | tuple[str, ...] = ()) -> WalCoverage:
    """Per timeline: the archived range, when its ends were archived, and the holes in it."""
    out: list[TimelineCoverage] = []
    if facts is None:
        return WalCoverage((), tuple(unreachable))
    for tli in sorted(facts.archived):
        segs = facts.archived[tli]
        if not segs:
            continue
        order = sorted(segs)
        holes = tuple((segment_file(tli, a + 1, facts.seg_size), segment_file(tli, b - 1, facts.seg_size))
                      for a, b in zip(order, order[1:], strict=False) if b > a + 1)
        out.append(TimelineCoverage(tli, segment_file(tli, order[0], facts.seg_size),
                                    segment_file(tli, order[-1], facts.seg_size), len(order), min(segs.values()),
                                    max(segs.values()), holes))
    return WalCoverage(tuple(out), tuple(unreachable))


async def coverage(ctx: EngineContext) -> WalCoverage:
    """The WAL archive per timeline for the console's catalog screen."""
    facts, failed = await wal_facts(ctx)
    return summarise(facts, failed)


def recovery_point_age(facts: WalArchiveFacts | None, newest_snapshot_iso: str | None, now: float,
                       wal_note: str = "no WAL archived") -> RecoveryPointAge:
    """The newest archived segment's age, else the newest snapshot's (pure); ``wal_note`` says why no WAL."""
    if facts is not None:
        newest = max(((at, tli, segno) for tli, segs in facts.archived.items() for segno, at in segs.items()),
                     default=None)
        if newest is not None:
            at, tli, segno = newest
            return RecoveryPointAge(max(0.0, now - at.timestamp()), "wal",
                                    f"WAL {segment_file(tli, segno, facts.seg_size)}")
    if newest_snapshot_iso is not None:
        at_s = datetime.fromisoformat(newest_snapshot_iso).timestamp()
        return RecoveryPointAge(max(0.0, now - at_s), "snapshot", f"newest snapshot, {wal_note}")
    return RecoveryPointAge(None, "none", f"no snapshot, {wal_note}")


async def recovery_point(ctx: EngineContext, newest_snapshot_iso: str | None,
                         now: float | None = None) -> RecoveryPointAge:
    """The recovery-point age right now (lists the archive; the caller read the newest snapshot's time).

    When no target can be listed, the newest snapshot is still a recovery
    point: the age is given from it and the note says the archive was not read.
    """
    note = "no WAL archived"
    try:
        facts, _ = await wal_facts(ctx)
    except BackstopError:
        facts, note = None, "WAL not listed"
    return recovery_point_age(facts, newest_snapshot_iso, time.time() if now is None else now, note)
