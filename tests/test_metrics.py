"""Prometheus metrics: `backstop daemon --metrics-listen` serves /metrics, `backstop metrics` prints the same.

One catalog is seeded once for the module: a real backup of a small
warranty database (its job, snapshot and verification), a real failed
backup (a database nobody listens for), and through the catalog's own write
methods: verifications (one failed), measured restores and drills, schedule
runs (one succeeded, one missed), an abandoned job, a job of known duration,
drill reports and a target's stored bytes. The daemon runs as a real
process; /metrics is fetched with urllib and parsed with prometheus_client's
parser. Every expected value is computed here from the catalog's rows (with
plain SQL), not by the code under test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from core.catalog.sqlite import SqliteCatalog
from core.drills.model import DrillReport
from core.events import JobFinished, JobStarted
from core.records import SnapshotRecord
from core.storage.health import TargetMarks
from core.wal.spool import spool_of
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.backstop import BACKSTOP, Setup, local_target, write_setup
from tests.fixtures.pg import warranty_template

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(catalog: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=30) as db:
        return db.execute(sql, args).fetchall()


def _samples(text: str) -> tuple[Samples, dict[str, str]]:
    """(sample name and labels -> value, family name -> type) of an exposition text."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _drill(db: str, at: float, verdict: str, recovery_s: float) -> DrillReport:
    iso = datetime.fromtimestamp(at).astimezone().isoformat()
    return DrillReport(id=f"{db}-{int(at)}", db=db, kind="logical", snapshot_id="ab" * 32, snapshot_finished_at=iso,
                       target="local1", sources=[], point_reached=iso, started_at=at, finished_at=at + recovery_s + 5,
                       recovery_s=recovery_s, rto_s=1800.0, scheduled_by="schedule:drill", verdict=verdict)


@dataclass
class Scraped:
    setup: Setup
    catalog: Path
    daemon_text: str
    cli_text: str
    daemon_log: str
    daemon_exit: int
    port_free_after: bool
    scraped_at: float


