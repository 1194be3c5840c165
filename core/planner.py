"""The restore planner: from what happened to which backup, which target, how long, and why.

``plan(request, facts)`` is pure: the engine gathers the facts (catalog rows,
verification results, target reachability, manifest table lists, restore
history) and the planner decides. That keeps every decision testable
without PostgreSQL or storage, and lets the CLI and the console show the
same plan.

Recovery sources are abstract. A logical snapshot can restore exactly one
point (its consistent moment); a physical base backup with an archived WAL
range will restore any moment in ``[recoverable_from, recoverable_until]``.
The planner only asks ``source.covers(moment)``, so physical backups plug
in as another ``RecoverySource`` without changing the decision rules.

The rules, by incident (what an on-call DBA would do):

- accidental deletion: the newest point *before* the deletion, restored
  side by side so rows can be copied back; tables only when that is enough;
  a table missing from newer snapshots (dropped) is taken from the newest
  snapshot that still has it.
- corruption: the newest point before the corruption was seen whose copy is
  verified: a snapshot that never passed a read-back check may hold the
  corruption or be damaged itself.
- host loss: the newest snapshot (least data lost) from the fastest
  reachable target; the old host is gone, so restore to a new place.
- region outage: like host loss, but only targets outside the lost region,
  preferring the closest one that is reachable.
- ransomware: the newest snapshot that predates the compromise *and*
  passed a read-back verification, preferring an offsite copy (an attacker
  on the host can reach local copies); never over the live database.
- drill: the newest snapshot, from the target least recently proven by a
  successful drill, so every copy gets proven over time.

Severity: ``low`` (some rows or one table), ``high`` (a whole database),
``critical`` (production down or data compromised: a restore that will
succeed matters more than the last few minutes of data, so a verified copy
is required and an unverified one is only offered as a risky plan).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Literal, Protocol

from core.format import duration as _dur
from core.format import size as _size
from core.postgres.recovery import TimelineSpan, timeline_at, timeline_chain
from core.postgres.wal import parse_lsn, segment_file
from core.records import SnapshotRecord

DEFAULT_RATE_BPS = 30 * 1024 * 1024  # assumed restore throughput with no history
FIXED_OVERHEAD_S = 5.0  # create database, open repository, read manifest and index
# WAL replay (wal-fetch from the repository, then redo) is not measured separately from a physical
# restore's writing of the data directory, so its rate is assumed; the basis says so.
DEFAULT_REPLAY_BPS = 64 * 1024 * 1024
# finished_at has one-second resolution: like `restore --type physical`, a base backup counts as
# finished before a moment only a whole second before it.
_FINISHED_SLACK = timedelta(seconds=1)


class Incident(str, Enum):
    """What happened."""

    ACCIDENTAL_DELETION = "accidental_deletion"
    CORRUPTION = "corruption"
    HOST_LOSS = "host_loss"
    REGION_OUTAGE = "region_outage"
    RANSOMWARE = "ransomware"
    DRILL = "drill"

    @property
    def label(self) -> str:
        return _INCIDENT_LABELS[self]


_INCIDENT_LABELS = {
    Incident.ACCIDENTAL_DELETION: "Accidental deletion",
    Incident.CORRUPTION: "Data corruption",
    Incident.HOST_LOSS: "Database host lost",
    Incident.REGION_OUTAGE: "Region outage",
    Incident.RANSOMWARE: "Ransomware / compromise",
    Incident.DRILL: "Restore drill",
}


class Severity(str, Enum):
    """How bad it is."""

    LOW = "low"
    HIGH = "high"
    CRITICAL = "critical"


# Incidents where data after the incident moment is suspect or missing.
_CUT_AT_INCIDENT = {Incident.ACCIDENTAL_DELETION, Incident.CORRUPTION, Incident.RANSOMWARE}
# Incidents where only a copy that passed a read-back check is trusted.
_NEEDS_VERIFIED = {Incident.CORRUPTION, Incident.RANSOMWARE}


@dataclass(frozen=True)
class PointInTime:
    """Where to recover to: the latest point, one snapshot, or a moment (needs WAL for exactness)."""

    kind: Literal["latest", "snapshot", "time"] = "latest"
    snapshot_id: str | None = None
    at: datetime | None = None

    @staticmethod
    def latest() -> PointInTime:
        return PointInTime("latest")

    @staticmethod
    def snapshot(sid: str) -> PointInTime:
        return PointInTime("snapshot", snapshot_id=sid)

    @staticmethod
    def moment(at: datetime) -> PointInTime:
        return PointInTime("time", at=at)


@dataclass(frozen=True)
class RestoreRequest:
    """What the operator asks for."""

    db: str
    incident: Incident
    severity: Severity = Severity.HIGH
    tables: tuple[str, ...] = ()
    point: PointInTime = field(default_factory=PointInTime.latest)
    # When the damage happened or was first seen; points at or after it are suspect.
    incident_at: datetime | None = None
    # Region lost in a region outage (targets there are not used even if they answer).
    lost_region: str | None = None


@dataclass(frozen=True)
class CopyCheck:
    """The newest verification of one source's copy on one target."""

    target: str
    ok: bool
    read_data: bool
    at: float


