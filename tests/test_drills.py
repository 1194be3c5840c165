"""Restore drills (issue 13 part 1): on a schedule, rotating across targets, failing cleanly, from the CLI.

Real PostgreSQL, a local target and a SeaweedFS one, a real Engine under the
Scheduler with an injected clock. The integrity checks themselves are the
integrity work's (core/drills/integrity.py): where a drill's verdict depends
on the table digests it records, the test says so.
"""

from __future__ import annotations

import json
import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from core.config import RetentionConfig, parse_config
from core.drills.model import FAILED, PASSED
from core.drills.runner import DrillRequest, pick_snapshot, retention_span, rotate
from core.engine import Engine
from core.errors import ConfigError
from core.events import JobEvent, JobStarted, PhaseChanged
from core.records import SnapshotRecord
from core.repository.manifest import SCHEMA_FILE
from core.repository.tiers import packs_of
from core.schedule.actions import EngineRunner
from core.schedule.clock import FakeClock
from core.schedule.config import DRILL_CRON, ScheduleConfig
from core.schedule.scheduler import Scheduler

import tests.test_pitr as pitr_tests
from tests.fixtures.backstop import Setup, local_target, s3_target_dict
from tests.fixtures.catalogs import catalog_db
from tests.fixtures.s3 import new_bucket
from tests.fixtures.tamper import flip_byte
from tests.test_pitr import DB, Pitr, _archive_now, _rows
from tests.test_table_at_moment import _postmasters

# The archiving cluster with a physical snapshot (tests/test_pitr.py), instantiated for this module.
pitr = pitr_tests.pitr

# The manifests of this branch record table digests (the integrity work): only then can a drill pass.
REPO = {"pack_target_mib": 1, "chunk_avg_kib": 64}


