"""Insights with known answers: failure patterns, retention cost in bytes, the recovery-time forecast date.

Pure functions on seeded inputs, plus what a failed job records (a real
catalog and the real job runner) and `backstop insights --json` on a seeded
catalog (CLI subprocess).
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from core.catalog.sqlite import SqliteCatalog
from core.config import RetentionConfig
from core.errors import PostgresError, RepositoryError, StorageError, TargetUnreachable
from core.events import EventBus
from core.insights.forecast import Measured, forecast
from core.insights.patterns import failure_patterns
from core.insights.retention_cost import SnapshotSize, repository_bytes, retention_cost
from core.jobs import run_job
from core.records import JobFailure

from tests.fixtures.console import write_console_setup

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
DAY = 86_400.0
GIB = 2**30


def _at(days_ago: int, hour: int, minute: int = 10) -> float:
    day = datetime.fromtimestamp(NOW - days_ago * DAY, UTC).replace(hour=hour, minute=minute, second=0)
    return day.timestamp()


def _fail(at: float, target: str | None, cls: str = "TargetUnreachable", db: str = "warranty") -> JobFailure:
    msg = f"target '{target}': connection refused" if target else "pg_dump: connection refused"
    return JobFailure(f"j{at:.0f}", "backup", db, "failed", at, msg, cls, target)


# -- failure patterns ---------------------------------------------------------------------------------


def test_failures_clustered_on_one_target_and_hour_are_named() -> None:
    clustered = [_fail(_at(d, 2, 5 + d), "offsite") for d in range(8)]
    others = [_fail(_at(1, 5), "local1", "StorageError"), _fail(_at(2, 9), None, "PostgresError"),
              _fail(_at(3, 14), None, "PostgresError")]
    p = failure_patterns(clustered + others)
    assert p.pattern == "8 of 11 failures hit target offsite between 02:00 and 03:00"
    assert p.total == 11 and p.by_hour[2] == 8 and p.by_hour[5] == p.by_hour[9] == p.by_hour[14] == 1
    assert p.by_target == (("offsite", 8), ("local1", 1))
    assert p.by_class == (("TargetUnreachable", 8), ("PostgresError", 2), ("StorageError", 1))


def test_scattered_failures_give_no_pattern() -> None:
    spread = [_fail(_at(d, h), t, c) for d, (h, t, c) in enumerate(
        [(1, "a", "StorageError"), (4, "b", "PostgresError"), (7, "c", "TargetUnreachable"),
         (10, "a", "PostgresError"), (13, "b", "StorageError"), (16, "c", "TargetUnreachable")])]
    p = failure_patterns(spread)
    assert p.total == 6 and p.pattern is None
    assert failure_patterns([]).pattern is None
    # Two of two is not a pattern: at least 3.
    assert failure_patterns([_fail(_at(1, 2), "offsite"), _fail(_at(2, 2), "offsite")]).pattern is None


def test_weaker_patterns_and_the_target_named_in_older_rows() -> None:
    # One hour across targets.
    p = failure_patterns([_fail(_at(d, 23), t) for d, t in enumerate(["a", "b", "c", "d"])]
                         + [_fail(_at(9, 4), "e"), _fail(_at(10, 6), None, "PostgresError")])
    assert p.pattern == "4 of 6 failures started between 23:00 and 00:00 (UTC)"
    # One target across hours; the target read from the message when the row did not record it.
    old = [JobFailure(f"o{h}", "backup", "w", "failed", _at(1, h), "target 'offsite': timed out", None, None)
           for h in (1, 8, 15)]
    p = failure_patterns(old + [_fail(_at(2, 20), None, "PostgresError")])
    assert p.pattern == "3 of 4 failures hit target offsite" and p.by_class == (("unrecorded", 3),
                                                                                   ("PostgresError", 1))
    # One class, nothing else in common.
    p = failure_patterns([_fail(_at(d, d), None, "PostgresError") for d in range(3)] + [_fail(_at(5, 9), "x")])
    assert p.pattern == "3 of 4 failures were PostgresError"


async def test_a_failed_job_records_its_error_class_and_target(tmp_path: Path) -> None:
    cat = SqliteCatalog(tmp_path / "catalog.db")
    bus = EventBus()
    bus.subscribe(cat.record_event)
    wrapped = RepositoryError("targets_policy is not met: 1 of 2 (target 'offsite': connection refused)")
    for exc in (TargetUnreachable("offsite", "connection refused"), wrapped, PostgresError("pg_dump failed")):
        with pytest.raises(type(exc)):
            async with run_job(bus, "backup", "warranty", "logical backup of warranty"):
                raise exc
    try:
        async with run_job(bus, "backup", "warranty", "logical backup of warranty"):
            raise StorageError("all", "every target failed")
    except StorageError:
        pass
    q = cat.open_queries()
    got = [(f.error_class, f.target) for f in q.job_failures_since(0)]
    q.close()
    cat.close()
    assert got == [("TargetUnreachable", "offsite"), ("RepositoryError", "offsite"), ("PostgresError", None),
                   ("StorageError", None)]


# -- retention cost -------------------------------------------------------------------------------------


def _series(sizes: list[int], stored: list[int]) -> list[SnapshotSize]:
    t0 = datetime.fromtimestamp(NOW, UTC) - timedelta(days=len(sizes))
    return [SnapshotSize(f"s{i}", "logical", t0 + timedelta(days=i), sz, st)
            for i, (sz, st) in enumerate(zip(sizes, stored, strict=True))]


def test_retention_cost_of_a_churning_series_is_exact() -> None:
    # 10 GiB database; the first backup stored 5 GiB (compressed), each later one 1 GiB of changes.
    snaps = _series([10 * GIB] * 6, [5 * GIB] + [GIB] * 5)
    cost = retention_cost("warranty", snaps, RetentionConfig(keep_daily=4), datetime.fromtimestamp(NOW, UTC))
    # Kept: the 4 newest dailies; they need one whole copy (5 GiB) plus 3 days of changes.
    assert (cost.kept, cost.cost_bytes) == (4, 8 * GIB)
    # keep_daily 2: one whole copy plus one day of changes; the 2 others' changes are freed.
    assert (cost.smaller_rule, cost.smaller_kept, cost.saving_bytes) == ("2", 2, 2 * GIB)
    assert cost.advice == "warranty: keeping 4 dailies (4 snapshot(s)) costs 8.0 GiB; 2 would save 2.0 GiB"
    (k,) = cost.kinds
    assert (k.full_bytes, k.first_stored, k.mean_added, k.stored_bytes) == (10 * GIB, 5 * GIB, GIB, 10 * GIB)


def test_retention_cost_of_append_only_data_saves_nothing_and_no_rules_keep_all() -> None:
    snaps = _series([1000 + 100 * i for i in range(6)], [1000] + [100] * 5)
    assert repository_bytes(snaps, {s.snapshot_id for s in snaps}) == 1500
    assert repository_bytes(snaps, {"s4", "s5"}) == 1500  # every older row is still in the newer dumps
    cost = retention_cost("w", snaps, None, datetime.fromtimestamp(NOW, UTC))
    assert (cost.rule, cost.kept, cost.cost_bytes, cost.smaller_rule, cost.saving_bytes) == (
        "every snapshot", 6, 1500, "3", 0)
    assert cost.advice == "w: keeping every snapshot (6 snapshot(s)) costs 1.5 KiB; the newest 3 would save 0 B"


# -- the recovery-time forecast ------------------------------------------------------------------------------


def _restores() -> list[Measured]:
    # 120 s fixed plus 600 s per GiB.
    return [Measured(NOW - (30 - i) * DAY, 120 + 600 * gib, gib * GIB) for i, gib in enumerate((1, 2, 3))]


GROWTH = [(NOW - 20 * DAY, 10 * GIB), (NOW - 10 * DAY, 11 * GIB), (NOW, 12 * GIB)]  # 0.1 GiB a day


def test_a_growth_series_crosses_the_rto_on_the_known_day() -> None:
    # Now: 12 GiB, 7320 s. RTO 3 h = 10800 s is reached at 17.8 GiB: 58 days of growth.
    f = forecast("warranty", _restores(), GROWTH, 3 * 3600, NOW)
    assert f.status == "date" and f.crossing_date == "2027-01-17"
    assert f.recovery_now_s == pytest.approx(7320) and f.seconds_per_gib == pytest.approx(600)
    assert f.growth_bytes_per_day == pytest.approx(0.1 * GIB)
    assert "reaches the RTO of 3h 00m on 2027-01-17 (in 58 days;" in f.line


def test_forecast_over_not_within_and_too_few_restores() -> None:
    assert forecast("w", _restores(), GROWTH, 3600, NOW).status == "over"
    assert "already over the RTO" in forecast("w", _restores(), GROWTH, 3600, NOW).line
    flat = [(NOW - 10 * DAY, 12 * GIB), (NOW, 12 * GIB)]
    far = forecast("w", _restores(), flat, 3 * 3600, NOW)
    assert far.status == "not-within" and "not reached within the next 5 years" in far.line
    slow = [(NOW - 365 * DAY, 12 * GIB - 2**20), (NOW, 12 * GIB)]  # 1 MiB a year
    assert forecast("w", _restores(), slow, 3 * 3600, NOW).status == "not-within"
    minutes = forecast("w", _restores(), [(NOW - 600, 12 * GIB - 2**20), (NOW, 12 * GIB)], 3 * 3600, NOW)
    assert minutes.status == "needs-growth" and minutes.crosses_at is None
    assert "needs snapshots spanning at least 1 day (these span 10m 00s)" in minutes.line
    # Restore times falling with size (noise) are read as proportional to size: still a date.
    noisy = [Measured(NOW - 3 * DAY, 900, GIB), Measured(NOW - 2 * DAY, 800, 2 * GIB),
             Measured(NOW - DAY, 700, 3 * GIB)]
    assert forecast("w", noisy, GROWTH, 3 * 3600, NOW).status == "date"
    few = forecast("w", _restores()[:2], GROWTH, 3 * 3600, NOW)
    assert few.status == "needs-restores" and "needs at least 3 measured restores (has 2)" in few.line


# -- `backstop insights --json` on a seeded catalog ----------------------------------------------------------------


def test_insights_cli_on_a_seeded_catalog(tmp_path: Path) -> None:
    now = time.time()
    setup = write_console_setup(tmp_path / "c", now=now)
    db = sqlite3.connect(str(setup.config.catalog.sqlite_path))
    # 8 failed backups hitting offsite in the same hour on 8 days: with the seed's 3 failures, 8 of 11.
    hour = (datetime.fromtimestamp(now, UTC) - timedelta(hours=3)).hour
    rows = []
    for d in range(1, 9):
        t = (datetime.fromtimestamp(now, UTC) - timedelta(days=d)).replace(hour=hour, minute=20).timestamp()
        rows.append((f"off{d:09d}", "backup", "warranty", "failed", t, t + 5, "upload", 0, None, 0.0,
                     "target 'offsite': connection refused", "logical backup of warranty", "h", 1,
                     json.dumps({"error_class": "TargetUnreachable", "target": "offsite"})))
    db.executemany("INSERT INTO jobs (id, kind, db, state, started_at, finished_at, phase, bytes_done, bytes_total,"
                   " rate, error, description, host, pid, result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()
    out = setup.cli("insights", "--json", check=True)
    doc = json.loads(out.stdout)
    f = doc["failures"]
    assert f["total"] == 11 and f["by_target"] == {"offsite": 8} and f["by_class"]["TargetUnreachable"] == 8
    assert f["pattern"] == f"8 of 11 failures hit target offsite between {hour:02d}:00 and {(hour + 1) % 24:02d}:00"
    # What the pure functions give on the same rows.
    from core.catalog.reader import CatalogReader
    from core.insights.digest import build_insights

    reader = CatalogReader(setup.config.catalog.sqlite_path)
    try:
        expected = build_insights(reader, setup.config, now).to_json()
    finally:
        reader.close()
    assert [r["advice"] for r in doc["retention"]] == [r["advice"] for r in expected["retention"]]  # type: ignore[index]
    assert [r["cost_bytes"] for r in doc["retention"]] == [r["cost_bytes"] for r in expected["retention"]]  # type: ignore[index]
    assert [(x["db"], x["status"], x["crossing_date"]) for x in doc["forecasts"]] == [
        (x["db"], x["status"], x["crossing_date"]) for x in expected["forecasts"]]  # type: ignore[index]
    assert doc["forecasts"][0]["restores"] >= 3
    text = setup.cli("insights", "--db", "warranty", check=True).stdout
    # warranty's own failures: the 8 and two of the seed's.
    assert "pattern: 8 of 10 failures hit target offsite" in text and "warranty: keeping every snapshot" in text
    assert "billing" not in text
    bad = setup.cli("insights", "--db", "nope")
    assert bad.returncode == 2 and "no database named 'nope'" in bad.stderr


# -- drill history (the Drills screen) ---------------------------------------------------------------------


def test_drill_entries_merge_reports_with_older_test_restores_and_rotation_names_each_target() -> None:
    from core.drills.model import DrillCheck, DrillReport
    from core.insights.drill_history import drill_entries, rotation
    from core.records import RestoreRecord

    def report(i: int, target: str, ok: bool) -> DrillReport:
        t0 = NOW - (10 - i) * DAY
        return DrillReport(id=f"warranty-{i}", db="warranty", kind="logical", snapshot_id=f"s{i}" * 8,
                           snapshot_finished_at="2026-11-01T00:00:00+00:00", target=target, sources=[],
                           point_reached="", started_at=t0, finished_at=t0 + 100, recovery_s=90, rto_s=1800,
                           scheduled_by="schedule:q", verdict="passed" if ok else "failed",
                           checks=[DrillCheck("table public.t", ok, "")])

    def row(i: int, sid: str, at: float, target: str | None) -> RestoreRecord:
        return RestoreRecord(i, None, sid, "warranty", f"warranty_drill_{i}", [], at, 50.0, 10, True, None, "drill",
                             target)

    reports = [report(1, "local1", True), report(2, "offsite", False)]
    restores = [row(1, "s1" * 8, NOW - 9 * DAY + 5, "local1"),  # the runner's own restore row: covered
                row(2, "old" * 8, NOW - 20 * DAY, "offsite"),  # a wizard drill from before reports
                RestoreRecord(3, None, "x" * 16, "warranty", "copy", [], NOW, 9.0, 1, True, None, "restore")]
    entries = drill_entries(reports, restores, {"warranty": 600}, 3600)
    assert [e.key for e in entries] == ["warranty-2", "warranty-1", "restore:2"]
    assert entries[0].note == "failed: table public.t" and not entries[0].passed
    assert entries[2].rto_s == 600 and entries[2].scheduled_by == "-"
    proofs = {(p.db, p.target): p.last_passed_at for p in rotation(entries, ["warranty"], ["local1", "offsite", "usb"])}
    # offsite: the failed drill proves nothing; the older test restore does.
    assert proofs == {("warranty", "local1"): NOW - 9 * DAY, ("warranty", "offsite"): NOW - 20 * DAY,
                      ("warranty", "usb"): None}