@dataclass(frozen=True)
class TargetState:
    """A storage target as the planner sees it."""

    name: str
    kind: str  # local, s3
    region: str | None = None
    reachable: bool = True
    detail: str = ""

    @property
    def offsite(self) -> bool:
        return self.kind != "local"


class RecoverySource(Protocol):
    """Anything that can be restored: a logical snapshot today, base backup + WAL later (read-only)."""

    @property
    def id(self) -> str: ...
    @property
    def db(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def targets(self) -> tuple[str, ...]: ...
    @property
    def checks(self) -> tuple[CopyCheck, ...]: ...
    @property
    def tables(self) -> tuple[str, ...] | None: ...
    @property
    def recoverable_from(self) -> datetime: ...
    @property
    def recoverable_until(self) -> datetime: ...
    def covers(self, moment: datetime) -> bool: ...


@dataclass(frozen=True)
class LogicalSnapshot:
    """A logical snapshot: restores exactly the moment its dump's snapshot was taken (its start)."""

    id: str
    db: str
    started_at: datetime
    finished_at: datetime
    size_bytes: int
    targets: tuple[str, ...]
    checks: tuple[CopyCheck, ...] = ()
    tables: tuple[str, ...] | None = None  # None: not known (manifest not read)
    kind: str = "logical"

    @property
    def recoverable_from(self) -> datetime:
        return self.started_at

    @property
    def recoverable_until(self) -> datetime:
        return self.started_at

    def covers(self, moment: datetime) -> bool:
        return self.started_at <= moment


@dataclass(frozen=True)
class WalGap:
    """Where the archived WAL after a base backup stops before the archive's end."""

    first_missing: str  # the first segment file recovery would need and the archive lacks
    after: datetime | None  # when the last segment before it was archived (the gap's start)


@dataclass(frozen=True)
class PhysicalSnapshot:
    """A physical base backup plus the WAL archived after it: restores any moment in its range.

    ``recoverable_from`` is when the base backup finished (recovery cannot
    stop before its end); ``recoverable_until`` is when the newest WAL segment
    recovery can reach from it without a hole was archived. ``gap`` is set when
    later segments exist beyond a missing one: moments after the gap's start
    cannot be reached. Built by :func:`physical_source`.
    """

    id: str
    db: str
    started_at: datetime
    finished_at: datetime
    size_bytes: int
    targets: tuple[str, ...]
    checks: tuple[CopyCheck, ...] = ()
    timeline: int = 1
    start_lsn: str = "0/0"
    stop_lsn: str = "0/0"
    wal_until: datetime | None = None  # the newest reachable archived segment's time
    replay_times: tuple[datetime, ...] = ()  # archive times of the reachable segments after the backup's own
    seg_size: int = 16 * 2**20
    gap: WalGap | None = None
    waiting_for: str | None = None  # a segment of its own start-to-stop range not archived yet
    off_path: str | None = None  # why recovery's timeline does not pass through this backup
    tables: tuple[str, ...] | None = None  # a whole cluster: every table it had
    kind: str = "physical"

    @property
    def recoverable_from(self) -> datetime:
        return self.finished_at + _FINISHED_SLACK

    @property
    def recoverable_until(self) -> datetime:
        return max(self.wal_until or self.recoverable_from, self.recoverable_from)

    def why_not(self, moment: datetime) -> str | None:
        """Why this source cannot restore ``moment`` (None: it can, possibly only up to the end of the archive)."""
        if self.waiting_for is not None:
            return (f"physical snapshot still waiting for WAL segment {self.waiting_for} of its own range "
                    "(not restorable yet)")
        if self.off_path is not None:
            return self.off_path
        if moment < self.recoverable_from:
            return f"physical snapshot finished {_fmt(self.finished_at)}, after the chosen moment {_fmt(moment)}"
        if self.gap is not None and moment > self.recoverable_until:
            return (f"the WAL archive has a gap before {_fmt(moment)}: segment {self.gap.first_missing} is missing "
                    f"(archived WAL from this snapshot ends {_fmt(self.recoverable_until)})")
        return None

    def covers(self, moment: datetime) -> bool:
        return self.why_not(moment) is None

    def replay_bytes(self, moment: datetime) -> int:
        """About how much WAL recovery replays to reach ``moment`` (whole segments archived up to it, plus one)."""
        return (1 + sum(1 for t in self.replay_times if t <= moment)) * self.seg_size


@dataclass(frozen=True)
class WalArchiveFacts:
    """The WAL archive as the planner sees it (gathered by core/ops/coverage.py)."""

    seg_size: int
    # timeline -> segment number -> when it was archived (held by every reachable target)
    archived: Mapping[int, Mapping[int, datetime]]
    # timeline -> its history file's (parent timeline, switch LSN) entries, for timelines above 1
    histories: Mapping[int, Sequence[tuple[int, int]]] = field(default_factory=dict)

    def newest_timeline_from(self, timeline: int) -> int:
        """PostgreSQL's ``recovery_target_timeline = latest``: follow history files without a hole."""
        while timeline + 1 in self.histories:
            timeline += 1
        return timeline


def _chain(rec: SnapshotRecord, wal: WalArchiveFacts) -> tuple[list[TimelineSpan], str | None]:
    """The timelines recovery from ``rec`` passes through, or why it would not pass through ``rec`` at all."""
    own = rec.timeline or 1
    newest = wal.newest_timeline_from(own)
    if newest == own:
        return [TimelineSpan(own, 0)], None
    chain = timeline_chain(newest, list(wal.histories[newest]))
    start = parse_lsn(rec.start_lsn or "0/0")
    for i, span in enumerate(chain):
        if span.timeline == own and (i + 1 == len(chain) or start < chain[i + 1].begin_lsn):
            return chain, None
    return chain, (f"physical snapshot on timeline {own} is not on the history of the newest timeline {newest} "
                   "(restore it with --target-timeline current)")


def physical_source(rec: SnapshotRecord, wal: WalArchiveFacts, *, db: str | None = None,
                    checks: tuple[CopyCheck, ...] = ()) -> PhysicalSnapshot:
    """A catalogued physical snapshot with the WAL range recovery can reach from it (pure).

    Walks the segments from the backup's start LSN on the timeline recovery
    would read each from (the newest timeline's history), as
    ``restore --type physical`` checks them: a hole inside the backup's own
    range leaves it waiting, a hole after it with later segments archived is
    a gap, the last contiguous segment is how far it reaches.
    """
    seg = rec.wal_segment_size or wal.seg_size
    chain, off_path = _chain(rec, wal)
    start_seg = parse_lsn(rec.start_lsn or "0/0") // seg
    stop_seg = parse_lsn(rec.stop_lsn or "0/0") // seg
    on_chain = [segno for span in chain for segno in wal.archived.get(span.timeline, {})
                if timeline_at(chain, segno, seg) == span.timeline]
    last = max(on_chain, default=None)
    newest: datetime | None = None
    replay: list[datetime] = []
    gap = waiting = None
    segno = start_seg
    while True:
        tli = timeline_at(chain, segno, seg)
        at = wal.archived.get(tli, {}).get(segno)
        if at is None:
            if segno <= stop_seg:
                waiting = segment_file(tli, segno, seg)
            elif last is not None and segno < last:
                gap = WalGap(segment_file(tli, segno, seg), newest)
            break
        # Pushes run in parallel, so archive times are only nearly ordered: keep the running maximum.
        newest = at if newest is None else max(newest, at)
        if segno > stop_seg:
            replay.append(at)
        segno += 1
    return PhysicalSnapshot(
        rec.id, db or rec.db, datetime.fromisoformat(rec.started_at), datetime.fromisoformat(rec.finished_at),
        rec.size_bytes, tuple(rec.targets), checks, rec.timeline or 1, rec.start_lsn or "0/0",
        rec.stop_lsn or "0/0", newest, tuple(replay), seg, gap, waiting, off_path)


@dataclass(frozen=True)
class PastRestore:
    """A measured restore or drill, for the duration estimate (both) and drill rotation (drills)."""

    db: str
    bytes: int
    duration_s: float
    ok: bool
    at: float
    target: str | None = None  # the first target it read from, when known
    kind: str = "restore"  # or 'drill'
    physical: bool = False  # a data directory written from a physical snapshot (measured apart from logical ones)

    @property
    def is_drill(self) -> bool:
        return self.kind == "drill"


@dataclass(frozen=True)
class PlanningFacts:
    """Everything the planner may look at."""

    sources: Sequence[RecoverySource]  # any order
    targets: Sequence[TargetState]
    history: Sequence[PastRestore] = ()
    rto_s: float | None = None
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Rejected:
    """A source or copy the planner looked at and did not choose, and why."""

    source_id: str
    target: str | None
    why: str


@dataclass(frozen=True)
class RestorePlan:
    """The proposal: a valid plan (possibly risky) or the reason there is none."""

    request: RestoreRequest
    source: RecoverySource | None
    target: str | None
    point: datetime | None
    scope: Literal["database", "tables"]
    tables: tuple[str, ...]
    destination: str
    estimated_s: float | None
    estimate_basis: str
    rto_s: float | None
    reasons: tuple[str, ...]
    risks: tuple[str, ...]
    rejected: tuple[Rejected, ...]
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.source is not None and self.refusal is None

    @property
    def risky(self) -> bool:
        return self.ok and bool(self.risks)

    @property
    def snapshot_id(self) -> str | None:
        return self.source.id if self.source else None


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")




def default_destination(db: str, incident: Incident, now: datetime) -> str:
    """A new database name that says what it is (never the live database)."""
    tag = "drill" if incident is Incident.DRILL else "restore"
    return f"{db}_{tag}_{now.astimezone(UTC):%Y%m%d_%H%M}"


def _measured_rate(db: str, history: Sequence[PastRestore], physical: bool, what: str) -> tuple[float, str]:
    """Median bytes/s of past successful restores of one kind: this database's, then any, then a default."""
    ok = [h for h in history if h.ok and h.duration_s > 0 and h.bytes > 0 and h.physical is physical]
    own = [h for h in ok if h.db == db]
    pool = own or ok
    if pool:
        rate = statistics.median(h.bytes / h.duration_s for h in pool)
        where = f"{len(pool)} past {what}(s) of {db}" if own else f"{len(pool)} past {what}(s) of other databases"
        return rate, f"median {rate / 2**20:.1f} MiB/s over {where}"
    return DEFAULT_RATE_BPS, (f"no {what} history: assumed {DEFAULT_RATE_BPS / 2**20:.0f} MiB/s; "
                              "run a drill to measure it")


def estimate(size_bytes: int, db: str, history: Sequence[PastRestore]) -> tuple[float, str]:
    """Restore duration from measured throughput: this database's history, then any, then a default."""
    rate, basis = _measured_rate(db, history, False, "restore")
    return FIXED_OVERHEAD_S + size_bytes / rate, basis


def estimate_physical(size_bytes: int, replay_bytes: int, db: str,
                      history: Sequence[PastRestore]) -> tuple[float, str]:
    """A point-in-time restore: the data directory at past physical restores' rate, plus WAL replay."""
    rate, basis = _measured_rate(db, history, True, "physical restore")
    replay_s = replay_bytes / DEFAULT_REPLAY_BPS
    basis += (f"; plus about {_size(replay_bytes)} of WAL to replay at an assumed "
              f"{DEFAULT_REPLAY_BPS / 2**20:.0f} MiB/s")
    return FIXED_OVERHEAD_S + size_bytes / rate + replay_s, basis


@dataclass(frozen=True)
class _Choice:
    source: RecoverySource
    target: TargetState
    check: CopyCheck | None


def _copy_rank(incident: Incident, t: TargetState, check: CopyCheck | None, drilled: dict[str, float]) -> tuple:
    """Sort key for the copies of one source (smaller is better)."""
    verified = 0 if check and check.ok and check.read_data else (1 if check and check.ok else 2)
    if incident is Incident.RANSOMWARE:
        # An attacker on the host can reach local copies: prefer offsite ones.
        return (verified, 0 if t.offsite else 1, t.name)
    if incident is Incident.DRILL:
        # Exercise the copy least recently proven by a drill.
        return (drilled.get(t.name, 0.0), t.name)
    # Otherwise speed: local directories restore faster than object storage.
    return (verified, 0 if not t.offsite else 1, t.name)


class _Refused(Exception):
    """A planning step found no acceptable way to recover (the message says why and what to do)."""


@dataclass
class _Draft:
    """What the planning steps find out, in order: kept choices, and why others were left out."""

    request: RestoreRequest
    facts: PlanningFacts
    reasons: list[str] = field(default_factory=list)
    risks: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.request.tables)


