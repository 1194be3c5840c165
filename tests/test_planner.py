"""The restore planner: what an on-call DBA would pick, for every incident and severity.

The fixture history: snapshots of `warranty` every 6 hours over two days on
two targets (a local directory and an offsite bucket); most are verified.
Each test changes one fact and checks the snapshot, target and point chosen,
or that the plan is refused or flagged as risky, with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from core.planner import (
    CopyCheck, Incident, LogicalSnapshot, PastRestore, PlanningFacts, PointInTime, RestoreRequest, Severity,
    TargetState, default_destination, estimate, plan,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
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
    p = plan(req(Incident.HOST_LOSS), facts(targets=(replace(LOCAL, reachable=False), replace(OFFSITE, reachable=False))))
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
