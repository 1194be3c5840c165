"""The restore planner: what an on-call DBA would pick, for every incident and severity.

The fixture history: snapshots of `warranty` every 6 hours over two days on
two targets (a local directory and an offsite bucket); most are verified.
Each test changes one fact and checks the snapshot, target and point chosen,
or that the plan is refused or flagged as risky, with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from core.planner import (
    CopyCheck,
    Incident,
    LogicalSnapshot,
    PastRestore,
    PhysicalSnapshot,
    PlanningFacts,
    PointInTime,
    RestoreRequest,
    Severity,
    TargetState,
    WalArchiveFacts,
    default_destination,
    estimate,
    estimate_physical,
    physical_source,
    plan,
)
from core.records import SnapshotRecord

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TABLES = ("warranty.claims", "warranty.products", "warranty.cost_entries")
LOCAL = TargetState("local1", "local")
OFFSITE = TargetState("offsite", "s3", region="eu-west-1")
DR = TargetState("dr", "s3", region="us-east-1")


def snap(hours_ago: float, *, sid: str | None = None, verified: dict[str, bool] | None = None,
         targets: tuple[str, ...] = ("local1", "offsite"), tables: tuple[str, ...] | None = TABLES,
         read_data: bool = True, size: int = 2 * 2**30, db: str = "warranty") -> LogicalSnapshot:
    """A snapshot taken ``hours_ago``; ``verified`` maps target -> passed (absent: never verified)."""
    started = NOW - timedelta(hours=hours_ago)
    checks = tuple(CopyCheck(t, ok, read_data, (started + timedelta(minutes=5)).timestamp())
                   for t, ok in (verified or {}).items())
    return LogicalSnapshot(sid or f"{int(hours_ago):04d}" + "a" * 60, db, started, started + timedelta(minutes=3),
                           size, targets, checks, tables)


def history(n: int = 4, rate_mib: float = 100.0, db: str = "warranty") -> list[PastRestore]:
    return [PastRestore(db, 2 * 2**30, 2 * 2**30 / (rate_mib * 2**20), True, (NOW - timedelta(days=10 + i)).timestamp())
            for i in range(n)]


BOTH = {"local1": True, "offsite": True}


def base_sources() -> list[LogicalSnapshot]:
    # Newest first: 2 h (unverified), 8 h, 14 h, 20 h, ... 44 h (verified on both).
    return [snap(2)] + [snap(h, verified=BOTH) for h in range(8, 48, 6)]


def facts(sources: list[LogicalSnapshot] | None = None, targets: tuple[TargetState, ...] = (LOCAL, OFFSITE),
          hist: list[PastRestore] | None = None, rto_s: float | None = 3600) -> PlanningFacts:
    return PlanningFacts(base_sources() if sources is None else sources, targets,
                         history() if hist is None else hist, rto_s, NOW)


def req(incident: Incident, severity: Severity = Severity.HIGH, **kw: object) -> RestoreRequest:
    return RestoreRequest("warranty", incident, severity, **kw)  # type: ignore[arg-type]


def hours(p) -> float:  # type: ignore[no-untyped-def]
    return round((NOW - p.point).total_seconds() / 3600, 1)


# -- each incident, the normal case -------------------------------------------------


def test_host_loss_takes_newest_snapshot_from_local_target_and_notes_risk() -> None:
    p = plan(req(Incident.HOST_LOSS), facts())
    assert p.ok and hours(p) == 2 and p.target == "local1"
    assert p.risky and any("never verified" in r for r in p.risks)
    # The verified alternative is named, so the operator can choose it.
    assert any("verified alternative" in r and "0008" in r for r in p.risks)
    assert any("lost" in r for r in p.reasons)  # the data-loss window is stated


def test_host_loss_critical_prefers_verified_snapshot_over_newest() -> None:
    p = plan(req(Incident.HOST_LOSS, Severity.CRITICAL), facts())
    assert p.ok and hours(p) == 8 and not p.risky
    assert any(r.source_id.startswith("0002") and "never verified" in r.why for r in p.rejected)


def test_accidental_deletion_picks_newest_snapshot_before_the_deletion() -> None:
    p = plan(req(Incident.ACCIDENTAL_DELETION, Severity.LOW, tables=("warranty.claims",),
                 incident_at=NOW - timedelta(hours=10)), facts())
    assert p.ok and hours(p) == 14 and p.scope == "tables" and p.tables == ("warranty.claims",)
    assert p.destination.startswith("warranty_restore_")
    assert any("after the incident" in r.why for r in p.rejected)
    assert "upper bound" in p.estimate_basis  # table restores still read the whole dump


def test_accidental_deletion_without_a_time_warns_that_latest_may_hold_the_damage() -> None:
    p = plan(req(Incident.ACCIDENTAL_DELETION), facts())
    assert p.ok and hours(p) == 2
    assert any("incident time is unknown" in r for r in p.risks)


def test_dropped_table_comes_from_the_newest_snapshot_that_still_has_it() -> None:
    sources = base_sources()
    # The table was dropped between 20 h and 14 h ago.
    sources = [replace(s, tables=tuple(t for t in TABLES if t != "warranty.cost_entries")) if i < 3 else s
               for i, s in enumerate(sources)]
    p = plan(req(Incident.ACCIDENTAL_DELETION, tables=("warranty.cost_entries",)), facts(sources))
    assert p.ok and hours(p) == 20
    assert any("lack warranty.cost_entries" in r for r in p.reasons)
    assert sum("did not exist" in r.why for r in p.rejected) == 3


def test_corruption_needs_a_verified_snapshot_before_it_was_seen() -> None:
    p = plan(req(Incident.CORRUPTION, incident_at=NOW - timedelta(hours=1)), facts())
    assert p.ok and hours(p) == 8 and not p.risky
    assert any("read-back verification" in r for r in p.reasons)


def test_ransomware_prefers_offsite_verified_copy_before_compromise() -> None:
    p = plan(req(Incident.RANSOMWARE, Severity.CRITICAL, incident_at=NOW - timedelta(hours=15)), facts())
    assert p.ok and hours(p) == 20 and p.target == "offsite" and not p.risky
    assert any("offsite" in r for r in p.reasons)


def test_ransomware_with_only_a_local_copy_is_risky() -> None:
    sources = [replace(s, targets=("local1",), checks=tuple(c for c in s.checks if c.target == "local1"))
               for s in base_sources()]
    p = plan(req(Incident.RANSOMWARE, incident_at=NOW - timedelta(hours=3)), facts(sources))
    assert p.ok and p.target == "local1" and p.risky
    assert any("compromised host" in r for r in p.risks)


def test_region_outage_avoids_targets_in_the_lost_region() -> None:
    sources = [replace(s, targets=("offsite", "dr"),
                       checks=tuple(CopyCheck(t, True, True, 0) for t in ("offsite", "dr"))) for s in base_sources()]
    p = plan(req(Incident.REGION_OUTAGE, lost_region="eu-west-1"), facts(sources, targets=(LOCAL, OFFSITE, DR)))
    assert p.ok and p.target == "dr" and hours(p) == 2
    assert any("lost region" in r.why for r in p.rejected)
    assert any("outside the lost region" in r for r in p.reasons)


def test_region_outage_with_the_only_holding_target_unreachable_falls_back_to_an_older_snapshot() -> None:
    sources = base_sources()
    sources[0] = replace(sources[0], targets=("offsite",))  # the newest exists only offsite
    down = replace(OFFSITE, reachable=False, detail="connect timeout")
    p = plan(req(Incident.REGION_OUTAGE), facts(sources, targets=(LOCAL, down)))
    assert p.ok and hours(p) == 8 and p.target == "local1"
    assert any("unreachable" in r.why and r.source_id.startswith("0002") for r in p.rejected)
    assert any("only usable copy" in r for r in p.risks)  # offsite is down, local holds the only copy


def test_drill_uses_the_newest_snapshot_and_rotates_targets() -> None:
    hist = history()
    hist.append(PastRestore("warranty", 1, 1.0, True, (NOW - timedelta(days=1)).timestamp(), target="local1",
                            kind="drill"))
    p = plan(req(Incident.DRILL, Severity.LOW), facts(hist=hist))
    assert p.ok and hours(p) == 2 and p.target == "offsite"
    assert p.destination.startswith("warranty_drill_")


@pytest.mark.parametrize("incident", list(Incident))
@pytest.mark.parametrize("severity", list(Severity))
def test_every_incident_and_severity_gives_a_sound_plan(incident: Incident, severity: Severity) -> None:
    p = plan(req(incident, severity, incident_at=NOW - timedelta(hours=5)), facts())
    assert p.ok and p.source is not None and p.target in ("local1", "offsite")
    assert p.destination != "warranty"  # never the live database
    assert p.estimated_s is not None and p.estimated_s > 0
    if incident in (Incident.CORRUPTION, Incident.RANSOMWARE) or severity is Severity.CRITICAL:
        assert any(c.ok for c in p.source.checks), "a verified copy is required here"
    if incident in (Incident.ACCIDENTAL_DELETION, Incident.CORRUPTION, Incident.RANSOMWARE):
        assert p.point is not None and p.point < NOW - timedelta(hours=5)
    else:
        assert hours(p) in (2, 8)


# -- no valid plan ------------------------------------------------------------------


def test_no_snapshots_at_all() -> None:
    p = plan(req(Incident.HOST_LOSS), facts([]))
    assert not p.ok and "no backups of warranty" in (p.refusal or "")


def test_everything_after_the_incident() -> None:
    p = plan(req(Incident.CORRUPTION, incident_at=NOW - timedelta(days=5)), facts())
    assert not p.ok and "after the incident" in (p.refusal or "")


def test_table_that_did_not_exist_at_the_chosen_snapshot() -> None:
    sources = base_sources()
    p = plan(req(Incident.ACCIDENTAL_DELETION, tables=("warranty.invoices",),
                 point=PointInTime.snapshot(sources[1].id[:10])), facts(sources))
    assert not p.ok
    assert "warranty.invoices did not exist in snapshot 0008" in (p.refusal or "")


def test_every_copy_unreachable() -> None:
    p = plan(req(Incident.HOST_LOSS),
             facts(targets=(replace(LOCAL, reachable=False), replace(OFFSITE, reachable=False))))
    assert not p.ok and "no reachable, undamaged copy" in (p.refusal or "")


def test_chosen_snapshot_unknown() -> None:
    p = plan(req(Incident.HOST_LOSS, point=PointInTime.snapshot("ffffffff")), facts())
    assert not p.ok and "not in the catalog" in (p.refusal or "")


# -- risky plans --------------------------------------------------------------------------


def test_only_unverified_snapshots() -> None:
    sources = [snap(h) for h in (2, 8, 14)]
    p = plan(req(Incident.CORRUPTION, incident_at=NOW - timedelta(hours=1)), facts(sources))
    assert p.ok and p.risky and hours(p) == 2
    assert any("no eligible backup has passed a verification" in r for r in p.risks)


def test_damaged_copy_is_skipped_for_the_healthy_one() -> None:
    sources = base_sources()
    sources[1] = replace(sources[1], checks=(CopyCheck("local1", False, True, 0), CopyCheck("offsite", True, True, 0)))
    p = plan(req(Incident.HOST_LOSS, Severity.CRITICAL), facts(sources))
    assert p.ok and hours(p) == 8 and p.target == "offsite"
    assert any("failed its last verification" in r.why for r in p.rejected)


def test_estimate_over_the_rto_is_a_risk() -> None:
    p = plan(req(Incident.HOST_LOSS, Severity.CRITICAL), facts(hist=history(rate_mib=0.5), rto_s=600))
    assert p.ok and p.risky and any("exceeds the RTO" in r for r in p.risks)


def test_unknown_table_list_is_a_risk_not_a_refusal() -> None:
    sources = [replace(s, tables=None) for s in base_sources()]
    p = plan(req(Incident.ACCIDENTAL_DELETION, tables=("warranty.claims",)), facts(sources))
    assert p.ok and any("table list could not be read" in r for r in p.risks)


# -- estimates and points in time -------------------------------------------------------------


def test_estimate_uses_own_history_then_others_then_a_default() -> None:
    own, basis = estimate(2**30, "warranty", history(rate_mib=64))
    assert own == pytest.approx(5 + 16, rel=0.01) and "of warranty" in basis
    other, basis = estimate(2**30, "warranty", history(rate_mib=64, db="billing"))
    assert other == pytest.approx(21, rel=0.01) and "other databases" in basis
    default, basis = estimate(2**30, "warranty", [])
    assert default > 5 and "no restore history" in basis


def test_point_in_time_uses_newest_snapshot_before_it_and_says_what_is_missing() -> None:
    at = NOW - timedelta(hours=11)
    p = plan(req(Incident.HOST_LOSS, point=PointInTime.moment(at)), facts())
    assert p.ok and hours(p) == 14
    assert any("WAL archiving" in r for r in p.reasons)


def test_default_destination_is_never_the_live_database() -> None:
    assert default_destination("warranty", Incident.HOST_LOSS, NOW) == "warranty_restore_20261120_1200"
    assert default_destination("warranty", Incident.DRILL, NOW) == "warranty_drill_20261120_1200"


# -- point in time: a physical snapshot plus archived WAL ------------------------------------------------------


SEG = 16 * 2**20


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def physical_record(hours_ago: float, *, sid: str = "p" * 64, start_seg: int = 2, stop_seg: int = 2,
                    timeline: int = 1, size: int = 4 * 2**30) -> SnapshotRecord:
    """A catalogued base backup taken ``hours_ago`` (two minutes long) whose WAL runs over the given segments."""
    started = NOW - timedelta(hours=hours_ago)
    return SnapshotRecord(sid, "warranty", "physical", _iso(started), _iso(started + timedelta(minutes=2)), size,
                          size // 3, ["local1", "offsite"], status="restorable",
                          start_lsn=f"0/{start_seg * SEG + 0x28:X}", stop_lsn=f"0/{stop_seg * SEG + 0x100:X}",
                          timeline=timeline, system_identifier="7300000000000000001", pg_version="160004",
                          wal_segment_size=SEG)


def archive(first_seg: int, hours_from: float, hours_to: float, *, timeline: int = 1, missing: tuple[int, ...] = (),
            count: int = 20, histories: dict[int, list[tuple[int, int]]] | None = None) -> WalArchiveFacts:
    """``count`` segments archived evenly between ``hours_from`` and ``hours_to`` ago, minus ``missing``."""
    step = (hours_from - hours_to) / max(1, count - 1)
    segs = {first_seg + i: NOW - timedelta(hours=hours_from - i * step) for i in range(count)
            if first_seg + i not in missing}
    return WalArchiveFacts(SEG, {timeline: segs}, histories or {})


def pitr(at: datetime, **kw: object) -> RestoreRequest:
    return req(Incident.ACCIDENTAL_DELETION, point=PointInTime.moment(at), **kw)


def physical_history(n: int = 3, rate_mib: float = 200.0) -> list[PastRestore]:
    return [PastRestore("warranty", 4 * 2**30, 4 * 2**30 / (rate_mib * 2**20), True,
                        (NOW - timedelta(days=3 + i)).timestamp(), "local1", physical=True) for i in range(n)]


def test_a_moment_between_snapshots_is_reached_exactly_with_physical_and_wal() -> None:
    # Base backup 30 h ago; WAL archived from then until 10 minutes ago, no holes.
    source = physical_source(physical_record(30), archive(2, 30, 1 / 6))
    at = NOW - timedelta(hours=5, minutes=13)
    p = plan(pitr(at), facts([*base_sources(), source], hist=history() + physical_history()))
    assert p.ok and p.source is source and p.point == at  # exactly the moment, not the 8 h snapshot before it
    assert p.source.kind == "physical" and p.source.recoverable_from == source.finished_at + timedelta(seconds=1)
    assert any("plus WAL archived up to" in r for r in p.reasons)
    # The estimate: the data directory at the measured physical rate, plus the WAL replayed to the moment.
    assert "3 past physical restore(s) of warranty" in p.estimate_basis and "WAL to replay" in p.estimate_basis
    expected, _ = estimate_physical(source.size_bytes, source.replay_bytes(at), "warranty",
                                    history() + physical_history())
    assert p.estimated_s == pytest.approx(expected)
    # 15 segments archived after the backup up to the moment, plus the one holding it.
    assert expected == pytest.approx(5.0 + 4 * 2**30 / (200 * 2**20) + 16 * SEG / (64 * 2**20))


def test_the_logical_estimate_ignores_physical_restores_and_the_physical_one_assumes_without_history() -> None:
    logical_only, basis = estimate(2 * 2**30, "warranty", physical_history())
    assert "no restore history" in basis  # physical restores measure another path
    est, basis = estimate_physical(2**30, SEG, "billing", history())
    assert "no physical restore history" in basis and est == pytest.approx(5.0 + 2**30 / (30 * 2**20) + 0.25)
    assert logical_only == pytest.approx(5.0 + 2 * 2**30 / (30 * 2**20))


def test_a_gap_in_the_wal_before_the_moment_leaves_the_physical_source_out_naming_the_segment() -> None:
    # Segment 12 never reached the archive; later ones did.
    source = physical_source(physical_record(30), archive(2, 30, 1 / 6, missing=(12,)))
    assert source.gap is not None and source.gap.first_missing == "00000001000000000000000C"
    at = NOW - timedelta(hours=3)
    p = plan(pitr(at), facts([*base_sources(), source]))
    assert p.ok and p.source is not source and p.source.kind == "logical"  # the snapshot before it, not exact
    gap = [r.why for r in p.rejected if r.source_id == source.id]
    assert gap and "gap before" in gap[0] and "00000001000000000000000C" in gap[0]
    # With no logical snapshot either, the refusal names the gap.
    p = plan(pitr(at), facts([source]))
    assert not p.ok and "00000001000000000000000C" in (p.refusal or "")


def test_a_gap_after_the_moment_is_a_risk_and_the_archive_end_bounds_the_point() -> None:
    source = physical_source(physical_record(30), archive(2, 30, 1, missing=(20,)))
    p = plan(pitr(NOW - timedelta(hours=25)), facts([source]))
    assert p.ok and p.source is source and any("gap after the moment" in r for r in p.risks)
    # Without a gap, a moment after the newest archived segment restores to the end of the archive.
    source = physical_source(physical_record(30), archive(2, 30, 1))
    p = plan(pitr(NOW - timedelta(minutes=5)), facts([source]))
    assert p.ok and p.point == source.recoverable_until == NOW - timedelta(hours=1)
    assert any("not archived and are lost" in r for r in p.reasons)


def test_a_physical_snapshot_still_waiting_or_finished_after_the_moment_is_not_offered() -> None:
    waiting = physical_source(physical_record(30, start_seg=2, stop_seg=4), archive(2, 30, 1, missing=(3,)))
    assert waiting.waiting_for == "000000010000000000000003"
    late = physical_source(physical_record(2, sid="q" * 64, start_seg=40, stop_seg=40), archive(40, 2, 1 / 6))
    p = plan(pitr(NOW - timedelta(hours=4)), facts([waiting, late]))
    assert not p.ok
    whys = {r.source_id[:1]: r.why for r in p.rejected}
    assert "still waiting for WAL segment 000000010000000000000003" in whys["p"]
    assert "after the chosen moment" in whys["q"]


def test_the_incident_time_cuts_a_physical_source_at_the_moment_not_at_its_archive_end() -> None:
    source = physical_source(physical_record(30), archive(2, 30, 1 / 6))
    inc = NOW - timedelta(hours=2)
    p = plan(pitr(inc - timedelta(minutes=1), incident_at=inc), facts([*base_sources(), source]))
    assert p.ok and p.source is source and p.point == inc - timedelta(minutes=1)
    # Asking for a moment after the incident restores the damage: refused for this source.
    p = plan(pitr(inc + timedelta(minutes=30), incident_at=inc), facts([source]))
    assert not p.ok and any("holds the damage" in r.why and r.why.startswith("restores") for r in p.rejected)


def test_recovery_follows_the_newest_timeline_whose_history_continues_from_the_snapshot() -> None:
    # Timeline 2 branched at segment 10 (a restore was promoted); the archive continues on it.
    tl1 = {n: NOW - timedelta(hours=30 - n) for n in range(2, 12)}
    tl2 = {n: NOW - timedelta(hours=30 - n) for n in range(10, 25)}
    facts_tl = WalArchiveFacts(SEG, {1: tl1, 2: tl2}, {2: [(1, 10 * SEG + 0x100)]})
    source = physical_source(physical_record(30), facts_tl)
    assert source.gap is None and source.off_path is None
    assert source.recoverable_until == NOW - timedelta(hours=6)  # segment 24 on timeline 2
    # A snapshot taken on timeline 1 after the branch is not on timeline 2's history.
    late = physical_source(physical_record(19, sid="r" * 64, start_seg=11, stop_seg=11), facts_tl)
    assert late.off_path is not None and not late.covers(NOW - timedelta(hours=10))
    assert "timeline 2" in (late.why_not(NOW) or "")


def test_tables_at_a_moment_from_a_physical_source_say_how_they_come_back() -> None:
    source = physical_source(physical_record(30), archive(2, 30, 1 / 6))
    assert isinstance(source, PhysicalSnapshot) and source.tables is None
    p = plan(pitr(NOW - timedelta(hours=26), tables=("warranty.claims",)), facts([source]))
    assert p.ok and p.scope == "tables" and any("scratch cluster" in r for r in p.reasons)
    assert not any("table list could not be read" in r for r in p.risks)  # a cluster holds every table
    assert "whole cluster is still read" in p.estimate_basis