def plan(request: RestoreRequest, facts: PlanningFacts) -> RestorePlan:
    """Choose the recovery source and target for ``request``; see the module docstring for the rules."""
    d = _Draft(request, facts)
    scope: Literal["database", "tables"] = "tables" if d.tables else "database"
    destination = default_destination(request.db, request.incident, facts.now)
    try:
        sources = sorted((s for s in facts.sources if s.db == request.db),
                         key=lambda s: _point_of(s, request), reverse=True)
        if not sources:
            raise _Refused(f"no backups of {request.db} in the catalog; take one with "
                           f"`backstop backup --db {request.db}`")
        sources = _acceptable_points(d, sources)
        sources = _holding_the_tables(d, sources)
        choices = _usable_copies(d, sources)
        best = _pick(d, choices)
    except _Refused as refusal:
        return RestorePlan(request, None, None, None, scope, d.tables, destination, None, "", facts.rto_s,
                           tuple(d.reasons), tuple(d.risks), tuple(d.rejected), refusal=str(refusal))
    _explain_copy(d, best, choices)
    point = _moment_restored(d, best)
    if scope == "database" and request.incident is Incident.ACCIDENTAL_DELETION and request.severity is Severity.LOW:
        d.reasons.append("low severity: consider restoring only the affected tables")
    est, basis = _duration_against_rto(d, best, point)
    rejected = [r for r in d.rejected if not (r.source_id == best.source.id and r.target is None)]
    return RestorePlan(request, best.source, best.target.name, point, scope, d.tables, destination, est, basis,
                       facts.rto_s, tuple(d.reasons), tuple(d.risks), tuple(rejected))