def _seed(setup: Setup) -> None:
    """Everything beyond the real backups, through the catalog's own write methods."""
    now = time.time()
    cat = SqliteCatalog(setup.config.catalog.sqlite_path)
    try:
        sid = cat.snapshot("latest", "warranty").id
        cat.add_verification(job_id=None, target="local1", snapshot_id=sid, started_at=now - 300, read_data=True,
                             objects_checked=5, bytes_read=1000, problems=[])
        cat.add_verification(job_id=None, target="local1", snapshot_id=None, started_at=now - 200, read_data=False,
                             objects_checked=9, bytes_read=0, problems=["pack data/ab/abcd is missing"])
        for k, (dur, ok) in enumerate(((120.0, True), (300.0, True), (999.0, False))):
            cat.add_restore(job_id=None, snapshot_id=sid, db="warranty", into=f"w_restore_{k}", tables=[],
                            started_at=now - 3 * DAY + k, duration_s=dur, nbytes=1, ok=ok, error=None if ok else "x")
        cat.add_restore(job_id=None, snapshot_id=sid, db="billing", into="b_drill_1", tables=[], started_at=now - DAY,
                        duration_s=60.0, nbytes=1, ok=True, error=None, kind="drill", target="local1")
        holder = f"{socket.gethostname()}:{os.getpid()}:test"
        cat.claim_schedule_run(name="nightly", slot="2026-01-01T02:00:00Z", due=now - 7200, action="backup",
                               db="warranty", holder=holder)
        cat.update_schedule_run("nightly", "2026-01-01T02:00:00Z", "running")
        cat.update_schedule_run("nightly", "2026-01-01T02:00:00Z", "succeeded")
        cat.claim_schedule_run(name="nightly", slot="2026-01-02T02:00:00Z", due=now - 3600, action="backup",
                               db="warranty", holder=holder, state="missed", error="the daemon was down")
        # A verification job of exactly 100 s, and a sync abandoned half way.
        cat.record_event(JobStarted("v-known", kind="verify", db=None, description="verify", ts=now - 900))
        cat.record_event(JobFinished("v-known", outcome="succeeded", ts=now - 800))
        cat.record_event(JobStarted("s-gone", kind="sync", db=None, description="sync", ts=now - 700))
        cat.record_event(JobFinished("s-gone", outcome="abandoned", error="interrupted", ts=now - 690))
        cat.add_drill(_drill("warranty", now - 2 * DAY, "failed", 700.0))
        cat.add_drill(_drill("warranty", now - DAY, "passed", 42.5))
        cat.record_target_health([], {"offsite": TargetMarks(listings={"data/": (5 * 2**30, 321, now)})})
        # billing's cluster has a physical snapshot a day old, and this host's WAL spool acknowledged a push since.
        iso = datetime.fromtimestamp(now - DAY).astimezone().isoformat(timespec="seconds")
        cat.add_snapshot(SnapshotRecord("cd" * 32, "billing", "physical", iso, iso, 10, 10, ["local1"],
                                        system_identifier="7001", status="restorable"))
        cat.learn_system("billing", "7001")
        spool_of(setup.path).ensure().add_latency(0.02, "push")
    finally:
        cat.close()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, pg_cluster) -> Iterator[Scraped]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("metrics")
    name = f"w_metrics_{os.getpid()}"
    pg_cluster.create_database(name, template=warranty_template(pg_cluster, 1000))
    setup = write_setup(base, [local_target(base / "repo")],
                        [{"name": "warranty", "dsn": pg_cluster.dsn(name), "rto_minutes": 30},
                         {"name": "billing", "dsn": "postgresql://postgres@127.0.0.1:9/billing", "rto_minutes": 60}])
    try:
        setup.cli("init", check=True)
        setup.cli("backup", "--db", "warranty", check=True)
        failed = setup.cli("backup", "--db", "billing")  # nobody listens on port 9: a real failed backup
        assert failed.returncode == 1, failed.stderr
        _seed(setup)
        port = _free_port()
        log = base / "daemon.log"
        with log.open("w") as log_file:
            proc = subprocess.Popen([*BACKSTOP, "--config", str(setup.path), "daemon", "--metrics-listen",
                                     f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log_file, text=True, cwd=ROOT)
        try:
            text, end = "", time.monotonic() + 60
            while time.monotonic() < end:
                assert proc.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                        assert resp.status == 200
                        text = resp.read().decode()
                    break
                except OSError:
                    time.sleep(0.1)
            assert text, "no answer on /metrics: " + log.read_text()
            scraped_at = time.time()
            cli = setup.cli("metrics", check=True)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with socket.socket() as s:  # nobody listens any more, and a restarted daemon could bind the port again
            free = s.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does (TIME_WAIT of scrapes)
            s.bind(("127.0.0.1", port))
        yield Scraped(setup, setup.config.catalog.sqlite_path, text, cli.stdout, log.read_text(), proc.returncode,
                      free, scraped_at)
    finally:
        pg_cluster.drop_database(name)


def test_every_kpi_is_served_with_the_value_the_catalog_implies(scraped: Scraped) -> None:
    s, types = _samples(scraped.daemon_text)
    now, cat = scraped.scraped_at, scraped.catalog
    assert _get(s, "backstop_catalog_up") == 1.0
    # Backup Completion Rate: succeeded backups / (finished backups + missed backup runs), last 7 days.
    backups = _rows(cat, "SELECT state FROM jobs WHERE kind='backup' AND state != 'running' AND started_at > ?",
                    (now - 7 * DAY,))
    missed = _rows(cat, "SELECT count(*) FROM schedule_runs WHERE state='missed' AND action='backup'")[0][0]
    ok = sum(1 for (st,) in backups if st == "succeeded")
    assert (ok, len(backups), missed) == (1, 2, 1)  # the real backup, the real failure, the missed run
    assert _get(s, "backstop_kpi_backup_completion_ratio") == pytest.approx(ok / (len(backups) + missed))
    # Data Integrity Verification Success: passed / run, last 7 days (the backup's own read-back counts).
    vers = _rows(cat, "SELECT ok FROM verifications WHERE finished_at > ?", (now - 7 * DAY,))
    assert len(vers) >= 3 and any(v == 0 for (v,) in vers)
    assert _get(s, "backstop_kpi_verification_success_ratio") == pytest.approx(sum(v for (v,) in vers) / len(vers))
    # Average Recovery Time: mean of the successful restores and drills of 90 days; per database too.
    good = _rows(cat, "SELECT db, duration_s FROM restores WHERE ok=1 AND started_at >= ?", (now - 90 * DAY,))
    assert _get(s, "backstop_kpi_recovery_time_seconds") == pytest.approx(statistics.fmean(d for _, d in good))
    assert _get(s, "backstop_recovery_time_seconds", db="warranty") == pytest.approx(210.0)
    assert _get(s, "backstop_recovery_time_seconds", db="billing") == pytest.approx(60.0)
    assert _get(s, "backstop_rto_seconds", db="warranty") == 1800.0
    assert _get(s, "backstop_kpi_status", kpi="completion", status="bad") == 1.0  # 50 % is far below 99 %
    assert _get(s, "backstop_kpi_status", kpi="integrity", status="bad") == 1.0  # a check failed
    assert types["backstop_kpi_backup_completion_ratio"] == "gauge"


def test_schedules_targets_recovery_points_jobs_and_drills(scraped: Scraped) -> None:
    s, types = _samples(scraped.daemon_text)
    cat = scraped.catalog
    (finished,) = _rows(cat, "SELECT finished_at FROM schedule_runs WHERE name='nightly' AND state='succeeded'")[0]
    assert _get(s, "backstop_schedule_last_success_timestamp_seconds", schedule="nightly",
                action="backup") == pytest.approx(finished)
    assert _get(s, "backstop_schedule_runs_total", schedule="nightly", action="backup", state="missed") == 1.0
    assert _get(s, "backstop_repository_stored_bytes", target="offsite") == 5 * 2**30
    assert _get(s, "backstop_repository_stored_objects", target="offsite") == 321
    # The recovery point: the real backup's snapshot (no physical snapshot, so no WAL).
    (newest,) = _rows(cat, "SELECT max(finished_at) FROM snapshots WHERE db='warranty'")[0]
    age = scraped.scraped_at - datetime.fromisoformat(newest).timestamp()
    assert _get(s, "backstop_recovery_point_age_seconds", db="warranty", source="snapshot") == pytest.approx(age, abs=5)
    # billing: its physical snapshot is a day old, the WAL push this host's spool acknowledged is newer.
    pushed = spool_of(scraped.setup.path).latencies()[-1][0]
    assert _get(s, "backstop_recovery_point_age_seconds", db="billing", source="wal") == pytest.approx(
        scraped.scraped_at - pushed, abs=5)
    # Job durations: a real histogram, its count the catalog's finished jobs of the kind.
    assert types["backstop_job_duration_seconds"] == "histogram"
    for kind in ("backup", "verify", "sync"):
        (n,) = _rows(cat, "SELECT count(*) FROM jobs WHERE kind=? AND finished_at IS NOT NULL", (kind,))[0]
        assert n and _get(s, "backstop_job_duration_seconds_count", kind=kind) == n
        assert _get(s, "backstop_job_duration_seconds_bucket", kind=kind, le="+Inf") == n
    verifies = _rows(cat, "SELECT finished_at - started_at FROM jobs WHERE kind='verify'")
    assert _get(s, "backstop_job_duration_seconds_bucket", kind="verify", le="60.0") == sum(
        d <= 60 for (d,) in verifies)
    assert _get(s, "backstop_job_duration_seconds_bucket", kind="verify", le="120.0") == sum(
        d <= 120 for (d,) in verifies) >= 1  # the 100 s job
    assert _get(s, "backstop_job_duration_seconds_sum", kind="verify") == pytest.approx(sum(d for (d,) in verifies))
    # Failures by class: the real failed backup's error class, recorded by core/jobs.py; abandoned = interrupted.
    (result,) = _rows(cat, "SELECT result FROM jobs WHERE kind='backup' AND state='failed'")[0]
    cls = json.loads(result)["error_class"]
    import core.errors

    assert isinstance(getattr(core.errors, cls, None), type), cls
    assert _get(s, "backstop_job_failures_total", kind="backup", **{"class": cls}) == 1.0
    assert _get(s, "backstop_job_failures_total", kind="sync", **{"class": "interrupted"}) == 1.0
    # Drills: the newest one per database, and counts by verdict.
    assert _get(s, "backstop_drill_last_passed", db="warranty", kind="logical", target="local1") == 1.0
    assert _get(s, "backstop_drill_last_recovery_seconds", db="warranty") == 42.5
    assert _get(s, "backstop_drills_total", db="warranty", verdict="failed") == 1.0


def test_backstop_metrics_prints_the_same_families(scraped: Scraped) -> None:
    daemon, daemon_types = _samples(scraped.daemon_text)
    cli, cli_types = _samples(scraped.cli_text)
    assert cli_types == daemon_types and len(cli_types) >= 20
    assert all(name.startswith("backstop_") for name in cli_types)  # only ours: no process_ or python_ metrics
    for key in (("backstop_kpi_backup_completion_ratio", ()), ("backstop_kpi_verification_success_ratio", ()),
                ("backstop_kpi_recovery_time_seconds", ())):
        assert cli[key] == pytest.approx(daemon[key])


def test_the_daemon_stops_serving_with_sigterm(scraped: Scraped) -> None:
    assert scraped.daemon_exit == 0, scraped.daemon_log
    assert "serving metrics on http://127.0.0.1:" in scraped.daemon_log and "stopped" in scraped.daemon_log
    assert scraped.port_free_after


def test_a_port_in_use_is_one_line_and_exit_2(scraped: Scraped) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = scraped.setup.cli("daemon", "--metrics-listen", f"127.0.0.1:{port}", timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--metrics-listen 127.0.0.1:{port}" in lines[0] and "cannot listen" in lines[0]
    bad = scraped.setup.cli("daemon", "--metrics-listen", "localhost", timeout=60)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def test_the_grafana_dashboard_uses_only_metrics_the_collector_emits(scraped: Scraped) -> None:
    doc = json.loads((ROOT / "config" / "grafana-backstop.json").read_text())
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    _, types = _samples(scraped.daemon_text)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    emitted = {name + sfx for name, kind in types.items() for sfx in suffixes[kind]}
    used: set[str] = set()
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            used |= set(re.findall(r"\bbackstop_[a-z0-9_]+", target["expr"]))
    assert used and used <= emitted, sorted(used - emitted)
    # KPI stats, recovery points, bytes per target, the duration histogram, failures and drills are all shown.
    for name in ("backstop_kpi_backup_completion_ratio", "backstop_kpi_verification_success_ratio",
                 "backstop_kpi_recovery_time_seconds", "backstop_recovery_point_age_seconds",
                 "backstop_repository_stored_bytes", "backstop_job_duration_seconds_bucket",
                 "backstop_job_failures_total", "backstop_drill_last_passed"):
        assert name in used, name
