"""Processes that stop: SIGTERM, dead lock holders, jobs left running, leftovers, file modes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from datetime import UTC
from pathlib import Path

from tests.fixtures.backstop import BACKSTOP, Setup, local_target
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.fixtures.tamper import db_exists, objects, packs

SLOW = {"pack_target_mib": 1, "chunk_avg_kib": 64, "compression_level": 19}


def _start(setup: Setup, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*BACKSTOP, "--config", str(setup.path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _wait_for(cond, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _jobs(setup: Setup) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(setup.cli("jobs", "--json", check=True).stdout)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _lock(repo: Path, host: str, pid: int, kind: str = "exclusive") -> Path:
    from datetime import datetime

    path = repo / "locks" / ("ab" * 16)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"kind": kind, "purpose": "prune", "host": host, "pid": pid,
                                "created": datetime.now(UTC).isoformat(timespec="seconds")}))
    return path


def test_sigterm_during_backup_cleans_up(tmp_path, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=150_000)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}], repository=SLOW)
    setup.cli("init", check=True)
    proc = _start(setup, "backup", "--db", "warranty")
    _wait_for(lambda: bool(packs(repo)) or proc.poll() is not None)
    assert proc.poll() is None, "backup finished before it could be stopped; make the database bigger"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.count("\n") == 1 and "terminated" in err and "Traceback" not in err
    assert objects(repo, "locks") == [] and objects(repo, "snapshots") == []
    (job,) = [j for j in _jobs(setup) if j["kind"] == "backup"]
    assert job["state"] == "abandoned"
    assert setup.cli("check", "--read-data").returncode == 0
    assert setup.cli("backup", "--db", "warranty").returncode == 0


def test_sigterm_during_restore_drops_what_it_created(tmp_path, pg_cluster, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=150_000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    into = f"{name}_r"
    proc = _start(setup, "restore", "--db", "warranty", "--into", into)
    _wait_for(lambda: db_exists(pg_cluster.dsn(), into) or proc.poll() is not None)
    assert proc.poll() is None, "restore finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated" in err, err
    assert not db_exists(pg_cluster.dsn(), into)
    (job,) = [j for j in _jobs(setup) if j["kind"] == "restore"]
    assert job["state"] == "abandoned"


def test_killed_jobs_are_marked_abandoned_and_their_locks_broken(tmp_path, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=150_000)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}], repository=SLOW)
    setup.cli("init", check=True)
    proc = _start(setup, "backup", "--db", "warranty")
    _wait_for(lambda: bool(packs(repo)) or proc.poll() is not None)
    assert proc.poll() is None
    proc.kill()
    proc.wait()
    assert objects(repo, "locks"), "the killed backup should have left its lock"
    (job,) = [j for j in _jobs(setup) if j["kind"] == "backup"]
    assert job["state"] == "abandoned" and str(proc.pid) in job["error"]
    # Its lock (this host, dead pid) does not block even an exclusive lock for an hour.
    out = setup.cli("prune", "--dry-run")
    assert out.returncode == 0, out.stderr
    alice = _enrol_admin(setup)
    out = setup.cli("prune", "--operator", "alice", "--otp", alice.next(), "--grace", "0s")
    assert out.returncode == 0, out.stderr
    assert objects(repo, "locks") == []


def _enrol_admin(setup: Setup) -> CodeBook:
    out = setup.cli("operator", "add", "alice", "--role", "admin", check=True)
    return CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]))


def test_lock_of_another_host_needs_unlock_and_a_refused_command_keeps_its_code(tmp_path, make_warranty_db,  # type: ignore[no-untyped-def]
                                                                                setup_factory) -> None:
    _, dsn = make_warranty_db(claims=200)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    alice = _enrol_admin(setup)
    _lock(repo, socket.gethostname(), _dead_pid())
    assert setup.cli("backup", "--db", "warranty").returncode == 0  # a dead local holder is broken at once
    _lock(repo, "elsewhere.example", 4242)
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 1 and "elsewhere.example" in out.stderr and "backstop unlock" in out.stderr
    code = alice.next()
    out = setup.cli("prune", "--operator", "alice", "--otp", code)
    assert out.returncode == 1 and "locked" in out.stderr
    listing = setup.cli("unlock", check=True).stdout
    assert "elsewhere.example" in listing
    out = setup.cli("unlock", "abab", "--operator", "alice")
    assert out.returncode == 2 and "one-time code" in out.stderr
    # The code the lock refused was not used up: it still works, once.
    out = setup.cli("unlock", "abab", "--operator", "alice", "--otp", code)
    assert out.returncode == 0, out.stderr
    assert objects(repo, "locks") == []
    assert setup.cli("backup", "--db", "warranty").returncode == 0
    unlocks = [e for e in json.loads(setup.cli("audit", "list", "--json", check=True).stdout)
               if e["action"] == "repository.unlock"]
    assert [e["outcome"] for e in unlocks] == ["refused", "allowed", "succeeded"]


def test_prune_removes_leftovers_older_than_the_grace_period(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [])
    setup.cli("init", check=True)
    alice = _enrol_admin(setup)
    (repo / "data" / "ab").mkdir(parents=True, exist_ok=True)
    old_tmp = repo / "data" / "ab" / ".backstop-tmp-ab12.0123456789ab"
    young_tmp = repo / "data" / "ab" / ".backstop-tmp-ab34.0123456789ab"
    old_tmp.write_bytes(b"x" * 100)
    young_tmp.write_bytes(b"y" * 100)
    two_days = time.time() - 2 * 86400
    os.utime(old_tmp, (two_days, two_days))
    stale = _lock(repo, "elsewhere.example", 4242, kind="shared")
    os.utime(stale, (two_days, two_days))
    doc = json.loads(stale.read_text())
    from datetime import datetime
    doc["created"] = datetime.fromtimestamp(two_days, UTC).isoformat(timespec="seconds")
    stale.write_text(json.dumps(doc))
    out = setup.cli("prune", "--operator", "alice", "--otp", alice.next())
    assert out.returncode == 0, out.stderr
    assert not old_tmp.exists() and young_tmp.exists() and not stale.exists()
    assert "leftover" in out.stdout


def test_catalog_and_repository_files_are_private(tmp_path, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=200)
    repo = tmp_path / "repo"
    # About the SQLite file's modes, whichever back end the rest of the suite runs on.
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}],
                          catalog={"url": f"sqlite:///{tmp_path / 'files' / 'catalog.db'}"})
    old = os.umask(0o022)
    try:
        setup.cli("init", check=True)
        setup.cli("backup", "--db", "warranty", check=True)
        _enrol_admin(setup)
    finally:
        os.umask(old)
    cat = [p for p in (tmp_path / "files").glob("catalog.db*")]
    assert cat
    for p in [*cat, *[p for p in repo.rglob("*") if p.is_file()]]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for d in [p for p in repo.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    # A passphrase file others can read gets one warning line, like ssh's.
    setup.passphrase_file.chmod(0o644)
    out = setup.cli("snapshots")
    assert out.returncode == 0 and "chmod 600" in out.stderr and out.stderr.count("\n") == 1


def test_jobs_of_dead_processes_count_as_failed_backups(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from core.catalog.reader import CatalogReader
    from core.catalog.store import Catalog
    from core.events import JobFinished, JobStarted
    from core.insights.alerts import build_alerts

    path = tmp_path / "catalog.db"
    cat = Catalog(path)
    now = time.time()
    cat.record_event(JobStarted("ok1", kind="backup", db="w", description="backup of w", ts=now - 60))
    cat.record_event(JobFinished("ok1", outcome="succeeded", ts=now - 50))
    cat.record_event(JobStarted("gone", kind="backup", db="w", description="backup of w", ts=now - 40))
    # The job's process died without finishing it (its row still says running, with a dead pid).
    cat.connection.execute("UPDATE jobs SET pid=? WHERE id='gone'", (_dead_pid(),))
    assert cat.mark_abandoned_jobs() == 1
    (gone,) = [j for j in cat.jobs() if j.id == "gone"]
    assert gone.state == "abandoned" and gone.finished_at is not None
    reader = CatalogReader(path)
    assert reader.backup_counts_by_age(now, 1) == {0: (1, 1)}
    alerts = build_alerts(now=now, recent_jobs=cat.jobs(), never_verified=(0, []), damaged=[], target_checks={},
                          configured_targets=[], latest_backup={}, configured_dbs=[])
    assert [a.kind for a in alerts] == ["failed-job"] and "backup of w" in alerts[0].message
    reader.close()
    cat.close()