def _point_of(s: RecoverySource, request: RestoreRequest) -> datetime:
    """The moment ``s`` would restore for ``request``: a range source stops at the moment asked for."""
    if isinstance(s, PhysicalSnapshot) and request.point.kind == "time" and request.point.at is not None:
        return min(request.point.at, s.recoverable_until)
    return s.recoverable_until


def _why_not(s: RecoverySource, at: datetime) -> str:
    """Why ``s`` does not cover ``at``, in the operator's words."""
    why = s.why_not(at) if isinstance(s, PhysicalSnapshot) else None
    return why or f"starts after the chosen moment {_fmt(at)}"


def _acceptable_points(d: _Draft, sources: list[RecoverySource]) -> list[RecoverySource]:
    """1. Which points are acceptable at all: the one chosen, those covering a moment, those before the incident."""
    request = d.request
    if request.point.kind == "snapshot":
        wanted = request.point.snapshot_id or ""
        sources = [s for s in sources if s.id.startswith(wanted)] if len(wanted) >= 4 else []
        if len(sources) != 1:
            raise _Refused(f"snapshot {wanted[:12]!r} of {request.db} is not in the catalog"
                           if not sources else f"snapshot id {wanted!r} is ambiguous; give more characters")
        d.reasons.append(f"snapshot {sources[0].id[:8]} was chosen by the operator")
    elif request.point.kind == "time" and request.point.at is not None:
        at = request.point.at
        d.rejected += [Rejected(s.id, None, _why_not(s, at)) for s in sources if not s.covers(at)]
        before = [s for s in sources if s.covers(at)]
        if not before:
            # A gap in the WAL archive is the one thing the operator can fix: name it.
            gaps = [r.why for r in d.rejected if "gap" in r.why]
            raise _Refused(f"no backup of {request.db} covers {_fmt(at)}: the oldest starts "
                           f"{_fmt(min(s.recoverable_from for s in sources))}" + (f"; {gaps[0]}" if gaps else ""))
        sources = before
    if request.incident_at is not None and request.incident in _CUT_AT_INCIDENT:
        cut = request.incident_at
        d.rejected += [Rejected(s.id, None, f"{'restores' if isinstance(s, PhysicalSnapshot) else 'taken'} "
                                            f"{_fmt(_point_of(s, request))}, after the incident at {_fmt(cut)}: "
                                            "it holds the damage")
                       for s in sources if _point_of(s, request) >= cut]
        clean = [s for s in sources if _point_of(s, request) < cut]
        if not clean:
            raise _Refused(f"every backup of {request.db} was taken after the incident at {_fmt(cut)}; "
                           "none holds the data as it was before")
        d.reasons.append(f"taken before the incident at {_fmt(cut)}")
        return clean
    if request.incident in _CUT_AT_INCIDENT and request.point.kind == "latest":
        d.risks.append("the incident time is unknown: the newest backup may already contain the damage; "
                       "give the time to exclude later backups")
    return sources