def _scratch_left(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE '%\\_drill\\_%'")]


# -- pure parts --------------------------------------------------------------------------------------------------


def test_rotation_and_retention_window() -> None:
    # Never drilled first, in config order; then the one drilled longest ago.
    assert rotate(["local1", "offsite"], {}) == "local1"
    assert rotate(["local1", "offsite"], {"local1": 10.0}) == "offsite"
    assert rotate(["local1", "offsite"], {"local1": 10.0, "offsite": 20.0}) == "local1"
    assert retention_span(None) is None
    assert retention_span(RetentionConfig(keep_last=3)) is None
    assert retention_span(RetentionConfig(keep_daily=7, keep_weekly=4)).days == 28  # type: ignore[union-attr]
    assert retention_span(RetentionConfig(keep_daily=7, keep_monthly=-1)) is None
    now = datetime(2026, 12, 1, tzinfo=UTC)
    snaps = [SnapshotRecord(f"s{d}", "warranty", "logical", "", f"2026-11-{d:02d}T00:00:00+00:00", 1, 1)
             for d in (1, 10, 20, 28)]
    assert pick_snapshot(snaps, "latest", None, now).id == "s28"
    # Random within the window: the last 14 days hold s20 and s28 only; without a window any of them.
    picked = {pick_snapshot(snaps, "random", timedelta(days=14), now, random.Random(i)).id for i in range(40)}
    assert picked == {"s20", "s28"}
    assert {pick_snapshot(snaps, "random", None, now, random.Random(i)).id for i in range(80)} == {
        "s1", "s10", "s20", "s28"}
    assert pick_snapshot(snaps, "random", timedelta(hours=1), now).id == "s28"  # none that recent: the newest


def test_drill_schedule_config() -> None:
    s = ScheduleConfig(name="q", action="drill", db="warranty")
    assert s.cron == DRILL_CRON == "0 2 1 1,4,7,10 *" and s.snapshot is None and s.target is None
    s = ScheduleConfig(name="q", action="drill", db="warranty", snapshot="random", target="offsite", type="logical")
    assert (s.snapshot, s.target) == ("random", "offsite")
    with pytest.raises(ValueError, match="cron"):
        ScheduleConfig(name="b", action="backup", db="warranty")  # only drills have a default
    with pytest.raises(ValueError, match="snapshot applies to action drill only"):
        ScheduleConfig(name="b", action="backup", db="warranty", cron="0 1 * * *", snapshot="latest")
    with pytest.raises(ValueError, match="latest"):
        ScheduleConfig(name="q", action="drill", db="warranty", snapshot="oldest")  # type: ignore[arg-type]
    doc = {"targets": [{"name": "local1", "type": "local", "path": "/tmp/x"}],
           "databases": [{"name": "warranty", "dsn": "dbname=w"}],
           "encryption": {"passphrase_env": "X"},
           "schedules": [{"name": "q", "action": "drill", "db": "warranty", "target": "nowhere"}]}
    with pytest.raises(ConfigError, match="schedules.0.target: no target named 'nowhere'"):
        parse_config(doc, Path("c.yaml"))


# -- scheduled drills rotate across targets --------------------------------------------------------------------


async def test_scheduled_drills_rotate_across_targets(tmp_path: Path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                      setup_factory, s3_servers) -> None:
    name, dsn = make_warranty_db(claims=2000)
    server = s3_servers[0]
    targets = [local_target(tmp_path / "repo"), s3_target_dict(server, new_bucket(server), "offsite")]
    # No cron: a drill schedule is quarterly by default.
    setup = setup_factory(targets, [{"name": "warranty", "dsn": dsn, "rto_minutes": 30}], repository=REPO,
                          schedules=[{"name": "quarterly", "action": "drill", "db": "warranty"}])
    async with Engine(setup.config) as engine:
        await engine.init()
        snap = await engine.backup("warranty")
        assert sorted(snap.targets) == ["local1", "offsite"]
        clock = FakeClock(datetime(2026, 12, 31, 12, tzinfo=UTC))
        sched = Scheduler(engine.config.schedules, engine.catalog, EngineRunner(engine), clock)
        sched.start()
        assert await sched.tick() == []  # nothing due before 1 January, 02:00
        for when in (datetime(2027, 1, 1, 2, 0, 30, tzinfo=UTC), datetime(2027, 4, 1, 2, 0, 30, tzinfo=UTC)):
            clock.set(when)
            assert len(await sched.tick()) == 1
            await sched.wait_idle()
        runs = sorted(engine.catalog.schedule_runs("quarterly", limit=10), key=lambda r: r.slot)
        drills = sorted(engine.catalog.drills("warranty"), key=lambda d: d.started_at)
        restores = [(r.kind, r.target) for r in sorted(engine.catalog.restores("warranty"), key=lambda r: r.id)]

    assert [r.slot[:10] for r in runs] == ["2027-01-01", "2027-04-01"]
    # The first drill proves the first target, the next one the other.
    assert [d.target for d in drills] == ["local1", "offsite"]
    for d in drills:
        assert d.scheduled_by == "schedule:quarterly" and d.kind == "logical" and d.snapshot_id == snap.id
        assert d.scratch.startswith("warranty_drill_") and d.scratch_removed, d
        assert [s.name for s in d.steps] == ["choose", "restore", "integrity", "cleanup"]
        assert d.recovery_s == pytest.approx(d.steps[1].seconds, abs=0.01) and 0 < d.recovery_s < d.rto_s == 1800
        # Read from that target only.
        assert [s["target"] for s in d.sources if s["bytes"]] == [d.target]
        names = [c.name for c in d.checks]
        assert names[-1] == "rto" and d.checks[-1].ok and "RTO 30 min" in d.checks[-1].detail
        assert len(names) >= 2  # the table checks come first
    assert _scratch_left(pg_cluster.dsn()) == []
    # The measured restores are recorded as drills too (the KPIs read them).
    assert restores == [("drill", "local1"), ("drill", "offsite")]
    assert [d.verdict for d in drills] == [PASSED, PASSED] and all(c.ok for d in drills for c in d.checks)
    assert [r.state for r in runs] == ["succeeded", "succeeded"]
    assert [(r.result or {}).get("drill") for r in runs] == [d.id for d in drills]
    assert all((r.result or {}).get("verdict") == PASSED for r in runs)

    # Each report was sealed into the repository with its MAC, which verifies; an edited report does not.
    for d in drills:
        ok = setup.cli("drill", "verify", d.id)
        assert ok.returncode == 0 and "MAC verifies" in ok.stdout and "local1" in ok.stdout, ok.stdout + ok.stderr
    with catalog_db(setup.dir / "catalog.db") as db:
        (text,) = db.execute("SELECT report FROM drills WHERE id = ?", (drills[0].id,)).fetchone()
        db.execute("UPDATE drills SET report = ? WHERE id = ?",
                   (json.dumps({**json.loads(text), "recovery_s": 0.5}), drills[0].id))
    edited = setup.cli("drill", "verify", drills[0].id)
    assert edited.returncode == 1 and "recovery_s" in edited.stdout + edited.stderr, edited.stdout + edited.stderr


# -- a failed restore cleans up and is recorded -----------------------------------------------------------------


async def test_a_failed_restore_removes_the_scratch_database_and_is_recorded(  # type: ignore[no-untyped-def]
        tmp_path: Path, pg_cluster, make_warranty_db, setup_factory) -> None:
    name, dsn = make_warranty_db(claims=20000)
    repo_dir = tmp_path / "repo"
    setup = setup_factory([local_target(repo_dir)], [{"name": "warranty", "dsn": dsn}], repository=REPO)
    async with Engine(setup.config) as engine:
        await engine.init()
        snap = await engine.backup("warranty")
        # Damage the packs only the biggest table's rows are in: the restore gets as far as creating the scratch
        # database and loading, then meets a pack no target holds intact.
        repo = await engine.open_repository()
        manifest = await repo.read_manifest(snap.id)
        index = await repo.load_index()
        schema_packs = set(packs_of([manifest.file(SCHEMA_FILE)], index))
        doomed = set(packs_of(manifest.table_files()[:1], index)) - schema_packs
        assert doomed, "the biggest table shares every pack with the schema: make the data bigger"
        for path in (repo_dir / "data").rglob("*"):
            if path.name in doomed:
                flip_byte(path)
        kinds: dict[str, str] = {}  # job id -> kind
        phases: list[tuple[str, str]] = []  # (job kind, phase): the restore job got as far as loading

        def watch(ev: JobEvent) -> None:
            if isinstance(ev, JobStarted):
                kinds[ev.job_id] = ev.kind
            elif isinstance(ev, PhaseChanged):
                phases.append((kinds.get(ev.job_id, "?"), ev.phase))

        engine.bus.subscribe(watch)
        report = await engine.drill(DrillRequest(db="warranty", scheduled_by="operator:test"))
        stored = engine.catalog.drill(report.id)
        jobs = {j.kind: j.state for j in engine.catalog.jobs(limit=20)}

    assert report.verdict == FAILED and report.error and "no intact copy" in report.error, report.error
    assert report.target == "local1" and report.scratch.startswith("warranty_drill_") and report.scratch_removed
    assert ("restore", "restore") in phases and ("drill", "cleanup") in phases, phases
    assert report.scratch not in _scratch_left(pg_cluster.dsn()) and _scratch_left(pg_cluster.dsn()) == []
    assert [s.name for s in report.steps] == ["choose", "cleanup"]
    assert stored is not None and stored[0].verdict == FAILED and stored[0].error == report.error
    assert jobs["drill"] == "failed" and jobs["restore"] == "failed"


# -- altered data fails the drill, naming the table --------------------------------------------------------------


async def test_a_changed_row_fails_the_drill_naming_the_table(tmp_path: Path, make_warranty_db,  # type: ignore[no-untyped-def]
                                                                setup_factory) -> None:
    name, dsn = make_warranty_db(claims=1000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])

    async def change_a_row(scratch_dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(scratch_dsn, autocommit=True) as conn:
            await conn.execute("UPDATE warranty.claims SET description = description || '!'"
                               " WHERE id = (SELECT min(id) FROM warranty.claims)")

    async with Engine(setup.config) as engine:
        await engine.init()
        await engine.backup("warranty")
        report = await engine.drill(DrillRequest(db="warranty", after_restore=change_a_row))
    bad = [c for c in report.checks if not c.ok]
    assert report.verdict == FAILED and report.error is None and report.scratch_removed
    assert [c.name for c in bad] == ["table warranty.claims"], bad


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_drill_run_and_list_from_the_cli(tmp_path: Path, pg_cluster, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=1000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    run = setup.cli("--json", "drill", "run", "--db", "warranty", "--operator", "alice")
    doc = json.loads(run.stdout)
    assert run.returncode == (0 if doc["verdict"] == PASSED else 1), run.stderr
    assert doc["db"] == "warranty" and doc["target"] == "local1" and doc["scheduled_by"] == "operator:alice"
    assert doc["scratch_removed"] and doc["checks"][-1]["name"] == "rto"
    # For people: the verdict, each check, recovery against the RTO, what was read from where.
    text = setup.cli("drill", "run", "--db", "warranty")
    assert text.returncode == run.returncode, text.stderr
    assert "drill warranty-" in text.stdout and f": {doc['verdict'].upper()}" in text.stdout
    assert "from target local1 into warranty_drill_" in text.stdout and "(removed)" in text.stdout
    assert "read 100% from local1" in text.stdout and "[ok] rto: recovered in " in text.stdout
    listed = json.loads(setup.cli("--json", "drill", "list", check=True).stdout)
    assert [(r["verdict"], r["target"]) for r in listed] == [(doc["verdict"], "local1")] * 2
    assert listed[-1]["id"] == doc["id"] and listed[0]["id"] != doc["id"]  # newest first
    assert listed[-1]["recovery_s"] == pytest.approx(doc["recovery_s"], abs=0.001) and listed[-1]["rto_s"] == 3600
    table = setup.cli("drill", "list")
    assert doc["id"] in table.stdout and "1h" in table.stdout
    assert _scratch_left(pg_cluster.dsn()) == []
    assert run.returncode == 0 and doc["verdict"] == PASSED


# -- a physical drill: a private scratch cluster recovered to a random archived point ------------------------------


@pytest.fixture(scope="module")
def physical(pitr: Pitr) -> tuple[Setup, Path]:
    """The archiving cluster of tests/test_pitr.py, more WAL archived after its snapshot, scratch under its root."""
    _rows(pitr.primary.dsn(DB), "INSERT INTO ledger (note) SELECT 'drill-' || g FROM generate_series(1, 100) g")
    _archive_now(pitr.primary)
    scratch = pitr.root / "drill-scratch"
    scratch.mkdir()
    doc = yaml.safe_load(pitr.setup.path.read_text())
    doc["restore"] = {"scratch_dir": str(scratch)}
    path = pitr.setup.dir / "drill.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if pitr.primary.owner is not None:
        os.chown(path, *pitr.primary.owner)  # wal-fetch reads it as the server's account
    return Setup(path, pitr.setup.dir, pitr.setup.passphrase_file), scratch


def test_a_physical_drill_recovers_a_scratch_cluster_and_removes_it(pitr: Pitr,  # type: ignore[no-untyped-def]
                                                                     physical: tuple[Setup, Path]) -> None:
    setup, scratch = physical
    run = setup.cli("--json", "drill", "run", "--db", DB, "--type", "physical")
    doc = json.loads(run.stdout or "{}")
    assert doc, run.stderr
    print(json.dumps(doc, indent=1))  # shown when it fails: the steps and figures
    assert run.returncode == (0 if doc["verdict"] == PASSED else 1), run.stderr
    assert doc["kind"] == "physical" and doc["snapshot_id"] == pitr.snapshot["id"] and doc["error"] is None, doc
    assert doc["target"] == "offsite" and [s["target"] for s in doc["sources"] if s["bytes"]] == ["offsite"]
    assert [s["name"] for s in doc["steps"]] == ["choose", "recover", "integrity", "cleanup"]
    assert doc["recovery_s"] == pytest.approx(doc["steps"][1]["seconds"], abs=0.01)
    # Recovered to an LSN at or after the snapshot's end, and promoted there.
    assert re.match(r"LSN [0-9A-F]+/[0-9A-F]+, last commit .*\(asked for (lsn|the end of the base).*promoted\)$",
                    doc["point_reached"]), doc["point_reached"]
    checks = {c["name"]: c for c in doc["checks"]}
    assert {"sources", "pg_verifybackup", "rto"} <= set(checks) and checks["rto"]["ok"]
    assert "WAL through restore_command" in checks["sources"]["detail"]
    # The scratch cluster is stopped and its directory gone.
    assert doc["scratch"].startswith(str(scratch)) and doc["scratch_removed"]
    assert list(scratch.iterdir()) == [] and not _postmasters(scratch)
    listed = json.loads(setup.cli("--json", "drill", "list", "--db", DB, check=True).stdout)
    assert [(r["id"], r["kind"]) for r in listed] == [(doc["id"], "physical")]
    assert run.returncode == 0 and doc["verdict"] == PASSED and all(c["ok"] for c in doc["checks"])
