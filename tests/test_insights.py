"""KPIs, alerts and trend series: pure computations over catalog records, and over a seeded catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from core.catalog.models import JobRecord, RestoreRecord, VerificationRecord
from core.catalog.reader import CatalogReader
from core.insights.alerts import build_alerts
from core.insights.kpis import DAY, backup_completion, percentile, recovery_time, verification_success
from core.insights.overview import build_dashboard, build_trend_series
from core.insights.trends import restore_trend, size_buckets

from tests.fixtures.console import NOW, write_console_setup

H = 3600.0


def job(kind: str, state: str, started: float, **kw: object) -> JobRecord:
    return JobRecord(kw.get("id", f"j{started}"), kind, kw.get("db", "warranty"), state, started,  # type: ignore[arg-type]
                     started + 60 if state != "running" else None, None, 0, None, 0.0,
                     kw.get("error"), kw.get("description", ""), "h", 1)  # type: ignore[arg-type]


def ver(ok: bool, at: float, sid: str | None = "s1", target: str = "local1") -> VerificationRecord:
    return VerificationRecord(1, None, target, sid, at - 10, at, True, 1, 1, ok, [] if ok else ["damaged"])


def restore(dur: float, at: float, ok: bool = True, db: str = "warranty") -> RestoreRecord:
    return RestoreRecord(1, None, "s1", db, "x", [], at, dur, 10, ok, None)


# -- Backup Completion Rate --------------------------------------------------------


def test_completion_counts_failures_and_missed_runs_and_ignores_running() -> None:
    jobs = [job("backup", "succeeded", NOW - d * DAY) for d in range(1, 9)]
    jobs += [job("backup", "failed", NOW - 2 * DAY), job("backup", "running", NOW - 60),
             job("check", "failed", NOW - H)]
    k = backup_completion(jobs, NOW, missed_runs=[NOW - 3 * DAY, NOW - 30 * DAY])
    # In the last 7 days (exactly 7 days ago is outside): 6 succeeded, 1 failed, 1 missed.
    assert k.value == pytest.approx(100 * 6 / 8)
    assert k.status == "bad" and "6 of 8" in k.detail and "1 failed, 1 missed" in k.detail
    assert len(k.trend) == 14 and k.trend[-1] == 100.0
    assert "missed run" in k.definition


def test_completion_without_data_says_so() -> None:
    k = backup_completion([], NOW)
    assert k.value is None and k.status == "none" and k.display == "no data"


# -- Data Integrity Verification Success ------------------------------------------------


def test_counts_in_sql_match_counts_in_python(seeded) -> None:  # type: ignore[no-untyped-def]
    from core.insights.kpis import counts_by_age

    _, reader = seeded
    vs = reader.verifications_since(NOW - 14 * DAY)
    assert reader.verification_counts_by_age(NOW, 14) == counts_by_age(((v.ok, v.finished_at) for v in vs), NOW)
    jobs = [j for j in reader.finished_jobs_since(NOW - 14 * DAY) if j.kind == "backup" and j.state != "running"]
    assert reader.backup_counts_by_age(NOW, 14) == counts_by_age(((j.state == "succeeded", j.started_at) for j in jobs),
                                                                 NOW)


def test_integrity_rate_and_coverage() -> None:
    vs = [ver(True, NOW - d * DAY) for d in range(1, 6)] + [ver(False, NOW - H)]
    k = verification_success(vs, NOW, snapshots_total=10, snapshots_verified_recently=9)
    assert k.value == pytest.approx(100 * 5 / 6) and k.status == "bad"
    assert "90% of 10 snapshots" in k.detail
    ok = verification_success(vs[:-1], NOW, snapshots_total=10, snapshots_verified_recently=5)
    assert ok.value == 100 and ok.status == "warn"  # all passed, but half the snapshots unverified


# -- Average Recovery Time -----------------------------------------------------------------


def test_recovery_mean_p95_and_rto() -> None:
    rs = [restore(d, NOW - i * DAY) for i, d in enumerate([100, 200, 300, 400, 5000], start=1)]
    rs.append(restore(99999, NOW - DAY, ok=False))  # failed restores do not count
    k = recovery_time(rs, NOW, rto_s={"warranty": 1800}, default_rto_s=3600)
    assert k.value == pytest.approx(1200)
    assert "p95 1h 23m" in k.detail and "80% of 5 within RTO 30m 00s" in k.detail
    assert k.status == "warn"  # the mean is within the RTO, one restore was not


def test_percentile_nearest_rank() -> None:
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert percentile([5], 95) == 5


# -- alerts -------------------------------------------------------------------------------------


def test_alerts_are_ordered_by_urgency_and_say_what_to_do() -> None:
    alerts = build_alerts(
        now=NOW, recent_jobs=[job("backup", "failed", NOW - H, error="disk full", description="backup of warranty")],
        never_verified=(3, [("abcdef1234", "warranty", "2026-11-19T00:00:00+00:00")]),
        damaged=[ver(False, NOW - 2 * H, sid="deadbeef99", target="offsite")],
        target_checks={"offsite": ver(False, NOW - H, sid=None, target="offsite")},
        configured_targets=["local1", "offsite"], latest_backup={"warranty": "2026-11-17T00:00:00+00:00"},
        configured_dbs=["warranty", "billing"], missed_runs=[("billing", NOW - 5 * H)], wal_lag_s={"warranty": 900},
    )
    kinds = [a.kind for a in alerts]
    assert all(a.level == "critical" for a in alerts[:5])
    assert set(kinds[:5]) == {"failed-job", "missed-run", "target-unhealthy", "damaged-copy", "wal-lag"}
    assert "never-verified" in kinds and kinds.count("stale-backup") == 2
    text = " ".join(a.message for a in alerts)
    assert "backup of warranty failed" in text and "disk full" in text
    assert "billing has no snapshot yet" in text and "84 h old" in text
    assert "UTC" in text


# -- trends ----------------------------------------------------------------------------------------


def test_restore_trend_forecasts_when_the_rto_will_be_missed() -> None:
    rs = [restore(600 + i * 60, NOW - (10 - i) * DAY) for i in range(10)]  # +1 min a day
    t = restore_trend(rs, {"warranty": 1800}, 3600, NOW)
    assert t.rto_s == 1800 and len(t.points) == 10
    assert "reaches the RTO of 30m 00s in about 10 days" in t.forecast
    flat = restore_trend([restore(600, NOW - i * DAY) for i in range(5)], {}, 3600, NOW)
    assert "not at risk" in flat.forecast
    assert "at least 3" in restore_trend(rs[:2], {}, 3600, NOW).forecast


def test_size_buckets_split_full_and_incremental_and_fill_empty_days() -> None:
    rows = [("warranty", "logical", "2026-11-19T01:00:00+00:00", "2026-11-19T01:01:00+00:00", 100, 10),
            ("warranty", "wal", "2026-11-19T02:00:00+00:00", "2026-11-19T02:00:10+00:00", 5, 5),
            ("warranty", "logical", "2026-10-01T01:00:00+00:00", "2026-10-01T01:01:00+00:00", 100, 10)]
    b = size_buckets(rows, NOW, days=3)
    assert [x.day for x in b] == ["2026-11-18", "2026-11-19", "2026-11-20"]
    assert (b[1].logical_bytes, b[1].full_stored, b[1].incremental_stored) == (105, 10, 5)
    assert b[0].logical_bytes == 0 and b[2].logical_bytes == 0


# -- over a seeded catalog ---------------------------------------------------------------------------


@pytest.fixture
def seeded(tmp_path: Path):  # type: ignore[no-untyped-def]
    setup = write_console_setup(tmp_path / "c")
    reader = CatalogReader(setup.config.catalog.sqlite_path)
    yield setup, reader
    reader.close()


def test_dashboard_over_the_seeded_catalog(seeded) -> None:  # type: ignore[no-untyped-def]
    setup, reader = seeded
    d = build_dashboard(reader, setup.config, NOW)
    completion, integrity, recovery = d.kpis
    assert completion.value == pytest.approx(87.5) and "2 failed" in completion.detail
    assert integrity.status == "bad"  # one damaged copy, one failed target check
    assert recovery.status == "ok" and "within RTO 30m 00s" in recovery.detail
    assert [j.id for j in d.running] == ["r00000000001"]
    assert {a.kind for a in d.alerts} >= {"failed-job", "damaged-copy", "target-unhealthy", "never-verified"}


def test_trend_series_over_the_seeded_catalog(seeded) -> None:  # type: ignore[no-untyped-def]
    setup, reader = seeded
    t = build_trend_series(reader, setup.config, NOW, days=30)
    assert len(t.restores.points) == 8 and t.restores.rto_s == 1800
    assert len(t.backups) == 56 and len(t.sizes) == 30
    assert sum(t.failures_by_hour) == 3  # two failed backups and one failed restore
    assert dict(t.failures_by_kind) == {"backup": 2, "restore": 1}


def test_reader_pages_filters_and_sees_other_writers(seeded) -> None:  # type: ignore[no-untyped-def]
    setup, reader = seeded
    ids = reader.snapshot_rowids()
    assert len(ids) == 56
    rows = reader.snapshot_rows(ids[:3])
    assert [r.finished_at for r in rows] == sorted((r.finished_at for r in rows), reverse=True)
    assert len(reader.snapshot_rowids(db="billing")) == 28
    assert len(reader.snapshot_rowids(words=("warranty", "2026-11-19"))) == 1
    assert len(reader.snapshot_rowids(words=(rows[0].id[:6],))) == 1
    damaged = reader.damaged_copies()
    assert len(damaged) == 1 and damaged[0].target == "offsite"
    # Another connection (as the CLI in another process) commits: data_version moves.
    before = reader.data_version()
    other = sqlite3.connect(str(setup.config.catalog.sqlite_path))
    other.execute("UPDATE jobs SET bytes_done = bytes_done + 1 WHERE id = 'r00000000001'")
    other.commit()
    other.close()
    assert reader.data_version() != before