def _holding_the_tables(d: _Draft, sources: list[RecoverySource]) -> list[RecoverySource]:
    """2. Tables: the source must contain them (an unknown table list is given the benefit of the doubt)."""
    tables = d.tables
    if not tables:
        return sources
    usable = []
    for s in sources:
        missing = [t for t in tables if s.tables is not None and t not in s.tables]
        if missing:
            d.rejected.append(Rejected(s.id, None, f"table(s) {', '.join(missing)} did not exist at "
                                                   f"{_fmt(s.recoverable_until)}"))
        else:
            usable.append(s)
    if not usable:
        shown = sources[0]
        raise _Refused(f"table(s) {', '.join(tables)} did not exist in "
                       + (f"snapshot {shown.id[:8]} ({_fmt(shown.recoverable_until)})" if len(sources) == 1
                          else f"any of the {len(sources)} eligible backups of {d.request.db}"))
    if usable[0] is not sources[0]:
        d.reasons.append(f"newer backups lack {', '.join(tables)} (dropped?): using the newest that has them")
    return usable


def _usable_copies(d: _Draft, sources: list[RecoverySource]) -> list[_Choice]:
    """3. Copies: reachable targets outside a lost region, not known to be damaged; best first per source."""
    request = d.request
    targets = {t.name: t for t in d.facts.targets}
    drilled: dict[str, float] = {}  # target -> when a drill last proved its copy
    for h in d.facts.history:
        if h.is_drill and h.ok and h.target:
            drilled[h.target] = max(drilled.get(h.target, 0.0), h.at)
    choices: list[_Choice] = []
    for s in sources:
        checks = {c.target: c for c in s.checks}
        copies = []
        for name in s.targets:
            t = targets.get(name)
            if t is None:
                d.rejected.append(Rejected(s.id, name, f"target {name} is no longer configured"))
            elif not t.reachable:
                d.rejected.append(Rejected(s.id, name, f"target {name} is unreachable"
                                                       + (f": {t.detail}" if t.detail else "")))
            elif request.lost_region and t.region == request.lost_region:
                d.rejected.append(Rejected(s.id, name, f"target {name} is in the lost region {t.region}"))
            elif name in checks and not checks[name].ok:
                d.rejected.append(Rejected(s.id, name, f"the copy on {name} failed its last verification"))
            else:
                copies.append(_Choice(s, t, checks.get(name)))
        copies.sort(key=lambda c: _copy_rank(request.incident, c.target, c.check, drilled))
        choices.extend(copies)
    if not choices:
        whys = list(dict.fromkeys(r.why for r in d.rejected if r.target))
        raise _Refused(f"no reachable, undamaged copy of any eligible backup of {request.db}: " + "; ".join(whys[:3]))
    return choices


