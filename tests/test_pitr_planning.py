"""Point-in-time requests through the engine: physical+WAL sources from a real repository and catalog.

The archive is real (segments pushed through the repository's WalArchive onto
a local target, their archive times set on the stored objects); no PostgreSQL
server is needed, since planning reads only the catalog and the archive's
listing. The restore itself is tested end to end in tests/test_pitr.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from core.engine import Engine
from core.errors import BackstopError
from core.insights.alerts import recovery_point_alert
from core.planner import Incident, PointInTime, RestoreRequest, TargetState
from core.postgres.wal import segment_file
from core.records import SnapshotRecord

from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.fixtures.wal_archive import SEG, add_snapshots, archive_wal, physical_record

LOCAL = [TargetState("local1", "local")]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@pytest.fixture
async def archived(tmp_path: Path) -> tuple[Setup, float]:
    """One database, a physical snapshot at T0 and 18 segments archived ten minutes apart from T0."""
    setup = write_setup(tmp_path, [local_target(tmp_path / "repo")],
                        [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty"}])
    t0 = float(int(time.time()) - 4 * 3600)
    await archive_wal(setup.config, "local1", tmp_path / "repo", {(1, n): t0 + (n - 2) * 600 for n in range(2, 20)})
    add_snapshots(setup.config.catalog.sqlite_path, [
        physical_record("ab" * 32, "warranty", _iso(t0 - 300), _iso(t0), 2, 2),
        # A logical snapshot an hour before the physical one: the fallback when WAL cannot reach the moment.
        SnapshotRecord("cd" * 32, "warranty", "logical", _iso(t0 - 3600), _iso(t0 - 3500), 2**30, 2**29, ["local1"]),
    ])
    return setup, t0


def _request(at: float) -> RestoreRequest:
    return RestoreRequest("warranty", Incident.ACCIDENTAL_DELETION, point=PointInTime.moment(
        datetime.fromtimestamp(at, UTC)))


async def test_a_moment_is_planned_from_the_physical_snapshot_and_the_archived_wal(
        archived: tuple[Setup, float]) -> None:
    setup, t0 = archived
    async with Engine(setup.config) as engine:
        engine.catalog.add_restore(job_id=None, snapshot_id="ab" * 32, db="warranty", into="/srv/pitr/w1",
                                   tables=[], started_at=t0 - 86400, duration_s=20.0, nbytes=2 * 2**30, ok=True,
                                   error=None, target="local1")
        p = await engine.plan_restore(_request(t0 + 1800), targets=LOCAL)
        assert p.ok and p.snapshot_id == "ab" * 32 and p.source is not None and p.source.kind == "physical"
        assert p.point == datetime.fromtimestamp(t0 + 1800, UTC)
        assert p.source.recoverable_until == datetime.fromtimestamp(t0 + 17 * 600, UTC)
        # Measured: the one past physical restore (2 GiB in 20 s), plus the WAL replayed to the moment.
        assert "102.4 MiB/s over 1 past physical restore(s) of warranty" in p.estimate_basis
        assert "WAL to replay" in p.estimate_basis
        # A time before any physical snapshot finished falls back to the logical snapshot.
        p = await engine.plan_restore(_request(t0 - 600), targets=LOCAL)
        assert p.ok and p.snapshot_id == "cd" * 32
        assert any("after the chosen moment" in r.why for r in p.rejected if r.source_id == "ab" * 32)
        # Latest (no moment): physical snapshots are no source for a restore into a database.
        p = await engine.plan_restore(RestoreRequest("warranty", Incident.HOST_LOSS), targets=LOCAL)
        assert p.ok and p.snapshot_id == "cd" * 32


async def test_a_gap_before_the_moment_is_named_and_the_coverage_and_recovery_point_show_it(
        archived: tuple[Setup, float], tmp_path: Path) -> None:
    setup, t0 = archived
    missing = segment_file(1, 10, SEG)
    (tmp_path / "repo" / "wal" / "00000001" / missing).unlink()
    async with Engine(setup.config) as engine:
        p = await engine.plan_restore(_request(t0 + 2 * 3600), targets=LOCAL)
        assert p.ok and p.snapshot_id == "cd" * 32  # only the older logical snapshot is left
        (why,) = [r.why for r in p.rejected if r.source_id == "ab" * 32]
        assert "gap before" in why and missing in why
        cov = await engine.wal_coverage()
        (tl,) = cov.timelines
        assert (tl.first, tl.last, tl.segments) == (segment_file(1, 2, SEG), segment_file(1, 19, SEG), 17)
        assert tl.gaps == ((missing, missing),)
        assert tl.first_at == datetime.fromtimestamp(t0, UTC)
        point = await engine.recovery_point(now=t0 + 17 * 600 + 120)
        assert point.source == "wal" and point.age_s == pytest.approx(120)
        assert segment_file(1, 19, SEG) in point.detail


async def test_without_an_archive_the_recovery_point_is_the_newest_snapshot(tmp_path: Path) -> None:
    setup = write_setup(tmp_path, [local_target(tmp_path / "repo")],
                        [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty"}])
    (tmp_path / "repo").mkdir()
    async with Engine(setup.config) as engine:
        none = await engine.recovery_point(now=1000.0)
        assert none.age_s is None and none.detail == "no snapshot, WAL not listed"  # no repository there yet
        add_snapshots(setup.config.catalog.sqlite_path, [
            SnapshotRecord("ef" * 32, "warranty", "logical", _iso(100), _iso(400), 10, 10, ["local1"]),
            physical_record("ab" * 32, "warranty", _iso(0), _iso(200), 2, 2)])
        point = await engine.recovery_point(now=1000.0)
        assert point.source == "snapshot" and point.age_s == pytest.approx(600)
        with pytest.raises(BackstopError, match="holds no repository"):
            await engine.wal_coverage()  # the catalog screen shows the first clause and points to `wal status`
        # The physical snapshot cannot be checked against an archive that cannot be listed: the logical one is
        # planned (and the target states say what is wrong).
        p = await engine.plan_restore(_request(2000.0), targets=LOCAL)
        assert p.ok and p.snapshot_id == "ef" * 32


async def test_with_nothing_archived_a_physical_snapshot_is_not_offered(tmp_path: Path) -> None:
    setup = write_setup(tmp_path, [local_target(tmp_path / "repo")],
                        [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty"},
                         {"name": "billing", "dsn": "postgresql://postgres@127.0.0.1:9/billing"}])
    await archive_wal(setup.config, "local1", tmp_path / "repo", {})
    add_snapshots(setup.config.catalog.sqlite_path, [
        physical_record("ab" * 32, "warranty", _iso(0), _iso(200), 2, 2),
        SnapshotRecord("ef" * 32, "billing", "logical", _iso(100), _iso(400), 10, 10, ["local1"])])
    async with Engine(setup.config) as engine:
        p = await engine.plan_restore(_request(2000.0), targets=LOCAL)
        assert not p.ok and "no backups of warranty" in (p.refusal or "")
        # Another database's point-in-time request: the physical snapshot is not of its cluster.
        p = await engine.plan_restore(replace(_request(2000.0), db="billing"), targets=LOCAL)
        assert p.ok and p.snapshot_id == "ef" * 32


async def test_recovery_follows_a_new_timeline_from_its_history_file(tmp_path: Path) -> None:
    """A restore promoted at segment 8 started timeline 2; the archive goes on there, and so does recovery."""
    setup = write_setup(tmp_path, [local_target(tmp_path / "repo")],
                        [{"name": "warranty", "dsn": "postgresql://postgres@127.0.0.1:9/warranty"}])
    t0 = float(int(time.time()) - 4 * 3600)
    segs = {(1, n): t0 + (n - 2) * 600 for n in range(2, 10)}
    segs |= {(2, n): t0 + (n - 2) * 600 + 60 for n in range(8, 15)}
    await archive_wal(setup.config, "local1", tmp_path / "repo", segs,
                      {"00000002.history": f"1\t0/{8 * SEG + 0x200:X}\tno recovery target specified\n".encode()})
    add_snapshots(setup.config.catalog.sqlite_path, [physical_record("ab" * 32, "warranty", _iso(t0 - 300),
                                                                     _iso(t0), 2, 2)])
    async with Engine(setup.config) as engine:
        p = await engine.plan_restore(_request(t0 + 6000), targets=LOCAL)
        assert p.ok and p.snapshot_id == "ab" * 32 and p.source is not None
        assert p.source.recoverable_until == datetime.fromtimestamp(t0 + 12 * 600 + 60, UTC)  # tl2 segment 14
        cov = await engine.wal_coverage()
        assert [(t.timeline, t.segments) for t in cov.timelines] == [(1, 8), (2, 7)]


def test_the_recovery_point_limit_is_configurable_and_the_alert_says_it_in_words(tmp_path: Path) -> None:
    setup = write_setup(tmp_path, [local_target(tmp_path / "repo")], [], alerts={"recovery_point_age": "5m"})
    assert setup.config.alerts.recovery_point_age == timedelta(minutes=5)
    assert write_setup(tmp_path / "d", [local_target(tmp_path / "repo")], []).config.alerts.recovery_point_age \
        == timedelta(minutes=15)
    alert = recovery_point_alert(600.0, 300.0, "WAL 000000010000000000000013", 1000.0)
    assert alert is not None and alert.level == "critical" and alert.kind == "wal-lag" and alert.at == 400.0
    assert alert.message.startswith("recovery point is 10 min old (WAL 000000010000000000000013), past the 5 min")
    assert recovery_point_alert(300.0, 300.0, "x", 1000.0) is None and recovery_point_alert(None, 1.0, "x", 0) is None