def _verified(c: _Choice) -> bool:
    return c.check is not None and c.check.ok


def _pick(d: _Draft, choices: list[_Choice]) -> _Choice:
    """4. The newest eligible point, unless the incident or severity requires a verified copy."""
    inc = d.request.incident
    need_verified = inc in _NEEDS_VERIFIED or d.request.severity is Severity.CRITICAL
    best = choices[0]  # choices are ordered newest source first, best copy first
    if need_verified:
        good = [c for c in choices if _verified(c)]
        if good:
            if good[0].source is not best.source:
                d.rejected.append(Rejected(best.source.id, None, "newer but never verified by reading it back"))
                why = (("required for " + inc.label.lower()) if inc in _NEEDS_VERIFIED
                       else "required at critical severity")
                d.reasons.append(f"newest backup with a passed read-back verification ({why})")
            best = good[0]
        else:
            d.risks.append("no eligible backup has passed a verification; the restore may fail or bring back "
                           "damaged data: verify it first (screen 4) if time allows")
    elif not _verified(best):
        d.risks.append(f"snapshot {best.source.id[:8]} was never verified on {best.target.name}")
        alt = next((c for c in choices if _verified(c)), None)
        if alt is not None and alt.source is not best.source:
            d.risks.append(f"a verified alternative is {alt.source.id[:8]} from {_fmt(alt.source.recoverable_until)}")
    if best.source is choices[0].source and not d.reasons:
        d.reasons.append("newest eligible backup: the least data lost")
    return best


def _explain_copy(d: _Draft, best: _Choice, choices: list[_Choice]) -> None:
    """5. Why this copy, and the risk of depending on it alone."""
    inc, t = d.request.incident, best.target
    why_target = [f"{t.name} is reachable"]
    if best.check and best.check.ok:
        why_target.append("its copy passed " + ("a read-back check" if best.check.read_data else "a structural check"))
    if inc is Incident.RANSOMWARE and t.offsite:
        why_target.append("it is offsite (out of an attacker's reach on the host)")
    elif inc is Incident.DRILL:
        why_target.append("it is the copy least recently proven by a drill")
    elif not t.offsite:
        why_target.append("it is a local directory (fastest to read)")
    if inc is Incident.REGION_OUTAGE and d.request.lost_region:
        why_target.append(f"outside the lost region {d.request.lost_region}")
    d.reasons.append("target " + ", ".join(why_target))
    if not any(c.source is best.source and c is not best for c in choices):
        unreachable = [r for r in d.rejected if r.source_id == best.source.id and r.target]
        if unreachable:
            d.risks.append(f"{t.name} holds the only usable copy of {best.source.id[:8]}: "
                           + "; ".join(r.why for r in unreachable))
    if inc is Incident.RANSOMWARE and not t.offsite:
        d.risks.append("only a local copy is usable: check it was not reachable from the compromised host")


def _moment_restored(d: _Draft, best: _Choice) -> datetime:
    """6. The moment restored, and what it loses."""
    request = d.request
    source = best.source
    point = _point_of(source, request)
    if request.point.kind == "time" and request.point.at is not None:
        at = request.point.at
        if isinstance(source, PhysicalSnapshot):
            _explain_wal(d, source, at)
        elif source.recoverable_until < at:
            d.reasons.append(f"restores {_fmt(point)}; changes up to {_fmt(at)} are not in any backup "
                             "(point-in-time recovery needs WAL archiving)")
        else:
            point = at
    if request.incident in (Incident.HOST_LOSS, Incident.REGION_OUTAGE):
        lost = (d.facts.now - point).total_seconds()
        d.reasons.append(f"restores {_fmt(point)}: about {_dur(max(0.0, lost))} of changes since then are lost")
    if d.tables and source.tables is None and not isinstance(source, PhysicalSnapshot):
        d.risks.append("the snapshot's table list could not be read; the restore will fail if a table is missing")
    return point


def _explain_wal(d: _Draft, source: PhysicalSnapshot, at: datetime) -> None:
    """A physical+WAL source: how it reaches the moment, what it cannot reach, and how the tables come back."""
    until = source.recoverable_until
    d.reasons.append(f"physical snapshot {source.id[:8]} (finished {_fmt(source.finished_at)}, timeline "
                     f"{source.timeline}) plus WAL archived up to {_fmt(until)} recovers to the moment itself")
    if until < at:
        d.reasons.append(f"the WAL archive ends {_fmt(until)}: changes after it up to {_fmt(at)} are not archived "
                         "and are lost")
    if source.gap is not None:
        # `restore --type physical` checks the whole archived range after the snapshot for a time target.
        d.risks.append(f"the WAL archive has a gap after the moment (segment {source.gap.first_missing} is "
                       "missing): the physical restore refuses until it is put back (`backstop wal status`)")
    if d.tables:
        d.reasons.append("tables at a moment: the cluster is recovered in a scratch cluster and the tables are "
                         "copied into a new database")


def _duration_against_rto(d: _Draft, best: _Choice, point: datetime) -> tuple[float, str]:
    """7. How long it will take, against the RTO."""
    source = best.source
    if isinstance(source, PhysicalSnapshot):
        est, basis = estimate_physical(source.size_bytes, source.replay_bytes(point), d.request.db,
                                       d.facts.history)
    else:
        est, basis = estimate(source.size_bytes, d.request.db, d.facts.history)
    if d.tables:
        basis += "; tables only: the whole " + ("cluster" if isinstance(source, PhysicalSnapshot) else "dump") \
                 + " is still read, so this is an upper bound"
    rto = d.facts.rto_s
    if rto is not None and est > rto:
        d.risks.append(f"estimated {_dur(est)} exceeds the RTO of {_dur(rto)}")
    if d.request.severity is Severity.CRITICAL:
        d.reasons.append("critical: a new database is created side by side; switch applications to it "
                         "once checked, rather than restoring over the live one")
    return est, basis


def with_tables(source: LogicalSnapshot, tables: Sequence[str]) -> LogicalSnapshot:
    """A copy of ``source`` with its table list filled in (from its manifest)."""
    return replace(source, tables=tuple(tables))
